"""Every CUDA path of the project, on a real GPU: bf16 autocast, channels_last_3d, CUDA = CPU, require_gpu, NCCL DDP.

No CUDA line ran before these tests (CI has no GPU), so each test checks a
path the training or inference code takes only on CUDA:

* a training step of each model kind under bfloat16 autocast with
  channels_last_3d, as ``cacs train`` runs it on a GPU: finite, in bf16, and
  it learns (the loss of a fixed batch falls);
* channels_last_3d: every convolution computes in that layout (cuDNN follows
  the weights), with the values of the default layout;
* predictions on CUDA (fp32, and bf16 as ``cacs predict`` / ``cacs infer``
  run them) equal the CPU's within the tolerances of :data:`PROB_TOL`;
* ``require_gpu`` is satisfied and every loader puts its network on the GPU;
* DistributedDataParallel over NCCL (2 processes when 2 GPUs are visible,
  otherwise 1) trains like one process, with SyncBatchNorm synchronising the
  ConvNet's statistics across processes.

Marked ``gpu`` (``make gpu-check`` runs ``pytest -m gpu``); without a CUDA
device every test here is skipped with the reason.  Run as a script, this
file is the NCCL worker torchrun starts (see ``_nccl_worker``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from cacs.agatston import AgatstonParams, lesion_weight_map, voxel_score_factor
from cacs.bundle import experiment_bundle, localizer_bundle
from cacs.crop import CropParams
from cacs.io.nifti import Geometry
from cacs.losses import LossConfig
from cacs.models import build_model
from cacs.native_scoring import CALCIUM_THRESHOLD
from cacs.train import HU_SCALE, Scan, TrainConfig, _train_step, make_optimizer, train_experiment, use_amp
from tests.test_ddp import DDP_CFG, TINY_SPSS, WORKER_TIMEOUT_S, _weights, crops  # noqa: F401 (crops: a fixture)

ROOT = Path(__file__).resolve().parents[1]


def _no_gpu_reason() -> str:
    if torch.version.cuda is None:
        return f"no GPU: torch {torch.__version__} is a CPU-only build (docs/gpu.md: install the CUDA build)"
    return f"no GPU: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device " \
           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r})"  # fmt: skip


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=_no_gpu_reason())]

# The default run's scaled-down networks (config/config.yaml): the CUDA paths are those of the full-size ones,
# whose speed bench/gpu_check.py measures.
MODELS: dict[str, dict] = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["models"]
CROP_ZYX = (32, 64, 64)  # a multiple of both networks' size multiples
CROP_SPACING = (1.5, 1.5, 3.0)  # the default run's model grid (x, y, z)
STEPS = 12  # optimizer steps on one fixed batch
PROB_TOL = {"fp32": 1e-3, "bf16": 0.1}
"""Largest allowed |p_cuda - p_cpu| of a class probability (SPSS) or relative score gap (ConvNet).  ``fp32``: TF32
off (CUDA's default convolutions round to a 10-bit mantissa).  ``bf16``: autocast as ``cacs predict`` / ``cacs infer``
run on CUDA, 8-bit mantissa; the CPU's own bf16 autocast differs from its fp32 by up to 0.06 on the test's scan
(99.9th percentile 0.017)."""
BF16_LABEL_SHARE = 0.02
"""bf16: largest share of native voxels whose label may differ from the CPU's (the CPU's own bf16: 1 %)."""


def _record(record_property, name: str, value) -> None:
    """A measured value in the JUnit XML report, as JSON (``bench/gpu_check.py`` copies it into its results)."""
    record_property(name, json.dumps(value))


def _synthetic_scan(gated: bool, seed: int, shape: tuple[int, int, int] = CROP_ZYX) -> Scan:
    """A crop in HU with four calcified lesions (one per artery) and a bone-like distractor, as training sees it."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 20, shape).astype(np.float32)
    labels = np.zeros(shape, np.int64)
    for artery in range(1, 5):
        z, y, x = (int(rng.integers(3, s - 3)) for s in shape)
        hu[z - 1 : z + 2, y - 2 : y + 2, x - 2 : x + 2] = 450 + 100 * artery
        labels[z - 1 : z + 2, y - 2 : y + 2, x - 2 : x + 2] = artery
    hu[:, -8:-3, 20:28] = 700  # bone: bright, but no calcium
    weight = lesion_weight_map(hu)
    factor = voxel_score_factor(CROP_SPACING, AgatstonParams())
    ref = np.array([weight[labels == k].sum() * factor for k in range(1, 5)], np.float32)
    return Scan(case_id=f"s{seed}", gated=gated, x=(hu / HU_SCALE)[None], hu=hu,
                labels=labels if gated else np.zeros_like(labels), weight=weight, voxel_factor=factor, ref=ref,
                foreground=np.argwhere(labels > 0) if gated else np.zeros((0, 3), np.int64))  # fmt: skip


