"""Train one experiment (SPSS, its ablations, or the ConvNet baseline) on the cached crops.

Paper section 4.1, as read here:

* batches mix gated and non-gated scans in equal numbers (the paper: batch 4 =
  2 GPUs x 2 images); the shorter cohort list is cycled so each epoch sees
  every scan of the longer one once;
* SGD, momentum 0.8, weight decay 3e-5;
* "cosine annealing [SGDR] setting 2e-3 as an initial value and 1e-3 from the
  5th epoch": cosine annealing with warm restarts every ``cycle_epochs``
  (5), the first cycle starting at ``lr`` (2e-3), every later one at
  ``lr_restart`` (1e-3).  The rate is a pure function of the epoch, so a
  resumed run follows exactly the schedule of an uninterrupted one;
* per epoch a metrics row: every loss term and the validation mean absolute
  scoring bias (the convergence figure), a checkpoint, and resume from it;
* several GPUs (``torchrun``, DistributedDataParallel): the batch order is
  the single process's, each rank takes its slice of both halves of every
  batch (2 GPUs x [1 gated + 1 non-gated] = the paper's batch 4), gradients
  are averaged, rank 0 writes.  The gradient equals the single process's
  except for the randomly sampled negatives of eq. 2 (each rank draws its own)
  and BatchNorm statistics on the CPU (synchronised on CUDA).

Data come from the crop stage (``results/crops/index.csv``: int16 HU and
uint8 labels on the model grid), never from DICOM.  The eq. 1 weight map W
depends only on the image, so it is computed once per scan and kept.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cacs import ARTERIES
from cacs.agatston import AgatstonParams, lesion_weight_map, voxel_score_factor
from cacs.devices import DistributedEnv, distributed_env, process_group, resolve_device
from cacs.io.atomic import write_csv, write_torch
from cacs.losses import LossConfig, convnet_loss, total_loss
from cacs.models import build_model

log = logging.getLogger(__name__)

HU_CLIP = (-1024.0, 3071.0)
HU_SCALE = 1000.0  # network input = clip(HU) / 1000: soft tissue ~0, calcium 0.13..3


@dataclass(frozen=True)
class TrainConfig:
    model: str = "spss"  # "spss" | "convnet"
    model_config: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)  # LossConfig fields (SPSS only)
    epochs: int = 6
    batch_size: int = 4  # even: half gated, half non-gated
    lr: float = 2e-3
    lr_restart: float = 1e-3
    lr_min: float = 1e-5
    cycle_epochs: int = 5
    momentum: float = 0.8
    weight_decay: float = 3e-5
    seed: int = 42
    device: str = "auto"
    amp: bool = True  # CUDA only: bfloat16 autocast + channels_last_3d

    def __post_init__(self) -> None:
        if self.model not in ("spss", "convnet"):
            raise ValueError(f"experiment model must be 'spss' or 'convnet', got {self.model!r}")
        if self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"train.batch_size must be even and >= 2 (half gated, half non-gated): {self.batch_size}")
        if self.epochs < 1 or self.cycle_epochs < 1:
            raise ValueError("train.epochs and train.cycle_epochs must be >= 1")
        if not (self.lr > 0 and self.lr_restart > 0 and 0 <= self.lr_min < min(self.lr, self.lr_restart)):
            raise ValueError("train learning rates must satisfy 0 <= lr_min < lr, lr_restart")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown experiment/train key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """SGDR: cosine from the cycle's peak to ``lr_min`` over ``cycle_epochs`` (epoch is 1-based)."""
    cycle, pos = divmod(epoch - 1, cfg.cycle_epochs)
    peak = cfg.lr if cycle == 0 else cfg.lr_restart
    return cfg.lr_min + 0.5 * (peak - cfg.lr_min) * (1 + math.cos(math.pi * pos / cfg.cycle_epochs))


@dataclass
class Scan:
    case_id: str
    gated: bool
    x: np.ndarray  # (1, Z, Y, X) float32 network input
    hu: np.ndarray  # (Z, Y, X) float32
    labels: np.ndarray  # (Z, Y, X) int64; zeros for non-gated (unused)
    weight: np.ndarray  # (Z, Y, X) float32, eq. 1's W
    voxel_factor: float
    ref: np.ndarray  # (4,) reference per-artery scores


