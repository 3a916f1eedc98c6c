"""Training the heart localiser (paper section 3.2) on the SegTHOR heart annotations.

The paper trains "a standard 3D UNet with four downsampling steps" on the
public SegTHOR heart annotations and uses the predicted heart bounding box
(+16 mm axially) to crop every COCA scan.  Cases are prepared once on the
coarse grid (:mod:`cacs.localizer.preprocess`), patches drawn and augmented
by :mod:`cacs.localizer.transforms`, and the epochs run in the shared loop
(:class:`cacs.training_loop.EpochLoop`).

Training is resumable: a checkpoint is written atomically after every epoch
and a re-run continues from it.  Data order and augmentation are drawn from
``(seed, epoch)`` only, so a run killed after epoch k and resumed ends with
exactly the weights of an uninterrupted run (on the same device and threads).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

from cacs.bundle import BUNDLE_KEY, localizer_bundle
from cacs.devices import resolve_device
from cacs.io.atomic import write_csv, write_torch
from cacs.io.nifti import read_volume
from cacs.localizer.network import _autocast, _coarse_argmax, build_unet, predict_heart
from cacs.localizer.params import MODEL_NAME, LocalizerParams
from cacs.localizer.preprocess import dice, mask_volume_ml, prepare_input, resample_mask_to, resample_to_spacing
from cacs.localizer.transforms import augmentation
from cacs.training_loop import CHECKPOINT_NAME, METRICS_NAME, EpochLoop, changed_keys, seed_epoch, seed_everything

log = logging.getLogger(__name__)

METRICS_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_dice", "lr", "seconds")
DICE_COLUMNS: tuple[str, ...] = ("case_id", "dice", "dice_coarse", "true_ml", "pred_ml")
DICE_NAME = "dice.csv"
__all__ = ["CHECKPOINT_NAME", "DICE_COLUMNS", "DICE_NAME", "METRICS_COLUMNS", "METRICS_NAME", "train_localizer"]


@dataclass
class _Case:
    case_id: str
    image: np.ndarray  # normalised, coarse, (z, y, x), padded to >= patch size with air
    label: np.ndarray  # uint8 heart mask on the same grid (padding = background)
    shape: tuple[int, int, int]  # coarse shape before padding


def _resolve(path: str, table: Path) -> Path:
    """Table paths may be absolute, relative to the working directory (Snakemake) or to the table."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    beside = table.parent / p
    return beside if beside.exists() else p


def _split_cases(case_ids: list[str], params: LocalizerParams) -> tuple[list[str], list[str]]:
    """Deterministic (fit, held-out) split by seed, independent of the table's row order."""
    ids = sorted(case_ids)
    n = len(ids)
    n_val = 0
    if params.val_fraction > 0 and n >= 2:
        n_val = min(n - 1, max(1, int(round(params.val_fraction * n))))
    elif params.val_fraction > 0:
        log.warning("only %d SegTHOR training case(s): no held-out case for validation", n)
    order = np.random.default_rng(params.seed).permutation(n)
    held = sorted(ids[i] for i in order[:n_val])
    return [i for i in ids if i not in held], held