def fit_fixed_batch(kind: str, device: torch.device, steps: int = STEPS) -> tuple[list[float], list[torch.dtype]]:
    """``steps`` training steps of ``cacs.train`` on one batch (1 gated + 1 non-gated crop); losses, conv dtypes.

    Built as ``cacs train`` builds it: channels_last_3d and bf16 autocast where
    :func:`cacs.train.use_amp` says so (always on CUDA), AdamW.  The dtypes
    are those of the first convolution's output (bf16 when autocast is on).
    """
    cfg = TrainConfig(model=kind, model_config=MODELS[kind], amp=True, optimizer="adamw", lr=3e-3, weight_decay=0.0)
    amp = use_amp(cfg, device)
    torch.manual_seed(0)
    model = build_model(kind, cfg.model_config).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last_3d)
    dtypes: list[torch.dtype] = []
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv3d))
    handle = first_conv.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    optimizer = make_optimizer(cfg, model.parameters())
    generator = torch.Generator(device=device).manual_seed(0)
    loss_cfg = LossConfig() if kind == "spss" else None
    groups = [[_synthetic_scan(True, 1), _synthetic_scan(False, 2)]]
    try:
        losses = [_train_step(model, cfg, loss_cfg, groups, device, amp, generator, optimizer)["total"]
                  for _ in range(steps)]  # fmt: skip
    finally:
        handle.remove()
    for p in model.parameters():
        assert p.device.type == device.type and (p.grad is None or bool(torch.isfinite(p.grad).all())), p.shape
    return losses, dtypes


