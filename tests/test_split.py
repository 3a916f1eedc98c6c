"""Patient-level stratified split (cacs.split): pairing, determinism, proportions, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cacs.cli import main as cli_main
from cacs.cvd import cvd_rank
from cacs.split import SPLITS, split_cases, split_sizes

SCORE_BANDS = (0.0, 4.0, 50.0, 250.0, 900.0)  # one total per CVD rank I..V
BAND_P = (0.43, 0.08, 0.2, 0.16, 0.13)  # roughly COCA's rank mix


def _row(case_id: str, patient: str, cohort: str, total: float) -> dict:
    return {
        "case_id": case_id,
        "patient_id": patient,
        "cohort": cohort,
        "source_id": "007",  # must survive verbatim (read as text)
        "labels": "" if cohort == "nongated" else f"{case_id}_labels.nii.gz",
        "LM": 0.0,
        "LCX": 0.0,
        "LAD": total,
        "RCA": 0.0,
        "total": total,
    }


def paired_table(n_paired: int = 30, n_gated_only: int = 10, seed: int = 0) -> pd.DataFrame:
    """Synthetic-cohort-like table: paired patients (gated + non-gated) plus gated-only ones."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_paired):
        total = float(rng.choice(SCORE_BANDS, p=BAND_P))
        rows.append(_row(f"gated-{i}", f"P{i}", "gated", total))
        # non-gated reference comes from the gated scan, so usually the same
        rows.append(_row(f"nongated-{i}", f"P{i}", "nongated", total))
    for i in range(n_paired, n_paired + n_gated_only):
        rows.append(_row(f"gated-{i}", f"P{i}", "gated", float(rng.choice(SCORE_BANDS, p=BAND_P))))
    return pd.DataFrame(rows)


def paper_table(seed: int = 0) -> pd.DataFrame:
    """The paper's COCA: 447 gated + 212 non-gated scans in 659 unpaired patients."""
    rng = np.random.default_rng(seed)
    rows = [_row(f"gated-{i}", f"G{i}", "gated", float(rng.choice(SCORE_BANDS, p=BAND_P))) for i in range(447)]
    rows += [_row(f"nongated-{i}", f"N{i}", "nongated", float(rng.choice(SCORE_BANDS, p=BAND_P))) for i in range(212)]
    return pd.DataFrame(rows)


def run_split(tmp_path: Path, table: pd.DataFrame, name: str = "cases", **kw) -> pd.DataFrame:
    src, out = tmp_path / f"{name}.csv", tmp_path / f"{name}_split.csv"
    table.to_csv(src, index=False)
    fractions = {"train": 0.6, "val": 0.15, "test": 0.25, "seed": 42} | kw
    split_cases(src, out, **fractions)
    return pd.read_csv(out, dtype=str, keep_default_na=False)


def strata(frame: pd.DataFrame) -> pd.Series:
    """Stratum of each patient, as cacs.split defines it."""
    totals = frame.assign(total=frame.total.astype(float))
    per = totals.groupby("patient_id").agg(
        cohorts=("cohort", lambda c: "+".join(sorted(set(c)))), max_total=("total", "max")
    )
    return per.cohorts + "/" + pd.Series(cvd_rank(per.max_total.to_numpy()), index=per.index).astype(str)


def test_pairs_never_cross_splits(tmp_path):
    out = run_split(tmp_path, paired_table())
    per_patient = out.groupby("patient_id").split.nunique()
    assert (per_patient == 1).all()
    assert set(out.split) == set(SPLITS)
    # both scans of each paired patient are present and share the split
    paired = out[out.patient_id.isin(out.patient_id[out.cohort == "nongated"])]
    assert (paired.groupby("patient_id").cohort.nunique() == 2).all()


def test_output_is_input_plus_split_column_verbatim(tmp_path):
    table = paired_table()
    out = run_split(tmp_path, table)
    assert list(out.columns) == [*table.columns, "split"]
    assert out.case_id.tolist() == table.case_id.tolist()  # row order kept
    assert (out.source_id == "007").all()
    assert (out.labels[out.cohort == "nongated"] == "").all()


def test_deterministic_and_independent_of_row_order(tmp_path):
    table = paired_table()
    first = run_split(tmp_path, table, "a").set_index("case_id").split
    again = run_split(tmp_path, table, "b").set_index("case_id").split
    shuffled = table.sample(frac=1.0, random_state=3).reset_index(drop=True)
    reordered = run_split(tmp_path, shuffled, "c").set_index("case_id").split
    pd.testing.assert_series_equal(first, again)
    pd.testing.assert_series_equal(first, reordered.loc[first.index])
    other_seed = run_split(tmp_path, table, "d", seed=7).set_index("case_id").split
    assert not other_seed.loc[first.index].equals(first)


