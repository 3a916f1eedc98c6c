"""Write a CT volume as a DICOM series the way COCA's scanners export it.

Uncompressed little-endian CT Image Storage, uint16 pixels with
RescaleSlope 1 / RescaleIntercept -1024, one file per slice, file order head
to foot (InstanceNumber 1 = most superior slice).  Non-gated COCA files carry
no Study/Series/FrameOfReference UIDs: ``with_uids=False`` reproduces that.
UIDs are derived from the seed so the cohort is byte-identical per seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from cacs.io.atomic import atomic_path
from cacs.synth.phantom import Grid

RESCALE_INTERCEPT = -1024


def _ds(value: float) -> str:
    """A DICOM DS string (<= 16 chars) that parses back to the same float we use."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if len(text) > 16:
        raise ValueError(f"{value} does not fit a DICOM DS")
    return text


def ds_value(value: float) -> float:
    """The float a reader gets back from :func:`_ds` (the generator's truth uses it)."""
    return float(_ds(value))


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    grid: Grid,
    *,
    file_name: Callable[[int], str],
    uid_seed: str,
    patient_id: str,
    series_description: str,
    series_number: int,
    with_uids: bool = True,
) -> list[Path]:
    """Write ``hu`` (z ascending, y, x) as one file per slice; return the paths.

    ``file_name(n)`` names the file of instance ``n`` (1 = top slice).
    """
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = hu.shape
    stored = (hu.astype(np.int32) - RESCALE_INTERCEPT).clip(0, 65535).astype(np.uint16)
    study_uid = generate_uid(entropy_srcs=[uid_seed, "study"])
    series_uid = generate_uid(entropy_srcs=[uid_seed, "series", str(series_number)])
    frame_uid = generate_uid(entropy_srcs=[uid_seed, "frame"])
    zs = grid.axis(2)
    paths: list[Path] = []
    for instance in range(1, nz + 1):
        k = nz - instance  # ascending-z index of this file's slice (head to foot)
        sop_uid = generate_uid(entropy_srcs=[uid_seed, "sop", str(series_number), str(instance)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = generate_uid(entropy_srcs=["cacs-synth"])
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.Manufacturer = "cacs-synthetic"
        ds.PatientID = patient_id
        ds.PatientName = "Anonymous"
        ds.StudyDate = "20120101"
        ds.SeriesDescription = series_description
        ds.SeriesNumber = series_number
        if with_uids:
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
        ds.InstanceNumber = instance
        ds.KVP = "120"
        ds.ImagePositionPatient = [_ds(grid.origin[0]), _ds(grid.origin[1]), _ds(float(zs[k]))]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [_ds(grid.spacing[1]), _ds(grid.spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = _ds(grid.spacing[2])
        ds.SliceLocation = _ds(float(zs[k]))
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = str(RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = stored[k].tobytes()
        path = folder / file_name(instance)
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths
