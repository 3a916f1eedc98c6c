"""Read CT slices with pydicom and assemble them into a volume in HU.

Why not a series reader that groups by UID?  COCA's non-gated files have no
Series/Study/FrameOfReference UIDs, some gated folders hold two series at the
same z, and slice files run head to foot.  So slices are grouped by folder
(and UID where present), sorted by their position along the slice normal,
checked for duplicates, gaps and mixed geometry, and every problem becomes a
QC row naming the file.
"""

from __future__ import annotations

import warnings
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from cacs.io.decode import check_transfer_syntax, decode_pixels, syntax_name, transfer_syntax
from cacs.io.nifti import Geometry
from cacs.qc import CaseExcluded, QCLog, Severity

Z_TOL_MM = 1e-3  # positions closer than this are "the same z"
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as stored little endian
REQUIRED = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


@dataclass
class DicomSlice:
    path: Path
    ds: pydicom.Dataset
    series_uid: str  # SeriesInstanceUID; "" when absent (COCA non-gated)
    position: np.ndarray  # ImagePositionPatient (mm)
    orientation: np.ndarray  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float]  # (row spacing = y, column spacing = x)
    shape: tuple[int, int]  # (rows, columns)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])


@dataclass
class Volume:
    """A slice stack in HU, ascending along the slice normal (= z for axial CT)."""

    hu: np.ndarray  # (z, y, x)
    geometry: Geometry
    positions: np.ndarray  # (nz,) position of each slice along the normal, ascending
    files: list[Path]  # file of each slice, same order


def _expected_pixel_bytes(ds: pydicom.Dataset) -> int:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8 * int(ds.SamplesPerPixel) * frames


class UnreadableSlice(ValueError):
    """A file that is not a usable CT slice; ``series_uid`` is its series when its header could be read.

    Knowing the series of a truncated slice lets ``cacs infer`` report the
    truncated file itself, not only the gap it leaves in its series.
    """

    def __init__(self, problem: str, series_uid: str | None = None) -> None:
        super().__init__(problem)
        self.series_uid = series_uid


def _dcmread(path: Path) -> pydicom.Dataset:
    """``dcmread`` that turns every failure into a one-line cause (truncation named as such)."""
    try:
        with warnings.catch_warnings():  # a truncation is reported below as the file's QC row
            warnings.filterwarnings("ignore", message="End of file reached before delimiter")
            ds = pydicom.dcmread(path)
    except zlib.error as exc:
        raise UnreadableSlice(f"truncated or corrupt file (deflated data stream: {exc})") from exc
    except Exception as exc:  # pydicom raises many types (InvalidDicomError, EOFError, struct.error, ...)
        raise UnreadableSlice(f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds and _PIXEL_DATA_TAG in Path(path).read_bytes():
        # pydicom drops an encapsulated Pixel Data element cut short by the end of the file, and with it the
        # data set read so far (it only warns): read the header again for the series this slice belonged to.
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # pydicom raises many types; the cause reported is the truncation
            header = ds
        uid = str(getattr(header, "SeriesInstanceUID", "") or "") or None
        syntax = syntax_name(transfer_syntax(ds))
        raise UnreadableSlice(f"truncated file: it ends inside the pixel data ({syntax})", uid)
    return ds


def read_slice(path: Path) -> DicomSlice:
    """Read one file; raise :class:`UnreadableSlice` (a ``ValueError``) saying what is wrong with it."""
    ds = _dcmread(path)
    uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
    missing = [t for t in (*REQUIRED, "PixelData") if t not in ds]
    if missing:
        raise UnreadableSlice(f"DICOM file lacks {', '.join(missing)} (missing tag)", uid)
    modality = str(getattr(ds, "Modality", "CT"))
    if modality != "CT":
        raise UnreadableSlice(f"not a CT image (Modality {modality!r})", uid)
    try:
        check_transfer_syntax(ds)
    except ValueError as exc:
        raise UnreadableSlice(str(exc), uid) from exc
    if not transfer_syntax(ds).is_encapsulated:
        have, want = len(ds.PixelData), _expected_pixel_bytes(ds)
        if have < want:
            raise UnreadableSlice(f"truncated file: pixel data has {have} of {want} bytes", uid)
    try:
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=float)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        spacing = tuple(float(v) for v in ds.PixelSpacing)
    except (TypeError, ValueError) as exc:
        raise UnreadableSlice(f"unparseable geometry tags ({exc})", uid) from exc
    if position.size != 3 or orientation.size != 6 or len(spacing) != 2:
        raise UnreadableSlice("malformed ImagePositionPatient / ImageOrientationPatient / PixelSpacing", uid)
    return DicomSlice(path, ds, uid, position, orientation, spacing, (int(ds.Rows), int(ds.Columns)))


@dataclass(frozen=True)
class SkippedFile:
    """A file :func:`read_slices` could not use: its path, the cause, and its series UID when known."""

    path: Path
    problem: str
    series_uid: str | None