def test_paper_sized_cohort_proportions(tmp_path):
    table = paper_table()
    fractions = {"train": 0.67, "val": 0.10, "test": 0.23}
    out = run_split(tmp_path, table, **fractions)
    n = out.patient_id.nunique()
    assert n == 659
    counts = out.groupby("split").patient_id.nunique()
    for name, f in fractions.items():
        assert abs(counts[name] - n * f) <= 1, (name, counts[name], n * f)
    assert counts["test"] == 152  # the paper's test set size
    # each cohort is split in about the same proportions
    share = pd.crosstab(out.cohort, out.split, normalize="index")
    for name, f in fractions.items():
        assert (share[name] - f).abs().max() < 0.02, share
    # and so is each stratum (cohorts x CVD rank), within 2 patients
    per_patient = out.drop_duplicates("patient_id").set_index("patient_id").split
    table_strata = strata(out)
    for stratum, members in table_strata.groupby(table_strata):
        got = per_patient.loc[members.index].value_counts()
        for name, f in fractions.items():
            assert abs(got.get(name, 0) - len(members) * f) <= 2, (stratum, name, got.to_dict())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_all_strata_represented(tmp_path, seed):
    """Every stratum large enough to feed each split (m * 0.15 >= 1.5) reaches all three."""
    table = paired_table(n_paired=80, n_gated_only=40, seed=seed)
    out = run_split(tmp_path, table, seed=seed)
    per_patient = out.drop_duplicates("patient_id").set_index("patient_id").split
    table_strata = strata(out)
    assert table_strata.nunique() >= 8  # both cohort sets x most ranks
    for stratum, members in table_strata.groupby(table_strata):
        got = set(per_patient.loc[members.index])
        if len(members) >= 10:
            assert got == set(SPLITS), (stratum, len(members), got)


@pytest.mark.parametrize(
    ("n", "fractions", "expected"),
    [
        (3, (0.9, 0.05, 0.05), [1, 1, 1]),
        (8, (0.6, 0.15, 0.25), [5, 1, 2]),
        (659, (0.67, 0.10, 0.23), [441, 66, 152]),
        (10, (0.5, 0.0, 0.5), [5, 0, 5]),
        (2, (0.6, 0.15, 0.25), [1, 0, 1]),
    ],
)
def test_split_sizes(n, fractions, expected):
    assert split_sizes(n, fractions) == expected


def test_small_cohort_every_split_non_empty(tmp_path):
    out = run_split(tmp_path, paired_table(n_paired=3, n_gated_only=0), train=0.9, val=0.05, test=0.05)
    assert sorted(out.drop_duplicates("patient_id").split) == sorted(SPLITS)


def test_zero_fraction_gives_empty_split(tmp_path):
    out = run_split(tmp_path, paired_table(), train=0.7, val=0.0, test=0.3)
    assert set(out.split) == {"train", "test"}


def test_logs_count_summary(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cacs.split"):
        run_split(tmp_path, paired_table())
    text = caplog.text
    for name in SPLITS:
        assert f"split {name}" in text
    assert "gated" in text and "nongated" in text


@pytest.mark.parametrize(
    "fractions",
    [
        {"train": 0.6, "val": 0.2, "test": 0.25},
        {"train": 0.5, "val": 0.1, "test": 0.3},
        {"train": 1.2, "val": -0.1, "test": -0.1},
        {"train": float("nan"), "val": 0.5, "test": 0.5},
    ],
)
def test_bad_fractions_rejected(tmp_path, fractions):
    src = tmp_path / "cases.csv"
    paired_table().to_csv(src, index=False)
    with pytest.raises(ValueError, match="train=.*val=.*test="):
        split_cases(src, tmp_path / "out.csv", seed=0, **fractions)
    assert not (tmp_path / "out.csv").exists()


def test_missing_columns_named(tmp_path):
    src = tmp_path / "cases.csv"
    paired_table().drop(columns=["patient_id", "RCA"]).to_csv(src, index=False)
    with pytest.raises(ValueError) as err:
        split_cases(src, tmp_path / "out.csv", train=0.6, val=0.15, test=0.25, seed=0)
    msg = str(err.value)
    assert str(src) in msg and "patient_id" in msg and "RCA" in msg


def test_bad_total_named(tmp_path):
    table = paired_table()
    table["total"] = table["total"].astype(object)
    table.loc[3, "total"] = "n/a"
    src = tmp_path / "cases.csv"
    table.to_csv(src, index=False)
    with pytest.raises(ValueError, match=f"{table.case_id[3]}"):
        split_cases(src, tmp_path / "out.csv", train=0.6, val=0.15, test=0.25, seed=0)


def test_existing_split_column_replaced(tmp_path):
    table = paired_table().assign(split="train")
    out = run_split(tmp_path, table)
    assert list(out.columns).count("split") == 1
    assert set(out.split) == set(SPLITS)


def test_cli_split(tmp_path):
    src, out = tmp_path / "cases.csv", tmp_path / "split.csv"
    paired_table().to_csv(src, index=False)
    args = ["split", "--cases", str(src), "--out", str(out), "--train", "0.6", "--val", "0.15", "--test", "0.25"]
    assert cli_main([*args, "--seed", "42"]) == 0
    assert set(pd.read_csv(out).split) == set(SPLITS)
    # bad fractions: one clear error, exit status 2
    bad = ["split", "--cases", str(src), "--out", str(out), "--train", "0.9", "--val", "0.2", "--test", "0.1"]
    assert cli_main(bad) == 2
