"""Checking prediction frames for the figures and choosing which experiments a figure shows.

The figures consume the prediction contract (one CSV per experiment, one row
per test scan).  Files are read by :func:`cacs.prediction_table.load_predictions`,
the loader ``cacs evaluate`` uses too (re-exported here), so a malformed table
fails with the file's name instead of deep inside a plot.  Frames passed in
memory are checked by :func:`check_predictions`, which needs only the columns
the figures read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

from cacs.prediction_table import COHORTS, PATH_COLUMNS, PRED_COLUMNS, REF_COLUMNS, load_predictions

__all__ = [
    "COHORT_WORDS",
    "PAPER_ORDER",
    "REQUIRED_COLUMNS",
    "check_predictions",
    "cohort_words",
    "experiment_row",
    "load_predictions",
    "ordered_experiments",
    "reference_table",
    "spss_experiment",
]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "case_id",
    "patient_id",
    "cohort",
    "experiment",
    "model",
    *REF_COLUMNS,
    *PRED_COLUMNS,
    "ref_rank",
    "pred_rank",
    *PATH_COLUMNS,
)
"""Columns the figures read (the contract has a few more, e.g. ``split`` and ``fallback``)."""

COHORT_WORDS: dict[str, str] = {"gated": "gated", "nongated": "non-gated"}

PAPER_ORDER: tuple[str, ...] = ("convnet", "spss_wo_ssl", "spss")
"""Order of the methods in the paper's Figures 6 and 7; other experiments follow."""


def _normalise(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: predictions lack columns {missing}")
    frame = frame.copy()
    for column in ("case_id", "patient_id", "cohort", "experiment", "model", *PATH_COLUMNS):
        # Empty cells (non-gated ref_labels, convnet label_map) read as NaN: make them "".
        frame[column] = ["" if pd.isna(v) else str(v) for v in frame[column]]
    bad = sorted(set(frame["cohort"]) - set(COHORTS))
    if bad:
        raise ValueError(f"{source}: cohort must be 'gated' or 'nongated', got {bad}")
    return frame


def check_predictions(frame: pd.DataFrame, source: str = "predictions frame") -> pd.DataFrame:
    """Validate a predictions frame passed in memory; returns a normalised copy."""
    return _normalise(frame, source)


def ordered_experiments(frame: pd.DataFrame, expected: Sequence[str] = PAPER_ORDER) -> list[str]:
    """Experiments present, the paper's ones first in its order, then the rest as they appear.

    An expected experiment that is absent is logged and skipped: a run that
    configured fewer ablations still gets its figures.
    """
    present = list(dict.fromkeys(frame["experiment"]))
    for name in expected:
        if name not in present:
            log.warning("experiment %r has no predictions: skipped in the figure", name)
    return [e for e in expected if e in present] + [e for e in present if e not in expected]


def reference_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per scan with its reference columns (identical in every experiment's table)."""
    columns = ["case_id", "patient_id", "cohort", *REF_COLUMNS, "ref_rank", "image", "ref_labels"]
    return frame.drop_duplicates("case_id")[columns].reset_index(drop=True)


def experiment_row(frame: pd.DataFrame, experiment: str, case_id: str) -> pd.Series | None:
    """The prediction row of one scan in one experiment, or None when that experiment lacks it."""
    rows = frame[(frame["experiment"] == experiment) & (frame["case_id"] == case_id)]
    return None if rows.empty else rows.iloc[0]


def spss_experiment(frame: pd.DataFrame) -> str | None:
    """``spss`` if it has label maps, else the first SPSS-type experiment that has them."""
    with_maps = frame[(frame["model"] == "spss") & (frame["label_map"] != "")]
    names = list(dict.fromkeys(with_maps["experiment"]))
    if "spss" in names:
        return "spss"
    return names[0] if names else None


def cohort_words(cohort: str) -> str:
    """Display words of a cohort; ``ValueError`` for anything but 'gated' / 'nongated'."""
    if cohort not in COHORT_WORDS:
        raise ValueError(f"cohort must be 'gated' or 'nongated', got {cohort!r}")
    return COHORT_WORDS[cohort]
