"""The predicted per-artery calcium as a DICOM Segmentation (SEG) over its source CT series.

A NIfTI label map opens in research viewers; a PACS, OHIF or a clinical
workstation wants DICOM.  A SEG references the CT series it was made on (its
Study, Frame of Reference and each slice's SOP Instance UID), so a viewer
overlays it on that series without any registration.  Made with highdicom:
one binary segment per artery, segment number = the project's label value
(1 LM, 2 LCX, 3 LAD, 4 RCA; cacs.ARTERIES), each coloured as in the figures.
Empty frames are omitted (calcium is on a few slices); an artery without
calcium keeps its segment description, with no frames.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from cacs import ARTERIES, __version__
from cacs.io.atomic import atomic_path

SEG_NAME = "seg.dcm"

# SNOMED CT codes of the segmented property (calcified plaque) and of each artery.
_ARTERY_CODES = {
    "LM": ("3227004", "Left Main Coronary Artery"),
    "LCX": ("57396003", "Circumflex Coronary Artery"),
    "LAD": ("59438005", "Left Anterior Descending Coronary Artery"),
    "RCA": ("13647002", "Right Coronary Artery"),
}
# Display colours as in cacs.figures.style.ARTERY_COLOURS (sRGB 0-1); kept here so that writing a SEG does not
# import matplotlib.
_ARTERY_RGB = {"LM": (1.0, 0.0, 0.0), "LCX": (0.0, 0.85, 0.0), "LAD": (0.15, 0.45, 1.0), "RCA": (1.0, 0.9, 0.0)}


# Type 2 attributes (present, may be empty) that highdicom copies from the source: many exports omit some.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "AccessionNumber", "StudyID")  # fmt: skip
# Without these a SEG cannot reference its source (COCA's non-gated files lack them).
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")


def _source(path: str | os.PathLike[str]) -> pydicom.Dataset:
    """A source slice's header (no pixels), with absent type 2 attributes filled in empty."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    missing = [k for k in REQUIRED_UIDS if not getattr(ds, k, "")]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)}, so a DICOM SEG cannot reference the series")
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _segment_descriptions(algorithm_name: str, algorithm_version: str) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.DCM.ArtificialIntelligence
    )
    category = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
    plaque = hd.sr.CodedConcept("128305009", "SCT", "Calcified atheromatous plaque")
    out = []
    for number, artery in enumerate(ARTERIES, start=1):
        value, meaning = _ARTERY_CODES[artery]
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=f"{artery} calcium",
                segmented_property_category=category,
                segmented_property_type=plaque,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                anatomic_regions=[hd.sr.CodedConcept(value, "SCT", meaning)],
                display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in _ARTERY_RGB[artery])),
                tracking_id=f"cacs-{artery}",
                tracking_uid=pydicom.uid.generate_uid(),
            )
        )
    return out


def write_dicom_seg(
    dest: str | os.PathLike[str],
    labels: np.ndarray,
    source_files: Sequence[str | os.PathLike[str]],
    *,
    algorithm_name: str = "cacs SPSS",
    algorithm_version: str = __version__,
    series_description: str = "cacs coronary calcium",
) -> Path:
    """Write ``labels`` as a SEG over the CT slices ``source_files``; return ``dest``.

    Args:
        labels: (z, y, x) label map 0-4 on the assembled series' grid, as
            ``cacs.io.dicom_series.assemble`` stacks it (rows = y, columns = x).
        source_files: the DICOM file of each ``labels`` slice, same order
            (``Volume.files``).

    ``ValueError`` when the two disagree in count or slice size, a label is
    outside 0-4 (a SEG on the wrong slices would mark calcium on wrong
    anatomy) or the source lacks the UIDs a SEG references.
    """
    import highdicom as hd

    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[0] != len(source_files):
        raise ValueError(f"{dest}: label map of shape {labels.shape} for {len(source_files)} source slice(s)")
    if labels.size and (labels.min() < 0 or labels.max() > len(ARTERIES)):
        raise ValueError(f"{dest}: label values must be 0..{len(ARTERIES)}, got {labels.min()}..{labels.max()}")
    sources = [_source(f) for f in source_files]
    for path, ds in zip(source_files, sources, strict=True):
        if (int(ds.Rows), int(ds.Columns)) != labels.shape[1:]:
            raise ValueError(f"{path}: slice of {ds.Rows}x{ds.Columns} under a {labels.shape[1:]} label map")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(hd, sources, labels, algorithm_name, algorithm_version, series_description)
    dest = Path(dest)
    with atomic_path(dest, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return dest


def _segmentation(
    hd, sources: list[pydicom.Dataset], labels: np.ndarray, algorithm_name: str, algorithm_version: str,
    series_description: str,
):  # fmt: skip
    """The highdicom Segmentation object (``hd`` is the lazily imported highdicom module)."""
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels.astype(np.uint8),  # integer label map: value = segment number
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(algorithm_name, algorithm_version),
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="cacs",
        manufacturer_model_name=algorithm_name,
        software_versions=f"cacs {__version__}",
        device_serial_number="none",
        series_description=series_description,
    )


def read_seg_labels(path: str | os.PathLike[str], source_files: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """Read a SEG back as a (z, y, x) label map in the order of ``source_files`` (for checks and tests)."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in source_files]
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    rows, cols = int(seg.Rows), int(seg.Columns)
    out = np.zeros((len(uids), rows, cols), np.uint8)
    present = [i for i, uid in enumerate(uids) if uid in referenced]
    if present:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uids[i] for i in present], combine_segments=True, skip_overlap_checks=True
        )
        out[present] = pixels
    return out
