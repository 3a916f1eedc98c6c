"""What `cacs infer` writes for a viewer: a DICOM SEG over the source series, and the one-page QC report."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

import cacs.infer as infer_module
from cacs.infer import InferOptions, infer_scan, read_dicom_scan
from cacs.io.dicom_seg import read_seg_labels, write_dicom_seg
from cacs.io.nifti import read_volume
from cacs.qc_page import calcium_slices
from tests.test_dicom_study import make_study, phantom_hu, write_series
from tests.test_infer_batch import SMALL_CROP, networks, small_options  # noqa: F401  (fixture)
from tests.test_predict import _oracle


def _labels(shape: tuple[int, ...]) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[1, 10:14, 10:15] = 3  # LAD
    labels[3, 30:33, 40:42] = 1  # LM
    labels[3, 31, 50] = 4  # RCA, one voxel
    labels[4, 20:22, 20:22] = 2  # LCX
    return labels


def test_seg_reads_back_with_highdicom_and_references_the_series(tmp_path):
    import highdicom as hd

    files = write_series(tmp_path / "ct", phantom_hu(nz=6))
    volume = read_dicom_scan(tmp_path / "ct").volume
    labels = _labels(volume.hu.shape)
    seg_path = write_dicom_seg(tmp_path / "seg.dcm", labels, volume.files)
    assert np.array_equal(read_seg_labels(seg_path, volume.files), labels)
    seg = hd.seg.segread(seg_path)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    labels_by_number = {n: seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()}
    assert labels_by_number == {1: "LM calcium", 2: "LCX calcium", 3: "LAD calcium", 4: "RCA calcium"}
    assert seg.NumberOfFrames == 4  # empty frames omitted: one frame per (slice, artery) with calcium


def test_seg_refuses_mismatches_and_uidless_series(tmp_path):
    files = write_series(tmp_path / "ct", phantom_hu(nz=4))
    empty = write_dicom_seg(tmp_path / "empty.dcm", np.zeros((4, 64, 64), np.uint8), files)
    assert not read_seg_labels(empty, files).any()
    with pytest.raises(ValueError, match="label map of shape"):
        write_dicom_seg(tmp_path / "x.dcm", np.zeros((3, 64, 64), np.uint8), files)
    with pytest.raises(ValueError, match="label values must be 0..4"):
        write_dicom_seg(tmp_path / "x.dcm", np.full((4, 64, 64), 5, np.uint8), files)
    for path in files:  # COCA's non-gated files have no UIDs
        ds = pydicom.dcmread(path)
        del ds.StudyInstanceUID, ds.FrameOfReferenceUID
        ds.save_as(path)
    with pytest.raises(ValueError, match="no StudyInstanceUID, FrameOfReferenceUID, so a DICOM SEG cannot"):
        write_dicom_seg(tmp_path / "x.dcm", np.zeros((4, 64, 64), np.uint8), files)


def test_infer_on_a_study_writes_seg_and_qc_page(networks, tmp_path, monkeypatch):  # noqa: F811
    model, localizer = networks
    hu = phantom_hu(nz=6)
    study = make_study(tmp_path / "study", hu)
    oracle = _oracle(3, SMALL_CROP)  # every voxel >= 130 HU is LAD
    monkeypatch.setattr(infer_module, "load_trained", lambda *a, **k: oracle)
    opts = small_options(qc_page=True)
    record = infer_scan(tmp_path / "study", model, localizer, tmp_path / "out", opts)
    out = tmp_path / "out"
    labels, _ = read_volume(out / "labels.nii.gz")
    assert labels.any() and set(np.unique(labels)) == {0, 3}
    source = [f for f in sorted(study["calcium"], key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))]
    assert np.array_equal(read_seg_labels(record["seg"], source), labels)  # the SEG frames are the label map
    assert record["series_uid"] == str(pydicom.dcmread(source[0]).SeriesInstanceUID)
    assert (out / "qc.png").stat().st_size > 20_000 and (out / "qc.pdf").read_bytes().startswith(b"%PDF")
    saved = json.loads((out / "scores.json").read_text())
    assert saved["versions"]["cacs"] and saved["versions"]["highdicom"] == "0.28.2" and len(saved["model_sha256"]) == 64
    assert sum(n.startswith("series ") for n in saved["notes"]) == 4  # scout, lung, CTA, MPR: each with its reason
    series = (out / "series.csv").read_text()
    assert series.count(",skipped,") == 4 and series.count(",chosen,") == 1


def test_nifti_input_says_no_seg(networks, tmp_path, monkeypatch):  # noqa: F811
    from cacs.io.nifti import Geometry, write_volume

    model, localizer = networks
    write_volume(tmp_path / "scan.nii.gz", phantom_hu(), Geometry((1.0, 1.0, 3.0), (0.0, 0.0, 0.0)))
    record = infer_scan(tmp_path / "scan.nii.gz", model, localizer, tmp_path / "out", small_options())
    assert record["seg"] == "" and any("no DICOM SEG written" in n for n in record["notes"])
    assert not (tmp_path / "out" / "seg.dcm").exists()


def test_qc_slices_show_every_artery_first():
    labels = np.zeros((10, 8, 8), np.uint8)
    labels[2, :4, :4] = 3  # a big LAD lesion on slices 2, 3, 4
    labels[3, :4, :4] = 3
    labels[4, :4, :4] = 3
    labels[8, 0, 0] = 1  # a one-voxel LM lesion
    assert calcium_slices(labels, np.zeros(labels.shape), n=2) == [2, 8]
    assert calcium_slices(None, np.arange(10)[:, None, None] * np.ones((10, 8, 8))) == [9]


def test_options_default_to_everything():
    assert InferOptions().write_seg and InferOptions().qc_page and InferOptions().series is None