@contextlib.contextmanager
def fp32_exact() -> Iterator[None]:
    """No TF32 and deterministic cuDNN: fp32 results that can be compared across runs and processes."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)  # fmt: skip
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = saved  # fmt: skip


# --------------------------------------------------------------------------- training on CUDA


@pytest.mark.parametrize("kind", ["spss", "convnet"])
def test_bf16_training_step_is_finite_and_learns(kind, record_property):
    losses, dtypes = fit_fixed_batch(kind, torch.device("cuda"))
    _record(record_property, "losses", [round(v, 5) for v in losses])
    assert all(math.isfinite(v) for v in losses), losses
    assert dtypes and set(dtypes) == {torch.bfloat16}, dtypes  # autocast is on: the convolutions run in bf16
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


@pytest.mark.parametrize("kind", ["spss", "convnet"])
def test_channels_last_3d_keeps_its_format_and_values(kind, record_property):
    """Every convolution computes in channels_last_3d (cuDNN follows the weights' layout) with the same values.

    Also recorded: the share of all layers' 5-D outputs that stay channels_last_3d.
    Normalisation layers may hand back the default layout, which costs a
    conversion before the next convolution (on the CPU even the convolutions
    do, which is why this is a GPU test).
    """
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(kind, MODELS[kind]).to(device).eval()
    x = torch.from_numpy(_synthetic_scan(True, 3).x[None]).to(device)
    with torch.no_grad(), fp32_exact():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last_3d)
        formats: dict[str, list[bool]] = {"conv": [], "all": []}

        def hook(module: nn.Module, args, out) -> None:
            if isinstance(out, torch.Tensor) and out.dim() == 5:
                is_cl = out.is_contiguous(memory_format=torch.channels_last_3d)
                formats["conv" if isinstance(module, nn.Conv3d) else "all"].append(is_cl)

        handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
        try:
            out = model(x.contiguous(memory_format=torch.channels_last_3d))
        finally:
            for h in handles:
                h.remove()
    weights = [p for p in model.parameters() if p.dim() == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)
    every = formats["conv"] + formats["all"]
    _record(record_property, "channels_last_share_of_layer_outputs", round(sum(every) / len(every), 3))
    assert formats["conv"] and all(formats["conv"]), formats["conv"]
    ref, out = (o if isinstance(o, tuple) else (o,) for o in (ref, out))
    gaps = [float((a - b).abs().max()) / (1.0 + float(a.abs().max())) for a, b in zip(ref, out, strict=True)]
    _record(record_property, "max_relative_gap", max(gaps))
    assert max(gaps) <= 1e-4, gaps


# --------------------------------------------------------------------------- inference: CUDA equals the CPU


def _save_trained(path: Path, kind: str) -> Path:
    """A model file as ``cacs train`` writes it; SPSS with its calcium bias moved so that half the voxels are CAC.

    An untrained SPSS calls (almost) nothing calcium, which would make the
    label maps of both devices trivially equal; moving the CAC logit so that
    the median voxel sits at the native decision threshold makes many
    decisions close calls, the hard case for equality.
    """
    torch.manual_seed(0)
    net = build_model(kind, MODELS[kind]).eval()
    if kind == "spss":
        with torch.no_grad():
            out = net(torch.from_numpy(_synthetic_scan(True, 3).x[None]))
            margin = out.cac_logits[0, 1] - out.cac_logits[0, 0]  # p_cac = sigmoid(margin)
            threshold_logit = math.log(CALCIUM_THRESHOLD / (1 - CALCIUM_THRESHOLD))
            net.cac_head.classifier.bias[1] -= float(margin.median()) - threshold_logit
    cfg = TrainConfig(model=kind, model_config=MODELS[kind])
    bundle = experiment_bundle(asdict(cfg), CropParams(), AgatstonParams(), None, None, {"index": "test"})
    torch.save({"state_dict": net.state_dict(), "experiment": kind, "config": asdict(cfg), "bundle": bundle}, path)
    return path


def _native_scan(crop_hu: np.ndarray) -> tuple[np.ndarray, Geometry, Geometry]:
    """The crop's region at twice its in-plane resolution (native), with both geometries (voxel centres aligned)."""
    crop_geometry = Geometry(CROP_SPACING, (-40.0, -60.0, -120.0))
    native = np.repeat(np.repeat(crop_hu, 2, axis=1), 2, axis=2)
    shift = CROP_SPACING[0] / 4
    native_geometry = Geometry((CROP_SPACING[0] / 2, CROP_SPACING[1] / 2, CROP_SPACING[2]),
                               (-40.0 - shift, -60.0 - shift, -120.0))  # fmt: skip
    return native, crop_geometry, native_geometry


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["spss", "convnet"])
def test_cuda_predictions_equal_the_cpu(kind, precision, tmp_path, record_property):
    from cacs.native_scoring import class_probabilities, resample_probabilities
    from cacs.predict import _forward, load_trained, predict_native

    path = _save_trained(tmp_path / "model.pt", kind)
    cpu = load_trained(path, "cpu")
    gpu = load_trained(path, "cuda")
    assert not cpu.amp and gpu.amp  # bf16 on CUDA is what cacs predict / cacs infer run
    gpu = dataclasses.replace(gpu, amp=precision == "bf16")
    tol = PROB_TOL[precision]
    crop_hu = _synthetic_scan(False, 4).hu
    native_hu, crop_geometry, native_geometry = _native_scan(crop_hu)
    with fp32_exact() if precision == "fp32" else contextlib.nullcontext():
        a, b = (predict_native(m, crop_hu, crop_geometry, native_hu, native_geometry, AgatstonParams())
                for m in (cpu, gpu))  # fmt: skip
        if kind == "spss":
            p_cpu, p_gpu = (class_probabilities(_forward(m, crop_hu)) for m in (cpu, gpu))
    _record(record_property, "scores_cpu", a.scores)
    _record(record_property, "scores_cuda", b.scores)
    if kind == "convnet":  # regressed scores, no map
        gaps = {k: abs(a.scores[k] - b.scores[k]) / max(1.0, abs(a.scores[k])) for k in a.scores}
        _record(record_property, "max_relative_score_gap", max(gaps.values()))
        assert max(gaps.values()) <= tol, gaps
        return
    gap = float(np.abs(p_cpu - p_gpu).max())
    _record(record_property, "max_probability_gap", gap)
    assert gap <= tol, f"class probabilities differ by up to {gap:.2e} > {tol:.0e}"
    candidates = int((a.labels > 0).sum())
    assert 0.1 < candidates / a.labels.size < 0.9  # real decisions both ways: many close calls
    differ = a.labels != b.labels
    _record(record_property, "native_label_disagreements", [int(differ.sum()), int(differ.size)])
    if precision == "bf16":
        assert differ.mean() <= BF16_LABEL_SHARE, f"{differ.mean():.2%} of native labels differ"
        return
    # fp32: labels may differ only where the CPU's decision is a close call within the gap: p_cac (one minus p0,
    # interpolated linearly, so within the gap too) at the threshold, or the two leading arteries within twice it.
    native_p = resample_probabilities(p_cpu, crop_geometry, native_geometry, native_hu.shape)
    p_cac = 1.0 - native_p[0]
    top2 = np.sort(native_p[1:], axis=0)[-2:]
    close = (np.abs(p_cac - CALCIUM_THRESHOLD) <= gap + 1e-6) | (top2[1] - top2[0] <= 2 * gap + 1e-6)
    assert not (differ & ~close).any(), f"{int((differ & ~close).sum())} confident native labels differ"
    if not differ.any():
        assert b.scores == pytest.approx(a.scores, rel=1e-6, abs=1e-6)  # same labels, same HU: same scores


