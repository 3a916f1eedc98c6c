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

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from tqdm import tqdm

from cacs import ARTERIES
from cacs.agatston import AgatstonParams, agatston_scores, lesion_weight_map, voxel_score_factor
from cacs.bundle import (
    BUNDLE_KEY,
    Given,
    crop_meta_path,
    experiment_bundle,
    given_from,
    plain,
    read_json,
    show,
)
from cacs.bundle_settings import experiment_settings
from cacs.crop import CropParams
from cacs.devices import DistributedEnv, distributed_env, process_group, resolve_device
from cacs.io.atomic import write_csv, write_torch
from cacs.losses import LossConfig, convnet_loss, nongated_background_loss, regression_loss, semantic_loss
from cacs.models import build_model, make_config
from cacs.models.inputs import HU_CLIP, HU_SCALE  # also re-exported: `from cacs.train import HU_SCALE`
from cacs.native_scoring import class_probabilities, decide_labels
from cacs.training_loop import EpochLoop, changed_keys, mean_over_ranks

log = logging.getLogger(__name__)

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
    amp: bool = True  # bfloat16 autocast + channels_last_3d (CUDA, or a CPU with native bf16)
    channels_last: bool = True  # channels_last_3d memory layout even without bf16 (use_channels_last)
    optimizer: str = "sgd"  # "sgd" (the paper) | "adamw"
    schedule: str = "sgdr"  # "sgdr" (the paper, per epoch) | "onecycle" (per step)
    warmup_fraction: float = 0.3  # onecycle: share of all steps spent warming up
    steps_per_epoch: int | None = None  # None = one pass over the larger cohort (the paper)
    patch_size: tuple[int, int, int] | None = None  # (x, y, z) gated training patches; None = whole crops
    foreground_fraction: float = 0.0  # share of gated patches centred on reference calcium
    confuser_fraction: float = 0.0  # share of gated patches centred on a non-calcium voxel >= the Agatston threshold
    patches_per_scan: int = 1  # gated patches per gated slot of a batch (patch_size only)
    noise_hu: float = 0.0  # gated patches: add Gaussian noise of an SD drawn from [0, noise_hu] HU
    blur_z_vox: float = 0.0  # gated patches: blur along z with a Gaussian SD drawn from [0, blur_z_vox] voxels
    validate_every: int = 1  # validation scoring bias after every n-th epoch and after the last (NaN between)
    nongated_zero_patches: bool = False  # calcium-free non-gated scans (reference 0) as one patch, not the whole crop

    def __post_init__(self) -> None:
        if self.model not in ("spss", "convnet"):
            raise ValueError(f"experiment model must be 'spss' or 'convnet', got {self.model!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("sgdr", "onecycle"):
            raise ValueError(f"train.schedule must be 'sgdr' or 'onecycle', got {self.schedule!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"train.warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"train.steps_per_epoch must be >= 1 or null, got {self.steps_per_epoch!r}")
        if self.patch_size is not None:
            if len(self.patch_size) != 3 or any(int(v) < 1 for v in self.patch_size):
                raise ValueError(f"train.patch_size must be three sizes >= 1 (x, y, z) or null: {self.patch_size!r}")
            object.__setattr__(self, "patch_size", tuple(int(v) for v in self.patch_size))
        if not self.noise_hu >= 0 or not self.blur_z_vox >= 0:
            raise ValueError(f"train.noise_hu, train.blur_z_vox must be >= 0: {self.noise_hu!r}, {self.blur_z_vox!r}")
        if self.validate_every < 1:
            raise ValueError(f"train.validate_every must be >= 1, got {self.validate_every!r}")
        if self.patches_per_scan < 1:
            raise ValueError(f"train.patches_per_scan must be >= 1, got {self.patches_per_scan!r}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"train.foreground_fraction must be in [0, 1], got {self.foreground_fraction!r}")
        if not 0.0 <= self.confuser_fraction <= 1.0 - self.foreground_fraction:
            raise ValueError(f"train.confuser_fraction must be in [0, 1 - foreground_fraction], got "
                             f"{self.confuser_fraction!r}")  # fmt: skip
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


def learning_rate(cfg: TrainConfig, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """The learning rate of one optimizer step: a pure function of (epoch, step), so resume replays it.

    ``sgdr`` (the paper): cosine from the cycle's peak to ``lr_min`` over
    ``cycle_epochs``, constant within an epoch (epoch is 1-based; the first
    cycle peaks at ``lr``, every later one at ``lr_restart``).

    ``onecycle`` (the CPU default run): over all ``epochs x steps_per_epoch``
    steps, a cosine warm-up from ``lr / 25`` to ``lr`` during
    ``warmup_fraction`` of them, then a cosine decay to ``lr_min`` (the shape
    of torch's ``OneCycleLR``).  A large peak reached gently lets AdamW
    converge in a few hundred steps, which a CPU can afford.
    """
    if cfg.schedule == "sgdr":
        cycle, pos = divmod(epoch - 1, cfg.cycle_epochs)
        peak = cfg.lr if cycle == 0 else cfg.lr_restart
        return cfg.lr_min + 0.5 * (peak - cfg.lr_min) * (1 + math.cos(math.pi * pos / cfg.cycle_epochs))
    total = cfg.epochs * steps_per_epoch
    t = ((epoch - 1) * steps_per_epoch + step) / max(total - 1, 1)
    start = cfg.lr / 25.0
    if t < cfg.warmup_fraction:
        return start + 0.5 * (cfg.lr - start) * (1 - math.cos(math.pi * t / cfg.warmup_fraction))
    u = (t - cfg.warmup_fraction) / (1 - cfg.warmup_fraction)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(u, 1.0)))


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW (the CPU default run's recipe)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def use_amp(cfg: TrainConfig, device: torch.device) -> bool:
    """bfloat16 autocast + channels_last_3d where the hardware runs bf16 natively.

    On CUDA always; on a CPU only with native bf16 (AVX-512 BF16 / AMX), where
    oneDNN's bf16 kernels made the default run's SPSS step 2.2x faster than
    fp32 (``bench/bench_train.py``); elsewhere bf16 is emulated and slower.
    """
    if not cfg.amp:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_channels_last(cfg: TrainConfig, amp: bool) -> bool:
    """Whether weights and inputs use the channels_last_3d memory layout: with bf16 always, else by config.

    oneDNN's 3D convolutions of these narrow networks run faster in that layout
    in float32 too: measured on a 2-core AVX2 CPU without native bf16, one
    whole-crop forward + backward of the default run's SPSS went from 2.96 s
    to 2.41 s (``bench/bench_train.py``).
    """
    return amp or cfg.channels_last


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
    foreground: np.ndarray  # (N, 3) z, y, x indices of reference calcium (empty for non-gated)
    confusers: list[np.ndarray] = field(default_factory=list)
    # the voxels >= the Agatston threshold that are not calcium (bone, aortic calcium), by cube; gated scans
    # and calcium-free non-gated ones (where every such voxel is one), else empty
    spacing: tuple[float, float, float] | None = None  # (x, y, z) mm of the model grid; the validation's
    # clinical score needs it (training patches do not)


def confuser_cells(hu: np.ndarray, labels: np.ndarray, threshold_hu: float, cell: int = 16) -> list[np.ndarray]:
    """Non-calcium voxels >= ``threshold_hu`` grouped by the ``cell``-voxel cube they lie in: (K, 3) z, y, x each.

    A patch centred on "a confuser" picks a cube first, then a voxel in it, so
    that it is as likely to show the end of a rib in a corner of the crop or a
    speck of aortic calcium as the spine, whose voxels far outnumber theirs
    (and which is connected to the ribs, so connected components would not
    separate them).
    """
    zyx = np.argwhere((hu >= threshold_hu) & (labels == 0)).astype(np.int32)
    if not len(zyx):
        return []
    keys = np.ravel_multi_index(tuple((zyx // cell).T), tuple(-(-np.asarray(hu.shape) // cell)))
    order = np.argsort(keys, kind="stable")
    _, starts = np.unique(keys[order], return_index=True)
    return np.split(zyx[order], starts[1:])


def load_scans(index: pd.DataFrame, agatston: AgatstonParams, progress: bool = True) -> list[Scan]:
    scans = []
    for row in tqdm(index.to_dict("records"), desc="load crops", unit="scan", disable=not progress):
        hu = np.load(row["image_npy"]).astype(np.float32)
        gated = row["cohort"] == "gated"
        has_labels = gated and bool(row.get("labels_npy"))
        labels = np.load(row["labels_npy"]).astype(np.int64) if has_labels else np.zeros(hu.shape, np.int64)
        spacing = (row["spacing_x"], row["spacing_y"], row["spacing_z"])
        ref = np.array([row[a] for a in ARTERIES], dtype=np.float32)
        scans.append(
            Scan(
                case_id=row["case_id"],
                gated=gated,
                x=(np.clip(hu, *HU_CLIP) / HU_SCALE)[None],
                hu=hu,
                labels=labels,
                weight=lesion_weight_map(hu, agatston).astype(np.float32),
                voxel_factor=voxel_score_factor(spacing, agatston),
                ref=ref,
                foreground=np.argwhere(labels > 0).astype(np.int32),
                confusers=confuser_cells(hu, labels, agatston.threshold_hu) if has_labels or not ref.any() else [],
                spacing=spacing,
            )
        )
    return scans


def data_fingerprint(rows: pd.DataFrame) -> str:
    """SHA-256 of what training reads: the crops' bytes, their cohort, split and reference scores.

    Stored in the checkpoint, so that a rerun on other crops (a new heart box, another
    guard setting, a regenerated cohort) trains from scratch instead of "resuming" a
    finished run of other data; the configuration alone cannot tell.
    """
    digest = hashlib.sha256()
    for row in rows.sort_values("case_id").to_dict("records"):
        digest.update(f"{row['case_id']}|{row['cohort']}|{row['split']}|".encode())
        digest.update(",".join(f"{float(row[a]):.6g}" for a in ARTERIES).encode())
        for key in ("image_npy", "labels_npy"):
            if row.get(key):
                digest.update(Path(row[key]).read_bytes())
    return digest.hexdigest()


def cut_patch(scan: Scan, origin_zyx: tuple[int, int, int], size_zyx: tuple[int, int, int]) -> Scan:
    """A gated training patch of ``scan``, with the reference score of what it holds.

    The regression target of a patch cannot be the whole scan's score.  It is
    eq. 1 applied to the reference mask inside the patch (sum of W x s over
    each artery's labelled voxels): exactly what a perfect segmentation of
    the patch scores on the model grid, so ``L_rsl`` stays consistent.  W is
    cut from the whole crop's map, so a lesion that leaves the patch keeps its
    peak-HU weight.
    """
    z, y, x = origin_zyx
    dz, dy, dx = size_zyx
    region = (slice(z, z + dz), slice(y, y + dy), slice(x, x + dx))
    labels, weight = scan.labels[region], scan.weight[region]
    ref = np.array([weight[labels == k + 1].sum() * scan.voxel_factor for k in range(len(ARTERIES))], np.float32)
    return Scan(
        case_id=scan.case_id,
        gated=scan.gated,
        x=scan.x[(slice(None), *region)],
        hu=scan.hu[region],
        labels=labels,
        weight=weight,
        voxel_factor=scan.voxel_factor,
        ref=ref,
        foreground=np.zeros((0, 3), np.int32),
    )


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


def _group_loss(model, cfg: TrainConfig, loss_cfg: LossConfig | None, batch, generator, amp: bool, n_scans: int):
    """One group of same-shaped samples: its share of the step's loss, its L_ssl parts, its summed |error|.

    A step's loss is ``L_ssl`` (mean over the step's gated patches) plus
    ``lambda x L_rsl`` (mean over *every* scan of the step, K arteries each);
    the regression term is a mean, so each group adds its sum of absolute
    errors divided by ``K x n_scans`` and the groups' losses add up to eq. 6.
    """
    with torch.autocast(batch["x"].device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(batch["x"])
    share = batch["ref_scores"].shape[0] / n_scans
    if cfg.model == "convnet":
        return convnet_loss(out.float(), batch["ref_scores"]) * share, None, 0.0  # its metric is the loss alone
    net = getattr(model, "module", model)  # the network itself under DistributedDataParallel
    pred = net.scores(out, batch["weight"], batch["voxel_factor"])  # the models return float32 logits
    ssl, parts = semantic_loss(out, batch["labels"], batch["hu"], batch["is_gated"], loss_cfg, generator)
    rsl = regression_loss(pred, batch["ref_scores"]) * share
    loss = ssl + loss_cfg.lam * rsl
    parts = {**parts, "ssl": ssl} if bool(batch["is_gated"].any()) else {}  # empty: no part of L_ssl here
    n_nongated = int((~batch["is_gated"]).sum())
    if loss_cfg.nongated_background > 0 and n_nongated:
        bg = nongated_background_loss(out.cac_logits, batch["hu"], batch["is_gated"], loss_cfg, generator)
        loss = loss + loss_cfg.nongated_background * bg * (n_nongated / n_scans)
        parts["bg"] = bg
    return loss, parts or None, (pred.detach() - batch["ref_scores"]).abs().sum()


def _train_step(model, cfg: TrainConfig, loss_cfg, groups: list[list[Scan]], device, amp, generator, optimizer):
    """Forward/backward every group (gradients accumulate), one optimizer step; the metric parts.

    Gated patches and whole non-gated crops differ in shape, hence groups;
    under DDP every group but the last runs in ``no_sync`` so the gradients
    are all-reduced once, after the whole step.
    """
    n_scans = sum(len(g) for g in groups)
    optimizer.zero_grad(set_to_none=True)
    parts, abs_err, loss_sum = None, 0.0, 0.0
    for i, group in enumerate(groups):
        batch = _batch(group, device, use_channels_last(cfg, amp))
        last = i == len(groups) - 1
        sync = model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext()
        with sync:
            loss, group_parts, err = _group_loss(model, cfg, loss_cfg, batch, generator, amp, n_scans)
            loss.backward()
        loss_sum += float(loss.detach())
        abs_err += float(err)
        if group_parts is not None:
            parts = {**(parts or {}), **group_parts}
    optimizer.step()
    if cfg.model == "convnet":
        return {"total": loss_sum}
    named = {k: float(v.detach()) for k, v in (parts or {}).items()}
    return {**named, "rsl": abs_err / (n_scans * len(ARTERIES)), "total": loss_sum}


@dataclass(frozen=True)
class Sample:
    """One slot of a batch: a training scan, and the (z, y, x) corner of its patch (None = whole crop)."""

    scan: int
    origin: tuple[int, int, int] | None = None
    noise_sd_hu: float = 0.0  # augmentation: SD of the Gaussian noise added to the network input
    noise_seed: int = 0
    blur_z_vox: float = 0.0  # augmentation: SD (voxels) of a Gaussian blur of the network input along z


def _patch_origin(shape, size, rng: np.random.Generator, centre=None) -> tuple[int, int, int]:
    """Corner of a patch of ``size`` inside ``shape``: around a uniform voxel, or around ``centre`` with a
    jitter of 1/4 patch; pushed back inside the crop.

    A uniform *centre*, not a uniform corner: with uniform corners a voxel on a
    crop's face lies in 1 of (crop - patch + 1) patches (1 in 49 for 112 voxels
    and 64-voxel patches) while central voxels lie in all of them, so bone at the
    crop's edge (ribs: 560 HU in the generator) was almost never a negative, and
    a trained network called it calcium (docs/results.md).
    With a uniform centre a face voxel lies in about (patch / 2) / crop of them
    (33 in 112), as in nnU-Net's sampling, which pads instead of clipping.
    """
    shape, size = np.asarray(shape), np.asarray(size)
    if centre is None:
        lo = rng.integers(0, shape) - size // 2
    else:
        jitter = rng.integers(-(size // 4), size // 4 + 1)
        lo = np.asarray(centre) - size // 2 + jitter
    return tuple(int(v) for v in np.clip(lo, 0, shape - size))


def plan_epoch(
    scans: list[Scan], gated: list[int], nongated: list[int], half: int, steps: int, cfg: TrainConfig,
    rng: np.random.Generator,
) -> list[list[Sample]]:
    """The batches of one epoch, ``half`` gated then ``half`` non-gated slots each.

    Scans are taken in a fresh permutation of each cohort, the shorter one
    cycled.  With ``patch_size`` (SPSS only: the ConvNet regresses whole-scan
    scores) every gated slot gives ``patches_per_scan`` patches, each with
    probability
    ``foreground_fraction`` a patch around a random reference-calcium voxel of
    a random calcified gated scan (nnU-Net's foreground oversampling: calcium
    fills ~1e-4 of a crop, uniform patches would almost never show it), with
    probability ``confuser_fraction`` a patch of the scheduled scan around one
    of its *confusers*, voxels at or above the Agatston threshold that are not
    calcium (bone, aortic calcium: what a trained network still called
    calcium, at the crop's faces), otherwise a uniform patch of the scheduled
    scan.  Non-gated scans are whole crops: their reference is a whole-scan
    score (eq. 5).  With
    ``nongated_zero_patches`` a non-gated scan whose reference is 0 gives one
    patch instead: no part of a calcium-free scan holds calcium, so eq. 5 with
    target 0 is exact on the patch, at a fraction of a whole crop's cost.  Such a
    patch is centred on one of the scan's confusers (every voxel at or above
    the threshold is one) with probability ``confuser_fraction / (1 -
    foreground_fraction)``, else on a uniform voxel; it is not augmented (it is
    chest CT already).
    """
    g, n = list(rng.permutation(gated)), list(rng.permutation(nongated))
    patches = cfg.patch_size is not None and cfg.model == "spss"
    calcified = [i for i in gated if len(scans[i].foreground)] if patches else []
    size = tuple(cfg.patch_size[::-1]) if patches else None
    batches = []
    for step in range(steps):
        batch = []
        for j in range(half):
            scheduled = int(g[(step * half + j) % len(g)])
            if not patches:
                batch.append(Sample(scheduled))
                continue
            for _ in range(cfg.patches_per_scan):
                idx, centre = scheduled, None
                draw = rng.random() if calcified or cfg.confuser_fraction else 1.0
                confusers = scans[scheduled].confusers
                if calcified and draw < cfg.foreground_fraction:
                    idx = int(calcified[rng.integers(len(calcified))])
                    fg = scans[idx].foreground
                    centre = fg[rng.integers(len(fg))]
                elif confusers and draw < cfg.foreground_fraction + cfg.confuser_fraction:
                    centre = _confuser_centre(confusers, rng)
                origin = _patch_origin(scans[idx].hu.shape, size, rng, centre)
                noise = float(rng.uniform(0.0, cfg.noise_hu))
                blur = float(rng.uniform(0.0, cfg.blur_z_vox))
                batch.append(Sample(idx, origin, noise, int(rng.integers(2**31)), blur))
        for j in range(half):
            scheduled = int(n[(step * half + j) % len(n)])
            if not (patches and cfg.nongated_zero_patches and not scans[scheduled].ref.any()):
                batch.append(Sample(scheduled))
                continue
            confusers, centre = scans[scheduled].confusers, None
            if confusers and rng.random() < cfg.confuser_fraction / max(1.0 - cfg.foreground_fraction, 1e-9):
                centre = _confuser_centre(confusers, rng)
            batch.append(Sample(scheduled, _patch_origin(scans[scheduled].hu.shape, size, rng, centre)))
        batches.append(batch)
    return batches


def _confuser_centre(confusers: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A confuser voxel (z, y, x): a cube first, then a voxel in it, so that a lone rib end is drawn as often
    as a cube of the spine, whose voxels outnumber it by thousands."""
    cube = confusers[rng.integers(len(confusers))]
    return cube[rng.integers(len(cube))]


def _epoch_batches(gated: list[int], nongated: list[int], half: int, rng: np.random.Generator) -> list[list[int]]:
    """Whole-crop batches of one epoch (scan indices): one pass over the larger cohort."""
    steps = math.ceil(max(len(gated), len(nongated)) / half)
    plan = plan_epoch([], gated, nongated, half, steps, TrainConfig(), rng)
    return [[s.scan for s in batch] for batch in plan]


def augment(scan: Scan, noise_sd_hu: float, noise_seed: int, blur_z_vox: float) -> Scan:
    """The scan with its network input made to look like chest CT: blurred along z, then noisier.

    Augmentation towards the non-gated domain, which is noisier than cardiac
    CT (about twice the SD) and smoother along z (5 mm slices, cardiac motion).
    Without it the network can tell the cohorts apart by their look, and the
    regression on non-gated scans (eq. 5) then teaches it a shortcut: call
    everything calcium in a chest CT (eq. 1 counts only voxels >= 130 HU, so
    soft tissue costs nothing there, while native-resolution scoring finds
    noise above 130 HU in it).  Labels, HU, W and the reference stay the clean
    scan's: the augmentation changes what the network sees, not what is true.
    """
    if noise_sd_hu <= 0 and blur_z_vox <= 0:
        return scan
    x = scan.x
    if blur_z_vox > 0:
        x = ndimage.gaussian_filter1d(x, blur_z_vox, axis=1, mode="nearest")
    if noise_sd_hu > 0:
        x = x + np.random.default_rng(noise_seed).normal(0.0, noise_sd_hu / HU_SCALE, x.shape).astype(np.float32)
    return dataclasses.replace(scan, x=np.ascontiguousarray(x, dtype=np.float32))


def _groups(samples: list[Sample], scans: list[Scan], cfg: TrainConfig) -> list[list[Scan]]:
    """The samples as groups of equal shape: patches first, then whole crops."""
    size = tuple(cfg.patch_size[::-1]) if cfg.patch_size else None
    patch = [augment(cut_patch(scans[s.scan], s.origin, size), s.noise_sd_hu, s.noise_seed, s.blur_z_vox)
             for s in samples if s.origin]  # fmt: skip
    whole = [scans[s.scan] for s in samples if s.origin is None]
    return [g for g in (patch, whole) if g]


def rank_share(ids: list, half: int, rank: int = 0, world_size: int = 1, n_gated: int | None = None) -> list:
    """One rank's part of a batch laid out ``[gated x n_gated, non-gated x half]``: its slice of each part.

    ``n_gated`` is ``half`` unless every gated slot holds several patches
    (``patches_per_scan``).

    Batch 4 over 2 ranks gives each rank 1 gated + 1 non-gated scan (the
    paper's 2 images per GPU).  Every rank then holds the same number of
    gated and of non-gated scans, so averaging the ranks' gradients (what DDP
    does) is the gradient of the whole batch's loss: ``L_ssl`` is a mean over
    the batch's gated scans and ``L_rsl`` a mean over all its scans.  With one
    process this is the batch itself, in the same order.
    """
    n_gated = half if n_gated is None else n_gated
    gated, nongated = ids[:n_gated], ids[n_gated:]
    pg, pn = len(gated) // world_size, len(nongated) // world_size
    return gated[rank * pg : (rank + 1) * pg] + nongated[rank * pn : (rank + 1) * pn]


def check_patch_size(cfg: TrainConfig, crop_shape_zyx: tuple[int, int, int]) -> None:
    """Patches must fit in the crops and keep the network's size multiple."""
    if cfg.patch_size is None or cfg.model != "spss":
        return
    patch_zyx = tuple(cfg.patch_size[::-1])
    if any(p > c for p, c in zip(patch_zyx, crop_shape_zyx, strict=True)):
        raise ValueError(
            f"train.patch_size {list(cfg.patch_size)} (x, y, z) is larger than the crops "
            f"{list(crop_shape_zyx[::-1])} (crop.model_size)"
        )
    multiple = make_config("spss", dict(cfg.model_config)).size_multiple
    if any(p % multiple for p in patch_zyx):
        raise ValueError(f"train.patch_size {list(cfg.patch_size)} must be multiples of {multiple} (SPSS levels)")


def warn_nondeterministic_bf16(
    cfg: TrainConfig, crop_shape_zyx: tuple[int, int, int], amp: bool, device_type: str = "cpu"
) -> list[str]:
    """Warn where a CPU bf16 run would not resume bit-identically; returns the warnings.

    Why: measured on torch 2.13's oneDNN with AVX-512 BF16, the bf16 weight
    gradient of a 3x3x3 convolution differs from call to call (up to 1e-2)
    when a spatial extent of its input is exactly 2 voxels; other extents are
    deterministic.  An SPSS level halves every extent, so a patch or crop whose
    extent reaches 2 at some level makes training (and resume) irreproducible.
    The default and COCA grids never do; tiny test grids can.  ``device_type``
    is the resolved device's: ``device: auto`` may land on a GPU, where the
    warning does not apply.
    """
    if not amp or device_type == "cuda" or cfg.model != "spss":
        return []
    levels = len(dict(cfg.model_config).get("channels") or make_config("spss").channels)
    shapes = {"crop": crop_shape_zyx}
    if cfg.patch_size is not None:
        shapes["patch"] = tuple(cfg.patch_size[::-1])
    found = []
    for what, shape in shapes.items():
        extents = [[s // 2**level for s in shape] for level in range(levels)]
        if any(2 in e for e in extents):
            found.append(f"{what} {list(shape[::-1])} (x, y, z) reaches an extent of 2 voxels at an SPSS level: "
                         "bf16 on this CPU is then not bit-reproducible (train.amp: false, or another size)")
    for message in found:
        log.warning(message)
    return found


def check_world_size(cfg: TrainConfig, world_size: int) -> None:
    """Each process needs as many gated as non-gated scans, at least one of each."""
    if cfg.batch_size % (2 * world_size):
        raise ValueError(
            f"train.batch_size {cfg.batch_size} cannot be shared by {world_size} processes (train.gpus): each "
            f"needs the same number of gated and non-gated scans, so batch_size must be a multiple of "
            f"2 x {world_size} = {2 * world_size}"
        )


@torch.no_grad()
def _bias_rows(
    model, cfg: TrainConfig, scans: list[Scan], device: torch.device, amp: bool, agatston: AgatstonParams
) -> list[dict]:
    """Per validation scan: cohort and absolute error of the total and mean per-artery score.

    An SPSS model is scored as a reader would score its label map: ``cacs predict``'s decision rule
    (:func:`cacs.native_scoring.decide_labels`) and the clinical Agatston scorer, here on the model grid's
    HU (the native scans are not among the training job's inputs). Eq. 1's soft score, what the
    regression loss trains, is not used: it sums small calcium probabilities over thousands of bone
    voxels that no threshold would call calcium: it gave 125-285 points to calcium-free validation
    scans of the default run whose label maps scored 0. A perfect segmentation on the model grid loses
    the calcium that resampling pulls under 130 HU (``ref_grid_*`` in the prediction tables), so the
    curve's floor is above 0.
    """
    model.eval()
    rows = []
    for s in scans:
        batch = _batch([s], device, use_channels_last(cfg, amp))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(batch["x"])
        if cfg.model == "convnet":
            p = model.scores(out.float())[0].cpu().numpy()
        else:
            if s.spacing is None:
                raise ValueError(f"validation scan {s.case_id}: no spacing, which its Agatston score needs")
            scores = agatston_scores(s.hu, decide_labels(class_probabilities(out)), s.spacing, agatston)
            p = np.array([scores[a] for a in ARTERIES], dtype=np.float64)
        rows.append({"gated": s.gated, "total": abs(p.sum() - s.ref.sum()), "artery": float(np.abs(p - s.ref).mean())})
    model.train()
    return rows


VALIDATION_COLUMNS: tuple[str, ...] = (
    "val_mae_total", "val_mae_artery", "val_mae_total_gated", "val_mae_total_nongated",
)  # fmt: skip
"""The validation columns of ``metrics.csv``; NaN in an epoch that did not validate (``validate_every``)."""


def _summarise_bias(rows: list[dict]) -> dict[str, float]:
    if not rows:
        return dict.fromkeys(VALIDATION_COLUMNS, float("nan"))
    frame = pd.DataFrame(rows)
    out = {"val_mae_total": float(frame.total.mean()), "val_mae_artery": float(frame.artery.mean())}
    for name, flag in (("gated", True), ("nongated", False)):
        sub = frame[frame.gated == flag]
        out[f"val_mae_total_{name}"] = float(sub.total.mean()) if len(sub) else float("nan")
    return out


def evaluate_bias(
    model, cfg: TrainConfig, scans: list[Scan], device: torch.device, amp: bool,
    agatston: AgatstonParams | None = None,
) -> dict[str, float]:  # fmt: skip
    """Mean absolute scoring bias on validation scans (total and mean per artery), per cohort and overall.

    ``agatston``: the scoring convention (default: the standard one); see :func:`_bias_rows`.
    """
    return _summarise_bias(_bias_rows(model, cfg, scans, device, amp, agatston or AgatstonParams()))


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


def _sync_buffers(core: torch.nn.Module, env: DistributedEnv) -> None:
    """Rank 0's BatchNorm running statistics to every rank (each updated them on its own share)."""
    if env.enabled:
        import torch.distributed as dist

        for buffer in core.buffers():
            dist.broadcast(buffer, src=0)


def _evaluate(
    core, cfg: TrainConfig, scans: list[Scan], device: torch.device, amp: bool, env: DistributedEnv,
    agatston: AgatstonParams,
):  # fmt: skip
    """:func:`evaluate_bias`, the scans shared round-robin by the ranks and gathered in their original order."""
    if not env.enabled:
        return evaluate_bias(core, cfg, scans, device, amp, agatston)
    import torch.distributed as dist

    mine = list(range(env.rank, len(scans), env.world_size))
    rows = _bias_rows(core, cfg, [scans[i] for i in mine], device, amp, agatston)
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
    *,
    crop: CropParams | None = None,
    given: Sequence[Given] = (),
    data_source: str | None = None,
) -> pd.DataFrame:
    """Train (or resume) one experiment; writes model.pt, checkpoint.pt and metrics.csv in ``out_dir``.

    ``model.pt`` carries its bundle (:mod:`cacs.bundle`): the crop grid and
    Agatston convention come from the crops' record (``index.json`` beside
    the index, written by ``cacs crop``); ``agatston``, ``crop`` and ``given``
    (command-line options) must equal it, and are refused otherwise.  Without
    that record ``crop`` must be given (``agatston`` defaults to the standard).

    Started by ``torchrun`` (``WORLD_SIZE`` > 1), every process trains one
    replica under DistributedDataParallel on ``cuda:LOCAL_RANK`` (NCCL) or
    the CPU (gloo), each with its share of every batch (:func:`rank_share`);
    rank 0 alone writes the files.  ``require_gpu`` (config
    ``train.require_gpu``): fail rather than train on the CPU.
    """
    env = distributed_env()
    check_world_size(cfg, env.world_size)
    device = resolve_device(cfg.device, require_gpu, env.local_rank if env.enabled else None, section="train")
    given = [*given, *given_from("crop", crop, "crop"), *given_from("agatston", agatston, "agatston")]
    with process_group(env, device):
        return _train(name, Path(index_csv), Path(out_dir), cfg, env, device, given, crop is not None, data_source)


@dataclass(frozen=True)
class CropRecord:
    """The settings the crops were made with (``index.json``), as the model file records them."""

    crop: CropParams
    agatston: AgatstonParams
    plausibility: Any  # cacs.heart_boxes.Plausibility | None
    localizer: dict | None
    source: str  # index.json, or "the given crop settings" (a library call on crops without a record)


def crop_record(index_csv: Path, given: Sequence[Given] = (), crop_given: bool = False) -> CropRecord:
    """The crops' settings from ``index.json`` beside the index, checked against the given ones."""
    meta_path = crop_meta_path(index_csv)
    meta = read_json(meta_path)
    if meta is None:
        if not crop_given:
            raise ValueError(
                f"{index_csv}: no record of the crop settings beside it ({meta_path.name}, written by cacs crop "
                "since model files carry their settings); rerun cacs crop"
            )
        meta = {"crop": {g.key: g.value for g in given if g.section == "crop"},
                "agatston": plain(AgatstonParams(**{g.key: g.value for g in given if g.section == "agatston"}))}
    crop, agatston, plausibility = experiment_settings(meta, list(given), meta_path, whose="the crops'")
    source = str(meta_path) if meta_path.is_file() else "the given crop settings"
    return CropRecord(crop, agatston, plausibility, meta.get("localizer"), source)


def _check_crop_grid(scan: Scan, row: dict, record: CropRecord) -> None:
    """The crops on disk must be on the recorded model grid."""
    shape = list(scan.hu.shape[::-1])
    spacing = [float(row[f"spacing_{a}"]) for a in "xyz"]
    crop = record.crop
    if not crop.holds(shape, spacing):
        raise ValueError(
            f"{row['image_npy']}: crop of {show(shape)} voxels at {show(spacing)} mm, not the recorded crop grid "
            f"{show(list(crop.model_size))} at {show(list(crop.model_spacing_mm))} mm ({record.source})"
        )


def _train(
    name: str,
    index_csv: Path,
    out_dir: Path,
    cfg: TrainConfig,
    env: DistributedEnv,
    device: torch.device,
    given: list[Given],
    crop_given: bool,
    data_source: str | None,
) -> pd.DataFrame:
    amp = use_amp(cfg, device)
    main = env.is_main
    record = crop_record(index_csv, given, crop_given)
    agatston = record.agatston
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
    _check_crop_grid(train_scans[0], train_rows.iloc[0].to_dict(), record)
    check_patch_size(cfg, train_scans[0].hu.shape)
    warn_nondeterministic_bf16(cfg, train_scans[0].hu.shape, amp, device.type)

    torch.manual_seed(cfg.seed)  # initial weights; each epoch reseeds from (seed, epoch)
    core = build_model(cfg.model, dict(cfg.model_config)).to(device)
    if use_channels_last(cfg, amp):
        core = core.to(memory_format=torch.channels_last_3d)
    if env.enabled and device.type == "cuda":
        # Batch statistics over the whole batch, as one process would see them (CUDA only in torch).
        core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(core)
    loss_cfg = LossConfig(**cfg.loss) if cfg.model == "spss" else None
    optimizer = make_optimizer(cfg, core.parameters())
    out_dir.mkdir(parents=True, exist_ok=True)
    # What a checkpoint must share to be continued: everything but the device and,
    # with SGDR (whose rate depends on the epoch alone), the epoch count.
    free = ("epochs", "device") if cfg.schedule == "sgdr" else ("device",)
    cfg_json = json.dumps({k: v for k, v in asdict(cfg).items() if k not in free}, sort_keys=True)
    data = data_fingerprint(pd.concat([train_rows, val_rows]))

    def compatible(saved: dict) -> str:
        if saved.get("data") != data:
            return f"it was trained on other crops (not those of {index_csv})"
        if saved.get("config") != cfg_json:
            old = json.loads(saved["config"]) if isinstance(saved.get("config"), str) else {}
            return f"it is from another configuration ({', '.join(changed_keys(old, json.loads(cfg_json)))})"
        return ""

    loop = EpochLoop(name, log, out_dir, core, optimizer, cfg.seed, cfg.epochs,
                     identity={"config": cfg_json, "data": data, "world_size": env.world_size},
                     compatible=compatible, main=main)  # fmt: skip
    saved = loop.resume()
    if saved is not None and saved.get("world_size", 1) != env.world_size and main:
        log.info("%s: checkpoint written by %d process(es), continued by %d: same batches, other "
                 "negative-sampling streams", name, saved.get("world_size", 1), env.world_size)  # fmt: skip
    model = _wrap(core, env, device)
    half = cfg.batch_size // 2
    steps = cfg.steps_per_epoch or math.ceil(max(len(gated), len(nongated)) / half)

    def train_epoch(epoch: int, seed: int) -> dict[str, float]:
        """One epoch's steps; all its randomness derives from ``seed`` (the loop's (seed, epoch) seed)."""
        if cfg.schedule == "sgdr":
            lr = learning_rate(cfg, epoch)
        generator = torch.Generator(device=device).manual_seed(_rank_seed(cfg, epoch, seed, env.rank))
        rng = np.random.default_rng(seed)
        batches = plan_epoch(train_scans, gated, nongated, half, steps, cfg, rng)  # same plan on every rank
        sums: dict[str, float] = {}
        model.train()
        bar = tqdm(batches, desc=f"{name} epoch {epoch}/{cfg.epochs}", unit="step", leave=False, disable=not main)
        for step, samples in enumerate(bar):
            if cfg.schedule == "onecycle":
                lr = learning_rate(cfg, epoch, step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            n_gated = sum(train_scans[sample.scan].gated for sample in samples)
            mine = rank_share(samples, half, env.rank, env.world_size, n_gated=n_gated)
            groups = _groups(mine, train_scans, cfg)
            parts = _train_step(model, cfg, loss_cfg, groups, device, amp, generator, optimizer)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        sums = mean_over_ranks(sums, device, env.world_size)
        return {"lr": lr, **{f"loss_{k}": v / len(batches) for k, v in sums.items()}}

    def validate(epoch: int) -> dict[str, float]:
        if epoch % cfg.validate_every and epoch != cfg.epochs:
            return _summarise_bias([])  # whole-crop forwards of every validation scan cost a CPU run minutes
        _sync_buffers(core, env)
        return _evaluate(core, cfg, val_scans, device, amp, env, agatston)

    metrics = loop.run(train_epoch, validate, on_epoch_end=lambda epoch, row: _check_ranks_agree(core, env, device))
    frame = pd.DataFrame(metrics)
    if main:
        weights = {k: v.cpu() for k, v in core.state_dict().items()}
        bundle = experiment_bundle(
            asdict(cfg), record.crop, agatston, record.plausibility, record.localizer,
            {"index": str(index_csv), "fingerprint": data, "n_train": len(train_rows), "n_val": len(val_rows)},
            data_source,
        )  # fmt: skip
        write_torch(out_dir / "model.pt", {"state_dict": weights, "experiment": name, "config": asdict(cfg),
                                           BUNDLE_KEY: bundle})  # fmt: skip
        write_csv(out_dir / "metrics.csv", frame)
    return frame
