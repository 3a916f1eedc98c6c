"""Pick the series to score from a study folder (or DICOMDIR) holding several series.

A PACS export of a cardiac or chest CT study holds more than the scan to
score: scouts, contrast phases, thin lung reconstructions, reformats.  Calcium
is scored on the *non-contrast axial* CT (iodine above 130 HU would be scored
as calcium), at about 3 mm, reconstructed with a soft-tissue kernel (a sharp
kernel raises noise and calcium peaks).  The rules, applied to each series
(slices grouped by :func:`cacs.io.dicom_series.group_series`):

Exclusions, in this order (the first that applies is the reported reason):

1. **scout**: ImageType contains ``LOCALIZER``, or fewer than
   :data:`MIN_SLICES` distinct slice positions;
2. **tilted**: GantryDetectorTilt is not 0, or the slice positions step off
   the slice normal by more than :data:`MAX_TILT_DEG` (a gantry-tilted
   acquisition: a sheared voxel grid);
3. **not axial**: the slice normal is more than :data:`MAX_OBLIQUE_DEG` from
   the patient's z axis (sagittal, coronal or oblique reformats);
4. **derived**: ImageType's first value is ``DERIVED`` or it contains
   ``SECONDARY`` (MPR, MIP, screen captures);
5. **contrast**: any of ContrastBolusAgent, ContrastBolusRoute,
   ContrastBolusVolume, ContrastBolusIngredient, ContrastBolusStartTime is
   filled (values like ``NONE`` / ``NO`` / ``N/A`` count as empty).

Among the series left, the preferred one is, in order of the criteria:

a. slice thickness (SliceThickness, else the slice step) in the Agatston
   band 2.5-3.0 mm, else the closest to it;
b. kernel (ConvolutionKernel): soft tissue / standard before unknown before
   sharp (lung, bone, edge; see :data:`SOFT_KERNELS`, :data:`SHARP_KERNELS`);
c. more distinct slices (the ingest stage's rule for COCA);
d. the series name (a deterministic tie-break).

``--series UID`` chooses a series explicitly (by SeriesInstanceUID or by the
name this module lists); it overrides the preferences and the *derived* and
*contrast* exclusions (with a note), but not rules 1-3, which make a series
unscorable.  Every series not chosen is reported with its reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from cacs.io.dicom_series import DicomSlice, slice_positions

MIN_SLICES = 3
"""Fewer distinct slice positions than this is a scout or a single image, not a scan to score."""
MAX_OBLIQUE_DEG = 10.0
"""Largest angle between the slice normal and the patient's z axis of an axial series."""
MAX_TILT_DEG = 0.5
"""Largest angle between the slice normal and the direction the slices step in (gantry tilt)."""
AGATSTON_BAND_MM = (2.5, 3.0)
"""Slice thicknesses of a standard calcium-scoring reconstruction."""

SOFT_KERNELS = re.compile(r"STANDARD|SOFT|BODY|CARDIAC|HEART|^[BIQ][rfsv]?[1-4]\d|^FC[0-4]\d|^[ABC]$|^X?C[ABC]$", re.I)
"""Soft-tissue / standard kernels: GE STANDARD/SOFT, Siemens B/Br/I/Qr 10-49, Canon FC00-FC49, Philips A/B/C."""
SHARP_KERNELS = re.compile(r"LUNG|BONE|SHARP|DETAIL|EDGE|CHST|^[BIQ][rfsv]?[5-9]\d|^FC[5-9]\d|^[DEL]$|^Y[A-D]$", re.I)
"""Sharp kernels: GE LUNG/BONE/DETAIL/EDGE, Siemens 50-99, Canon FC50-FC99, Philips D/E/L/YA-YD."""

_EMPTY = {"", "NONE", "NO", "N/A", "NA", "0", "NIL", "NON"}
CONTRAST_TAGS = (
    "ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume", "ContrastBolusIngredient",
    "ContrastBolusStartTime",
)  # fmt: skip

SERIES_COLUMNS: tuple[str, ...] = (
    "series", "series_uid", "description", "n_files", "n_slices", "thickness_mm", "kernel", "image_type",
    "orientation", "contrast", "decision", "reason",
)  # fmt: skip
"""Columns of ``series.csv`` (one row per series found in the input)."""


class SeriesSelectionError(ValueError):
    """No series of the input can be scored (the message lists every series and why)."""


