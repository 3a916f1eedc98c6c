"""The tiny pipeline on a real SLURM cluster (single node, loopback), through profiles/slurm.

tests/slurm/cluster.sh installs Debian's SLURM if needed and starts munged,
slurmctld and slurmd; the fixture stops them by pid whatever happens. The
run must (a) send every job of the DAG through sbatch, (b) produce the same
tables as a local run (every CSV/JSON it writes, wall-clock columns aside),
and (c) fail, quickly and without hanging, when a job fails.
Everything runs under `timeout -k` so a stuck status poll fails the test.
Needs root (daemons, apt-get); skipped with the reason otherwise.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, SNAKEMAKE, TinyRun

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
RUN_LIMIT_S = 900
FAIL_LIMIT_S = 180  # a failing job must end its run well before this (it takes about 30 s)
# No sacct without slurmdbd: poll squeue (the design doc's trap). The plugin polls this many
# seconds after a round in which a job ended, 10 s longer after each round in which none did
# (default 40): most jobs here take 5-8 s, so 10 s sees them at the first poll.
STATUS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "10", "--slurm-no-account"]
# Every CSV/JSON table of the SLURM run must equal the local run's, except what is not
# deterministic by nature: logs, benchmarks, snakemake's own state, wall-clock columns.
SKIPPED_DIRS = {".snakemake", "logs", "benchmarks"}
TIMING_COLUMNS = {"seconds"}
# One test cluster per machine (fixed ports, /etc/slurm/slurm.conf): concurrent sessions take turns.
LOCK = Path("/tmp/cacs-slurm-test.lock")
LOCK_WAIT_S = 1800


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
    lock = LOCK.open("a")
    _wait_for(lock)
    state = tmp_path_factory.mktemp("slurm")
    try:
        started = subprocess.run(["timeout", "-k", "10", "300", str(CLUSTER), "start", str(state)],
                                 capture_output=True, text=True)  # fmt: skip
        assert started.returncode == 0, f"cluster did not start:\n{started.stderr[-3000:]}"
        env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
        yield env
    finally:
        subprocess.run([str(CLUSTER), "stop", str(state)], capture_output=True, text=True, timeout=60)
        lock.close()  # releases the flock


def _wait_for(lock) -> None:
    """Take the machine-wide cluster lock, waiting for another session's SLURM test to finish."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                pytest.fail(f"another session held {LOCK} (its SLURM test cluster) for over {LOCK_WAIT_S} s")
            time.sleep(2)


def _fit_to_test_node() -> list[str]:
    """Shrink the profile's requests (sized for real COCA on a real cluster) to the 2-CPU test node.

    Left as they are, SLURM would keep 8-CPU jobs pending forever. One CPU and 1.5 GB per job
    lets two jobs run at once, as on the local run; a rule still runs its configured number of
    threads (task/none binds nothing), so the results do not change.
    """
    rules = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["set-resources"]
    overrides = [f"{rule}:{key}" for rule in rules for key in ("cpus_per_task=1", "mem_mb=1500")]
    return ["--set-resources", *overrides, "--default-resources", "mem_mb=1500", "runtime=30", "cpus_per_task=1"]


def _slurm_snakemake(workdir: Path, env: dict, *args: str, snakefile: Path = REPO / "Snakefile",
                     limit_s: int = RUN_LIMIT_S):  # fmt: skip
    cmd = ["timeout", "-k", "10", str(limit_s), str(SNAKEMAKE), "-s", str(snakefile), "--directory", str(workdir),
           "--workflow-profile", str(REPO / "profiles" / "slurm"), *STATUS, "--jobs", "4", *_fit_to_test_node(),
           *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _tables(root: Path) -> set[Path]:
    """Every CSV/JSON file a run wrote (paths relative to its directory), outside SKIPPED_DIRS."""
    found = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix in (".csv", ".json") and path.is_file() and not SKIPPED_DIRS & set(rel.parts):
            found.add(rel)
    return found


def _assert_close(ours, theirs, where: str) -> None:
    """Parsed JSON equal; numbers to 1e-9 relative (same code and seeds: only float noise may differ)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            _assert_close(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list) and isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _assert_close(a, b, f"{where}[{i}]")
    elif isinstance(ours, int | float) and isinstance(theirs, int | float) and not isinstance(ours, bool):
        assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {ours} != {theirs}"
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


def _assert_same_table(ours: Path, theirs: Path, name: str) -> None:
    if ours.suffix == ".json":
        _assert_close(json.loads(ours.read_text()), json.loads(theirs.read_text()), name)
        return
    frames = [pd.read_csv(p, keep_default_na=False) for p in (ours, theirs)]
    a, b = (df.drop(columns=[c for c in df.columns if c in TIMING_COLUMNS]) for df in frames)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, obj=name)


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
    local_tables, slurm_tables = _tables(tiny_run.workdir), _tables(tmp_path)
    assert local_tables <= slurm_tables, f"missing from the SLURM run: {sorted(map(str, local_tables - slurm_tables))}"
    assert any(t.parts[:2] == ("results", "predictions") for t in local_tables), sorted(map(str, local_tables))
    for table in sorted(local_tables):
        _assert_same_table(tmp_path / table, tiny_run.workdir / table, str(table))
    assert (tmp_path / "results" / "report.html").exists()


def test_a_failing_job_fails_the_run_instead_of_hanging(cluster, tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text('rule boom:\n    output: "never.txt"\n    log: "boom.log"\n    shell: "exit 3"\n')
    started = time.monotonic()
    run = _slurm_snakemake(tmp_path, cluster, "--retries", "0", snakefile=snakefile, limit_s=FAIL_LIMIT_S)
    assert run.returncode not in (0, 124, 137), "the run succeeded or had to be killed by timeout"
    assert time.monotonic() - started < FAIL_LIMIT_S - 10
    assert re.search(r"submitted with SLURM jobid \d+", run.stdout + run.stderr)
    assert "Error in rule boom" in run.stdout + run.stderr