def _load_case(case_id: str, image_path: Path, heart_path: Path, params: LocalizerParams) -> _Case:
    hu, geometry = read_volume(image_path)
    heart, heart_geometry = read_volume(heart_path)
    if heart.shape != hu.shape:
        raise ValueError(f"{case_id}: heart mask shape {heart.shape} differs from image shape {hu.shape}")
    x, _ = prepare_input(hu, geometry, params)
    y, _ = resample_to_spacing((heart > 0).astype(np.uint8), heart_geometry, params.spacing_mm, is_label=True)
    need = [max(0, p - s) for p, s in zip(params.patch_size[::-1], x.shape, strict=True)]
    pad = [(n // 2, n - n // 2) for n in need]
    return _Case(
        case_id,
        np.pad(x, pad, constant_values=-1.0).astype(np.float32),
        np.pad(y, pad, constant_values=0).astype(np.uint8),
        x.shape,
    )


def _compatible(saved: dict[str, Any], params: LocalizerParams, fit_ids: list[str], held_ids: list[str]) -> str:
    """Why a checkpoint cannot be continued ('' when it can).

    Only ``epochs`` (train further) and ``device`` (a GPU run killed and
    resumed on a CPU host) may change; anything else defines another model.
    (A checkpoint beyond the requested epochs is refused by the loop itself.)
    """
    changed = changed_keys(dict(saved.get("params", {})), params.to_dict(), ignore=("epochs", "device"))
    if changed:
        return f"parameters changed ({', '.join(changed)})"
    if saved.get("fit_ids") != fit_ids or saved.get("heldout_ids") != held_ids:
        return "the SegTHOR training cases changed"
    return ""


def _train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: DiceCELoss,
    cases: list[_Case],
    params: LocalizerParams,
    epoch: int,
    device: torch.device,
) -> float:
    """One pass over the fit cases in an order and with augmentation drawn from ``(seed, epoch)``; mean loss."""
    seed = seed_epoch(params.seed, epoch)  # the loop has reseeded already; idempotent, and callable alone
    order = np.random.default_rng(seed).permutation(len(cases))
    augment = augmentation(params).set_random_state(seed=seed % 2**32)
    model.train()
    losses: list[float] = []
    for start in range(0, len(order), params.batch_size):
        xs, ys = [], []
        for i in order[start : start + params.batch_size]:
            case = cases[int(i)]
            sample = augment({"image": torch.from_numpy(case.image[None]), "label": torch.from_numpy(case.label[None])})
            sample = sample[0] if isinstance(sample, list) else sample
            xs.append(torch.as_tensor(sample["image"]).float())
            ys.append(torch.as_tensor(sample["label"]).float())
        x = torch.stack(xs).to(device)
        y = torch.stack(ys).round().to(device)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _validate(model: torch.nn.Module, cases: list[_Case], params: LocalizerParams, device: torch.device) -> float:
    """Mean coarse-grid Dice of the argmax on the held-out cases (NaN when none are held out)."""
    if not cases:
        return float("nan")
    return float(np.mean([dice(_coarse_argmax(model, params, c.image, device), c.label) for c in cases]))


def train_localizer(
    segthor_csv: str | Path,
    out_dir: str | Path,
    params: LocalizerParams | None = None,
    progress: bool = True,
    require_gpu: bool = False,
    data_source: str | None = None,
) -> pd.DataFrame:
    """Train (or resume training of) the heart localiser on the SegTHOR training split.

    Writes, all atomically: ``checkpoint.pt`` and ``metrics.csv`` after every
    epoch, then ``model.pt`` (weights, params, fit/held-out case ids, the bundle of :mod:`cacs.bundle`;
    ``data_source`` is recorded in it) and
    ``dice.csv`` (per held-out case Dice on the scan's own grid, after the
    largest-component step, plus the coarse-grid Dice and volumes).  Returns
    the per-epoch metrics.  A checkpoint whose parameters (other than
    ``epochs`` and ``device``) or cases differ is discarded with a warning: continuing it
    would mix two configurations.  ``require_gpu`` (config ``localizer.require_gpu``)
    makes a job without a visible GPU fail instead of training on the CPU.
    """
    params = params or LocalizerParams()
    segthor_csv, out_dir = Path(segthor_csv), Path(out_dir)
    # One GPU at most: 40 SegTHOR training volumes on a coarse (4 mm) grid do not need DDP.
    device = resolve_device(params.device, require_gpu, section="localizer")
    table = pd.read_csv(segthor_csv, dtype={"case_id": str})
    train_rows = table[table["split"] == "train"]
    if train_rows.empty:
        raise ValueError(f"{segthor_csv}: no SegTHOR training cases (split == 'train')")
    missing = train_rows[train_rows["heart"].isna() | (train_rows["heart"].astype(str).str.strip() == "")]
    if not missing.empty:
        raise ValueError(f"{segthor_csv}: training case(s) without a heart mask: {', '.join(missing['case_id'])}")
    fit_ids, held_ids = _split_cases(list(train_rows["case_id"]), params)
    rows = {r.case_id: r for r in train_rows.itertuples(index=False)}
    log.info("localizer: %d fit / %d held-out SegTHOR cases, device %s", len(fit_ids), len(held_ids), device)

    cases = {
        cid: _load_case(cid, _resolve(rows[cid].image, segthor_csv), _resolve(rows[cid].heart, segthor_csv), params)
        for cid in tqdm(fit_ids + held_ids, desc="localizer: preprocess", unit="case", disable=not progress)
    }
    fit_cases = [cases[c] for c in fit_ids]
    held_cases = [cases[c] for c in held_ids]

    seed_everything(params.seed)
    model = build_unet(params).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    loop = EpochLoop(
        "localizer", log, out_dir, model, optimizer, params.seed, params.epochs,
        identity={"params": params.to_dict(), "fit_ids": fit_ids, "heldout_ids": held_ids},
        compatible=lambda saved: _compatible(saved, params, fit_ids, held_ids),
        columns=METRICS_COLUMNS, progress="localizer: train" if progress else None,
    )  # fmt: skip
    loop.resume()
    loop.run(
        lambda epoch, seed: {
            "train_loss": _train_epoch(model, optimizer, loss_fn, fit_cases, params, epoch, device),
            "lr": float(optimizer.param_groups[0]["lr"]),
        },
        lambda epoch: {"val_dice": _validate(model, held_cases, params, device)},
    )

    dice_rows = []
    for cid in held_ids:
        hu, geometry = read_volume(_resolve(rows[cid].image, segthor_csv))
        truth, _ = read_volume(_resolve(rows[cid].heart, segthor_csv))
        coarse, coarse_geometry = predict_heart(model, params, hu, geometry, device)
        native = resample_mask_to(coarse, coarse_geometry, geometry, truth.shape)
        case = cases[cid]
        raw = _coarse_argmax(model, params, case.image, device)
        dice_rows.append(
            {
                "case_id": cid,
                "dice": dice(native, truth),
                "dice_coarse": dice(raw, case.label),
                "true_ml": mask_volume_ml(truth, geometry),
                "pred_ml": mask_volume_ml(native, geometry),
            }
        )
    write_torch(
        out_dir / MODEL_NAME,
        {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "params": params.to_dict(),
            "fit_ids": fit_ids,
            "heldout_ids": held_ids,
            "epochs": params.epochs,
            BUNDLE_KEY: localizer_bundle(params, {"table": str(segthor_csv), "fit_ids": fit_ids,
                                                  "heldout_ids": held_ids}, data_source),  # fmt: skip
        },
    )
    write_csv(out_dir / DICE_NAME, pd.DataFrame(dice_rows, columns=list(DICE_COLUMNS)))
    return loop.frame()