@dataclass(frozen=True)
class SeriesInfo:
    """What the rules look at in one series (read from its first slice's header and all positions)."""

    series: str  # the name group_series gives it
    series_uid: str
    description: str
    n_files: int
    n_slices: int  # distinct positions along the normal
    thickness_mm: float
    kernel: str
    image_type: str  # backslash-joined, as DICOM shows it
    orientation: str  # axial | sagittal | coronal | oblique, plus tilt when tilted
    oblique_deg: float  # angle of the slice normal from the patient's z axis
    tilt_deg: float  # gantry tilt: GantryDetectorTilt or the stack's shear, whichever is larger
    contrast: str  # "" or 'Tag=value' of the first filled contrast tag
    decision: str = ""  # chosen | skipped
    reason: str = ""


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value if value is not None else "").strip()


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two lines (direction sign ignored), degrees."""
    cos = abs(float(np.dot(a, b))) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12)
    return math.degrees(math.acos(min(1.0, cos)))


def describe(name: str, slices: list[DicomSlice]) -> SeriesInfo:
    """Summarise one series for the rules; ``slices`` as grouped (any order)."""
    ds = slices[0].ds
    normal = slices[0].normal
    pos = slice_positions(slices)
    distinct = np.unique(np.round(pos, 3))
    oblique = _angle_deg(normal, np.array([0.0, 0.0, 1.0]))
    tilt = abs(float(ds.get("GantryDetectorTilt", 0) or 0))
    if len(distinct) >= 2:
        order = np.argsort(pos)
        step = slices[int(order[-1])].position - slices[int(order[0])].position
        if np.linalg.norm(step) > 1e-6:
            tilt = max(tilt, _angle_deg(step, normal))
    if oblique <= MAX_OBLIQUE_DEG:
        orientation = "axial"
    else:
        axis = int(np.argmax(np.abs(normal)))
        orientation = ("sagittal", "coronal", "oblique")[axis] if oblique > 45.0 else "oblique"
    if tilt > MAX_TILT_DEG:
        orientation += f", tilted {tilt:.1f} deg"
    thickness = float(ds.get("SliceThickness", 0) or 0)
    if thickness <= 0 and len(distinct) >= 2:
        thickness = float(np.median(np.diff(distinct)))
    contrast = ""
    for tag in CONTRAST_TAGS:
        value = _text(ds, tag)
        if value.upper() not in _EMPTY:
            contrast = f"{tag}={value!r}"
            break
    return SeriesInfo(
        series=name,
        series_uid=slices[0].series_uid,
        description=_text(ds, "SeriesDescription"),
        n_files=len(slices),
        n_slices=len(distinct),
        thickness_mm=round(thickness, 3),
        kernel=_text(ds, "ConvolutionKernel"),
        image_type=_text(ds, "ImageType"),
        orientation=orientation,
        oblique_deg=round(oblique, 2),
        tilt_deg=round(tilt, 2),
        contrast=contrast,
    )


def unscorable(info: SeriesInfo) -> str | None:
    """Rules 1-3 (scout, tilted, not axial): reasons no choice overrides; ``None`` when none applies."""
    types = [t.strip().upper() for t in info.image_type.split("\\")]
    if "LOCALIZER" in types:
        return "scout (ImageType LOCALIZER)"
    if info.n_slices < MIN_SLICES:
        return f"scout or single image ({info.n_slices} slice position(s); a scan needs >= {MIN_SLICES})"
    if info.tilt_deg > MAX_TILT_DEG:
        return f"tilted series (gantry tilt {info.tilt_deg:.1f} deg: the slices are not stacked along their normal)"
    if info.oblique_deg > MAX_OBLIQUE_DEG:
        return (
            f"not axial ({info.orientation.split(',')[0]}: slice normal {info.oblique_deg:.1f} deg from the "
            f"patient's z axis; calcium is scored on axial slices)"
        )
    return None


def unpreferred(info: SeriesInfo) -> str | None:
    """Rules 4-5 (derived, contrast): reasons an explicit ``--series`` overrides."""
    types = [t.strip().upper() for t in info.image_type.split("\\")]
    if (types and types[0] == "DERIVED") or "SECONDARY" in types:
        return f"derived image (ImageType {info.image_type}: a reformat, MIP or capture)"
    if info.contrast:
        return f"contrast-enhanced ({info.contrast}; iodine would be scored as calcium)"
    return None


def kernel_class(kernel: str) -> int:
    """0 soft tissue / standard, 1 unknown or absent, 2 sharp."""
    if kernel and SHARP_KERNELS.search(kernel):
        return 2
    if kernel and SOFT_KERNELS.search(kernel):
        return 0
    return 1


def preference(info: SeriesInfo) -> tuple:
    """Sort key of the preferences a-d (smaller is better)."""
    lo, hi = AGATSTON_BAND_MM
    t = info.thickness_mm
    thickness_off = 0.0 if lo <= t <= hi else min(abs(t - lo), abs(t - hi))
    return (round(thickness_off, 3), kernel_class(info.kernel), -info.n_slices, info.series)


def _why_not(info: SeriesInfo, chosen: SeriesInfo) -> str:
    """The preference that ranked ``info`` below ``chosen``."""
    a, b = preference(info), preference(chosen)
    if a[0] != b[0]:
        return f"slice thickness {info.thickness_mm:g} mm further from 2.5-3 mm than {chosen.thickness_mm:g} mm"
    if a[1] != b[1]:
        words = ("soft-tissue", "unknown", "sharp")
        return f"{words[a[1]]} kernel {info.kernel!r} (chosen: {words[b[1]]} kernel {chosen.kernel!r})"
    if a[2] != b[2]:
        return f"fewer slices ({info.n_slices} vs {chosen.n_slices})"
    return "same preference; the series name decides"


def select_series(
    groups: dict[str, list[DicomSlice]], series: str | None = None
) -> tuple[str, list[DicomSlice], list[SeriesInfo]]:
    """Apply the module's rules; return (chosen name, its slices, every series with its decision and reason).

    ``series``: a SeriesInstanceUID or a series name chosen by the user.
    Raises :class:`SeriesSelectionError` when nothing can be scored; its
    message lists each series and its reason.
    """
    infos = [describe(name, members) for name, members in sorted(groups.items())]
    if not infos:
        raise SeriesSelectionError("no DICOM series found")
    if series is not None:
        matches = [i for i in infos if series in (i.series_uid, i.series)]
        if not matches:
            listing = "; ".join(f"{i.series} (UID {i.series_uid or 'none'})" for i in infos)
            raise SeriesSelectionError(f"--series {series}: no such series; found {listing}")
        chosen = matches[0]
        problem = unscorable(chosen)
        if problem:
            raise SeriesSelectionError(f"series {chosen.series} (chosen with --series) cannot be scored: {problem}")
        note = unpreferred(chosen)
        chosen = replace(chosen, decision="chosen", reason="--series" + (f" (despite: {note})" if note else ""))
    else:
        eligible = [i for i in infos if not (unscorable(i) or unpreferred(i))]
        if not eligible:
            listing = "; ".join(f"{i.series}: {unscorable(i) or unpreferred(i)}" for i in infos)
            raise SeriesSelectionError(f"no non-contrast axial CT series to score among {len(infos)}: {listing}")
        chosen = replace(min(eligible, key=preference), decision="chosen")
        chosen = replace(chosen, reason=f"preferred among {len(eligible)} eligible series" if len(eligible) > 1 else
                         "the only eligible series")  # fmt: skip
    report = []
    for info in infos:
        if info.series == chosen.series:
            report.append(chosen)
            continue
        reason = unscorable(info) or unpreferred(info)
        if series is not None and not reason:
            reason = f"not the series chosen with --series {series}"
        report.append(replace(info, decision="skipped", reason=reason or _why_not(info, chosen)))
    return chosen.series, groups[chosen.series], report


def series_frame(report: list[SeriesInfo]) -> pd.DataFrame:
    """``series.csv``: one row per series with its decision and reason."""
    return pd.DataFrame([asdict(i) for i in report]).reindex(columns=list(SERIES_COLUMNS))


def dicom_inputs(path: Path) -> list[Path]:
    """The files to read for a study: a DICOMDIR's referenced files, else every file under the folder.

    ``path`` is a folder (searched recursively; hidden files ignored), a
    DICOMDIR file, or a folder holding one at its top.  DICOMDIR files are
    index files, never slices: they are not read as images.
    """
    path = Path(path)
    dicomdir = path if path.is_file() and path.name.upper() == "DICOMDIR" else None
    if dicomdir is None and path.is_dir():
        dicomdir = next((p for p in path.iterdir() if p.is_file() and p.name.upper() == "DICOMDIR"), None)
    if dicomdir is not None:
        from pydicom.fileset import FileSet

        try:
            fileset = FileSet(pydicom.dcmread(dicomdir))
        except Exception as exc:  # pydicom raises many types for a broken DICOMDIR
            raise ValueError(f"{dicomdir}: unreadable DICOMDIR ({type(exc).__name__}: {exc})") from exc
        return sorted(Path(instance.path) for instance in fileset)
    if path.is_file():
        return [path]
    return sorted(
        p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )
