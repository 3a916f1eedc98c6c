"""The prediction table contract: what ``cacs predict`` writes and evaluate / figures read.

Kept in a module of its own, free of torch, because the statistics and
figures run in the plotting environment (envs/plot.yaml), which has no torch.
Reading and checking the tables lives here too, beside the columns it checks:
``cacs evaluate`` and ``cacs figures`` load the same files, so they share one
loader and a malformed table fails the same way, naming its file, in both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cacs import SCORE_COLUMNS
from cacs.cvd import RANKS

COHORTS: tuple[str, ...] = ("gated", "nongated")
"""Values of the ``cohort`` column, in the order tables and figures show them."""

REF_COLUMNS: tuple[str, ...] = tuple(f"ref_{c}" for c in SCORE_COLUMNS)
PRED_COLUMNS: tuple[str, ...] = tuple(f"pred_{c}" for c in SCORE_COLUMNS)
PATH_COLUMNS: tuple[str, ...] = ("image", "ref_labels", "label_map")
"""Native scan, its reference label map (gated only, else empty), predicted label map (SPSS-type only, else empty):
all on the scan's own grid, so they overlay."""

CONTRACT_COLUMNS: tuple[str, ...] = (
    "case_id",
    "patient_id",
    "cohort",
    "split",
    "experiment",
    "model",
    *REF_COLUMNS,
    *PRED_COLUMNS,
    "ref_rank",
    "pred_rank",
    *PATH_COLUMNS,
    "fallback",
)
"""One row per test scan, in this order; a writer may append more columns (``cacs predict`` adds ``ref_grid_*``
and ``ref_roundtrip_*``)."""


def validate_predictions(frame: pd.DataFrame, source: str = "predictions frame") -> pd.DataFrame:
    """Check a predictions frame against the contract; return a normalised copy.

    ``source`` names the file (or frame) in every error so the CLI's one-line
    message says which table is wrong.  Scores must be finite and >= 0, ranks
    integers 1..5, the cohort gated/nongated, and (experiment, case_id) unique.
    """
    missing = [c for c in CONTRACT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: predictions lack columns {missing}")
    frame = frame.copy()
    for column in ("case_id", "patient_id", "cohort", "split", "experiment", "model"):
        if frame[column].isna().any():
            raise ValueError(f"{source}: column {column!r} has empty cells")
        frame[column] = frame[column].astype(str)
    for column in PATH_COLUMNS:
        # empty cells (non-gated ref_labels, convnet label_map) read as NaN: make them ""
        frame[column] = frame[column].astype(object).fillna("").astype(str)
    bad = sorted(set(frame["cohort"]) - set(COHORTS))
    if bad:
        raise ValueError(f"{source}: cohort must be 'gated' or 'nongated', got {bad}")
    for column in (*REF_COLUMNS, *PRED_COLUMNS):
        values = pd.to_numeric(frame[column], errors="coerce").astype(float)
        bad_rows = ~np.isfinite(values.to_numpy()) | (values.to_numpy() < 0)
        if bad_rows.any():
            cases = frame.loc[bad_rows, "case_id"].head(5).tolist()
            raise ValueError(f"{source}: column {column!r} must hold finite scores >= 0 (bad in cases {cases})")
        frame[column] = values
    for column in ("ref_rank", "pred_rank"):
        values = pd.to_numeric(frame[column], errors="coerce").astype(float).to_numpy()
        bad_rows = ~np.isin(values, RANKS)
        if bad_rows.any():
            cases = frame.loc[bad_rows, "case_id"].head(5).tolist()
            raise ValueError(f"{source}: column {column!r} must hold CVD ranks 1..5 (bad in cases {cases})")
        frame[column] = values.astype(int)
    dup = frame.duplicated(["experiment", "case_id"], keep=False)
    if dup.any():
        pairs = sorted(set(zip(frame.loc[dup, "experiment"], frame.loc[dup, "case_id"], strict=True)))[:5]
        raise ValueError(f"{source}: duplicate (experiment, case_id) rows {pairs}")
    models = frame.groupby("experiment")["model"].nunique()
    if (models > 1).any():
        raise ValueError(f"{source}: experiment(s) {models[models > 1].index.tolist()} have more than one model")
    return frame


def load_predictions(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Concatenate the experiments' prediction CSVs into one validated frame.

    Each file is validated on its own (errors name it); then the union is
    checked again, so the same (experiment, case_id) in two files is an error
    that names both files.  ``case_id`` and ``patient_id`` are read as text, so
    an id such as ``0012`` keeps its zeros and matches the scan's file names.

    Raises:
        FileNotFoundError: a path is not a file (named).
        ValueError: no paths, an unreadable CSV, or a table breaking the contract (named).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no prediction tables given")
    frames = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such prediction table (run cacs predict first)")
        try:
            raw = pd.read_csv(path, dtype={"case_id": str, "patient_id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a readable CSV ({exc})") from exc
        frame = validate_predictions(raw, str(path))
        frame["_source"] = str(path)
        frames.append(frame)
    preds = pd.concat(frames, ignore_index=True)
    dup = preds.duplicated(["experiment", "case_id"], keep=False)
    if dup.any():
        files = sorted(set(preds.loc[dup, "_source"]))
        pairs = sorted(set(zip(preds.loc[dup, "experiment"], preds.loc[dup, "case_id"], strict=True)))
        raise ValueError(f"{', '.join(files)}: the same (experiment, case_id) in more than one prediction table, "
                         f"e.g. {pairs[:5]}")
    models = preds.groupby("experiment")["model"].nunique()
    if (models > 1).any():
        raise ValueError(f"experiment(s) {models[models > 1].index.tolist()} have more than one model across files")
    return preds.drop(columns="_source")
