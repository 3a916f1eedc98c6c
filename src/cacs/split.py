"""Patient-level, stratified, seeded train/val/test split of ``cases.csv``.

Why patient-level: a non-gated scan and its paired gated scan show the same
calcium; if they fell into different splits the model would be tested on a
patient it was trained on.  Every row of one ``patient_id`` therefore gets the
same split.

Why stratified: the cohorts are small and skewed (many zero scores, few rank V
patients, gated and non-gated scans in different numbers), so a plain random
split can easily leave the test set without, say, any non-gated rank V
patient.  Patients are grouped into strata by (the set of cohorts they have,
the CVD rank of their highest total score) and every stratum is spread over
the splits in proportion to the fractions.

Why deterministic: the split is an input of every later stage; the same
``cases.csv`` and seed must give the same split on every machine, whatever
the row order of the table (patients are sorted by id before the seeded
shuffle).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cacs.cvd import cvd_rank
from cacs.io.atomic import write_csv

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_COLUMNS: tuple[str, ...] = ("case_id", "patient_id", "cohort", "LM", "LCX", "LAD", "RCA", "total")


@dataclass(frozen=True)
class SplitParams:
    """Config section ``split``: patient shares of train / val / test (summing to 1) and the seed."""

    train: float = 0.6
    val: float = 0.15
    test: float = 0.25
    seed: int = 42

    def __post_init__(self) -> None:
        check_fractions(self.train, self.val, self.test)


def check_fractions(train: float, val: float, test: float) -> tuple[float, float, float]:
    """Fractions must each lie in [0, 1] and sum to 1 (within 1e-6)."""
    fractions = (train, val, test)
    shown = ", ".join(f"{name}={value}" for name, value in zip(SPLITS, fractions, strict=True))
    if not all(math.isfinite(f) and 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError(f"split fractions must each lie in [0, 1]: {shown}")
    total = sum(fractions)
    if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=1e-6):
        raise ValueError(f"split fractions {shown} must sum to 1 (they sum to {total:g})")
    return fractions


def split_sizes(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Patients per split: largest remainder, then at least one per positive fraction.

    Largest remainder keeps the overall counts within one patient of
    ``n * fraction``.  With at least as many patients as positive fractions,
    a split asked for (fraction > 0) never comes out empty: it takes one
    patient from the currently largest split.  Ties go to the earlier split.
    """
    raw = [n * f for f in fractions]
    sizes = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - sizes[i]), i))
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    positive = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(positive):
        for i in positive:
            if sizes[i] == 0:
                donor = max(range(len(sizes)), key=lambda j: (sizes[j], -j))
                sizes[donor] -= 1
                sizes[i] += 1
    return sizes


def _allocate(n: int, sizes: list[int]) -> np.ndarray:
    """Split index for each of ``n`` ordered positions, spreading splits evenly.

    Systematic allocation: position ``k`` goes to the split that is furthest
    behind its quota ``sizes[s] * (k + 1) / n`` (and not yet full).  Any
    contiguous run of positions, e.g. one stratum of the stratum-sorted list,
    therefore receives each split in proportion to its size, and the totals
    are exactly ``sizes``.
    """
    counts = [0] * len(sizes)
    out = np.empty(n, dtype=np.int64)
    for k in range(n):
        deficit = [sizes[s] * (k + 1) / n - counts[s] if counts[s] < sizes[s] else -math.inf for s in range(len(sizes))]
        s = int(np.argmax(deficit))  # first maximum: deterministic ties
        out[k] = s
        counts[s] += 1
    return out


def _read_cases(cases_csv: Path) -> pd.DataFrame:
    """Every column as text, so the output repeats the input's values verbatim."""
    cases = pd.read_csv(cases_csv, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in cases.columns]
    if missing:
        raise ValueError(f"{cases_csv}: missing column(s) {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)})")
    empty = cases.index[cases.patient_id.str.strip() == ""]
    if len(empty):
        raise ValueError(f"{cases_csv}: empty patient_id in case(s) {', '.join(cases.case_id[empty].tolist()[:5])}")
    return cases


