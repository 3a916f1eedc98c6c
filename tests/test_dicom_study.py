"""Study folders with several series: the documented selection rules, --series, DICOMDIR, --list-series.

Also home of the small DICOM writer the other DICOM tests share (:func:`write_series`):
64 x 64 slices, a handful per series, any orientation, tilt, tags and transfer syntax.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from cacs.cli import main
from cacs.infer import InputError, read_dicom_scan
from cacs.series_select import SeriesSelectionError, kernel_class, select_series

SIZE = 64
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def phantom_hu(nz: int = 6, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """(z, y, x) int16 HU: air, a 40 HU body, bone-bright spots and a calcium-like blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.46 * size)) ** 2 <= 1
    hu = np.full((nz, size, size), -1000, np.int16)
    for k in range(nz):
        sl = np.where(body, 40 + rng.normal(0, 8, (size, size)), -1000 + rng.normal(0, 5, (size, size)))
        sl[size // 2 - 2 : size // 2 + 2, size // 3 : size // 3 + 3] = 450 + 30 * k  # a "calcification"
        sl[int(0.8 * size), size // 2 - 3 : size // 2 + 3] = 900  # "spine"
        hu[k] = np.rint(sl).astype(np.int16)
    return hu


def _encode_gdcm(path: Path, syntax: str) -> None:
    import gdcm

    codes = {
        pydicom.uid.JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14,
        pydicom.uid.JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
        pydicom.uid.JPEGBaseline8Bit: gdcm.TransferSyntax.JPEGBaselineProcess1,
    }
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(codes[syntax]))
    change.SetInput(reader.GetImage())
    assert change.Change(), syntax
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), path


def encode(path: Path, syntax: str) -> None:
    """Re-encode one file in ``syntax``: pydicom's encoders (RLE, JPEG-LS, JPEG 2000), deflate, or GDCM (JPEG)."""
    syntax = pydicom.uid.UID(syntax)
    if syntax in (pydicom.uid.JPEGLossless, pydicom.uid.JPEGLosslessSV1, pydicom.uid.JPEGBaseline8Bit):
        _encode_gdcm(path, syntax)
        return
    ds = pydicom.dcmread(path)
    if syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)


