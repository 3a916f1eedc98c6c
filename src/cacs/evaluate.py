"""Statistics of the predictions: the paper's section 4.2 evaluation (Table 1, kappas, Figure 6 numbers).

Input: the prediction tables of ``cacs predict`` (one CSV per experiment, one
row per test scan).  Output: ``metrics.json`` (schema in the issue-5
contract) and the paper's tables (:mod:`cacs.tables`), all derived from it.

Per experiment and cohort (gated / non-gated CT) we report

* mean error ME = mean(pred - ref) +- SD per artery and total (Table 1);
* mean absolute error per artery and total;
* Cohen's kappa of the CVD ranks I-V, unweighted (the paper's) and linear;
* the 5x5 rank confusion matrix (Figure 7);
* Bland-Altman bias and 95 % limits of agreement of the total (Figure 6);
* percentile bootstrap 95 % CIs, resampling *patients* (not scans).

Point estimates use the libraries (numpy, ``sklearn.metrics``); the bootstrap
re-derives the same statistics from per-patient sufficient statistics so that
1000 resamples of every group take milliseconds (see :func:`group_statistics`).
The tests check that both paths agree.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from cacs import SCORE_COLUMNS
from cacs.cvd import RANK_NAMES, RANKS
from cacs.io.atomic import write_json
from cacs.paper_reference import BLAND_ALTMAN_LIMITS, KAPPA, TABLE1, experiment_order, method_name
from cacs.prediction_table import (
    COHORTS,
    CONTRACT_COLUMNS,
    PRED_COLUMNS,
    REF_COLUMNS,
    load_predictions,
    validate_predictions,
)
from cacs.tables import write_tables

log = logging.getLogger(__name__)

RANK_LABELS: tuple[str, ...] = RANK_NAMES
"""Labels of the confusion matrix rows and columns in metrics.json (ranks I..V)."""
DATA_SOURCES: tuple[str, ...] = ("synthetic", "local", "download")
"""Accepted ``data_source`` values (the config's ``data.source``); only "synthetic" is not real COCA."""

REQUIRED_COLUMNS: tuple[str, ...] = CONTRACT_COLUMNS
"""The prediction contract's columns (``cacs predict`` adds more, ``ref_grid_*`` and ``ref_roundtrip_*``; kept).

The contract, its loader (:func:`load_predictions`) and checks (:func:`validate_predictions`)
live in :mod:`cacs.prediction_table`, shared with the figures; they are imported here so
``from cacs.evaluate import load_predictions`` keeps working."""

BA_SD_LIMIT = 1.96
"""Bland-Altman limits of agreement are bias +- 1.96 SD (the paper's Figure 6)."""

CI_PERCENTILES: tuple[float, float] = (2.5, 97.5)


# ---------------------------------------------------------------------------------------- statistics


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def mean_error(pred: Iterable[float], ref: Iterable[float]) -> tuple[float, float | None]:
    """Mean error and SD of ``pred - ref``.

    The paper's Table 1 prints "ME +- SD" of the per-scan scoring errors: the
    SD describes the spread of the errors in the population of scans, so it is
    the sample SD (``ddof=1``, unbiased variance), not the standard error of
    the mean.  With one scan the SD is undefined (``None``).
    """
    diff = np.asarray(pred, dtype=float) - np.asarray(ref, dtype=float)
    if diff.size == 0:
        raise ValueError("mean_error of no scans")
    sd = float(np.std(diff, ddof=1)) if diff.size > 1 else None
    return float(np.mean(diff)), sd


def mean_absolute_error(pred: Iterable[float], ref: Iterable[float]) -> float:
    diff = np.asarray(pred, dtype=float) - np.asarray(ref, dtype=float)
    if diff.size == 0:
        raise ValueError("mean_absolute_error of no scans")
    return float(np.mean(np.abs(diff)))


def cohen_kappa(ref_rank: Iterable[int], pred_rank: Iterable[int], weights: str | None = None) -> float | None:
    """Cohen's kappa of CVD ranks (labels 1..5) by ``sklearn``; ``None`` where it is undefined.

    Kappa is undefined when the expected disagreement is zero, e.g. every scan
    in one rank by both raters (sklearn warns and returns NaN): ``None`` then,
    so metrics.json never holds NaN.
    """
    ref, pred = np.asarray(ref_rank, dtype=int), np.asarray(pred_rank, dtype=int)
    if ref.size == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning: handled by returning None
        value = cohen_kappa_score(ref, pred, labels=list(RANKS), weights=weights)
    return _finite_or_none(value)


def confusion(ref_rank: Iterable[int], pred_rank: Iterable[int]) -> np.ndarray:
    """5x5 rank confusion matrix; rows = reference rank I..V, columns = predicted rank."""
    return confusion_matrix(np.asarray(ref_rank, dtype=int), np.asarray(pred_rank, dtype=int), labels=list(RANKS))


def bland_altman(pred: Iterable[float], ref: Iterable[float]) -> dict[str, float]:
    """Bland-Altman bias, SD and limits of agreement (bias +- 1.96 SD) of ``pred - ref``.

    The SD is the population SD (``ddof=0``) because that is what
    ``statsmodels.graphics.agreement.mean_diff_plot`` draws in Figure 6: the
    numbers here equal the plotted lines (tested).  It differs from the
    Table 1 SD (``ddof=1``) by the factor sqrt((n-1)/n), 0.3 % at n = 150.
    """
    diff = np.asarray(pred, dtype=float) - np.asarray(ref, dtype=float)
    if diff.size == 0:
        raise ValueError("bland_altman of no scans")
    bias, sd = float(np.mean(diff)), float(np.std(diff))
    return {"bias": bias, "sd": sd, "loa_lower": bias - BA_SD_LIMIT * sd, "loa_upper": bias + BA_SD_LIMIT * sd}


def _weight_matrix(weights: str | None, n: int = len(RANKS)) -> np.ndarray:
    idx = np.arange(n)
    if weights is None:
        return (idx[:, None] != idx[None, :]).astype(float)
    if weights == "linear":
        return np.abs(idx[:, None] - idx[None, :]).astype(float)
    raise ValueError(f"weights must be None or 'linear', got {weights!r}")


def kappa_from_confusion(matrix: np.ndarray, weights: str | None = None) -> np.ndarray:
    """Cohen's kappa from confusion matrices (``(..., k, k)``), vectorised; NaN where undefined.

    Written by hand because the bootstrap needs kappa for thousands of
    resamples: ``sklearn.metrics.cohen_kappa_score`` costs ~4 ms per call
    (input validation), i.e. ~1 min for 1000 resamples x 2 weightings x 4
    experiments x 2 cohorts, whereas this formula on the stacked resampled
    confusion matrices takes milliseconds.  It is sklearn's formula
    (kappa = 1 - sum(w * observed) / sum(w * expected), expected = outer
    product of the marginals / n) and the tests check it equals
    ``cohen_kappa_score`` on many random inputs.
    """
    m = np.asarray(matrix, dtype=float)
    k = m.shape[-1]
    n = m.sum(axis=(-2, -1))
    rows, cols = m.sum(axis=-1), m.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = rows[..., :, None] * cols[..., None, :] / n[..., None, None]
        w = _weight_matrix(weights, k)
        observed_dis = (w * m).sum(axis=(-2, -1))
        expected_dis = (w * expected).sum(axis=(-2, -1))
        kappa = 1.0 - observed_dis / expected_dis
    return np.where((n > 0) & (expected_dis > 0), kappa, np.nan)


# ----------------------------------------------------------------------------------------- bootstrap


def _ci(samples: np.ndarray) -> list[float] | None:
    """Percentile 95 % CI over the defined (finite) resamples; ``None`` when there are none."""
    samples = np.asarray(samples, dtype=float)
    defined = samples[np.isfinite(samples)]
    if defined.size == 0:
        return None
    lo, hi = np.percentile(defined, CI_PERCENTILES)
    return [float(lo), float(hi)]


def resample_weights(n_units: int, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_bootstrap, n_units)`` counts: how often each unit (patient) is drawn in each resample."""
    draws = rng.integers(0, n_units, size=(n_bootstrap, n_units))
    offsets = (np.arange(n_bootstrap) * n_units)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=n_bootstrap * n_units).reshape(n_bootstrap, n_units)


def cohort_rng(seed: int, cohort: str) -> np.random.Generator:
    """The bootstrap generator of one cohort, ``default_rng([seed, cohort index])``.

    Keyed by cohort only (not by experiment), so every experiment evaluated on
    the same test patients gets the *same* resamples (common random numbers:
    the methods' CIs differ by the methods, not by the draw), and adding or
    removing an experiment does not change the others' CIs.
    """
    return np.random.default_rng([int(seed), COHORTS.index(cohort)])


def group_statistics(rows: pd.DataFrame, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every bootstrapped statistic of one (experiment, cohort) for patient weights ``(n_resamples, n_patients)``.

    ``weights[b, p]`` = how often patient p (in ``np.unique(patient_id)``
    order) is drawn in resample b; a patient's scans enter or leave a resample
    together (cluster bootstrap), so scans of one patient are not treated as
    independent.  Instead of materialising each resample, every statistic is
    computed from per-patient sums: the resample's sum of errors is
    weights @ (per-patient sums), its confusion matrix weights @ (per-patient
    confusion counts), and so on.  Errors are centred on the full-sample mean
    first so the variance from sums of squares keeps its precision.  Undefined
    values (SD of one scan, kappa of a single rank) are NaN.  With weights of
    all ones the results equal the point estimates (tested).
    """
    patients, codes = np.unique(rows["patient_id"].to_numpy(str), return_inverse=True)
    n_patients = patients.size
    w = np.asarray(weights, dtype=float)
    if w.ndim != 2 or w.shape[1] != n_patients:
        raise ValueError(f"weights must have shape (n_resamples, {n_patients}), got {w.shape}")
    diff = rows[list(PRED_COLUMNS)].to_numpy(float) - rows[list(REF_COLUMNS)].to_numpy(float)
    centre = diff.mean(axis=0)
    dc = diff - centre
    s1_p = np.zeros((n_patients, dc.shape[1]))
    s2_p = np.zeros_like(s1_p)
    abs_p = np.zeros_like(s1_p)
    np.add.at(s1_p, codes, dc)
    np.add.at(s2_p, codes, dc**2)
    np.add.at(abs_p, codes, np.abs(diff))
    n_p = np.bincount(codes, minlength=n_patients).astype(float)
    cell = (rows["ref_rank"].to_numpy(int) - 1) * len(RANKS) + (rows["pred_rank"].to_numpy(int) - 1)
    conf_p = np.zeros((n_patients, len(RANKS) ** 2))
    np.add.at(conf_p, (codes, cell), 1.0)

    n = w @ n_p  # scans per resample (> 0 for a bootstrap draw: every patient has a scan)
    s1, s2 = w @ s1_p, w @ s2_p
    with np.errstate(invalid="ignore", divide="ignore"):
        ss = np.clip(s2 - s1**2 / n[:, None], 0.0, None)  # sum of squared deviations from the resample mean
        sd1 = np.where(n[:, None] >= 2, np.sqrt(ss / (n[:, None] - 1.0)), np.nan)
        sd0 = np.sqrt(ss / n[:, None])
        mean = centre + s1 / n[:, None]
        mae = (w @ abs_p) / n[:, None]
    conf = (w @ conf_p).reshape(len(w), len(RANKS), len(RANKS))
    return {
        "mean": mean,
        "sd": sd1,
        "mae": mae,
        "confusion": conf,
        "kappa_unweighted": kappa_from_confusion(conf, None),
        "kappa_linear": kappa_from_confusion(conf, "linear"),
        "ba_bias": mean[:, -1],
        "ba_sd": sd0[:, -1],
        "ba_loa_lower": mean[:, -1] - BA_SD_LIMIT * sd0[:, -1],
        "ba_loa_upper": mean[:, -1] + BA_SD_LIMIT * sd0[:, -1],
    }


def bootstrap_cis(rows: pd.DataFrame, n_bootstrap: int, seed: int, cohort: str) -> dict[str, Any]:
    """95 % percentile CIs of one (experiment, cohort); every CI ``None`` when ``n_bootstrap == 0``.

    Keys: ``mean_error`` (score column -> CI), ``kappa_unweighted``,
    ``kappa_linear``, ``ba_bias``, ``ba_loa_lower``, ``ba_loa_upper``; plus
    ``undefined`` (statistic -> number of resamples where it was undefined
    and therefore left out of its CI).
    """
    keys = ("kappa_unweighted", "kappa_linear", "ba_bias", "ba_loa_lower", "ba_loa_upper")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if n_bootstrap == 0 or len(rows) == 0:
        return {"mean_error": dict.fromkeys(SCORE_COLUMNS), **dict.fromkeys(keys), "undefined": {}}
    n_patients = rows["patient_id"].nunique()
    dist = group_statistics(rows, resample_weights(n_patients, n_bootstrap, cohort_rng(seed, cohort)))
    out: dict[str, Any] = {"mean_error": {c: _ci(dist["mean"][:, i]) for i, c in enumerate(SCORE_COLUMNS)}}
    out.update({k: _ci(dist[k]) for k in keys})
    out["undefined"] = {k: int(np.sum(~np.isfinite(dist[k]))) for k in keys}
    return out


# ------------------------------------------------------------------------------------------- metrics


def _cohort_metrics(
    rows: pd.DataFrame, n_bootstrap: int, seed: int, cohort: str
) -> tuple[dict[str, Any], dict[str, int]]:
    """The metrics.json block of one (experiment, cohort), and the undefined-resample counts."""
    cis = bootstrap_cis(rows, n_bootstrap, seed, cohort)
    mean_errors = {}
    for column in SCORE_COLUMNS:
        me, sd = mean_error(rows[f"pred_{column}"], rows[f"ref_{column}"])
        mean_errors[column] = {"mean": me, "sd": sd, "ci95": cis["mean_error"][column]}
    ba = bland_altman(rows["pred_total"], rows["ref_total"])
    return {
        "n_scans": int(len(rows)),
        "n_patients": int(rows["patient_id"].nunique()),
        "mean_error": mean_errors,
        "mean_absolute_error": {
            c: mean_absolute_error(rows[f"pred_{c}"], rows[f"ref_{c}"]) for c in SCORE_COLUMNS
        },
        "kappa": {
            "unweighted": {
                "value": cohen_kappa(rows["ref_rank"], rows["pred_rank"]),
                "ci95": cis["kappa_unweighted"],
            },
            "linear": {
                "value": cohen_kappa(rows["ref_rank"], rows["pred_rank"], weights="linear"),
                "ci95": cis["kappa_linear"],
            },
        },
        "confusion": {
            "labels": list(RANK_LABELS),
            "matrix": confusion(rows["ref_rank"], rows["pred_rank"]).astype(int).tolist(),
        },
        "bland_altman": {
            **ba,
            "bias_ci95": cis["ba_bias"],
            "loa_lower_ci95": cis["ba_loa_lower"],
            "loa_upper_ci95": cis["ba_loa_upper"],
        },
    }, cis["undefined"]


def paper_block() -> dict[str, Any]:
    """The paper's reported numbers (``cacs.paper_reference``) as plain JSON (tuples -> lists)."""
    return {
        "table1": {
            m: {c: {a: list(v) for a, v in arteries.items()} for c, arteries in cohorts.items()}
            for m, cohorts in TABLE1.items()
        },
        "kappa": {m: dict(v) for m, v in KAPPA.items()},
        "bland_altman_limits": {m: list(v) for m, v in BLAND_ALTMAN_LIMITS.items()},
    }


def _json_safe(obj: Any) -> Any:
    """numpy scalars -> Python, non-finite floats -> None, tuples -> lists (json ``allow_nan=False`` safe)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _finite_or_none(obj)
    return obj


def check_data_source(data_source: str) -> str:
    if data_source not in DATA_SOURCES:
        raise ValueError(f"data_source must be one of {list(DATA_SOURCES)}, got {data_source!r}")
    return data_source


def compute_metrics(preds: pd.DataFrame, n_bootstrap: int, seed: int, data_source: str) -> dict[str, Any]:
    """The metrics.json dictionary of the contract for a predictions frame (validated here too).

    Experiments appear in Table 1's order; a cohort without test scans is
    absent.  Resamples where a statistic is undefined are left out of its CI
    (logged with their count).
    """
    check_data_source(data_source)
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    preds = validate_predictions(preds)
    experiments: dict[str, Any] = {}
    for name in experiment_order(preds["experiment"].unique()):
        rows = preds[preds["experiment"] == name]
        cohorts = {}
        for cohort in COHORTS:
            part = rows[rows["cohort"] == cohort]
            if part.empty:
                continue
            cohorts[cohort], undefined = _cohort_metrics(part, int(n_bootstrap), int(seed), cohort)
            for stat, count in undefined.items():
                if count:
                    log.warning("%s/%s: %s undefined in %d of %d resamples (left out of its CI)",
                                name, cohort, stat, count, n_bootstrap)
        experiments[name] = {"method": method_name(name), "model": str(rows["model"].iloc[0]), "cohorts": cohorts}
    return _json_safe(
        {
            "data_source": data_source,
            "n_bootstrap": int(n_bootstrap),
            "seed": int(seed),
            "experiments": experiments,
            "paper": paper_block(),
        }
    )


@dataclass(frozen=True)
class EvaluateParams:
    """Config section ``evaluate``: bootstrap of ``cacs evaluate`` and the examples of ``cacs figures`` (Figure 5)."""

    n_bootstrap: int = 1000  # resamples (patients) for the 95 % CIs; 0 = none
    seed: int = 42  # bootstrap seed
    n_examples: int = 4  # test scans in Figure 5

    def __post_init__(self) -> None:
        if self.n_bootstrap < 0 or self.seed < 0 or self.n_examples < 1:
            raise ValueError("evaluate.n_bootstrap and evaluate.seed must be >= 0, evaluate.n_examples >= 1")


def run_evaluate(
    prediction_csvs: Sequence[str | Path], out_dir: str | Path, n_bootstrap: int, seed: int, data_source: str
) -> dict[str, Any]:
    """``cacs evaluate``: read the prediction tables, write metrics.json and the paper's tables.

    Every file is written atomically; metrics.json last, so its presence
    means the tables beside it are complete.  Returns the metrics dict.
    """
    check_data_source(data_source)
    start = time.perf_counter()
    preds = load_predictions(prediction_csvs)
    metrics = compute_metrics(preds, n_bootstrap=n_bootstrap, seed=seed, data_source=data_source)
    json.dumps(metrics, allow_nan=False)  # fails loudly here rather than writing NaN into metrics.json
    out = Path(out_dir)
    written = write_tables(metrics, out)
    write_json(out / "metrics.json", metrics)
    log.info("evaluate: %d scans, %d experiments, %d tables in %.2f s", len(preds), len(metrics["experiments"]),
             len(written), time.perf_counter() - start)
    return metrics