def _patient_strata(cases: pd.DataFrame, cases_csv: Path) -> pd.DataFrame:
    """One row per patient (sorted by id): its stratum key."""
    totals = pd.to_numeric(cases.total, errors="coerce")
    bad = cases.case_id[~np.isfinite(totals) | (totals < 0)]
    if len(bad):
        shown = ", ".join(bad.tolist()[:5])
        raise ValueError(f"{cases_csv}: column total is not a finite score >= 0 for case(s) {shown}")
    frame = pd.DataFrame({"patient_id": cases.patient_id, "cohort": cases.cohort, "total": totals})
    patients = frame.groupby("patient_id", sort=True).agg(
        cohorts=("cohort", lambda c: "+".join(sorted(set(c)))),
        max_total=("total", "max"),
    )
    patients["rank"] = cvd_rank(patients.max_total.to_numpy())
    patients["stratum"] = patients.cohorts + "/" + patients["rank"].astype(str)
    return patients


def assign_splits(patients: pd.DataFrame, fractions: tuple[float, float, float], seed: int) -> pd.Series:
    """Split name per patient id, given a table indexed by patient id with a ``stratum`` column.

    The seeded shuffle decides who goes where inside a stratum; the stable
    sort by stratum then keeps each stratum contiguous for the systematic
    allocation.  The patients are sorted by id first, so the outcome does
    not depend on the input order.
    """
    patients = patients.sort_index()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(patients))
    shuffled = patients.iloc[order]
    shuffled = shuffled.iloc[np.argsort(shuffled.stratum.to_numpy(), kind="stable")]
    index = _allocate(len(shuffled), split_sizes(len(shuffled), fractions))
    return pd.Series(np.asarray(SPLITS)[index], index=shuffled.index, name="split").sort_index()


def split_cases(cases_csv: Path, out_csv: Path, *, train: float, val: float, test: float, seed: int) -> pd.DataFrame:
    """Add a ``split`` column (train|val|test) to ``cases_csv``; write it to ``out_csv``.

    All rows of one patient share a split; strata are (cohorts of the patient,
    CVD rank of its highest total); the result depends only on the table's
    content and ``seed``.  Returns the written frame.
    """
    fractions = check_fractions(train, val, test)
    cases_csv, out_csv = Path(cases_csv), Path(out_csv)
    cases = _read_cases(cases_csv)
    if "split" in cases.columns:
        log.warning("%s already has a split column; replacing it", cases_csv)
        cases = cases.drop(columns="split")
    if len(cases) == 0:
        log.warning("%s has no cases; writing an empty split table", cases_csv)
        cases["split"] = pd.Series(dtype=str)
        write_csv(out_csv, cases)
        return cases
    patients = _patient_strata(cases, cases_csv)
    split_of = assign_splits(patients, fractions, seed)
    cases["split"] = cases.patient_id.map(split_of)
    write_csv(out_csv, cases)
    _log_summary(cases, patients.assign(split=split_of))
    return cases


def _log_summary(cases: pd.DataFrame, patients: pd.DataFrame) -> None:
    """Counts per split: patients, and scans per cohort; strata per split at debug level."""
    scans = pd.crosstab(cases.split, cases.cohort).reindex(list(SPLITS), fill_value=0)
    n_patients = patients.split.value_counts().reindex(list(SPLITS), fill_value=0)
    for name in SPLITS:
        per_cohort = ", ".join(f"{c} {scans.loc[name, c]}" for c in scans.columns)
        log.info("split %-5s: %d patients; scans: %s", name, n_patients[name], per_cohort)
    strata = pd.crosstab(patients.stratum, patients.split).reindex(columns=list(SPLITS), fill_value=0)
    log.debug("patients per stratum (cohorts/CVD rank) and split:\n%s", strata.to_string())
