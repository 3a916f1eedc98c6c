"""Pixel data of every common CT transfer syntax, with errors that name the syntax.

Scanners and PACS exports store CT slices uncompressed, deflated, RLE, or
JPEG-compressed (Baseline, Extended, Lossless, JPEG-LS, JPEG 2000).  pydicom
decodes them through pixel-data plugins; this project pins pylibjpeg with its
libjpeg (JPEG, JPEG-LS), openjpeg (JPEG 2000, HTJ2K) and rle plugins, so every
syntax in :data:`CT_TRANSFER_SYNTAXES` decodes on a plain ``pip install``.

Why a module of its own: the two failure modes a user meets need different
words.  A syntax pydicom knows no decoder for (MPEG video, JPEG XL, a private
UID) is refused *before* any decoding with its name and UID; a syntax whose
decoder plugin is missing (a trimmed environment) says which plugin to
install.  Both happen once per file, at read time, so one bad file becomes
one QC row that names it.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.pixels import get_decoder
from pydicom.uid import UID

CT_TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 and 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1 (Process 14, first-order prediction)",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
"""UID -> name of the transfer syntaxes a CT slice may use and this project decodes (docs/infer.md)."""

PLUGIN_HINT = "pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg and pylibjpeg-rle (pinned in pyproject.toml)"


def transfer_syntax(ds: pydicom.Dataset) -> UID:
    """The file's transfer syntax; Implicit VR Little Endian when the meta header lacks it (DICOM's default)."""
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return UID(str(uid)) if uid else UID("1.2.840.10008.1.2")


def syntax_name(uid: UID | str) -> str:
    """``'JPEG-LS Lossless (1.2.840.10008.1.2.4.80)'``: what an error message shows."""
    uid = UID(str(uid))
    name = CT_TRANSFER_SYNTAXES.get(str(uid)) or (uid.name if uid.is_transfer_syntax else "unknown syntax")
    return f"{name} ({uid})"


def check_transfer_syntax(ds: pydicom.Dataset) -> None:
    """Raise ``ValueError`` when the slice's pixel data cannot be decoded here, naming the syntax and the fix.

    Cheap (no decoding): called for every file at read time.
    """
    uid = transfer_syntax(ds)
    if str(uid) not in CT_TRANSFER_SYNTAXES:
        raise ValueError(
            f"unsupported transfer syntax {syntax_name(uid)}; supported: {', '.join(CT_TRANSFER_SYNTAXES.values())}"
        )
    if not uid.is_encapsulated:
        return  # native pixel data (deflate is undone while the file is read)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise ValueError(f"no decoder installed for transfer syntax {syntax_name(uid)}: install {PLUGIN_HINT}")


def decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The stored pixel values of a single-frame slice, (rows, columns), any supported syntax.

    ``ValueError`` naming the syntax when the data do not decode (a corrupt
    or truncated JPEG stream): pydicom tries every installed plugin first.
    """
    try:
        return ds.pixel_array
    except Exception as exc:  # decoders raise RuntimeError, ValueError, OSError ... for bad streams
        detail = " ".join(str(exc).split())[:300]
        raise ValueError(
            f"cannot decode pixel data ({syntax_name(transfer_syntax(ds))}): corrupt or truncated image data "
            f"({type(exc).__name__}: {detail})"
        ) from exc
