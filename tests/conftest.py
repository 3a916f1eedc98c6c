"""Shared fixtures: one tiny synthetic cohort per test session, ingested once.

Tests that mutate input copy the COCA tree first, so the shared cohort stays
pristine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from cacs.ingest import IngestOptions, run_ingest
from cacs.synth.cohort import SynthOptions, generate_cohort

TINY_SEED = 7
REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


@dataclass
class Cohort:
    coca: Path
    segthor: Path
    truth: Path

    @property
    def truth_scores(self) -> pd.DataFrame:
        return pd.read_csv(self.truth / "scores.csv")


@dataclass
class Ingested:
    out: Path
    tables: dict[str, pd.DataFrame]
    qc: dict[str, pd.DataFrame]


def make_cohort(root: Path, seed: int = TINY_SEED, **kwargs) -> Cohort:
    opts = SynthOptions(preset="tiny", seed=seed, **kwargs)
    cohort = Cohort(root / "coca", root / "segthor", root / "truth")
    generate_cohort(opts, cohort.coca, cohort.segthor, cohort.truth)
    return cohort


def ingest_all(cohort: Cohort, out: Path, opts: IngestOptions | None = None, cohorts=("gated", "nongated", "segthor")):
    opts = opts or IngestOptions(paired_ids=True)
    tables, qcs = {}, {}
    for name in cohorts:
        root = cohort.segthor if name == "segthor" else cohort.coca
        table, qc = out / f"{name}.csv", out / f"qc_{name}.csv"
        run_ingest(name, root, out / name, table, qc, opts)
        tables[name] = pd.read_csv(table, dtype={"source_id": str})
        qcs[name] = pd.read_csv(qc, dtype=str, keep_default_na=False)
    return Ingested(out, tables, qcs)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Cohort:
    return make_cohort(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_ingested(tiny_cohort, tmp_path_factory) -> Ingested:
    return ingest_all(tiny_cohort, tmp_path_factory.mktemp("ingest"))


@pytest.fixture()
def coca_copy(tiny_cohort, tmp_path) -> Path:
    """A private copy of the tiny COCA tree that a test may damage."""
    dest = tmp_path / "coca"
    shutil.copytree(tiny_cohort.coca, dest)
    return dest


def snakemake_tiny(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """The repository's workflow on config/tiny.yaml, run from ``workdir`` as a user would."""
    cmd = [
        str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(REPO / "config" / "tiny.yaml"), "--cores", "2", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@dataclass
class TinyRun:
    workdir: Path
    process: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """One local run of the whole tiny pipeline, shared by the end-to-end and the SLURM tests."""
    workdir = tmp_path_factory.mktemp("tiny-run")
    return TinyRun(workdir, snakemake_tiny(workdir))
