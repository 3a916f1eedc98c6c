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
  scoring bias (the convergence figure), a checkpoint, and resume from it.

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
from cacs.io.atomic import write_csv, write_torch
from cacs.localizer import resolve_device
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


def load_scans(index: pd.DataFrame, agatston: AgatstonParams) -> list[Scan]:
    scans = []
    for row in tqdm(index.to_dict("records"), desc="load crops", unit="scan"):
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
        return loss, {"total": float(loss.detach())}, model.scores(pred_log)
    pred = model.scores(out, batch["weight"], batch["voxel_factor"])  # the models return float32 logits
    loss, parts = total_loss(out, pred, batch, loss_cfg, generator)
    return loss, parts, pred


def _epoch_batches(gated: list[int], nongated: list[int], half: int, rng: np.random.Generator) -> list[list[int]]:
    """Equal numbers of gated and non-gated scans per batch; the shorter list is cycled."""
    g, n = list(rng.permutation(gated)), list(rng.permutation(nongated))
    steps = math.ceil(max(len(g), len(n)) / half)
    pick = lambda pool, i: [pool[(i * half + j) % len(pool)] for j in range(half)]  # noqa: E731
    return [pick(g, i) + pick(n, i) for i in range(steps)]


@torch.no_grad()
def evaluate_bias(model, cfg: TrainConfig, scans: list[Scan], device: torch.device, amp: bool) -> dict[str, float]:
    """Mean absolute scoring bias on validation scans (total and mean per artery), per cohort and overall."""
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
    if not rows:
        return {"val_mae_total": float("nan"), "val_mae_artery": float("nan")}
    frame = pd.DataFrame(rows)
    out = {"val_mae_total": float(frame.total.mean()), "val_mae_artery": float(frame.artery.mean())}
    for name, flag in (("gated", True), ("nongated", False)):
        sub = frame[frame.gated == flag]
        out[f"val_mae_total_{name}"] = float(sub.total.mean()) if len(sub) else float("nan")
    return out



def train_experiment(
    name: str, index_csv: Path, out_dir: Path, cfg: TrainConfig, agatston: AgatstonParams | None = None
) -> pd.DataFrame:
    """Train (or resume) one experiment; writes model.pt, checkpoint.pt and metrics.csv in ``out_dir``."""
    agatston = agatston or AgatstonParams()
    device = resolve_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    index = pd.read_csv(index_csv, keep_default_na=False)
    train_rows = index[index.split == "train"]
    val_rows = index[index.split == "val"]
    for cohort in ("gated", "nongated"):
        if not (train_rows.cohort == cohort).any():
            raise ValueError(f"{index_csv}: no {cohort} training scans; a batch needs both cohorts")
    train_scans = load_scans(train_rows, agatston)
    val_scans = load_scans(val_rows, agatston)
    gated = [i for i, s in enumerate(train_scans) if s.gated]
    nongated = [i for i, s in enumerate(train_scans) if not s.gated]

    torch.manual_seed(cfg.seed)  # initial weights; each epoch reseeds from (seed, epoch)
    model = build_model(cfg.model, dict(cfg.model_config)).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last_3d)
    loss_cfg = LossConfig(**cfg.loss) if cfg.model == "spss" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    metrics: list[dict] = []
    start = 0
    # What a checkpoint must share to be continued: everything but the epoch
    # count (the schedule depends on the epoch alone) and the device.
    cfg_json = json.dumps({k: v for k, v in asdict(cfg).items() if k not in ("epochs", "device")}, sort_keys=True)
    if ckpt_path.exists():
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if saved.get("config") == cfg_json and saved["epoch"] <= cfg.epochs:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            metrics, start = saved["metrics"], int(saved["epoch"])
            log.info("%s: resuming after epoch %d", name, start)
        else:
            log.warning("%s: checkpoint %s is from another configuration; training from scratch", name, ckpt_path)
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # All randomness of an epoch derives from (seed, epoch): resuming replays it exactly.
        seed = int(np.random.SeedSequence([cfg.seed, epoch]).generate_state(1)[0])
        torch.manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(seed)
        batches = _epoch_batches(gated, nongated, cfg.batch_size // 2, np.random.default_rng(seed))
        sums: dict[str, float] = {}
        model.train()
        for ids in tqdm(batches, desc=f"{name} epoch {epoch}/{cfg.epochs}", unit="batch", leave=False):
            batch = _batch([train_scans[i] for i in ids], device, amp)
            loss, parts, _ = _forward(model, cfg, loss_cfg, batch, generator, amp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        row = {"epoch": epoch, "lr": lr, **{f"loss_{k}": v / len(batches) for k, v in sums.items()}}
        row.update(evaluate_bias(model, cfg, val_scans, device, amp))
        row["seconds"] = time.perf_counter() - t0
        metrics.append(row)
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                      "metrics": metrics, "config": cfg_json}  # fmt: skip
        write_torch(ckpt_path, checkpoint)
        write_csv(out_dir / "metrics.csv", pd.DataFrame(metrics))
        log.info("%s epoch %d: %s", name, epoch, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
    weights = {k: v.cpu() for k, v in model.state_dict().items()}
    write_torch(out_dir / "model.pt", {"state_dict": weights, "experiment": name, "config": asdict(cfg)})
    frame = pd.DataFrame(metrics)
    write_csv(out_dir / "metrics.csv", frame)
    return frame
