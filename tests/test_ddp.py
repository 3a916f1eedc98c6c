"""Several processes (torchrun, DistributedDataParallel) train like one: a real 2-rank gloo run on the CPU.

What can be exact, and is checked to be: with ``negative_sampling: ce`` the
SPSS loss is a per-scan mean over the batch's gated scans (Dice, CE, L_f) plus
a per-scan mean over all its scans (L_rsl), the network normalises per
instance, and every rank holds one gated and one non-gated scan; so the mean
of the two ranks' gradients is the whole batch's gradient, and the weights
after DDP training equal the single process's up to float summation order.
What cannot be exact, and is therefore not compared: the default local
sampling of eq. 2 (each rank draws its own negatives) and the ConvNet's
BatchNorm on the CPU (batch statistics per rank; SyncBatchNorm needs CUDA).

Also here: the batch split (:func:`cacs.train.rank_share`) and the rule's
launcher (``torchrun`` for ``train.gpus`` > 1, plain ``cacs`` otherwise).

Run as a script, this file is the worker torchrun starts (see ``_worker``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cacs.agatston import AgatstonParams
from cacs.train import TrainConfig, _epoch_batches, check_world_size, rank_share

ROOT = Path(__file__).resolve().parents[1]
TINY_SPSS = {"channels": [4, 8, 16], "feature_width": 4, "small_dilations": [1, 2], "small_width": 4,
             "large_dilations": [2, 4], "large_width": 4}  # fmt: skip
WORKER_TIMEOUT_S = 120  # the run takes ~10 s; a worker still busy after this dumps its stack and exits
# Deterministic loss (plain CE instead of sampled negatives): DDP must then reproduce one process.
DDP_CFG = {"model": "spss", "model_config": TINY_SPSS, "loss": {"negative_sampling": "ce"}, "lr": 0.01,
           "lr_restart": 0.01, "cycle_epochs": 50, "seed": 3, "device": "cpu", "amp": False}  # fmt: skip
# amp off: bf16 on the CPU rounds a batch of 4 and two of 2 differently; this test is about DDP, in fp32.


# --------------------------------------------------------------------------- batch split (no processes)


def test_rank_share_splits_both_halves():
    ids = [10, 11, 20, 21]  # 2 gated + 2 non-gated, the paper's batch 4
    assert rank_share(ids, 2) == ids  # one process: the batch itself, same order
    assert rank_share(ids, 2, 0, 2) == [10, 20] and rank_share(ids, 2, 1, 2) == [11, 21]
    eight = [1, 2, 3, 4, 5, 6, 7, 8]
    assert rank_share(eight, 4, 1, 2) == [3, 4, 7, 8]  # 2 gated + 2 non-gated per rank
    shares = [rank_share(eight, 4, r, 4) for r in range(4)]
    assert sorted(i for s in shares for i in s) == eight and all(len(s) == 2 for s in shares)


def test_every_rank_gets_both_cohorts_in_every_batch():
    gated, nongated = list(range(5)), list(range(100, 109))
    for ids in _epoch_batches(gated, nongated, 4, np.random.default_rng(0)):
        for rank in range(2):
            share = rank_share(ids, 4, rank, 2)
            assert sum(i < 100 for i in share) == 2 and sum(i >= 100 for i in share) == 2


@pytest.mark.parametrize(("batch", "world", "ok"), [(4, 1, True), (4, 2, True), (8, 4, True), (4, 4, False),
                                                    (6, 2, False), (2, 2, False)])  # fmt: skip
def test_batch_must_split_into_equal_cohort_shares(batch, world, ok):
    cfg = TrainConfig(batch_size=batch)
    if ok:
        check_world_size(cfg, world)
    else:
        with pytest.raises(ValueError, match=f"multiple of 2 x {world}"):
            check_world_size(cfg, world)


# --------------------------------------------------------------------------- a real 2-process run


@pytest.fixture(scope="module")
def crops(tiny_ingested, tmp_path_factory) -> Path:
    """Crops of the tiny cohort on a 32x32x16 grid (fallback boxes: no localizer needed)."""
    from cacs.crop import CropParams, crop_all
    from cacs.split import split_cases

    out = tmp_path_factory.mktemp("ddp_crops")
    cases = pd.concat([tiny_ingested.tables["gated"], tiny_ingested.tables["nongated"]], ignore_index=True)
    cases.to_csv(out / "cases.csv", index=False)
    split_cases(out / "cases.csv", out / "split.csv", train=0.5, val=0.25, test=0.25, seed=1)
    boxes = pd.DataFrame({"case_id": cases.case_id, "plausible": False, "problem": "no localizer in this test"})
    boxes.to_csv(out / "boxes.csv", index=False)
    params = CropParams(model_spacing_mm=(5.0, 5.0, 6.0), model_size=(32, 32, 16), fallback_box_mm=(150.0, 150.0))
    crop_all(out / "split.csv", out / "boxes.csv", out / "vol", out / "index.csv", out / "cont.csv", out / "qc.csv",
             params, AgatstonParams())  # fmt: skip
    return out / "index.csv"


def _worker(index_csv: str, out_dir: str, record_dir: str, epochs: str) -> None:
    """One torchrun process training to ``epochs``; records what this rank wrote and which scans it saw.

    One ``train_experiment`` per process, as ``cacs train`` does: torchrun's
    rendezvous store does not reliably support a second process group after
    the first was destroyed (it hangs now and then).
    """
    import faulthandler

    import cacs.train as train_module
    import cacs.training_loop as loop_module

    faulthandler.dump_traceback_later(WORKER_TIMEOUT_S, exit=True)  # a hang fails the test with every stack
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    writes: list[str] = []
    seen: list[list[str]] = []
    write_torch, write_csv, batch = train_module.write_torch, train_module.write_csv, train_module._batch

    def spy_torch(path, obj):
        writes.append(Path(path).name)
        write_torch(path, obj)

    def spy_csv(path, frame):
        writes.append(Path(path).name)
        write_csv(path, frame)

    def spy_batch(scans, device, channels_last):
        seen.append([s.case_id for s in scans])
        return batch(scans, device, channels_last)

    train_module.write_torch, train_module.write_csv, train_module._batch = spy_torch, spy_csv, spy_batch
    loop_module.write_torch, loop_module.write_csv = spy_torch, spy_csv  # checkpoint.pt and metrics.csv per epoch
    train_module.train_experiment("ddp", Path(index_csv), Path(out_dir), TrainConfig(epochs=int(epochs), **DDP_CFG))
    Path(record_dir, f"rank{rank}_epochs{epochs}.json").write_text(json.dumps({"writes": writes, "seen": seen}))


def _single_process_run(index_csv: Path, out_dir: Path, monkeypatch) -> list[list[str]]:
    """The reference: one process, 2 epochs, 1 thread; returns the case ids of every batch."""
    import cacs.train as train_module

    seen: list[list[str]] = []
    batch = train_module._batch

    def spy_batch(scans, device, channels_last):
        seen.append([s.case_id for s in scans])
        return batch(scans, device, channels_last)

    monkeypatch.setattr(train_module, "_batch", spy_batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_module.train_experiment("single", index_csv, out_dir, TrainConfig(epochs=2, **DDP_CFG))
    finally:
        torch.set_num_threads(threads)
    return seen


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_two_gloo_ranks_train_like_one_process(crops, tmp_path, monkeypatch):
    single_batches = _single_process_run(crops, tmp_path / "single", monkeypatch)

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    record = tmp_path / "record"
    record.mkdir()
    for epochs in (1, 2):  # the second launch resumes from the first one's checkpoint, as a restarted job does
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, str(crops), str(tmp_path / "ddp"), str(record), str(epochs)]  # fmt: skip
        try:
            run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S + 60)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"torchrun did not finish: {str(exc.stdout)[-3000:]} {str(exc.stderr)[-5000:]}")
        assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]

    # Rank 0 alone wrote, and only finished files are left.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoint.pt", "metrics.csv", "model.pt"]
    launches = [[json.loads((record / f"rank{r}_epochs{e}.json").read_text()) for r in range(2)] for e in (1, 2)]
    for rank0, rank1 in launches:
        assert rank1["writes"] == []
        assert {"model.pt", "checkpoint.pt", "metrics.csv"} <= set(rank0["writes"])
    ranks = [{"seen": launches[0][r]["seen"] + launches[1][r]["seen"]} for r in range(2)]

    # Same batches, split by rank: rank r takes the r-th gated and the r-th non-gated scan of each.
    index = pd.read_csv(crops, keep_default_na=False)
    cohort = dict(zip(index.case_id, index.cohort, strict=True))
    val_ids = sorted(index.case_id[index.split == "val"])
    train_shares = [[s for s in r["seen"] if len(s) == 2] for r in ranks]
    single_train = [b for b in single_batches if len(b) == 4]
    assert len(train_shares[0]) == len(train_shares[1]) == len(single_train) > 0
    for whole, r0, r1 in zip(single_train, *train_shares, strict=True):
        assert [cohort[c] for c in r0] == [cohort[c] for c in r1] == ["gated", "nongated"]
        assert whole == [r0[0], r1[0], r0[1], r1[1]]
    # Validation shared by the ranks: every validation scan once per epoch.
    val_seen = sorted(c for r in ranks for s in r["seen"] if len(s) == 1 for c in s)
    assert val_seen == sorted(val_ids * 2)

    # Metrics: two epochs (the second resumed), finite, and those of one process.
    ddp = pd.read_csv(tmp_path / "ddp" / "metrics.csv")
    one = pd.read_csv(tmp_path / "single" / "metrics.csv")
    assert ddp.epoch.tolist() == [1, 2]
    numbers = ddp.drop(columns=["seconds"])
    assert all(math.isfinite(v) for v in numbers.to_numpy().ravel())
    assert list(numbers.columns) == list(one.drop(columns=["seconds"]).columns)
    for column in numbers.columns:
        assert numbers[column].to_numpy() == pytest.approx(one[column].to_numpy(), rel=1e-4, abs=1e-6), column

    # Weights: equal to one process's up to float summation order, far below what training moved them.
    a, b = _weights(tmp_path / "single" / "model.pt"), _weights(tmp_path / "ddp" / "model.pt")
    assert a.keys() == b.keys()
    torch.manual_seed(DDP_CFG["seed"])
    from cacs.models import build_model

    init = build_model("spss", TINY_SPSS).state_dict()
    gap = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    moved = max(float((a[k] - init[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert gap < 1e-5 and moved > 1000 * gap, (gap, moved)


# --------------------------------------------------------------------------- the rule's launcher

LAUNCHER = str(ROOT / "workflow" / "bin" / "cacs")


def _dry_run(tmp_path: Path, train: str) -> subprocess.CompletedProcess:
    over = tmp_path / "over.yaml"
    over.write_text(f"train: {train}\n")
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    cmd = [snakemake, "results/models/spss/model.pt", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "-n", "-p", "--configfile", str(ROOT / "config" / "tiny.yaml"), str(over)]  # fmt: skip
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def _train_command(tmp_path: Path, gpus: int) -> str:
    run = _dry_run(tmp_path, f"{{gpus: {gpus}, require_gpu: true}}")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    lines = [line for line in run.stdout.splitlines() if "train --experiment spss" in line]
    assert len(lines) == 1, run.stdout[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    ("gpus", "launcher"),
    [(2, ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", LAUNCHER, "train"]),
     (1, [LAUNCHER, "train"]), (0, [LAUNCHER, "train"])],
)  # fmt: skip
def test_rule_launches_one_process_per_gpu(tmp_path, gpus, launcher):
    """An interpreter (the one running snakemake: no --use-conda here), then torchrun or not, then this checkout's
    workflow/bin/cacs."""
    line = _train_command(tmp_path, gpus)
    command = line.split("Shell command:", 1)[-1].strip()
    words = shlex.split(command)
    assert Path(words[0]).name.startswith("python"), command
    assert words[1 : 1 + len(launcher)] == launcher, command
    assert ("torch.distributed.run" in command) == (gpus > 1)
    assert "--require-gpu" in command
    config_json = json.loads(command.split("--config-json '", 1)[1].split("'", 1)[0])
    assert not {"gpus", "threads", "require_gpu"} & set(config_json)  # job settings, not the model's
    TrainConfig.from_dict(config_json)  # what `cacs train` accepts


def test_rule_rejects_a_batch_the_gpus_cannot_share(tmp_path):
    run = _dry_run(tmp_path, "{gpus: 4, batch_size: 4}")
    assert run.returncode != 0
    assert "batch_size 4 cannot be shared by 4 GPUs" in run.stdout + run.stderr


if __name__ == "__main__":
    _worker(*sys.argv[1:])
