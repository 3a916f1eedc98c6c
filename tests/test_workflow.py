"""End-to-end: the real Snakemake DAG on the `tiny` preset, inside pytest.

Runs from a scratch working directory with the repository's Snakefile, the
way a user reruns the pipeline elsewhere, and checks the outputs and that a
second invocation has nothing left to do.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _snakemake(workdir: Path, *args: str, timeout: int = 480) -> subprocess.CompletedProcess:
    cmd = [
        str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(REPO / "config" / "tiny.yaml"), "--cores", "2", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path):
    run = _snakemake(tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    cases = pd.read_csv(tmp_path / "results" / "split" / "cases.csv", dtype={"source_id": str})
    assert set(cases.cohort) == {"gated", "nongated"}
    assert set(cases.split) <= {"train", "val", "test"} and cases.split.notna().all()
    # Paired scans never cross splits.
    assert (cases.groupby("patient_id").split.nunique() == 1).all()
    for path in cases.image:
        assert (tmp_path / path).exists()
    qc = pd.read_csv(tmp_path / "results" / "ingest" / "qc.csv")
    assert {"case_id", "file", "problem", "action"} <= set(qc.columns)
    assert len(qc) > 0  # the synthetic cohort plants COCA's traps
    segthor = pd.read_csv(tmp_path / "results" / "ingest" / "segthor.csv")
    assert (segthor.split == "train").sum() == 4
    assert list((tmp_path / "results" / "logs").rglob("*.log"))
    # Localize: held-out Dice table, one box per scan, crops on the model grid, and
    # every reference calcium voxel and score point of every gated scan kept.
    loc = tmp_path / "results" / "localizer"
    assert len(pd.read_csv(loc / "dice.csv")) >= 1
    boxes = pd.read_csv(loc / "boxes.csv")
    assert set(boxes.case_id) == set(cases.case_id)
    index = pd.read_csv(tmp_path / "results" / "crops" / "index.csv")
    assert set(index.case_id) == set(cases.case_id)
    assert (index.fallback == ~boxes.set_index("case_id").loc[index.case_id, "plausible"].to_numpy()).all()
    containment = pd.read_csv(loc / "containment.csv").set_index("case_id")
    assert (containment[["calcium_voxels_in_crop", "score_in_crop"]] == 1.0).all().all()
    assert containment.loc["ALL", "score_in_crop"] == 1.0
    # Train: every experiment of the config has a model and a per-epoch metrics table.
    for experiment in ("spss", "spss_wo_ssl", "spss_ce", "convnet"):
        metrics = pd.read_csv(tmp_path / "results" / "models" / experiment / "metrics.csv")
        assert metrics.epoch.tolist() == [1, 2]
        assert metrics.val_mae_total.notna().all()
        assert (tmp_path / "results" / "models" / experiment / "model.pt").exists()
    again = _snakemake(tmp_path, "--dry-run")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def test_bad_config_key_stops_the_run_naming_it(tmp_path):
    run = _snakemake(tmp_path, "--dry-run", "--config", "strickt=true")
    assert run.returncode != 0
    assert "strickt" in run.stdout + run.stderr
