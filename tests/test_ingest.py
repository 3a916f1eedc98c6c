"""Ingest of the synthetic cohort reproduces the generator's ground truth exactly."""

from __future__ import annotations

import json
import plistlib

import numpy as np
import pandas as pd
import pytest

from cacs import SCORE_COLUMNS
from cacs.agatston import AgatstonParams
from cacs.ingest import IngestOptions, collect_tables, ingest_gated_case
from cacs.io.calcium_xml import parse_calcium_xml
from cacs.io.nifti import read_volume
from cacs.io.score_sheet import read_score_sheet
from cacs.qc import QCLog
from cacs.synth.score_sheet import write_score_sheet


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12) if b else abs(a)


def test_gated_images_and_labels_match_truth_voxel_for_voxel(tiny_cohort, tiny_ingested):
    gated = tiny_ingested.tables["gated"].set_index("source_id")
    truth = tiny_cohort.truth_scores
    assert len(gated) == len(truth)
    n_labelled = 0
    for row in truth.itertuples():
        case = gated.loc[str(row.pid)]
        hu, geo = read_volume(case.image)
        labels, lgeo = read_volume(case.labels)
        t_hu, t_geo = read_volume(tiny_cohort.truth / "gated" / f"{row.pid}_image.nii.gz")
        t_labels, _ = read_volume(tiny_cohort.truth / "gated" / f"{row.pid}_labels.nii.gz")
        assert hu.dtype == np.int16
        np.testing.assert_array_equal(hu, t_hu)
        np.testing.assert_array_equal(labels, t_labels)
        np.testing.assert_allclose(geo.origin, t_geo.origin, atol=1e-4)
        np.testing.assert_allclose(geo.spacing, t_geo.spacing, rtol=1e-6)
        assert geo == lgeo
        n_labelled += int(labels.any())
    assert n_labelled >= 3  # the test means something only if there is calcium


@pytest.mark.parametrize("cohort", ["gated", "nongated"])
def test_reference_scores_match_truth(tiny_cohort, tiny_ingested, cohort):
    table = tiny_ingested.tables[cohort].set_index("source_id")
    for row in tiny_cohort.truth_scores.itertuples():
        case = table.loc[str(row.pid)]
        for col in SCORE_COLUMNS:
            assert _rel(case[col], getattr(row, col)) <= 1e-6, (cohort, row.pid, col)
        assert case.cvd_rank == row.cvd_rank


def test_cases_table_contract(tiny_ingested, tmp_path):
    t = tiny_ingested.tables
    out = tmp_path / "cases.csv"
    qc_out = tmp_path / "qc.csv"
    cases = collect_tables(
        [tiny_ingested.out / "gated.csv", tiny_ingested.out / "nongated.csv"],
        [tiny_ingested.out / f"qc_{c}.csv" for c in ("gated", "nongated", "segthor")],
        out,
        qc_out,
    )
    for col in ("case_id", "patient_id", "cohort", "image", "labels", "spacing_x", "spacing_y", "spacing_z",
                *SCORE_COLUMNS):  # fmt: skip
        assert col in cases.columns
    assert set(cases.cohort) == {"gated", "nongated"}
    assert len(cases) == len(t["gated"]) + len(t["nongated"])
    # Paired ids: each patient has one gated and one non-gated scan.
    assert (cases.groupby("patient_id").cohort.nunique() == 2).all()
    assert (cases[cases.cohort == "nongated"].labels == "").all()
    assert pd.read_csv(qc_out).shape[0] == sum(len(q) for q in tiny_ingested.qc.values())


def test_coca_traps_are_reported(tiny_cohort, tiny_ingested):
    manifest = json.loads((tiny_cohort.truth / "manifest.json").read_text())
    traps = manifest["traps"]
    gqc, nqc = tiny_ingested.qc["gated"], tiny_ingested.qc["nongated"]
    dup = gqc[gqc.case_id == f"gated-{traps['duplicate_series_pid']}"]
    assert dup.problem.str.contains("identical z positions").any()
    assert (dup.severity == "info").all()
    assert gqc[gqc.case_id == f"gated-{traps['xml_without_images_pid']}"].problem.str.contains(
        "without images"
    ).any()
    orphan = traps["orphan_score_row"]
    assert nqc.problem.str.contains(f"score row {orphan} has no image folder").any()
    zero = nqc[nqc.case_id == f"nongated-{traps['sheet_total_zero_pid']}"]
    assert zero.action.str.contains("using the artery sum").any()
    # Placeholder ROIs were present and skipped, and the ImageIndex (reverse of file
    # order) agreed with z everywhere: no "disagrees" rows.
    assert tiny_ingested.tables["gated"].n_empty_rois.sum() > 0
    assert not gqc.problem.str.contains("disagrees").any()


def test_roi_matched_by_image_index_when_point_mm_is_missing(tiny_cohort, tiny_ingested, tmp_path, coca_copy):
    """Without Point_mm the reversed ImageIndex alone must land ROIs on the same slices."""
    xml = next(
        x for x in sorted((coca_copy / "Gated_release_final" / "calcium_xml").glob("*.xml"))
        if (coca_copy / "Gated_release_final" / "patient" / x.stem).exists()
    )  # fmt: skip
    root = plistlib.loads(xml.read_bytes())
    for image in root["Images"]:
        for roi in image["ROIs"]:
            roi["Point_mm"] = []
    xml.write_bytes(plistlib.dumps(root))
    row, issues = ingest_gated_case(xml.stem, coca_copy, tmp_path, IngestOptions())
    assert row is not None
    got, _ = read_volume(row["labels"])
    want, _ = read_volume(tiny_cohort.truth / "gated" / f"{xml.stem}_labels.nii.gz")
    np.testing.assert_array_equal(got, want)
    assert all(r.z_mm is None for r in parse_calcium_xml(xml))


def test_score_sheet_trailing_space_and_plain_column_names(tmp_path):
    qc = QCLog("", "nongated")
    path = tmp_path / "scores.xlsx"
    write_score_sheet(path, [("1A", 1.5, 2.0, 3.0, 4.0, 10), ("2A", 0, 0, 0, 0, 0)])
    sheet = read_score_sheet(path, qc)
    assert sheet["1"].scores == {"LM": 1.5, "LAD": 2.0, "LCX": 3.0, "RCA": 4.0}  # LCA means left main
    assert sheet["1"].sheet_total == 10
    pd.DataFrame({"filename": ["3A"], "LCA": [1], "LAD": [0], "LCX": [0], "RCA": [0], "total": [1]}).to_excel(
        tmp_path / "plain.xlsx", index=False
    )
    assert read_score_sheet(tmp_path / "plain.xlsx", qc)["3"].scores["LM"] == 1
    assert not qc.issues


def test_agatston_options_reach_ingest(tiny_cohort, tmp_path):
    """A stricter convention (no slice correction is 1 here; min area 50 mm^2) changes the reference."""
    truth = tiny_cohort.truth_scores
    pid = str(int(truth.loc[truth.total.idxmax(), "pid"]))
    opts = IngestOptions(agatston=AgatstonParams(min_area_mm2=50.0))
    row, _ = ingest_gated_case(pid, tiny_cohort.coca, tmp_path, opts)
    assert row["total"] < truth.total.max()