def test_require_gpu_is_met_and_every_loader_uses_the_gpu(tmp_path):
    from cacs.devices import resolve_device
    from cacs.localizer import LocalizerParams, build_unet, load_localizer
    from cacs.predict import load_trained

    for section in ("train", "localizer"):
        assert resolve_device("auto", require_gpu=True, section=section) == torch.device("cuda", 0)
        assert resolve_device("cuda", require_gpu=True, section=section) == torch.device("cuda", 0)
    model = load_trained(_save_trained(tmp_path / "model.pt", "spss"), "auto", require_gpu=True)
    assert model.device.type == "cuda" and model.amp
    assert {p.device.type for p in model.network.parameters()} == {"cuda"}
    params = LocalizerParams(channels=(4, 8, 16), patch_size=(16, 16, 16))
    torch.save({"state_dict": build_unet(params).state_dict(), "params": params.to_dict(),
                "bundle": localizer_bundle(params, {"table": "test"})}, tmp_path / "loc.pt")  # fmt: skip
    localizer, _ = load_localizer(tmp_path / "loc.pt")  # default device: CUDA when present
    assert {p.device.type for p in localizer.parameters()} == {"cuda"}


# --------------------------------------------------------------------------- DDP over NCCL

# tests/test_ddp.py's deterministic SPSS recipe (plain CE negatives), on CUDA; fp32 so that processes can agree.
NCCL_CFG = {**DDP_CFG, "device": "cuda"}


