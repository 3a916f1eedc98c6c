"""Archives: resumable fetch, SHA-256 check, and extraction that cannot escape its folder.

Why not ``extractall``: a zip or tar entry named ``../../.bashrc`` or
``/etc/cron.d/x``, or a symlink entry followed by a file written "through"
it, writes outside the target folder; device files and hard links have no
business in a data set either.  :func:`safe_extract` checks every entry
before writing it and refuses the whole archive, naming the entry, at the
first bad one.  It extracts into a folder the caller then renames, so a
refused or interrupted extraction never leaves a half tree in place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from cacs.acquire import AcquireError
from cacs.acquire.redact import public_part, redact, url_secrets

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class UnsafeArchiveError(AcquireError):
    """An archive entry that would write outside the target folder, or is not a plain file/folder."""


# ------------------------------------------------------------ checksum -----


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> str:
    """The file's SHA-256; raise when ``expected`` is given and differs."""
    actual = sha256_file(path)
    if expected is None:
        log.info("%s: SHA-256 %s (no checksum configured to compare with)", path, actual)
        return actual
    if not _HEX64.match(expected.strip()):
        raise AcquireError(f"download.segthor_sha256 {expected!r} is not a SHA-256 (64 hexadecimal digits)")
    if actual != expected.strip().lower():
        raise AcquireError(
            f"{path}: SHA-256 is {actual}, expected {expected.strip().lower()} (download.segthor_sha256): "
            f"the file is damaged or not the archive the config names; delete it and fetch it again"
        )
    log.info("%s: SHA-256 verified", path)
    return actual


# --------------------------------------------------------------- fetch -----


def fetch_url(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``; a re-run continues a partial file (HTTP Range).

    Servers that ignore Range answer 200 and the download restarts from
    zero; a length mismatch is reported so that a re-run can continue.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    secrets = url_secrets(url)
    shown = public_part(url)
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "cacs-acquire"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (https or http, from config)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the .part file is whole
            os.replace(part, dest)
            return dest
        raise AcquireError(f"{shown}: HTTP {exc.code} {redact(str(exc.reason), secrets)}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise AcquireError(f"{shown}: cannot download ({redact(str(exc), secrets)}); re-run to resume") from None
    with response:
        resumed = have > 0 and response.status == 206
        expected = response.headers.get("Content-Length")
        expected_total = (int(expected) + (have if resumed else 0)) if expected and expected.isdigit() else None
        log.info("fetching %s -> %s%s", shown, dest, f" (resuming at {have} bytes)" if resumed else "")
        try:
            with open(part, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(response, out, CHUNK)
        except OSError as exc:
            reason = redact(str(exc), secrets)
            raise AcquireError(f"{shown}: download interrupted ({reason}); re-run to resume") from None
    size = part.stat().st_size
    if expected_total is not None and size != expected_total:
        raise AcquireError(f"{shown}: got {size} of {expected_total} bytes; re-run to resume")
    os.replace(part, dest)
    return dest


# ------------------------------------------------------------- extract -----


def _checked_name(archive: Path, name: str) -> PurePosixPath:
    """The entry's path relative to the target folder, or an error naming the entry."""
    norm = name.replace("\\", "/")
    if not norm or "\x00" in norm:
        raise UnsafeArchiveError(f"{archive}: entry {name!r} has an invalid name; refusing to extract")
    if norm.startswith("/") or _WINDOWS_DRIVE.match(norm):
        raise UnsafeArchiveError(f"{archive}: entry {name!r} is an absolute path; refusing to extract")
    rel = PurePosixPath(norm)
    if ".." in rel.parts:
        raise UnsafeArchiveError(f"{archive}: entry {name!r} escapes the target folder (..); refusing to extract")
    return rel


def _target(dest: Path, rel: PurePosixPath, archive: Path, name: str) -> Path:
    out = dest.joinpath(*[p for p in rel.parts if p not in ("", ".")])
    root = dest.resolve()
    if out.resolve() != root and root not in out.resolve().parents:
        raise UnsafeArchiveError(f"{archive}: entry {name!r} escapes the target folder; refusing to extract")
    return out


def _zip_kind(info: zipfile.ZipInfo) -> str:
    """'file', 'dir', or what else the entry's Unix mode says it is."""
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_IFMT(mode):  # made on Unix: the mode is meaningful
        if stat.S_ISLNK(mode):
            return "symlink"
        if stat.S_ISDIR(mode):
            return "dir"
        if not stat.S_ISREG(mode):
            return "device or special file"
    return "dir" if info.is_dir() else "file"


def _extract_zip(archive: Path, dest: Path) -> int:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        plan = []
        for info in infos:  # check every entry before writing any
            rel = _checked_name(archive, info.filename)
            kind = _zip_kind(info)
            if kind not in ("file", "dir"):
                raise UnsafeArchiveError(f"{archive}: entry {info.filename!r} is a {kind}; refusing to extract")
            plan.append((info, kind, _target(dest, rel, archive, info.filename)))
        for info, kind, out in plan:
            if kind == "dir":
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        return sum(1 for _, kind, _ in plan if kind == "file")


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    if member.isdev():
        return "device or special file"
    if member.isdir():
        return "dir"
    if member.isfile():
        return "file"
    return "special entry"


def _extract_tar(archive: Path, dest: Path) -> int:
    n = 0
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:  # one streaming pass: the target is a scratch folder discarded on refusal
            rel = _checked_name(archive, member.name)
            kind = _tar_kind(member)
            if kind not in ("file", "dir"):
                raise UnsafeArchiveError(f"{archive}: entry {member.name!r} is a {kind}; refusing to extract")
            out = _target(dest, rel, archive, member.name)
            if kind == "dir":
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(member)
            assert src is not None
            with src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            n += 1
    return n


def safe_extract(archive: Path, dest: Path) -> int:
    """Extract a zip or tar (any compression) into ``dest``; return the number of files.

    Refused, with the entry named: absolute paths, ``..`` components,
    symlinks, hard links, device files and other special entries.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: archive not found")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            return _extract_zip(archive, dest)
        if tarfile.is_tarfile(archive):
            return _extract_tar(archive, dest)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise AcquireError(f"{archive}: damaged archive ({type(exc).__name__}: {exc})") from None
    raise AcquireError(f"{archive}: neither a zip nor a tar archive")
