"""Statistics of cacs.evaluate: hand-computed values, sklearn/statsmodels cross-checks, bootstrap, schema."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from cacs import ARTERIES, SCORE_COLUMNS
from cacs.cvd import cvd_rank
from cacs.evaluate import (
    REQUIRED_COLUMNS,
    bland_altman,
    bootstrap_cis,
    cohen_kappa,
    compute_metrics,
    confusion,
    group_statistics,
    kappa_from_confusion,
    load_predictions,
    mean_error,
    paper_block,
    resample_weights,
)
from cacs.paper_reference import BLAND_ALTMAN_LIMITS, KAPPA, TABLE1

matplotlib.use("Agg")


def fabricate(
    experiments: dict[str, str] | None = None, n_patients: int = 40, seed: int = 0, cohorts=("gated", "nongated")
) -> pd.DataFrame:
    """A predictions frame following the contract: every patient has one scan per cohort (paired).

    Reference scores: ~35 % zero per artery, else log-normal; predictions =
    reference x noise + an experiment-specific bias, so ranks vary and kappas
    are defined.
    """
    experiments = experiments or {"spss": "spss", "convnet": "convnet"}
    rng = np.random.default_rng(seed)
    rows = []
    ref = {}
    for cohort in cohorts:
        for p in range(n_patients):
            ref[cohort, p] = {a: 0.0 if rng.random() < 0.35 else float(rng.lognormal(3.0, 1.5)) for a in ARTERIES}
    for k, (experiment, model) in enumerate(experiments.items()):
        for cohort in cohorts:
            for p in range(n_patients):
                r = ref[cohort, p]
                pred = {a: max(0.0, r[a] * float(rng.lognormal(0.0, 0.3)) + float(rng.normal(2.0 * k, 5.0)))
                        for a in ARTERIES}
                r_total, p_total = sum(r.values()), sum(pred.values())
                rows.append({
                    "case_id": f"{cohort}-{p}", "patient_id": f"P{p}", "cohort": cohort, "split": "test",
                    "experiment": experiment, "model": model,
                    **{f"ref_{a}": r[a] for a in ARTERIES}, "ref_total": r_total,
                    **{f"pred_{a}": pred[a] for a in ARTERIES}, "pred_total": p_total,
                    "ref_rank": int(cvd_rank(r_total)), "pred_rank": int(cvd_rank(p_total)),
                    "image": f"results/crops/volumes/{cohort}-{p}_image.nii.gz",
                    "ref_labels": f"results/crops/volumes/{cohort}-{p}_labels.nii.gz" if cohort == "gated" else "",
                    "label_map": "" if model == "convnet" else f"results/predictions/{experiment}/{cohort}-{p}.nii.gz",
                    "fallback": False,
                })
    return pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS))


def write_prediction_csvs(frame: pd.DataFrame, root: Path) -> list[Path]:
    paths = []
    for experiment, rows in frame.groupby("experiment", sort=False):
        path = root / "predictions" / experiment / "predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows.to_csv(path, index=False)
        paths.append(path)
    return paths


def _rows(pred_total, ref_total, patients=None, ref_rank=None, pred_rank=None) -> pd.DataFrame:
    """A minimal one-group frame for group_statistics: arteries = total / 4."""
    pred_total, ref_total = np.asarray(pred_total, float), np.asarray(ref_total, float)
    n = len(pred_total)
    frame = pd.DataFrame({"patient_id": patients if patients is not None else [f"P{i:03d}" for i in range(n)]})
    for a in ARTERIES:
        frame[f"ref_{a}"], frame[f"pred_{a}"] = ref_total / 4, pred_total / 4
    frame["ref_total"], frame["pred_total"] = ref_total, pred_total
    frame["ref_rank"] = ref_rank if ref_rank is not None else cvd_rank(ref_total)
    frame["pred_rank"] = pred_rank if pred_rank is not None else cvd_rank(pred_total)
    return frame


# ------------------------------------------------------------------------------------ hand-computed


def test_mean_error_by_hand():
    assert mean_error([1, 2, 3], [0, 0, 0]) == (2.0, 1.0)  # diffs 1,2,3: mean 2, sample SD 1
    me, sd = mean_error([5, 1], [1, 3])  # diffs 4, -2: mean 1, SD sqrt(((3)^2 + (-3)^2) / 1) = sqrt(18)
    assert me == 1.0 and sd == pytest.approx(np.sqrt(18.0))
    assert mean_error([7.5], [2.5]) == (5.0, None)  # one scan: SD undefined


def test_confusion_written_out():
    ref = [1, 1, 2, 3, 3, 3, 5, 5]
    pred = [1, 2, 2, 3, 4, 4, 5, 1]
    expected = np.array(
        [
            [1, 1, 0, 0, 0],
            [0, 1, 0, 0, 0],
            [0, 0, 1, 2, 0],
            [0, 0, 0, 0, 0],
            [1, 0, 0, 0, 1],
        ]
    )
    np.testing.assert_array_equal(confusion(ref, pred), expected)  # rows = reference, all 5 ranks present


def test_kappa_by_hand_two_ranks():
    # po = 3/4; marginals ref (2, 2), pred (1, 3): pe = (2*1 + 2*3)/16 = 1/2; kappa = (3/4 - 1/2)/(1/2) = 1/2
    assert cohen_kappa([1, 1, 2, 2], [1, 2, 2, 2]) == pytest.approx(0.5)
    # two adjacent ranks: linear weights are the unweighted ones
    assert cohen_kappa([1, 1, 2, 2], [1, 2, 2, 2], weights="linear") == pytest.approx(0.5)


def test_kappa_by_hand_linear_three_ranks():
    # confusion: (1,2), (2,2), (3,3); row margins (1,1,1), column margins (0,2,1), n = 3
    # unweighted: po = 2/3, pe = (0 + 2/3 + 1/3)/3 = 1/3 -> (2/3 - 1/3)/(2/3) = 1/2
    # linear: observed disagreement 1 (|1-2|); expected sum |i-j| r_i c_j / n = 7/3 -> 1 - 3/7 = 4/7
    assert cohen_kappa([1, 2, 3], [2, 2, 3]) == pytest.approx(0.5)
    assert cohen_kappa([1, 2, 3], [2, 2, 3], weights="linear") == pytest.approx(4 / 7)
    m = confusion([1, 2, 3], [2, 2, 3])
    assert kappa_from_confusion(m) == pytest.approx(0.5)
    assert kappa_from_confusion(m, "linear") == pytest.approx(4 / 7)


def test_kappa_undefined_is_none():
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) is None  # a single rank for both: expected disagreement 0
    assert cohen_kappa([3, 3], [3, 3], weights="linear") is None
    assert np.isnan(kappa_from_confusion(confusion([1, 1, 1], [1, 1, 1])))
    assert cohen_kappa([], []) is None
    assert cohen_kappa([1, 1, 1], [2, 2, 2]) == 0.0  # defined (one rank each, different): 0, not None


def test_bland_altman_by_hand():
    ba = bland_altman([2, 4, 6, 8], [1, 2, 3, 4])  # diffs 1..4: bias 2.5, population SD sqrt(1.25)
    assert ba["bias"] == pytest.approx(2.5)
    assert ba["sd"] == pytest.approx(np.sqrt(1.25))
    assert ba["loa_lower"] == pytest.approx(2.5 - 1.96 * np.sqrt(1.25))
    assert ba["loa_upper"] == pytest.approx(2.5 + 1.96 * np.sqrt(1.25))


# ------------------------------------------------------------------------ library cross-checks


def test_kappa_equals_sklearn_on_random_inputs():
    rng = np.random.default_rng(123)
    n_undefined = 0
    for trial in range(400):
        n = int(rng.integers(1, 60))
        ranks = rng.choice(np.arange(1, 6), size=int(rng.integers(1, 4)), replace=False)  # few ranks: edge cases
        ref = rng.choice(ranks, n)
        pred = np.where(rng.random(n) < 0.6, ref, rng.choice(ranks, n))
        for weights in (None, "linear"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = cohen_kappa_score(ref, pred, labels=[1, 2, 3, 4, 5], weights=weights)
            ours = kappa_from_confusion(confusion(ref, pred), weights)
            wrapped = cohen_kappa(ref, pred, weights)
            if np.isnan(expected):
                n_undefined += 1
                assert np.isnan(ours) and wrapped is None, (trial, ref, pred)
            else:
                assert ours == pytest.approx(expected, abs=1e-12), (trial, weights)
                assert wrapped == pytest.approx(expected, abs=1e-12)
    assert n_undefined > 0  # the loop did exercise undefined kappas


def test_bland_altman_equals_statsmodels_plot_lines():
    import matplotlib.pyplot as plt
    from statsmodels.graphics.agreement import mean_diff_plot

    rng = np.random.default_rng(5)
    ref = rng.lognormal(3, 1.5, 80)
    pred = np.clip(ref * rng.lognormal(0, 0.3, 80) + rng.normal(4, 10, 80), 0, None)
    fig, ax = plt.subplots()
    try:
        mean_diff_plot(pred, ref, sd_limit=1.96, ax=ax)
        drawn = sorted(float(line.get_ydata()[0]) for line in ax.lines)  # axhline: bias and the two limits
    finally:
        plt.close(fig)
    ba = bland_altman(pred, ref)
    assert len(drawn) == 3
    np.testing.assert_allclose(drawn, [ba["loa_lower"], ba["bias"], ba["loa_upper"]], rtol=1e-12)


def test_mean_error_equals_pandas_on_random_inputs():
    rng = np.random.default_rng(9)
    pred, ref = rng.normal(50, 20, 30), rng.normal(45, 25, 30)
    me, sd = mean_error(pred, ref)
    diff = pd.Series(pred - ref)
    assert me == pytest.approx(diff.mean()) and sd == pytest.approx(diff.std())  # pandas std: ddof = 1


# ----------------------------------------------------------------------------------- bootstrap


def test_group_statistics_with_unit_weights_equal_point_estimates():
    frame = fabricate({"spss": "spss"}, n_patients=50, seed=3)
    rows = frame[frame["cohort"] == "nongated"]
    stats = group_statistics(rows, np.ones((1, 50)))
    for i, c in enumerate(SCORE_COLUMNS):
        me, sd = mean_error(rows[f"pred_{c}"], rows[f"ref_{c}"])
        assert stats["mean"][0, i] == pytest.approx(me, abs=1e-9)
        assert stats["sd"][0, i] == pytest.approx(sd, rel=1e-9)
    np.testing.assert_array_equal(stats["confusion"][0], confusion(rows["ref_rank"], rows["pred_rank"]))
    assert stats["kappa_unweighted"][0] == pytest.approx(cohen_kappa(rows["ref_rank"], rows["pred_rank"]))
    assert stats["kappa_linear"][0] == pytest.approx(cohen_kappa(rows["ref_rank"], rows["pred_rank"], "linear"))
    ba = bland_altman(rows["pred_total"], rows["ref_total"])
    assert stats["ba_loa_lower"][0] == pytest.approx(ba["loa_lower"])
    assert stats["ba_loa_upper"][0] == pytest.approx(ba["loa_upper"])


def test_group_statistics_equal_explicit_resamples():
    """The vectorised statistics equal recomputing on the materialised resample (patients repeated)."""
    frame = fabricate({"spss": "spss"}, n_patients=25, seed=4)
    rows = frame[frame["cohort"] == "gated"].copy()
    rows.loc[rows.index[:6], "patient_id"] = ["P0", "P0", "P1", "P1", "P1", "P2"]  # some multi-scan patients
    patients = np.unique(rows["patient_id"])
    w = resample_weights(len(patients), 20, np.random.default_rng(0))
    stats = group_statistics(rows, w)
    for b in range(len(w)):
        sample = pd.concat([rows[rows["patient_id"] == p] for p, k in zip(patients, w[b], strict=True)
                            for _ in range(k)])
        me, sd = mean_error(sample["pred_total"], sample["ref_total"])
        assert stats["mean"][b, -1] == pytest.approx(me, abs=1e-9)
        assert stats["sd"][b, -1] == pytest.approx(sd, rel=1e-9)
        k = cohen_kappa(sample["ref_rank"], sample["pred_rank"])
        ours = stats["kappa_unweighted"][b]
        assert (k is None and np.isnan(ours)) or ours == pytest.approx(k)


def test_resample_weights_draw_every_patient_count():
    w = resample_weights(7, 500, np.random.default_rng(1))
    assert w.shape == (500, 7)
    assert (w.sum(axis=1) == 7).all()  # each resample draws n patients
    assert abs(w.mean() - 1.0) < 0.05


def test_bootstrap_keeps_a_patients_scans_together():
    """Each patient has two scans with errors +d and -d: every patient-level resample has ME exactly 0.

    Resampling scans instead would give a wide CI (d up to 200), so this fails
    if the bootstrap ignores patient_id.
    """
    d = np.linspace(10, 200, 30)
    pred = np.concatenate([300 + d, 300 - d])
    ref = np.full(60, 300.0)
    patients = [f"P{i}" for i in range(30)] * 2
    cis = bootstrap_cis(_rows(pred, ref, patients), n_bootstrap=300, seed=1, cohort="gated")
    lo, hi = cis["mean_error"]["total"]
    assert abs(lo) < 1e-9 and abs(hi) < 1e-9
    # control: the same scans as 60 separate patients give a wide CI
    cis_scans = bootstrap_cis(_rows(pred, ref), n_bootstrap=300, seed=1, cohort="gated")
    lo, hi = cis_scans["mean_error"]["total"]
    assert hi - lo > 20


def test_bootstrap_deterministic_and_seeded():
    rows = fabricate({"spss": "spss"}, n_patients=30, seed=2)
    rows = rows[rows["cohort"] == "gated"]
    a = bootstrap_cis(rows, 200, seed=42, cohort="gated")
    b = bootstrap_cis(rows, 200, seed=42, cohort="gated")
    c = bootstrap_cis(rows, 200, seed=43, cohort="gated")
    assert a == b
    assert a["mean_error"]["total"] != c["mean_error"]["total"]


def test_bootstrap_ci_contains_point_estimate():
    rng = np.random.default_rng(11)
    ref = rng.lognormal(4, 1, 150)
    pred = ref + rng.normal(3, 10, 150)
    pred = np.clip(pred, 0, None)
    rows = _rows(pred, ref)
    cis = bootstrap_cis(rows, 1000, seed=42, cohort="nongated")
    me, _ = mean_error(pred, ref)
    lo, hi = cis["mean_error"]["total"]
    assert lo < me < hi
    assert hi - lo < 6  # SE ~ 10/sqrt(150) = 0.8: the CI is about +-1.6, not degenerate or huge
    k = cohen_kappa(rows["ref_rank"], rows["pred_rank"])
    assert cis["kappa_unweighted"][0] <= k <= cis["kappa_unweighted"][1]
    ba = bland_altman(pred, ref)
    assert cis["ba_loa_upper"][0] < ba["loa_upper"] < cis["ba_loa_upper"][1]


def test_n_bootstrap_zero_gives_null_cis():
    metrics = compute_metrics(fabricate(n_patients=10), n_bootstrap=0, seed=42, data_source="synthetic")
    block = metrics["experiments"]["spss"]["cohorts"]["gated"]
    assert all(block["mean_error"][c]["ci95"] is None for c in SCORE_COLUMNS)
    assert block["kappa"]["unweighted"]["ci95"] is None and block["kappa"]["linear"]["ci95"] is None
    assert block["bland_altman"]["bias_ci95"] is None and block["bland_altman"]["loa_upper_ci95"] is None


def test_undefined_resamples_are_left_out():
    # 3 patients, 2 of them rank I in both: many resamples hold only rank I -> kappa undefined there
    ref = np.array([0.0, 0.0, 50.0])
    rows = _rows(ref.copy(), ref)
    cis = bootstrap_cis(rows, 200, seed=0, cohort="gated")
    assert cis["undefined"]["kappa_unweighted"] > 0
    assert cis["kappa_unweighted"] == [1.0, 1.0]  # the defined resamples agree perfectly


# -------------------------------------------------------------------------------------- schema


COHORT_KEYS = {"n_scans", "n_patients", "mean_error", "mean_absolute_error", "kappa", "confusion", "bland_altman"}
BA_KEYS = {"bias", "sd", "loa_lower", "loa_upper", "bias_ci95", "loa_lower_ci95", "loa_upper_ci95"}


def test_compute_metrics_schema_and_json():
    frame = fabricate(n_patients=20, seed=1)
    metrics = compute_metrics(frame, n_bootstrap=100, seed=42, data_source="synthetic")
    text = json.dumps(metrics, allow_nan=False)  # raises on NaN / inf
    assert json.loads(text) == metrics
    assert set(metrics) == {"data_source", "n_bootstrap", "seed", "experiments", "paper"}
    assert (metrics["data_source"], metrics["n_bootstrap"], metrics["seed"]) == ("synthetic", 100, 42)
    assert list(metrics["experiments"]) == ["convnet", "spss"]  # the paper's order
    for name, exp in metrics["experiments"].items():
        assert set(exp) == {"method", "model", "cohorts"}
        assert exp["method"] == {"spss": "SPSS", "convnet": "ConvNet"}[name]
        assert exp["model"] == name
        assert set(exp["cohorts"]) == {"gated", "nongated"}
        for cohort, block in exp["cohorts"].items():
            assert set(block) == COHORT_KEYS
            assert block["n_scans"] == 20 and block["n_patients"] == 20
            assert set(block["mean_error"]) == set(SCORE_COLUMNS)
            for c in SCORE_COLUMNS:
                assert set(block["mean_error"][c]) == {"mean", "sd", "ci95"}
                assert len(block["mean_error"][c]["ci95"]) == 2
            assert set(block["mean_absolute_error"]) == set(SCORE_COLUMNS)
            assert set(block["kappa"]) == {"unweighted", "linear"}
            assert all(set(v) == {"value", "ci95"} for v in block["kappa"].values())
            assert block["confusion"]["labels"] == ["I", "II", "III", "IV", "V"]
            matrix = np.array(block["confusion"]["matrix"])
            assert matrix.shape == (5, 5) and matrix.sum() == 20
            assert set(block["bland_altman"]) == BA_KEYS
            rows = frame[(frame["experiment"] == name) & (frame["cohort"] == cohort)]
            assert block["mean_error"]["LAD"]["mean"] == pytest.approx((rows["pred_LAD"] - rows["ref_LAD"]).mean())
            assert block["mean_absolute_error"]["total"] == pytest.approx(
                (rows["pred_total"] - rows["ref_total"]).abs().mean())
    assert set(metrics["paper"]) == {"table1", "kappa", "bland_altman_limits"}
    assert metrics["paper"] == json.loads(json.dumps(paper_block()))
    assert metrics["paper"]["table1"]["spss"]["nongated"]["total"] == list(TABLE1["spss"]["nongated"]["total"])
    assert metrics["paper"]["kappa"]["spss"] == KAPPA["spss"]
    assert metrics["paper"]["bland_altman_limits"]["spss"] == list(BLAND_ALTMAN_LIMITS["spss"])


def test_compute_metrics_absent_cohort_and_undefined_kappa():
    frame = fabricate({"spss_wo_ssl": "spss"}, n_patients=5, cohorts=("gated",))
    frame[["ref_rank", "pred_rank"]] = 1  # a single rank everywhere: kappa undefined
    metrics = compute_metrics(frame, n_bootstrap=50, seed=0, data_source="local")
    cohorts = metrics["experiments"]["spss_wo_ssl"]["cohorts"]
    assert list(cohorts) == ["gated"]  # no non-gated scans: absent
    kappa = cohorts["gated"]["kappa"]
    assert kappa["unweighted"] == {"value": None, "ci95": None}
    assert kappa["linear"] == {"value": None, "ci95": None}
    json.dumps(metrics, allow_nan=False)


def test_one_scan_cohort_is_json_safe():
    frame = fabricate({"spss": "spss"}, n_patients=1)
    metrics = compute_metrics(frame, n_bootstrap=20, seed=0, data_source="synthetic")
    block = metrics["experiments"]["spss"]["cohorts"]["gated"]
    assert block["mean_error"]["total"]["sd"] is None
    json.dumps(metrics, allow_nan=False)


def test_bad_data_source_and_n_bootstrap():
    with pytest.raises(ValueError, match="data_source"):
        compute_metrics(fabricate(n_patients=3), 0, 0, "coca?")
    with pytest.raises(ValueError, match="n_bootstrap"):
        compute_metrics(fabricate(n_patients=3), -1, 0, "synthetic")


# ------------------------------------------------------------------------------------- bad input


def test_load_predictions_concatenates(tmp_path):
    frame = fabricate(n_patients=6)
    paths = write_prediction_csvs(frame, tmp_path)
    loaded = load_predictions(paths)
    assert len(loaded) == len(frame)
    assert loaded.loc[loaded["cohort"] == "nongated", "ref_labels"].eq("").all()  # empty cells stay strings


def test_missing_column_names_the_file(tmp_path):
    frame = fabricate(n_patients=4)
    paths = write_prediction_csvs(frame, tmp_path)
    pd.read_csv(paths[1]).drop(columns="pred_LAD").to_csv(paths[1], index=False)
    with pytest.raises(ValueError, match=rf"{paths[1]}: .*pred_LAD"):
        load_predictions(paths)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [("ref_total", -1.0, "ref_total"), ("pred_LM", float("nan"), "pred_LM"), ("pred_rank", 6, "pred_rank"),
     ("ref_rank", 0, "ref_rank"), ("cohort", "cardiac", "cohort")],
)
def test_bad_values_name_the_file(tmp_path, column, value, message):
    frame = fabricate({"spss": "spss"}, n_patients=4)
    frame[column] = frame[column].astype(object)
    frame.loc[2, column] = value
    paths = write_prediction_csvs(frame, tmp_path)
    with pytest.raises(ValueError, match=rf"predictions\.csv.*{message}"):
        load_predictions(paths)


def test_duplicates_are_errors(tmp_path):
    frame = fabricate({"spss": "spss"}, n_patients=4)
    paths = write_prediction_csvs(frame, tmp_path)
    copy = tmp_path / "copy.csv"
    frame.to_csv(copy, index=False)
    with pytest.raises(ValueError, match=r"copy\.csv.*spss/predictions\.csv") as info:
        load_predictions([*paths, copy])  # same (experiment, case_id) in two files: both named
    assert "gated-0" in str(info.value)
    pd.concat([frame, frame.iloc[:1]]).to_csv(copy, index=False)
    with pytest.raises(ValueError, match=r"copy\.csv: duplicate"):
        load_predictions([copy])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        load_predictions([tmp_path / "nothere.csv"])
