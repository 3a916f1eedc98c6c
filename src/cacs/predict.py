"""Predict the test scans with a trained experiment and score them clinically.

Paper section 4.2: "According to the CAC regions predicted by SPSS, we
further calculate the CCS of per-artery by Agatston score".  So an SPSS-type
model is *not* scored with its differentiable eq. 1 here: its argmax CAC map
and per-artery map become a 0-4 label map on the crop's model grid, and the
clinical scorer (:func:`cacs.agatston.agatston_scores`, the convention of
agatston.md: >= 130 HU, per-slice lesions, peak-HU weights, area, slice
correction) turns that label map and the crop's HU into per-artery scores.
The ConvNet baseline has no map: its regressed scores are the prediction.

The reference is the scan's native-resolution reference score (gated: from
the reference masks at ingest; non-gated: COCA's score sheet).  For gated
scans the clinical score of the reference mask *on the model grid* is written
too (``ref_grid_*``): the best a perfect segmenter could reach on that grid,
which separates resampling loss from model error.

The same :func:`predict_volume` serves the pipeline (``cacs predict``) and
``cacs infer`` on a new scan, so the two agree by construction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cacs import ARTERIES, SCORE_COLUMNS
from cacs.agatston import AgatstonParams, agatston_scores
from cacs.cvd import cvd_rank
from cacs.devices import resolve_device
from cacs.io.atomic import write_csv
from cacs.io.nifti import read_volume, write_volume
from cacs.models import build_model
from cacs.prediction_table import CONTRACT_COLUMNS
from cacs.train import HU_CLIP, HU_SCALE

log = logging.getLogger(__name__)

PREDICTION_COLUMNS: tuple[str, ...] = (*CONTRACT_COLUMNS, *(f"ref_grid_{k}" for k in SCORE_COLUMNS))
"""The contract (cacs.prediction_table) plus the reference mask scored on the model grid."""


@dataclass
class TrainedModel:
    """A trained experiment ready for inference."""

    experiment: str
    kind: str  # "spss" | "convnet"
    network: torch.nn.Module
    device: torch.device
    amp: bool


def load_trained(
    model_path: str | Path, device: str = "auto", amp: bool = True, require_gpu: bool = False
) -> TrainedModel:
    """Load ``results/models/<experiment>/model.pt`` (written by ``cacs train``) in eval mode.

    ``require_gpu`` (config ``train.require_gpu``): fail instead of predicting on the CPU.
    """
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file (train the experiment first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt / foreign file
        raise ValueError(f"{path}: not a cacs model file ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(payload, dict) or not {"state_dict", "config"} <= set(payload):
        raise ValueError(f"{path}: not a cacs model file (expected state_dict and config; is it a checkpoint?)")
    cfg = payload["config"]
    kind = cfg["model"]
    network = build_model(kind, cfg.get("model_config") or {})
    network.load_state_dict(payload["state_dict"])
    dev = resolve_device(device, require_gpu, section="train")
    return TrainedModel(
        experiment=str(payload.get("experiment", path.parent.name)),
        kind=kind,
        network=network.to(dev).eval(),
        device=dev,
        amp=bool(amp and cfg.get("amp", True) and dev.type == "cuda"),
    )


@torch.no_grad()
def predict_volume(
    model: TrainedModel,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    agatston: AgatstonParams,
) -> tuple[dict[str, float], np.ndarray | None]:
    """Scores and label map (uint8 0-4, SPSS only) of one crop on the model grid.

    ``hu`` is the (z, y, x) crop in HU as the crop stage wrote it; ``spacing``
    its (x, y, z) mm.
    """
    hu = np.asarray(hu, dtype=np.float32)
    x = torch.from_numpy((np.clip(hu, *HU_CLIP) / HU_SCALE)[None, None]).to(model.device)
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=model.amp):
        out = model.network(x)
    if model.kind == "convnet":
        per_artery = model.network.scores(out.float())[0].cpu().numpy().astype(float)
        scores = {a: float(v) for a, v in zip(ARTERIES, per_artery, strict=True)}
        scores["total"] = float(sum(scores[a] for a in ARTERIES))
        return scores, None
    labels = model.network.predict_labels(out)[0].cpu().numpy().astype(np.uint8)
    return agatston_scores(hu, labels, spacing, agatston), labels


def _scores_row(prefix: str, scores: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": float(scores[k]) for k in SCORE_COLUMNS}


def predict_experiment(
    model_path: Path,
    index_csv: Path,
    labels_dir: Path,
    table_path: Path,
    agatston: AgatstonParams,
    device: str = "auto",
    split: str = "test",
    require_gpu: bool = False,
) -> pd.DataFrame:
    """Predict every ``split`` scan of the crop index; write label maps and the prediction table."""
    index = pd.read_csv(index_csv, keep_default_na=False)
    missing = {"case_id", "cohort", "split", "image_nii", "labels_nii", *SCORE_COLUMNS} - set(index.columns)
    if missing:
        raise ValueError(f"{index_csv}: missing column(s) {sorted(missing)} (is it results/crops/index.csv?)")
    scans = index[index.split == split]
    if scans.empty:
        raise ValueError(f"{index_csv}: no scans in split {split!r}; nothing to evaluate")
    model = load_trained(model_path, device, require_gpu=require_gpu)
    labels_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in tqdm(scans.to_dict("records"), desc=f"predict {model.experiment}", unit="scan"):
        hu, geometry = read_volume(case["image_nii"])
        scores, labels = predict_volume(model, hu, geometry.spacing, agatston)
        label_map = ""
        if labels is not None:
            label_map = str(labels_dir / f"{case['case_id']}.nii.gz")
            write_volume(label_map, labels, geometry)
        ref = {k: float(case[k]) for k in SCORE_COLUMNS}
        ref_grid = dict.fromkeys(SCORE_COLUMNS, np.nan)
        if case["labels_nii"]:
            ref_labels, _ = read_volume(case["labels_nii"])
            ref_grid = agatston_scores(hu, ref_labels, geometry.spacing, agatston)
        rows.append(
            {
                "case_id": case["case_id"],
                "patient_id": case.get("patient_id", ""),
                "cohort": case["cohort"],
                "split": case["split"],
                "experiment": model.experiment,
                "model": model.kind,
                **_scores_row("ref_", ref),
                **_scores_row("pred_", scores),
                "ref_rank": cvd_rank(ref["total"]),
                "pred_rank": cvd_rank(scores["total"]),
                "image": case["image_nii"],
                "ref_labels": case["labels_nii"],
                "label_map": label_map,
                "fallback": case.get("fallback", False),
                **_scores_row("ref_grid_", ref_grid),
            }
        )
    table = pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))
    write_csv(table_path, table)
    for cohort, sub in table.groupby("cohort"):
        log.info(
            "%s %s: %d scans, mean error of the total %.2f, rank agreement %.1f%%",
            model.experiment, cohort, len(sub), float((sub.pred_total - sub.ref_total).mean()),
            100.0 * float((sub.pred_rank == sub.ref_rank).mean()),
        )  # fmt: skip
    return table
