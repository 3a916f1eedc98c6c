"""Every kind of bad input becomes a QC row (or an exclusion row); the run goes on.

Each test damages a private copy of the tiny COCA tree, ingests it, and checks
the QC table names the file and the problem, that other cases still come
through, and that ``strict`` turns the problem into a failure.
"""

from __future__ import annotations

import plistlib
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from cacs.ingest import IngestOptions, run_ingest
from cacs.qc import StrictModeError
from cacs.synth.score_sheet import write_score_sheet


def _ingest(cohort: str, root: Path, tmp_path: Path, strict: bool = False):
    table, qc = tmp_path / f"{cohort}.csv", tmp_path / f"qc_{cohort}.csv"
    run_ingest(cohort, root, tmp_path / cohort, table, qc, IngestOptions(strict=strict))
    return pd.read_csv(table, dtype={"source_id": str}), pd.read_csv(qc, dtype=str, keep_default_na=False)


def _series_files(coca: Path, pid: str) -> list[Path]:
    series = sorted(d for d in (coca / "Gated_release_final" / "patient" / pid).iterdir() if d.is_dir())[0]
    return sorted(series.glob("*.dcm"))


def _calcified_pid(coca: Path) -> str:
    xml_dir = coca / "Gated_release_final" / "calcium_xml"
    return next(x.stem for x in sorted(xml_dir.glob("*.xml")) if (xml_dir.parent / "patient" / x.stem).exists())


def _rows(qc: pd.DataFrame, case_id: str) -> pd.DataFrame:
    return qc[qc.case_id == case_id]


def _n_gated(coca: Path) -> int:
    return sum(1 for d in (coca / "Gated_release_final" / "patient").iterdir() if d.is_dir())


def test_truncated_file_in_the_middle_excludes_the_case(coca_copy, tmp_path):
    files = _series_files(coca_copy, "0")
    victim = files[len(files) // 2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    cases, qc = _ingest("gated", coca_copy, tmp_path)
    rows = _rows(qc, "gated-0")
    assert rows[rows.file == str(victim)].problem.str.contains("truncated|unreadable").any()
    assert (rows.action == "case excluded").any()
    assert rows[rows.action == "case excluded"].problem.str.contains("missing slice").any()
    assert "0" not in set(cases.source_id)
    assert len(cases) == _n_gated(coca_copy) - 1


def test_corrupt_file_at_the_edge_is_skipped_and_case_kept(coca_copy, tmp_path):
    files = _series_files(coca_copy, "0")
    files[0].write_bytes(b"this is not a DICOM file" * 10)  # most superior slice
    cases, qc = _ingest("gated", coca_copy, tmp_path)
    rows = _rows(qc, "gated-0")
    assert list(rows.file) == [str(files[0])]
    assert rows.action.iloc[0] == "file skipped"
    kept = cases[cases.source_id == "0"].iloc[0]
    assert kept.size_z == len(files) - 1
    with pytest.raises(StrictModeError, match="file skipped"):
        _ingest("gated", coca_copy, tmp_path / "strict", strict=True)


def test_missing_slice_excludes_the_case(coca_copy, tmp_path):
    files = _series_files(coca_copy, "2")
    files[10].unlink()
    cases, qc = _ingest("gated", coca_copy, tmp_path)
    excl = _rows(qc, "gated-2")
    assert excl.action.tolist() == ["case excluded"]
    assert "missing slice" in excl.problem.iloc[0] and "expected 3.000 mm" in excl.problem.iloc[0]
    assert "2" not in set(cases.source_id)


def test_two_different_slices_at_the_same_z(coca_copy, tmp_path):
    files = _series_files(coca_copy, "0")
    ds = pydicom.dcmread(files[5])
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["extra slice"])
    arr = ds.pixel_array.copy()
    arr[0, 0] += 7
    ds.PixelData = arr.tobytes()
    extra = files[5].with_name("IM-9999-0001.dcm")
    ds.save_as(extra)
    cases, qc = _ingest("gated", coca_copy, tmp_path)
    rows = _rows(qc, "gated-0")
    assert rows.problem.str.contains("two different slices at z=").any()
    assert "0" in set(cases.source_id)


def test_two_series_at_the_same_z_use_one(tiny_cohort, coca_copy, tmp_path):
    src = sorted((coca_copy / "Gated_release_final" / "patient" / "0").iterdir())[0]
    shutil.copytree(src, src.with_name(src.name + "_copy"))
    cases, qc = _ingest("gated", coca_copy, tmp_path)
    rows = _rows(qc, "gated-0")
    assert rows.problem.str.contains("identical z positions").any()
    assert (rows.severity == "info").all()
    assert cases[cases.source_id == "0"].series.iloc[0].startswith(src.name)


def test_mixed_pixel_spacing_excludes_the_case(coca_copy, tmp_path):
    files = _series_files(coca_copy, "1")
    ds = pydicom.dcmread(files[3])
    ds.PixelSpacing = [str(float(ds.PixelSpacing[0]) * 1.1)] * 2
    ds.save_as(files[3])
    cases, qc = _ingest("gated", coca_copy, tmp_path)
    excl = _rows(qc, "gated-1")
    assert excl.problem.str.contains("mixed pixel spacing").any()
    assert "1" not in set(cases.source_id)