def load_scans(index: pd.DataFrame, agatston: AgatstonParams, progress: bool = True) -> list[Scan]:
    scans = []
    for row in tqdm(index.to_dict("records"), desc="load crops", unit="scan", disable=not progress):
        hu = np.load(row["image_npy"]).astype(np.float32)
        gated = row["cohort"] == "gated"
        has_labels = gated and bool(row.get("labels_npy"))
        labels = np.load(row["labels_npy"]).astype(np.int64) if has_labels else np.zeros(hu.shape, np.int64)
        spacing = (row["spacing_x"], row["spacing_y"], row["spacing_z"])
        scans.append(
            Scan(
                case_id=row["case_id"],
                gated=gated,
                x=(np.clip(hu, *HU_CLIP) / HU_SCALE)[None],
                hu=hu,
                labels=labels,
                weight=lesion_weight_map(hu, agatston).astype(np.float32),
                voxel_factor=voxel_score_factor(spacing, agatston),
                ref=np.array([row[a] for a in ARTERIES], dtype=np.float32),
            )
        )
    return scans


def _batch(scans: list[Scan], device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    x = torch.from_numpy(np.stack([s.x for s in scans])).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return {
        "x": x,
        "hu": torch.from_numpy(np.stack([s.hu for s in scans])).to(device),
        "labels": torch.from_numpy(np.stack([s.labels for s in scans])).to(device),
        "weight": torch.from_numpy(np.stack([s.weight for s in scans])).to(device),
        "voxel_factor": torch.tensor([s.voxel_factor for s in scans], dtype=torch.float32, device=device),
        "ref_scores": torch.from_numpy(np.stack([s.ref for s in scans])).to(device),
        "is_gated": torch.tensor([s.gated for s in scans], device=device),
    }


def _forward(model, cfg: TrainConfig, loss_cfg: LossConfig | None, batch, generator, amp: bool):
    """Loss, its parts and the predicted per-artery scores for one batch."""
    with torch.autocast(batch["x"].device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(batch["x"])
    if cfg.model == "convnet":
        pred_log = out.float()
        loss = convnet_loss(pred_log, batch["ref_scores"])
        return loss, {"total": float(loss.detach())}, getattr(model, "module", model).scores(pred_log)
    net = getattr(model, "module", model)  # the network itself under DistributedDataParallel
    pred = net.scores(out, batch["weight"], batch["voxel_factor"])  # the models return float32 logits
    loss, parts = total_loss(out, pred, batch, loss_cfg, generator)
    return loss, parts, pred


def _epoch_batches(gated: list[int], nongated: list[int], half: int, rng: np.random.Generator) -> list[list[int]]:
    """Equal numbers of gated and non-gated scans per batch; the shorter list is cycled."""
    g, n = list(rng.permutation(gated)), list(rng.permutation(nongated))
    steps = math.ceil(max(len(g), len(n)) / half)
    pick = lambda pool, i: [pool[(i * half + j) % len(pool)] for j in range(half)]  # noqa: E731
    return [pick(g, i) + pick(n, i) for i in range(steps)]


def rank_share(ids: list[int], half: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """One rank's part of a batch laid out ``[gated x half, non-gated x half]``: its slice of each half.

    Batch 4 over 2 ranks gives each rank 1 gated + 1 non-gated scan (the
    paper's 2 images per GPU).  Every rank then holds the same number of
    gated and of non-gated scans, so averaging the ranks' gradients (what DDP
    does) is the gradient of the whole batch's loss: ``L_ssl`` is a mean over
    the batch's gated scans and ``L_rsl`` a mean over all its scans.  With one
    process this is the batch itself, in the same order.
    """
    per = half // world_size
    lo, hi = rank * per, (rank + 1) * per
    return ids[:half][lo:hi] + ids[half:][lo:hi]


def check_world_size(cfg: TrainConfig, world_size: int) -> None:
    """Each process needs as many gated as non-gated scans, at least one of each."""
    if cfg.batch_size % (2 * world_size):
        raise ValueError(
            f"train.batch_size {cfg.batch_size} cannot be shared by {world_size} processes (train.gpus): each "
            f"needs the same number of gated and non-gated scans, so batch_size must be a multiple of "
            f"2 x {world_size} = {2 * world_size}"
        )


@torch.no_grad()
def _bias_rows(model, cfg: TrainConfig, scans: list[Scan], device: torch.device, amp: bool) -> list[dict]:
    """Per validation scan: cohort and absolute error of the total and mean per-artery score."""
    model.eval()
    rows = []
    for s in scans:
        batch = _batch([s], device, amp)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(batch["x"])
        if cfg.model == "convnet":
            pred = model.scores(out.float())
        else:
            pred = model.scores(out, batch["weight"], batch["voxel_factor"])
        p = pred[0].cpu().numpy()
        rows.append({"gated": s.gated, "total": abs(p.sum() - s.ref.sum()), "artery": float(np.abs(p - s.ref).mean())})
    model.train()
    return rows


def _summarise_bias(rows: list[dict]) -> dict[str, float]:
    if not rows:
        return {"val_mae_total": float("nan"), "val_mae_artery": float("nan")}
    frame = pd.DataFrame(rows)
    out = {"val_mae_total": float(frame.total.mean()), "val_mae_artery": float(frame.artery.mean())}
    for name, flag in (("gated", True), ("nongated", False)):
        sub = frame[frame.gated == flag]
        out[f"val_mae_total_{name}"] = float(sub.total.mean()) if len(sub) else float("nan")
    return out


def evaluate_bias(model, cfg: TrainConfig, scans: list[Scan], device: torch.device, amp: bool) -> dict[str, float]:
    """Mean absolute scoring bias on validation scans (total and mean per artery), per cohort and overall."""
    return _summarise_bias(_bias_rows(model, cfg, scans, device, amp))


# --------------------------------------------------------------------------- several processes (torchrun)


def _rank_seed(cfg: TrainConfig, epoch: int, epoch_seed: int, rank: int) -> int:
    """Seed of a rank's loss sampling generator: rank 0 (and a single process) uses the epoch's own seed.

    The other ranks need streams of their own: the same stream would draw the
    same negatives' positions for different scans.
    """
    if rank == 0:
        return epoch_seed
    return int(np.random.SeedSequence([cfg.seed, epoch, rank]).generate_state(1)[0])


def _wrap(core: torch.nn.Module, env: DistributedEnv, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``core`` for several processes; ``core`` itself otherwise."""
    if not env.enabled:
        return core
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)


def _mean_over_ranks(sums: dict[str, float], device: torch.device, env: DistributedEnv) -> dict[str, float]:
    """Loss sums of an epoch averaged over the ranks: the metrics of the whole batches (equal shares)."""
    if not env.enabled:
        return sums
    import torch.distributed as dist

    keys = list(sums)  # insertion order: the same on every rank (same loss terms)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v / env.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def _sync_buffers(core: torch.nn.Module, env: DistributedEnv) -> None:
    """Rank 0's BatchNorm running statistics to every rank (each updated them on its own share)."""
    if env.enabled:
        import torch.distributed as dist

        for buffer in core.buffers():
            dist.broadcast(buffer, src=0)


def _evaluate(core, cfg: TrainConfig, scans: list[Scan], device: torch.device, amp: bool, env: DistributedEnv):
    """:func:`evaluate_bias`, the scans shared round-robin by the ranks and gathered in their original order."""
    if not env.enabled:
        return evaluate_bias(core, cfg, scans, device, amp)
    import torch.distributed as dist

    mine = list(range(env.rank, len(scans), env.world_size))
    rows = _bias_rows(core, cfg, [scans[i] for i in mine], device, amp)
    gathered: list[list | None] = [None] * env.world_size
    dist.all_gather_object(gathered, list(zip(mine, rows, strict=True)))
    ordered = sorted((pair for part in gathered for pair in part or []), key=lambda pair: pair[0])
    return _summarise_bias([row for _, row in ordered])


def _check_ranks_agree(core: torch.nn.Module, env: DistributedEnv, device: torch.device) -> None:
    """Fail loudly if the ranks' weights drifted apart (they must be copies of one model)."""
    if not env.enabled:
        return
    import torch.distributed as dist

    sums = torch.stack([p.detach().double().sum() for p in core.parameters()]).to(device)
    gathered = [torch.empty_like(sums) for _ in range(env.world_size)]
    dist.all_gather(gathered, sums)
    bad = [r for r, g in enumerate(gathered) if not torch.allclose(g, gathered[0], rtol=1e-6, atol=1e-9)]
    if bad:
        raise RuntimeError(f"DDP rank(s) {bad} hold weights different from rank 0's: the processes diverged")


# --------------------------------------------------------------------------- training


def train_experiment(
    name: str,
    index_csv: Path,
    out_dir: Path,
    cfg: TrainConfig,
    agatston: AgatstonParams | None = None,
    require_gpu: bool = False,
) -> pd.DataFrame:
    """Train (or resume) one experiment; writes model.pt, checkpoint.pt and metrics.csv in ``out_dir``.

    Started by ``torchrun`` (``WORLD_SIZE`` > 1), every process trains one
    replica under DistributedDataParallel on ``cuda:LOCAL_RANK`` (NCCL) or
    the CPU (gloo), each with its share of every batch (:func:`rank_share`);
    rank 0 alone writes the files.  ``require_gpu`` (config
    ``train.require_gpu``): fail rather than train on the CPU.
    """
    agatston = agatston or AgatstonParams()
    env = distributed_env()
    check_world_size(cfg, env.world_size)
    device = resolve_device(cfg.device, require_gpu, env.local_rank if env.enabled else None, section="train")
    with process_group(env, device):
        return _train(name, Path(index_csv), Path(out_dir), cfg, agatston, env, device)


def _train(
    name: str,
    index_csv: Path,
    out_dir: Path,
    cfg: TrainConfig,
    agatston: AgatstonParams,
    env: DistributedEnv,
    device: torch.device,
) -> pd.DataFrame:
    amp = cfg.amp and device.type == "cuda"
    main = env.is_main
    index = pd.read_csv(index_csv, keep_default_na=False)
    train_rows = index[index.split == "train"]
    val_rows = index[index.split == "val"]
    for cohort in ("gated", "nongated"):
        if not (train_rows.cohort == cohort).any():
            raise ValueError(f"{index_csv}: no {cohort} training scans; a batch needs both cohorts")
    train_scans = load_scans(train_rows, agatston, progress=main)
    val_scans = load_scans(val_rows, agatston, progress=main)
    gated = [i for i, s in enumerate(train_scans) if s.gated]
    nongated = [i for i, s in enumerate(train_scans) if not s.gated]

    torch.manual_seed(cfg.seed)  # initial weights; each epoch reseeds from (seed, epoch)
    core = build_model(cfg.model, dict(cfg.model_config)).to(device)
    if amp:
        core = core.to(memory_format=torch.channels_last_3d)
    if env.enabled and device.type == "cuda":
        # Batch statistics over the whole batch, as one process would see them (CUDA only in torch).
        core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(core)
    loss_cfg = LossConfig(**cfg.loss) if cfg.model == "spss" else None
    optimizer = torch.optim.SGD(core.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    metrics: list[dict] = []
    start = 0
    # What a checkpoint must share to be continued: everything but the epoch
    # count (the schedule depends on the epoch alone) and the device.
    cfg_json = json.dumps({k: v for k, v in asdict(cfg).items() if k not in ("epochs", "device")}, sort_keys=True)
    if ckpt_path.exists():  # every rank reads it: rank 0 writes again only after an epoch all ranks take part in
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if saved.get("config") == cfg_json and saved["epoch"] <= cfg.epochs:
            core.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            metrics, start = saved["metrics"], int(saved["epoch"])
            if main:
                log.info("%s: resuming after epoch %d", name, start)
            if saved.get("world_size", 1) != env.world_size and main:
                log.info("%s: checkpoint written by %d process(es), continued by %d: same batches, other "
                         "negative-sampling streams", name, saved.get("world_size", 1), env.world_size)  # fmt: skip
        else:
            log.warning("%s: checkpoint %s is from another configuration; training from scratch", name, ckpt_path)
    model = _wrap(core, env, device)
    half = cfg.batch_size // 2
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # All randomness of an epoch derives from (seed, epoch): resuming replays it exactly.
        seed = int(np.random.SeedSequence([cfg.seed, epoch]).generate_state(1)[0])
        torch.manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(_rank_seed(cfg, epoch, seed, env.rank))
        batches = _epoch_batches(gated, nongated, half, np.random.default_rng(seed))  # same order on every rank
        sums: dict[str, float] = {}
        model.train()
        bar = tqdm(batches, desc=f"{name} epoch {epoch}/{cfg.epochs}", unit="batch", leave=False, disable=not main)
        for ids in bar:
            mine = rank_share(ids, half, env.rank, env.world_size)
            batch = _batch([train_scans[i] for i in mine], device, amp)
            loss, parts, _ = _forward(model, cfg, loss_cfg, batch, generator, amp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        sums = _mean_over_ranks(sums, device, env)
        row = {"epoch": epoch, "lr": lr, **{f"loss_{k}": v / len(batches) for k, v in sums.items()}}
        _sync_buffers(core, env)
        row.update(_evaluate(core, cfg, val_scans, device, amp, env))
        row["seconds"] = time.perf_counter() - t0
        metrics.append(row)
        _check_ranks_agree(core, env, device)
        if main:
            checkpoint = {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                          "metrics": metrics, "config": cfg_json, "world_size": env.world_size}  # fmt: skip
            write_torch(ckpt_path, checkpoint)
            write_csv(out_dir / "metrics.csv", pd.DataFrame(metrics))
            log.info("%s epoch %d: %s", name, epoch, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
    frame = pd.DataFrame(metrics)
    if main:
        weights = {k: v.cpu() for k, v in core.state_dict().items()}
        write_torch(out_dir / "model.pt", {"state_dict": weights, "experiment": name, "config": asdict(cfg)})
        write_csv(out_dir / "metrics.csv", frame)
    return frame
