"""End-to-end: the real Snakemake DAG on the `tiny` preset, inside pytest.

Runs from a scratch working directory with the repository's Snakefile, the
way a user reruns the pipeline elsewhere, and checks the outputs and that a
second invocation has nothing left to do.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from cacs.io.nifti import read_volume
from tests.conftest import REPO, SNAKEMAKE, TinyRun, snakemake_tiny


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tiny_run: TinyRun):
    run, tmp_path = tiny_run.process, tiny_run.workdir
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
        assert metrics.val_mae_total.notna().iloc[-1]  # the last epoch validates, whatever validate_every
        assert (tmp_path / "results" / "models" / experiment / "model.pt").exists()
    _check_paper_outputs(tmp_path)
    _check_infer_equals_pipeline(tmp_path)
    # The run wrote its HTML report itself (onsuccess), with every table and figure and its caption.
    html = (tmp_path / "results" / "report.html").read_text(errors="replace")
    for name in ("table1", "figure1_cac_examples", "figure7_confusion", "synthetic data"):
        assert name in html
    again = snakemake_tiny(tmp_path, "--dry-run")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def _check_paper_outputs(run: Path) -> None:
    """Predictions per experiment, metrics.json, tables and figures exist and agree."""
    test_cases = pd.read_csv(run / "results" / "split" / "cases.csv").query("split == 'test'")
    for experiment in ("spss", "spss_wo_ssl", "spss_ce", "convnet"):
        pred = pd.read_csv(run / "results" / "predictions" / experiment / "predictions.csv", keep_default_na=False)
        assert sorted(pred.case_id) == sorted(test_cases.case_id)
        assert ((pred.label_map != "") == (experiment != "convnet")).all()
    paper = run / "results" / "paper"
    metrics = json.loads((paper / "metrics.json").read_text())
    assert metrics["data_source"] == "synthetic"
    assert set(metrics["experiments"]) == {"spss", "spss_wo_ssl", "spss_ce", "convnet"}
    for stem in ("table1", "comparison", "kappa"):
        for ext in (".csv", ".md", ".tex"):
            assert (paper / f"{stem}{ext}").stat().st_size > 0
    for figure in ("figure1_cac_examples", "figure3_convergence", "figure4_kappa", "figure5_segmentation",
                   "figure6_bland_altman", "figure7_confusion"):  # fmt: skip
        assert (paper / f"{figure}.pdf").read_bytes()[:4] == b"%PDF"
        assert (paper / f"{figure}.png").stat().st_size > 10_000


def _check_infer_equals_pipeline(run: Path) -> None:
    """`cacs infer` on a scan's raw DICOM series gives the scores the pipeline predicted for it.

    The model files carry the run's settings (cacs.bundle): the gated scan is scored with only --model and
    --localizer, the non-gated one also with the run's --config (equal values, so accepted).
    """
    pred = pd.read_csv(run / "results" / "predictions" / "spss" / "predictions.csv", keep_default_na=False)
    cases = pd.read_csv(run / "results" / "split" / "cases.csv", dtype={"source_id": str}).set_index("case_id")
    coca = run / "resources" / "synthetic-tiny" / "coca"
    for cohort, folder in (("nongated", "deidentified_nongated"), ("gated", "Gated_release_final/patient")):
        row = pred[pred.cohort == cohort].iloc[0]
        scan = coca / folder / cases.loc[row.case_id, "source_id"]
        out = run / "infer" / row.case_id
        config = ["--config", str(REPO / "config" / "tiny.yaml")] if cohort == "nongated" else []
        done = subprocess.run(
            [str(SNAKEMAKE.with_name("cacs")), "infer", str(scan), *config,
             "--model", str(run / "results/models/spss/model.pt"),
             "--localizer", str(run / "results/localizer/model.pt"), "--out-dir", str(out), "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        record = json.loads(done.stdout)
        for key in ("LM", "LCX", "LAD", "RCA", "total"):
            assert record[key] == pytest.approx(row[f"pred_{key}"], abs=1e-4), (row.case_id, key)
        image, geometry = read_volume(out / "image.nii.gz")
        labels, label_geometry = read_volume(out / "labels.nii.gz")
        assert labels.shape == image.shape and label_geometry == geometry  # opens over the scan


def test_bad_config_key_stops_the_run_naming_it(tmp_path):
    run = snakemake_tiny(tmp_path, "--dry-run", "--config", "strickt=true")
    assert run.returncode != 0
    assert "strickt" in run.stdout + run.stderr


def _gpu_resources(run: subprocess.CompletedProcess) -> dict[str, set[str]]:
    """rule -> the `gpu=` values its jobs declare, from a dry run's job listing."""
    found: dict[str, set[str]] = {}
    rule = None
    for line in run.stdout.splitlines():
        if line.startswith("rule "):
            rule = line[5:].rstrip(":")
        elif "resources:" in line and "gpu=" in line and rule:
            found.setdefault(rule, set()).add(line.split("gpu=")[1].split(",")[0].strip())
    return found


def test_jobs_on_the_cpu_hold_no_gpu_resource(tmp_path, monkeypatch):
    """With no GPU visible, device auto jobs declare gpu=0 (so the profile's cap of 1 does not serialise
    them); device cuda keeps the request."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cpu = snakemake_tiny(tmp_path / "cpu", "--dry-run")
    assert cpu.returncode == 0, cpu.stderr[-2000:]
    resources = _gpu_resources(cpu)
    for rule in ("train_localizer", "predict_heart", "train_model", "predict_model"):
        assert resources.get(rule) == {"0"}, (rule, resources)
    (tmp_path / "cuda.yaml").write_text("train: {device: cuda}\n")
    cuda = snakemake_tiny(tmp_path / "cuda", "--dry-run", "--configfile", str(REPO / "config" / "tiny.yaml"),
                          str(tmp_path / "cuda.yaml"))
    assert cuda.returncode == 0, cuda.stderr[-2000:]
    resources = _gpu_resources(cuda)
    assert resources.get("train_model") == {"1"} and resources.get("predict_model") == {"1"}, resources
    assert resources.get("train_localizer") == {"0"}, resources  # the localizer's own device stays auto
