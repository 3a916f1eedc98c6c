"""Read CT slices with pydicom and assemble them into a volume in HU.

Why not a series reader that groups by UID?  COCA's non-gated files have no
Series/Study/FrameOfReference UIDs, some gated folders hold two series at the
same z, and slice files run head to foot.  So slices are grouped by folder
(and UID where present), sorted by their position along the slice normal,
checked for duplicates, gaps and mixed geometry, and every problem becomes a
QC row naming the file.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from cacs.io.nifti import Geometry
from cacs.qc import CaseExcluded, QCLog, Severity

Z_TOL_MM = 1e-3  # positions closer than this are "the same z"
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


def read_slice(path: Path) -> DicomSlice:
    """Read one file; raise ``ValueError`` saying what is wrong with it."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    missing = [t for t in (*REQUIRED, "PixelData") if t not in ds]
    if missing:
        raise ValueError(f"DICOM file lacks {', '.join(missing)}")
    modality = str(getattr(ds, "Modality", "CT"))
    if modality != "CT":
        raise ValueError(f"not a CT image (Modality {modality!r})")
    if ds.file_meta.TransferSyntaxUID.is_compressed is False:
        have, want = len(ds.PixelData), _expected_pixel_bytes(ds)
        if have < want:
            raise ValueError(f"truncated pixel data ({have} of {want} bytes)")
    try:
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=float)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        spacing = tuple(float(v) for v in ds.PixelSpacing)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"unparseable geometry tags ({exc})") from exc
    if position.size != 3 or orientation.size != 6 or len(spacing) != 2:
        raise ValueError("malformed ImagePositionPatient / ImageOrientationPatient / PixelSpacing")
    uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
    return DicomSlice(path, ds, uid, position, orientation, spacing, (int(ds.Rows), int(ds.Columns)))


def read_slices(files: list[Path], qc: QCLog) -> list[DicomSlice]:
    """Read every file; unreadable ones are skipped with a QC row each."""
    slices = []
    for path in sorted(files):
        try:
            slices.append(read_slice(path))
        except ValueError as exc:
            qc.add(str(exc), "file skipped", file=path)
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
        raw = s.ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad pixel data
        raise CaseExcluded(f"cannot decode pixel data ({exc})", str(s.path)) from exc
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
