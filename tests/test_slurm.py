"""The tiny pipeline on a real SLURM cluster (single node, loopback), through profiles/slurm.

tests/slurm/cluster.sh installs Debian's SLURM if needed and starts munged,
slurmctld and slurmd; the fixture stops them by pid whatever happens. The
run must (a) send every job of the DAG through sbatch, (b) produce the
tables a local run produces, and (c) fail, not hang, when a job fails.
Everything runs under `timeout -k` so a stuck status poll fails the test.
Needs root (daemons, apt-get); skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, SNAKEMAKE, TinyRun

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
RUN_LIMIT_S = 900
# No sacct without slurmdbd: poll squeue, and start polling early (the design doc's trap).
STATUS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2", "--slurm-no-account"]
# Tables that must equal the local run's; timings and model-dependent values aside.
COMPARED = ["ingest/cases.csv", "ingest/qc.csv", "ingest/segthor.csv", "split/cases.csv", "localizer/boxes.csv",
            "crops/index.csv", "localizer/containment.csv"]  # fmt: skip


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to start the SLURM daemons"
    if not (shutil.which("sbatch") or shutil.which("apt-get")):
        return "no SLURM and no apt-get to install it"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    try:
        started = subprocess.run(["timeout", "-k", "10", "300", str(CLUSTER), "start", str(state)],
                                 capture_output=True, text=True)  # fmt: skip
        assert started.returncode == 0, f"cluster did not start:\n{started.stderr[-3000:]}"
        env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
        yield env
    finally:
        subprocess.run([str(CLUSTER), "stop", str(state)], capture_output=True, text=True, timeout=60)


def _fit_to_test_node() -> list[str]:
    """The profile sizes jobs for a real cluster (8 CPUs, 64 GB); SLURM would keep them pending here forever."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    cpus = os.cpu_count() or 1
    overrides = [f"{rule}:cpus_per_task={min(int(res.get('cpus_per_task', 1)), cpus)}"
                 for rule, res in profile["set-resources"].items()]  # fmt: skip
    overrides += [f"{rule}:mem_mb=1500" for rule in profile["set-resources"]]
    return ["--set-resources", *overrides, "--default-resources", "mem_mb=1500", "runtime=30", "cpus_per_task=1"]


def _slurm_snakemake(workdir: Path, env: dict, *args: str, snakefile: Path = REPO / "Snakefile"):
    cmd = ["timeout", "-k", "10", str(RUN_LIMIT_S), str(SNAKEMAKE), "-s", str(snakefile), "--directory", str(workdir),
           "--workflow-profile", str(REPO / "profiles" / "slurm"), *STATUS, "--jobs", "4", *_fit_to_test_node(),
           *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def test_tiny_pipeline_runs_through_sbatch_and_matches_a_local_run(cluster, tmp_path, tiny_run: TinyRun):
    no_gpu = tmp_path / "no-gpu.yaml"  # the test node has no GPU: request none
    no_gpu.write_text("localizer: {gpus: 0}\ntrain: {gpus: 0}\n")
    run = _slurm_snakemake(tmp_path, cluster, "--configfile", str(REPO / "config" / "tiny.yaml"), str(no_gpu))
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    stats = re.search(r"Job stats:\n(.*?)\n\n", log, re.S)
    planned = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats.group(1), re.M)}
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)
    # Every job but the target rule `all` (no command: snakemake runs it in-process) went through sbatch.
    assert len(submitted) == planned["total"] - planned.get("all", 0), (planned, len(submitted))
    assert len({jobid for _, jobid in submitted}) == len(submitted)
    assert tiny_run.process.returncode == 0, tiny_run.process.stderr[-3000:]
    for table in COMPARED:
        ours = pd.read_csv(tmp_path / "results" / table, keep_default_na=False)
        local = pd.read_csv(tiny_run.workdir / "results" / table, keep_default_na=False)
        pd.testing.assert_frame_equal(ours, local, check_exact=False, rtol=1e-9, obj=table)
    for experiment in ("spss", "spss_wo_ssl", "spss_ce", "convnet"):
        assert (tmp_path / "results" / "predictions" / experiment / "predictions.csv").exists()
    assert (tmp_path / "results" / "paper" / "metrics.json").exists()
    assert (tmp_path / "results" / "report.html").exists()


def test_a_failing_job_fails_the_run_instead_of_hanging(cluster, tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text('rule boom:\n    output: "never.txt"\n    log: "boom.log"\n    shell: "exit 3"\n')
    run = _slurm_snakemake(tmp_path, cluster, "--retries", "0", snakefile=snakefile)
    assert run.returncode not in (0, 124, 137), "the run succeeded or had to be killed by timeout"
    assert re.search(r"submitted with SLURM jobid \d+", run.stdout + run.stderr)
    assert "Error in rule boom" in run.stdout + run.stderr