def _edit_xml(coca: Path, pid: str, edit) -> Path:
    xml = coca / "Gated_release_final" / "calcium_xml" / f"{pid}.xml"
    root = plistlib.loads(xml.read_bytes())
    roi = next(r for img in root["Images"] for r in img["ROIs"] if r["NumberOfPoints"] > 0)
    edit(roi)
    xml.write_bytes(plistlib.dumps(root))
    return xml


def test_roi_whose_z_matches_no_slice_excludes_the_case(coca_copy, tmp_path):
    pid = _calcified_pid(coca_copy)

    def shift_z(roi):
        roi["Point_mm"] = [p.replace(p.split(",")[2], " 9999.5)") for p in roi["Point_mm"]]

    xml = _edit_xml(coca_copy, pid, shift_z)
    cases, qc = _ingest("gated", coca_copy, tmp_path)
    excl = _rows(qc, f"gated-{pid}")
    assert excl.problem.str.contains("9999.500 matches no slice").any()
    assert (excl.file == str(xml)).any()
    assert pid not in set(cases.source_id)


def test_unknown_roi_name_is_reported_and_ignored(coca_copy, tmp_path):
    pid = _calcified_pid(coca_copy)
    xml = _edit_xml(coca_copy, pid, lambda roi: roi.update(Name="1234567"))
    cases, qc = _ingest("gated", coca_copy, tmp_path)
    rows = _rows(qc, f"gated-{pid}")
    assert rows.problem.str.contains("unknown ROI name '1234567'").any()
    assert (rows.action == "ROI ignored").any() and (rows.file == str(xml)).all()
    assert pid in set(cases.source_id)


def test_roi_with_fewer_than_three_points(coca_copy, tmp_path):
    pid = _calcified_pid(coca_copy)

    def two_points(roi):
        roi["Point_px"] = roi["Point_px"][:2]
        roi["Point_mm"] = roi["Point_mm"][:2]
        roi["NumberOfPoints"] = 2

    _edit_xml(coca_copy, pid, two_points)
    cases, qc = _ingest("gated", coca_copy, tmp_path)
    assert _rows(qc, f"gated-{pid}").problem.str.contains("has 2 point").any()
    assert pid in set(cases.source_id)


def test_sheet_row_without_images_and_images_without_row(coca_copy, tmp_path):
    sheet = coca_copy / "deidentified_nongated" / "scores.xlsx"
    frame = pd.read_excel(sheet)
    rows = [tuple(r) for r in frame.itertuples(index=False) if r[0] != "0A"]  # patient 0 loses its row
    rows.append(("790A", 1.0, 0.0, 0.0, 0.0, 1))
    write_score_sheet(sheet, rows)
    cases, qc = _ingest("nongated", coca_copy, tmp_path)
    assert _rows(qc, "nongated-790").problem.str.contains("score row 790A has no image folder").any()
    excl = _rows(qc, "nongated-0")
    assert excl.action.tolist() == ["case excluded"]
    assert "no reference score" in excl.problem.iloc[0]
    assert "0" not in set(cases.source_id) and len(cases) > 0


def test_non_numeric_score_excludes_the_case(coca_copy, tmp_path):
    sheet = coca_copy / "deidentified_nongated" / "scores.xlsx"
    frame = pd.read_excel(sheet)
    rows = [tuple(r) for r in frame.itertuples(index=False)]
    key = rows[1][0]
    rows[1] = (key, "n/a", *rows[1][2:])
    write_score_sheet(sheet, rows)
    cases, qc = _ingest("nongated", coca_copy, tmp_path)
    pid = key[:-1]
    excl = _rows(qc, f"nongated-{pid}")
    assert excl.problem.str.contains("LCA='n/a'").any()
    assert (excl.file == str(sheet)).all()
    assert pid not in set(cases.source_id)
    with pytest.raises(StrictModeError):
        _ingest("nongated", coca_copy, tmp_path / "strict", strict=True)


def test_segthor_gt_on_another_grid_is_excluded(tiny_cohort, tmp_path):
    import SimpleITK as sitk

    root = tmp_path / "segthor"
    shutil.copytree(tiny_cohort.segthor, root)
    case = sorted((root / "train").iterdir())[0]
    gt_file = next(p for p in case.iterdir() if p.name.lower() == "gt.nii.gz")
    gt = sitk.ReadImage(str(gt_file))
    sitk.WriteImage(gt[:, :, :-1], str(gt_file))
    table, qc = _ingest("segthor", root, tmp_path)
    excl = _rows(qc, f"segthor-{case.name}")
    assert excl.problem.str.contains("differs from the image grid").any()
    assert f"segthor-{case.name}" not in set(table.case_id)
    assert len(table) == 4  # 3 training + 1 test case remain


def test_truncated_compressed_slice_is_named_in_the_qc_table(coca_copy, tmp_path):
    from pydicom.uid import RLELossless

    from tests.test_dicom_study import encode

    files = _series_files(coca_copy, "0")
    for path in files:
        encode(path, RLELossless)
    victim = files[len(files) // 2]
    victim.write_bytes(victim.read_bytes()[:-300])
    cases, qc = _ingest("gated", coca_copy, tmp_path)
    rows = _rows(qc, "gated-0")
    assert rows[rows.file == str(victim)].problem.str.startswith("truncated file: it ends inside the pixel data "
                                                                 "(RLE Lossless").any()  # fmt: skip
    assert (rows.action == "case excluded").any() and "0" not in set(cases.source_id)
    assert len(cases) == _n_gated(coca_copy) - 1