def _sync_batchnorm_step(device: torch.device, rank: int, world: int) -> dict:
    """One DDP step of the ConvNet with SyncBatchNorm (bf16, channels_last_3d, as cacs train builds it).

    Each rank feeds a differently distributed batch.  With 2 ranks, synchronised
    batch norm gives every rank the same running statistics although the
    ranks' own batch statistics differ, which is what is returned to compare.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    net = nn.SyncBatchNorm.convert_sync_batchnorm(build_model("convnet", MODELS["convnet"]))
    net = net.to(device).to(memory_format=torch.channels_last_3d)
    norms = [m for m in net.modules() if isinstance(m, nn.SyncBatchNorm)]
    model = DistributedDataParallel(net, device_ids=[device.index])
    gen = torch.Generator().manual_seed(100 + rank)
    x = (torch.randn(2, 1, *CROP_ZYX, generator=gen) * (1 + rank) + rank).to(device)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():  # this rank's own statistics of the first normalised layer (no sync)
        first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv3d))
        own_mean = first_conv(x).float().mean(dim=(0, 2, 3, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    loss = out.float().square().mean()
    loss.backward()
    optimizer.step()

    def gathered(t: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        return parts

    def rank_gap(t: torch.Tensor) -> float:
        parts = gathered(t)
        return max(float((p - parts[0]).abs().max()) for p in parts)

    params = torch.stack([p.detach().double().sum() for p in net.parameters()])
    return {"loss": float(loss), "n_sync_batchnorm": len(norms), "param_rank_gap": rank_gap(params),
            "running_mean_rank_gap": rank_gap(norms[0].running_mean),
            "own_batch_mean_rank_gap": rank_gap(own_mean)}  # fmt: skip


def _nccl_worker(index_csv: str, out_dir: str, record_dir: str, epochs: str) -> None:
    """One torchrun process: a SyncBatchNorm step, then ``cacs.train`` in this process group (one group per process).

    The group is this function's; ``cacs.train`` uses a group its caller
    initialised (with one process it trains without DDP, on this GPU).
    """
    import faulthandler

    import torch.distributed as dist

    import cacs.train as train_module

    faulthandler.dump_traceback_later(WORKER_TIMEOUT_S, exit=True)  # a hang fails the test with every stack
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    seen: list[list[str]] = []
    batch = train_module._batch

    def spy_batch(scans, dev, channels_last):
        seen.append([s.case_id for s in scans])
        return batch(scans, dev, channels_last)

    train_module._batch = spy_batch
    dist.init_process_group("nccl", device_id=device)
    try:
        backend = dist.get_backend()
        sync = _sync_batchnorm_step(device, rank, world)
        with fp32_exact():
            train_module.train_experiment("nccl", Path(index_csv), Path(out_dir), TrainConfig(epochs=int(epochs),
                                          **NCCL_CFG), require_gpu=True)  # fmt: skip
        dist.barrier()
    finally:
        dist.destroy_process_group()
    record = {"rank": rank, "world": world, "backend": backend, "device": str(device), "sync": sync, "seen": seen}
    Path(record_dir, f"rank{rank}.json").write_text(json.dumps(record))


def test_nccl_ddp_trains_like_one_process(crops, tmp_path, record_property):  # noqa: F811
    world = min(2, torch.cuda.device_count())
    _record(record_property, "world_size", world)
    with fp32_exact():
        train_experiment("single", crops, tmp_path / "single", TrainConfig(epochs=2, **NCCL_CFG), require_gpu=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # the worker imports tests.test_ddp
    record = tmp_path / "record"
    record.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), __file__,
           str(crops), str(tmp_path / "ddp"), str(record), "2"]  # fmt: skip
    try:
        run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun did not finish: {str(exc.stdout)[-3000:]} {str(exc.stderr)[-5000:]}")
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["backend"] for r in ranks] == ["nccl"] * world
    assert [r["device"] for r in ranks] == [f"cuda:{r}" for r in range(world)]

    # SyncBatchNorm: every ConvNet norm converted; with 2 ranks the statistics agree though the ranks' batches differ.
    for r in ranks:
        assert r["sync"]["n_sync_batchnorm"] > 0 and math.isfinite(r["sync"]["loss"])
        assert r["sync"]["param_rank_gap"] < 1e-6  # DDP averaged the gradients: identical replicas
    if world == 2:
        sync = ranks[0]["sync"]
        _record(record_property, "sync_batchnorm", sync)
        assert sync["own_batch_mean_rank_gap"] > 1e-2 and sync["running_mean_rank_gap"] < 1e-5, sync

    # Training: rank r took the r-th gated and non-gated scan of each batch of one process; same results.
    index = pd.read_csv(crops, keep_default_na=False)
    cohort = dict(zip(index.case_id, index.cohort, strict=True))
    shares = [[s for s in r["seen"] if len(s) == 4 // world] for r in ranks]
    assert len(shares[0]) > 0 and all(len(s) == len(shares[0]) for s in shares)
    for share in shares:
        for ids in share:
            assert [cohort[c] for c in ids] == ["gated"] * (2 // world) + ["nongated"] * (2 // world)
    ddp = pd.read_csv(tmp_path / "ddp" / "metrics.csv").drop(columns=["seconds"])
    one = pd.read_csv(tmp_path / "single" / "metrics.csv").drop(columns=["seconds"])
    assert ddp.epoch.tolist() == [1, 2] and list(ddp.columns) == list(one.columns)
    for column in ddp.columns:
        assert ddp[column].to_numpy() == pytest.approx(one[column].to_numpy(), rel=1e-3, abs=1e-5), column
    a, b = _weights(tmp_path / "single" / "model.pt"), _weights(tmp_path / "ddp" / "model.pt")
    torch.manual_seed(NCCL_CFG["seed"])
    init = build_model("spss", TINY_SPSS).state_dict()
    gap = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    moved = max(float((a[k] - init[k]).abs().max()) for k in a if a[k].is_floating_point())
    _record(record_property, "weight_gap_vs_one_process", gap)
    assert gap < 1e-4 and moved > 100 * gap, (gap, moved)


if __name__ == "__main__":
    _nccl_worker(*sys.argv[1:])