def read_slices(files: list[Path], qc: QCLog, skipped: list[SkippedFile] | None = None) -> list[DicomSlice]:
    """Read every file; unreadable ones are skipped with a QC row each (and appended to ``skipped``)."""
    slices = []
    for path in sorted(files):
        try:
            slices.append(read_slice(path))
        except ValueError as exc:
            qc.add(str(exc), "file skipped", file=path)
            if skipped is not None:
                skipped.append(SkippedFile(Path(path), str(exc), getattr(exc, "series_uid", None)))
    return slices


def group_series(slices: list[DicomSlice]) -> dict[str, list[DicomSlice]]:
    """Slices by series, named by folder (plus the UID only where a folder holds several)."""
    groups: dict[tuple[str, str], list[DicomSlice]] = defaultdict(list)
    for s in slices:
        groups[(s.path.parent.name, s.series_uid)].append(s)
    per_folder = defaultdict(int)
    for folder, _ in groups:
        per_folder[folder] += 1
    return {
        (folder if per_folder[folder] == 1 else f"{folder} [{uid or 'no UID'}]"): members
        for (folder, uid), members in groups.items()
    }


def slice_positions(slices: list[DicomSlice]) -> np.ndarray:
    """Position of each slice along the stack normal (z for axial scans)."""
    normal = slices[0].normal
    return np.array([float(np.dot(s.position, normal)) for s in slices])


def _hu(s: DicomSlice) -> np.ndarray:
    try:
        raw = decode_pixels(s.ds)
    except ValueError as exc:
        raise CaseExcluded(str(exc), str(s.path)) from exc
    slope = float(getattr(s.ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(s.ds, "RescaleIntercept", 0) or 0)
    return raw.astype(np.float64) * slope + intercept


def assemble(slices: list[DicomSlice], qc: QCLog) -> Volume:
    """Sort, de-duplicate and check one series; raise ``CaseExcluded`` when unusable."""
    if not slices:
        raise CaseExcluded("no readable slices")
    first = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise CaseExcluded(f"mixed ImageOrientationPatient within the series ({s.path.name})", str(s.path))
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, atol=1e-4):
            raise CaseExcluded(
                f"mixed pixel spacing within the series: {first.pixel_spacing} in {first.path.name} "
                f"vs {s.pixel_spacing} in {s.path.name}",
                str(s.path),
            )
        if s.shape != first.shape:
            raise CaseExcluded(f"mixed image sizes within the series ({s.path.name})", str(s.path))
    pos = slice_positions(slices)
    order = np.argsort(pos, kind="stable")
    kept: list[DicomSlice] = []
    kept_pos: list[float] = []
    kept_hu: list[np.ndarray] = []
    for i in order:
        s, z = slices[i], float(pos[i])
        hu = _hu(s)
        if kept_pos and abs(z - kept_pos[-1]) < Z_TOL_MM:
            if np.array_equal(hu, kept_hu[-1]):
                qc.add(
                    f"duplicate slice at z={z:.3f} (identical pixels to {kept[-1].path.name})",
                    "duplicate dropped",
                    file=s.path,
                    severity=Severity.INFO,
                )
            else:
                qc.add(
                    f"two different slices at z={z:.3f} ({kept[-1].path.name}, {s.path.name})",
                    f"kept {kept[-1].path.name}",
                    file=s.path,
                )
            continue
        kept.append(s)
        kept_pos.append(z)
        kept_hu.append(hu)
    if len(kept) < 2:
        raise CaseExcluded("fewer than 2 distinct slices", str(first.path))
    zs = np.array(kept_pos)
    steps = np.diff(zs)
    step = float(np.median(steps))
    bad = np.nonzero(np.abs(steps - step) > max(0.01 * step, 2e-3))[0]
    if bad.size:
        i = int(bad[0])
        kind = "missing slice(s)" if steps[i] > step else "irregular slice spacing"
        raise CaseExcluded(
            f"{kind}: {steps[i]:.3f} mm between z={zs[i]:.3f} ({kept[i].path.name}) and "
            f"z={zs[i + 1]:.3f} ({kept[i + 1].path.name}); expected {step:.3f} mm",
            str(kept[i + 1].path),
        )
    # Spacing from the end points: robust to DS rounding of single positions.
    step = round(float((zs[-1] - zs[0]) / (len(zs) - 1)), 6)
    stack = np.stack(kept_hu)
    integral = np.all(stack == np.rint(stack)) and stack.min() >= -32768 and stack.max() <= 32767
    hu = stack.astype(np.int16) if integral else stack.astype(np.float32)
    row, col = first.orientation[:3], first.orientation[3:]
    normal = first.normal
    direction = tuple(float(v) for v in np.column_stack([row, col, normal]).ravel())
    geometry = Geometry(
        spacing=(first.pixel_spacing[1], first.pixel_spacing[0], step),
        origin=tuple(float(v) for v in kept[0].position),
        direction=direction,
    )
    return Volume(hu, geometry, zs, [s.path for s in kept])