def write_series(
    folder: Path,
    hu: np.ndarray,
    *,
    study: str = "study",
    number: int = 2,
    description: str = "CaSc 3.0 B35f",
    spacing: tuple[float, float, float] = (0.7, 0.7, 3.0),
    origin: tuple[float, float, float] = (-22.4, -22.4, 100.0),
    orientation: tuple[float, ...] = AXIAL,
    tilt_deg: float = 0.0,
    tags: dict | None = None,
    syntax: str | None = None,
    signed: bool = False,
    bits_stored: int = 16,
    file_prefix: str = "IM",
) -> list[Path]:
    """One file per slice of ``hu`` (z ascending), head to foot like a scanner; return the paths (ascending z).

    ``tilt_deg``: gantry tilt, the column direction tilted in the y-z plane while slices still step along z.
    ``signed``: int16 pixels with intercept 0 (else uint16, intercept -1024).
    """
    folder.mkdir(parents=True, exist_ok=True)
    nz = hu.shape[0]
    row = np.array(orientation[:3], float)
    col = np.array(orientation[3:], float)
    if tilt_deg:
        t = math.radians(tilt_deg)
        col = np.array([0.0, math.cos(t), math.sin(t)])
    normal = np.cross(row, col)
    step = np.array([0.0, 0.0, 1.0]) if tilt_deg else normal
    study_uid = generate_uid(entropy_srcs=[study, "study"])
    series_uid = generate_uid(entropy_srcs=[study, "series", str(number)])
    frame_uid = generate_uid(entropy_srcs=[study, "frame"])
    intercept = 0 if signed else -1024
    stored = (hu.astype(np.int32) - intercept).astype(np.int16 if signed else np.uint16)
    paths = []
    for k in range(nz):
        sop = generate_uid(entropy_srcs=[study, str(number), str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.Modality = "CT"
        ds.PatientID, ds.PatientName = "P1", "Test^Patient"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240101", "120000", "1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SeriesNumber, ds.InstanceNumber = number, nz - k
        ds.SeriesDescription = description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        ds.SliceThickness = f"{spacing[2]:g}"
        pos = np.array(origin) + k * spacing[2] * step
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = int(signed)
        ds.RescaleIntercept, ds.RescaleSlope = str(intercept), "1"
        for key, value in (tags or {}).items():
            setattr(ds, key, value)
        ds.PixelData = stored[k].tobytes()
        path = folder / f"{file_prefix}{number:02d}-{nz - k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        if syntax is not None:
            encode(path, syntax)
        paths.append(path)
    return paths


def make_study(root: Path, hu: np.ndarray | None = None, flat: bool = False) -> dict[str, list[Path]]:
    """A study as a PACS exports it: scout, contrast series, lung kernel 1 mm, sagittal MPR and the scan to score.

    ``flat``: every file in one folder (series told apart by UID only).
    """
    hu = phantom_hu() if hu is None else hu
    sub = (lambda name: root) if flat else (lambda name: root / name)
    series = {
        "scout": write_series(sub("scout"), hu[:2, :, :], number=1, description="Topogram",
                              tags={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}),  # fmt: skip
        "calcium": write_series(sub("calcium"), hu, number=2, description="CaSc 3.0 B35f",
                                tags={"ConvolutionKernel": "B35f", "ContrastBolusAgent": "NONE"}),  # fmt: skip
        "lung": write_series(sub("lung"), np.repeat(hu, 3, axis=0), number=3, description="Lung 1.0 B70f",
                             spacing=(0.7, 0.7, 1.0), tags={"ConvolutionKernel": "B70f"}),  # fmt: skip
        "cta": write_series(sub("cta"), hu + 300, number=4, description="CTA 3.0",
                            tags={"ConvolutionKernel": "B35f", "ContrastBolusAgent": "Omnipaque 350"}),  # fmt: skip
        "mpr": write_series(sub("mpr"), hu, number=5, description="Sag MPR", orientation=SAGITTAL,
                            tags={"ImageType": ["DERIVED", "SECONDARY", "MPR"]}),  # fmt: skip
    }
    return series


def _uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


@pytest.mark.parametrize("flat", [False, True], ids=["series-folders", "one-folder"])
def test_study_picks_the_non_contrast_axial_series_and_reports_the_others(tmp_path, flat):
    hu = phantom_hu()
    study = make_study(tmp_path / "study", hu, flat=flat)
    scan = read_dicom_scan(tmp_path / "study")
    assert scan.series_uid == _uid(study["calcium"])
    assert np.array_equal(scan.volume.hu, hu)
    report = {i.series_uid: i for i in scan.report}
    assert len(report) == 5 and [i.decision for i in scan.report].count("chosen") == 1
    reasons = {name: report[_uid(files)].reason for name, files in study.items()}
    assert reasons["scout"].startswith("scout (ImageType LOCALIZER)")
    assert reasons["cta"].startswith("contrast-enhanced (ContrastBolusAgent='Omnipaque 350'")
    assert reasons["mpr"].startswith("not axial (sagittal")
    assert "slice thickness 1 mm further from 2.5-3 mm" in reasons["lung"]
    assert any(n.startswith("series ") and "contrast-enhanced" in n for n in scan.notes)


def test_explicit_series_overrides_preferences_not_physics(tmp_path):
    study = make_study(tmp_path / "study")
    scan = read_dicom_scan(tmp_path / "study", series=_uid(study["cta"]))
    assert scan.series_uid == _uid(study["cta"])
    chosen = next(i for i in scan.report if i.decision == "chosen")
    assert "--series (despite: contrast-enhanced" in chosen.reason
    with pytest.raises(InputError, match="cannot be scored: scout"):
        read_dicom_scan(tmp_path / "study", series=_uid(study["scout"]))
    with pytest.raises(InputError, match="--series 1.2.3: no such series; found"):
        read_dicom_scan(tmp_path / "study", series="1.2.3")


def test_nothing_scorable_lists_every_series_and_reason(tmp_path):
    hu = phantom_hu()
    write_series(tmp_path / "s" / "a", hu, number=1, tags={"ContrastBolusRoute": "IV"})
    write_series(tmp_path / "s" / "b", hu, number=2, orientation=SAGITTAL)
    with pytest.raises(InputError, match=r"no non-contrast axial CT series to score among 2: a: contrast-enhanced "
                                         r"\(ContrastBolusRoute='IV'.*b: not axial \(sagittal"):  # fmt: skip
        read_dicom_scan(tmp_path / "s")


def test_tilted_series_is_refused_naming_the_tilt(tmp_path):
    write_series(tmp_path / "tilted", phantom_hu(), tilt_deg=12.0)
    with pytest.raises(InputError, match=r"tilted: tilted series \(gantry tilt 12.0 deg"):
        read_dicom_scan(tmp_path / "tilted")


def test_preferences_thickness_then_kernel_then_slices():
    hu = phantom_hu()
    from cacs.io.dicom_series import read_slices
    from cacs.qc import QCLog

    def slices(folder, **kw):
        return read_slices(write_series(folder, hu, **kw), QCLog("t", "t"))

    def pick(tmp, specs):
        groups = {name: slices(tmp / name, number=i + 1, **kw) for i, (name, kw) in enumerate(specs.items())}
        return select_series(groups)[0]

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        assert pick(tmp / "1", {"a5": {"spacing": (0.7, 0.7, 5.0)}, "b3": {"spacing": (0.7, 0.7, 3.0)}}) == "b3"
        sharp = {"tags": {"ConvolutionKernel": "LUNG"}}
        soft = {"tags": {"ConvolutionKernel": "STANDARD"}}
        assert pick(tmp / "2", {"a": sharp, "b": soft}) == "b"
    assert [kernel_class(k) for k in ("B35f", "Br36", "STANDARD", "FC12", "B70f", "LUNG", "FC52", "", "XYZ")] == [
        0, 0, 0, 0, 2, 2, 2, 1, 1,
    ]  # fmt: skip


def test_dicomdir_lists_the_study(tmp_path):
    from pydicom.fileset import FileSet

    hu = phantom_hu()
    study = make_study(tmp_path / "export", hu)
    fileset = FileSet()
    for files in study.values():
        for f in files:
            fileset.add(pydicom.dcmread(f))
    fileset.write(tmp_path / "media")
    scan = read_dicom_scan(tmp_path / "media" / "DICOMDIR")
    assert scan.series_uid == _uid(study["calcium"]) and np.array_equal(scan.volume.hu, hu)
    assert not any("DICOMDIR" in n for n in scan.notes)  # the index is not read as a slice
    assert read_dicom_scan(tmp_path / "media").series_uid == scan.series_uid  # the folder holding it, too


def test_cli_lists_the_series(tmp_path, capsys):
    make_study(tmp_path / "study")
    assert main(["infer", str(tmp_path / "study"), "--list-series"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("series,series_uid,description") and len(out) == 6
    assert sum(",chosen," in line for line in out) == 1


def test_select_series_needs_a_series():
    with pytest.raises(SeriesSelectionError):
        select_series({})
