"""Opt-in kVp-dependent Agatston thresholds: the scan's KVP tag picks the threshold; other kVps are refused."""

from __future__ import annotations

import numpy as np
import pytest

from cacs.agatston import AgatstonParams, agatston_scores
from cacs.cli import build_parser
from cacs.cli_evaluate import infer_options
from cacs.infer import InputError, infer_scan
from cacs.io.nifti import Geometry, write_volume
from cacs.kvp_thresholds import params_for_kvp, parse_kvp_thresholds
from tests.test_dicom_study import phantom_hu, write_series
from tests.test_infer_batch import networks, small_options  # noqa: F401  (fixture)

TABLE = parse_kvp_thresholds("120=130, 100=147,80=167")


def test_table_parsing_and_errors():
    assert TABLE == ((80.0, 167.0), (100.0, 147.0), (120.0, 130.0))
    for bad in ("100", "100=abc", "=147", "100=-1", "100=147,100=150", " , "):
        with pytest.raises(ValueError, match="--kvp-thresholds"):
            parse_kvp_thresholds(bad)


def test_threshold_and_weight_edges_follow_the_kvp():
    base = AgatstonParams()
    assert params_for_kvp(base, 120.0, TABLE) == base  # the standard score at 120 kVp
    low = params_for_kvp(base, 100.0, TABLE)
    assert low.threshold_hu == 147 and low.weight_edges == pytest.approx((147, 226.154, 339.231, 452.308), abs=1e-3)
    with pytest.raises(ValueError, match=r"no threshold for 110 kVp in --kvp-thresholds \(given: 80, 100, 120 kVp\)"):
        params_for_kvp(base, 110.0, TABLE)
    with pytest.raises(ValueError, match="kVp unknown"):
        params_for_kvp(base, None, TABLE)
    hu = np.zeros((1, 10, 10), np.float32)
    hu[0, 2:5, 2:5] = 140.0  # calcium at 120 kVp, below the 100 kVp threshold
    labels = (hu > 0).astype(np.uint8) * 3
    assert agatston_scores(hu, labels, (1.0, 1.0, 3.0), base)["LAD"] > 0
    assert agatston_scores(hu, labels, (1.0, 1.0, 3.0), low)["LAD"] == 0


def test_infer_uses_the_scans_kvp_and_refuses_unknown(networks, tmp_path):  # noqa: F811
    model, localizer = networks
    write_series(tmp_path / "ct", phantom_hu(), tags={"KVP": "100.0"}, spacing=(1.0, 1.0, 3.0))
    record = infer_scan(tmp_path / "ct", model, localizer, tmp_path / "out", small_options(kvp_thresholds=TABLE))
    assert record["kvp"] == 100.0 and record["threshold_hu"] == 147.0
    assert any("kVp-dependent threshold: 147 HU at 100 kVp" in n for n in record["notes"])
    write_series(tmp_path / "ct90", phantom_hu(), tags={"KVP": "90"}, spacing=(1.0, 1.0, 3.0))
    with pytest.raises(InputError, match="ct90: no threshold for 90 kVp"):
        infer_scan(tmp_path / "ct90", model, localizer, tmp_path / "o2", small_options(kvp_thresholds=TABLE))
    write_volume(tmp_path / "v.nii.gz", phantom_hu(), Geometry((1.0, 1.0, 3.0), (0.0, 0.0, 0.0)))
    with pytest.raises(InputError, match="kVp unknown"):
        infer_scan(tmp_path / "v.nii.gz", model, localizer, tmp_path / "o3", small_options(kvp_thresholds=TABLE))
    default = infer_scan(tmp_path / "ct", model, localizer, tmp_path / "o4", small_options())
    assert default["threshold_hu"] == 130.0 and default["kvp"] == 100.0  # off unless asked for


def test_cli_options_reach_the_scorer():
    args = build_parser().parse_args(["infer", "study", "--model", "m", "--localizer", "l", "--out-dir", "o",
                                      "--series", "1.2.3", "--kvp-thresholds", "100=147", "--no-seg"])  # fmt: skip
    opts = infer_options(args)
    assert opts.series == "1.2.3" and opts.kvp_thresholds == ((100.0, 147.0),) and not opts.write_seg and opts.qc_page
