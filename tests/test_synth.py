"""The synthetic cohort: real on-disk formats, COCA's traps, determinism."""

from __future__ import annotations

import hashlib
import plistlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cacs.synth.cohort import RANK_P, patient_ranks
from tests.conftest import make_cohort


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    kwargs = dict(n_patients=3, n_segthor_train=1, n_segthor_test=1)
    a = make_cohort(tmp_path / "a", seed=3, **kwargs)
    b = make_cohort(tmp_path / "b", seed=3, **kwargs, workers=2)  # worker count must not matter
    c = make_cohort(tmp_path / "c", seed=4, **kwargs)
    for name in ("coca", "segthor", "truth"):
        da, db = _digest(getattr(a, name)), _digest(getattr(b, name))
        assert da == db, name
        assert len(da) > 1
    assert _digest(a.coca) != _digest(c.coca)


def test_gated_dicom_layout_and_tags(tiny_cohort):
    patient_dir = tiny_cohort.coca / "Gated_release_final" / "patient"
    pid_dir = sorted(patient_dir.iterdir())[0]
    series = [d for d in pid_dir.iterdir() if d.is_dir()]
    files = sorted(series[0].glob("IM-*-*.dcm"))
    assert len(files) == 40  # tiny: 120 mm / 3 mm
    first, last = pydicom.dcmread(files[0]), pydicom.dcmread(files[-1])
    # Files run head to foot: the first file is the most superior slice.
    assert float(first.ImagePositionPatient[2]) > float(last.ImagePositionPatient[2])
    assert first.InstanceNumber == 1
    assert (first.RescaleSlope, first.RescaleIntercept) == (1, -1024)
    assert first.pixel_array.dtype == np.uint16
    assert list(map(float, first.ImageOrientationPatient)) == [1, 0, 0, 0, 1, 0]
    assert float(first.SliceThickness) == 3.0
    assert "SeriesInstanceUID" in first and "FrameOfReferenceUID" in first


def test_nongated_dicom_has_no_uids_and_is_nested_twice(tiny_cohort):
    base = tiny_cohort.coca / "deidentified_nongated"
    files = sorted(base.glob("*/*/IM-0001-*.dcm"))
    assert files
    pid_dir = files[0].parent
    assert pid_dir.name == pid_dir.parent.name
    ds = pydicom.dcmread(files[0])
    for tag in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert tag not in ds
    assert float(ds.SliceThickness) == 5.0


def test_calcium_xml_is_a_plist_indexed_in_ascending_z(tiny_cohort):
    xml_dir = tiny_cohort.coca / "Gated_release_final" / "calcium_xml"
    xmls = sorted(xml_dir.glob("*.xml"))
    assert xmls
    placeholders = 0
    for xml in xmls:
        root = plistlib.loads(xml.read_bytes())
        pid = xml.stem
        series_dirs = list((tiny_cohort.coca / "Gated_release_final" / "patient" / pid).glob("*"))
        if not series_dirs:
            continue  # the "XML without images" trap
        files = sorted(series_dirs[0].glob("*.dcm"))
        n = len(files)
        z_of_instance = {
            int(ds.InstanceNumber): float(ds.ImagePositionPatient[2])
            for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in files)
        }
        for image in root["Images"]:
            index = image["ImageIndex"]
            assert image["NumberOfROIs"] == len(image["ROIs"])
            for roi in image["ROIs"]:
                if roi["NumberOfPoints"] == 0:
                    placeholders += 1
                    assert roi["Point_px"] == []
                    continue
                assert roi["Min"] >= 130
                z = float(roi["Point_mm"][0].strip("()").split(",")[2])
                # ImageIndex = N - InstanceNumber (ascending-z rank, reverse of file order).
                assert z == pytest.approx(z_of_instance[n - index], abs=1e-6)
    assert placeholders > 0


def test_score_sheet_has_coca_columns_and_keys(tiny_cohort):
    frame = pd.read_excel(tiny_cohort.coca / "deidentified_nongated" / "scores.xlsx")
    assert list(frame.columns) == ["filename ", "LCA", "LAD", "LCX", "RCA", "total"]
    assert frame["filename "].str.fullmatch(r"\d+A").all()
    truth = tiny_cohort.truth_scores.set_index("pid")
    for row in frame.itertuples(index=False):
        pid = int(row[0][:-1])
        if pid in truth.index:
            assert row.LCA == pytest.approx(truth.loc[pid, "LM"], rel=1e-12)
            assert row.LCX == pytest.approx(truth.loc[pid, "LCX"], rel=1e-12)


def test_segthor_layout(tiny_cohort):
    train = sorted((tiny_cohort.segthor / "train").iterdir())
    assert len(train) == 4
    for case in train:
        names = {p.name.lower() for p in case.iterdir()}
        assert names == {f"{case.name.lower()}.nii.gz", "gt.nii.gz"}
    assert any((case / "gt.nii.gz").exists() for case in train)  # lower-case trap
    assert len(list((tiny_cohort.segthor / "test").glob("Patient_*.nii.gz"))) == 1


def test_rank_targets_follow_coca_mix():
    ranks = patient_ranks(24, seed=1)
    counts = np.bincount(ranks, minlength=6)[1:]
    assert (counts > 0).all()
    assert counts.sum() == 24
    assert abs(counts[0] / 24 - RANK_P[0]) < 0.05  # ~43 % calcium-free
    assert patient_ranks(24, seed=1) == ranks


def test_generator_refuses_to_overwrite_foreign_data(tmp_path):
    foreign = tmp_path / "coca"
    foreign.mkdir()
    (foreign / "precious.dcm").write_bytes(b"real data")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        make_cohort(tmp_path, n_patients=1, n_segthor_train=1, n_segthor_test=0)
    assert (foreign / "precious.dcm").exists()
