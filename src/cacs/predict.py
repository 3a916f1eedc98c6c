"""Predict the test scans with a trained experiment and score them clinically, at native resolution.

Paper section 4.2: "According to the CAC regions predicted by SPSS, we
further calculate the CCS of per-artery by Agatston score".  So an SPSS-type
model is *not* scored with its differentiable eq. 1 here: its CAC and
per-artery maps become a 0-4 label map, and the clinical scorer
(:func:`cacs.agatston.agatston_scores`, the convention of docs/agatston.md: >= 130
HU, per-slice lesions, peak-HU weights, area, slice correction) turns that
label map and HU into per-artery scores.  The ConvNet baseline has no map: its
regressed scores are the prediction.

Where: on the scan's **native** grid, as a reader scores (:mod:`cacs.native_scoring`).
Resampling the HU onto the coarse model grid averages small calcium below
130 HU, so the network's class probabilities go back onto the native grid
(linear interpolation) and the native HU is scored.  The label map is written
on the native geometry, over the ingested scan.

The reference is the scan's native-resolution reference score (gated: from
the reference masks at ingest; non-gated: COCA's score sheet).  For gated
scans two more reference scores separate resampling loss from model error:

* ``ref_grid_*``: the reference mask scored *on the model grid* (the crop's HU
  and nearest-neighbour labels), what scoring on that grid could reach;
* ``ref_roundtrip_*``: the reference mask taken to the model grid and back
  through the same native path (:func:`cacs.native_scoring.roundtrip_labels`)
  and scored on the native HU: what a network that reproduced the reference
  on the model grid would score here.  ``ref_* - ref_roundtrip_*`` is what the
  round trip itself loses.

The same :func:`predict_native` serves the pipeline (``cacs predict``) and
``cacs infer`` on a new scan, so the two agree by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cacs import ARTERIES, SCORE_COLUMNS
from cacs.agatston import AgatstonParams, agatston_scores
from cacs.bundle import (
    Given,
    crop_meta_path,
    describe,
    given_from,
    plain,
    read_json,
    require_bundle,
    same,
    show,
)
from cacs.bundle_settings import experiment_settings
from cacs.crop import CropParams
from cacs.cvd import cvd_rank
from cacs.devices import resolve_device
from cacs.io.atomic import write_csv
from cacs.io.nifti import Geometry, read_volume, write_volume
from cacs.models import build_model
from cacs.models.inputs import HU_CLIP, HU_SCALE
from cacs.models.spss import SPSSOutput
from cacs.native_scoring import class_probabilities, roundtrip_labels, score_native, to_native
from cacs.prediction_table import CONTRACT_COLUMNS

log = logging.getLogger(__name__)

PREDICTION_COLUMNS: tuple[str, ...] = (
    *CONTRACT_COLUMNS,
    *(f"ref_grid_{k}" for k in SCORE_COLUMNS),
    *(f"ref_roundtrip_{k}" for k in SCORE_COLUMNS),
)
"""The contract (cacs.prediction_table) plus the reference mask scored on the model grid and after the round trip."""

INDEX_COLUMNS: tuple[str, ...] = (
    "case_id", "cohort", "split", "image_nii", "labels_nii", "source_image", "source_labels", *SCORE_COLUMNS,
)  # fmt: skip
"""Crop-index columns (cacs.crop.CROP_COLUMNS) that prediction reads."""


@dataclass
class TrainedModel:
    """A trained experiment ready for inference."""

    experiment: str
    kind: str  # "spss" | "convnet"
    network: torch.nn.Module
    device: torch.device
    amp: bool
    bundle: dict | None = None
    """What the model file carries beside its weights (:mod:`cacs.bundle`): crop grid, Agatston convention, ..."""


def load_trained(
    model_path: str | Path, device: str = "auto", amp: bool = True, require_gpu: bool = False
) -> TrainedModel:
    """Load ``results/models/<experiment>/model.pt`` (written by ``cacs train``) in eval mode.

    The file must carry its bundle (:mod:`cacs.bundle`); one written before that is refused.
    ``require_gpu`` (config ``train.require_gpu``): fail instead of predicting on the CPU.
    """
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file (train the experiment first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt / foreign file
        raise ValueError(f"{path}: not a cacs model file ({exc.__class__.__name__}: {exc})") from exc
    if isinstance(payload, dict) and "bundle" in payload:
        require_bundle(payload, path, "experiment")  # a localizer's file is named as one
    if not isinstance(payload, dict) or not {"state_dict", "config"} <= set(payload):
        raise ValueError(f"{path}: not a cacs model file (expected state_dict and config; is it a checkpoint?)")
    bundle = require_bundle(payload, path, "experiment")
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
        bundle=bundle,
    )


@torch.no_grad()
def _forward(model: TrainedModel, hu: np.ndarray) -> SPSSOutput | torch.Tensor:
    """The network's raw output for one (z, y, x) crop in HU (batch of one): SPSS maps or ConvNet regressions."""
    hu = np.asarray(hu, dtype=np.float32)
    x = torch.from_numpy((np.clip(hu, *HU_CLIP) / HU_SCALE)[None, None]).to(model.device)
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=model.amp):
        return model.network(x)


def _regressed_scores(model: TrainedModel, out: torch.Tensor) -> dict[str, float]:
    per_artery = model.network.scores(out.float())[0].cpu().numpy().astype(float)
    scores = {a: float(v) for a, v in zip(ARTERIES, per_artery, strict=True)}
    scores["total"] = float(sum(scores[a] for a in ARTERIES))
    return scores


@dataclass
class NativePrediction:
    """One scan's prediction: scores, and for SPSS-type models the label maps."""

    scores: dict[str, float]
    labels: np.ndarray | None
    """(z, y, x) uint8 0-4 on the native grid (None for the ConvNet)."""
    grid_labels: np.ndarray | None
    """(z, y, x) uint8 0-4 on the model grid: the network's own argmax (None for the ConvNet)."""


def predict_native(
    model: TrainedModel,
    crop_hu: np.ndarray,
    crop_geometry: Geometry,
    native_hu: np.ndarray,
    native_geometry: Geometry,
    agatston: AgatstonParams,
) -> NativePrediction:
    """Predict one scan: network on the model-grid crop, clinical score on the native scan.

    Args:
        crop_hu, crop_geometry: the crop on the model grid (what the crop stage wrote).
        native_hu, native_geometry: the scan itself, (z, y, x) HU at its own resolution.

    SPSS-type models: class probabilities (:func:`cacs.native_scoring.class_probabilities`)
    go onto the native grid (:func:`cacs.native_scoring.to_native`) and the native HU is
    scored.  The ConvNet regresses its scores from the crop; it has no map.
    """
    out = _forward(model, crop_hu)
    if model.kind == "convnet":
        return NativePrediction(_regressed_scores(model, out), None, None)
    grid_labels = model.network.predict_labels(out)[0].cpu().numpy().astype(np.uint8)
    probs = class_probabilities(out)
    del out
    labels = to_native(probs, crop_geometry, native_geometry, native_hu.shape)
    return NativePrediction(score_native(native_hu, labels, native_geometry.spacing, agatston), labels, grid_labels)


def _scores_row(prefix: str, scores: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": float(scores[k]) for k in SCORE_COLUMNS}


def _roundtrip_scores(
    labels_path: str,
    native_hu: np.ndarray,
    native_geometry: Geometry,
    crop_geometry: Geometry,
    crop_shape_zyx: tuple[int, ...],
    agatston: AgatstonParams,
) -> dict[str, float]:
    """The oracle: the native reference map to the model grid and back, scored on the native HU."""
    ref_labels, ref_geometry = read_volume(labels_path)
    if ref_labels.shape != native_hu.shape:
        raise ValueError(
            f"{labels_path}: reference label map of shape {ref_labels.shape} is not on its scan's grid "
            f"{native_hu.shape}"
        )
    back = roundtrip_labels(ref_labels, ref_geometry, crop_geometry, crop_shape_zyx)
    return score_native(native_hu, back, native_geometry.spacing, agatston)


def check_crops_match(index_csv: Path, crop: CropParams, model_path: Path) -> None:
    """The settings ``cacs crop`` recorded for these crops (``index.json``) must be the model's crop settings."""
    meta_path = crop_meta_path(index_csv)
    meta = read_json(meta_path)
    if meta is None:
        return  # an index from before the record: each crop's grid is still checked
    recorded = plain(crop)
    for key, value in meta["crop"].items():
        if key in recorded and not same(value, recorded[key]):
            raise ValueError(
                f"{meta_path}: crops made with {describe('crop', key)} {show(value)}, the model's is "
                f"{show(recorded[key])} ({model_path}); crop with the model's settings or use its own crops"
            )


def check_crop_grid(image: str, shape_zyx: tuple[int, ...], spacing: tuple[float, ...], crop: CropParams,
                    model_path: Path) -> None:  # fmt: skip
    """One crop on disk must lie on the model's grid (size and spacing)."""
    size, grid = list(shape_zyx[::-1]), [float(v) for v in spacing]
    if not crop.holds(size, grid):
        raise ValueError(
            f"{image}: crop grid {show(size)} voxels at {show(grid)} mm, the model's crop grid is "
            f"{show(list(crop.model_size))} voxels at {show(list(crop.model_spacing_mm))} mm ({model_path})"
        )


def predict_experiment(
    model_path: Path,
    index_csv: Path,
    labels_dir: Path,
    table_path: Path,
    agatston: AgatstonParams | None = None,
    device: str = "auto",
    split: str = "test",
    require_gpu: bool = False,
    given: Sequence[Given] = (),
) -> pd.DataFrame:
    """Predict every ``split`` scan of the crop index; write native label maps and the prediction table.

    The crop index (``results/crops/index.csv``) gives each scan's model-grid
    crop (``image_nii``, ``labels_nii``) and its native scan and reference
    label map (``source_image``, ``source_labels``).  Label maps are written
    on the native geometry as ``labels_dir/<case_id>.nii.gz``; the table's
    ``image`` and ``ref_labels`` are the native scan and reference, so that all
    three overlay on one image.

    The Agatston convention is the model's (its bundle, :mod:`cacs.bundle`);
    ``agatston`` and ``given`` (command-line options) must equal it.  The crops
    must be the model's kind: the settings ``cacs crop`` recorded beside the
    index (``index.json``) and every crop's grid must equal the model's crop
    settings, else the run is refused naming both.
    """
    index = pd.read_csv(index_csv, keep_default_na=False)
    missing = set(INDEX_COLUMNS) - set(index.columns)
    if missing:
        raise ValueError(
            f"{index_csv}: missing column(s) {sorted(missing)} (is it results/crops/index.csv? "
            "An index written before native scoring lacks source_image / source_labels: rerun the crop stage)"
        )
    scans = index[index.split == split]
    if scans.empty:
        raise ValueError(f"{index_csv}: no scans in split {split!r}; nothing to evaluate")
    model = load_trained(model_path, device, require_gpu=require_gpu)
    given = [*given, *given_from("agatston", agatston, "agatston")]
    crop, agatston, _ = experiment_settings(model.bundle, given, model_path)
    check_crops_match(index_csv, crop, model_path)
    labels_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in tqdm(scans.to_dict("records"), desc=f"predict {model.experiment}", unit="scan"):
        crop_hu, crop_geometry = read_volume(case["image_nii"])
        check_crop_grid(case["image_nii"], crop_hu.shape, crop_geometry.spacing, crop, model_path)
        native_hu, native_geometry = read_volume(case["source_image"])
        pred = predict_native(model, crop_hu, crop_geometry, native_hu, native_geometry, agatston)
        label_map = ""
        if pred.labels is not None:
            label_map = str(labels_dir / f"{case['case_id']}.nii.gz")
            write_volume(label_map, pred.labels, native_geometry)
        ref = {k: float(case[k]) for k in SCORE_COLUMNS}
        ref_grid = ref_roundtrip = dict.fromkeys(SCORE_COLUMNS, np.nan)
        if case["labels_nii"]:
            grid_labels, _ = read_volume(case["labels_nii"])
            ref_grid = agatston_scores(crop_hu, grid_labels, crop_geometry.spacing, agatston)
        if case["source_labels"]:
            ref_roundtrip = _roundtrip_scores(
                case["source_labels"], native_hu, native_geometry, crop_geometry, crop_hu.shape, agatston
            )
        rows.append(
            {
                "case_id": case["case_id"],
                "patient_id": case.get("patient_id", ""),
                "cohort": case["cohort"],
                "split": case["split"],
                "experiment": model.experiment,
                "model": model.kind,
                **_scores_row("ref_", ref),
                **_scores_row("pred_", pred.scores),
                "ref_rank": cvd_rank(ref["total"]),
                "pred_rank": cvd_rank(pred.scores["total"]),
                "image": case["source_image"],
                "ref_labels": case["source_labels"],
                "label_map": label_map,
                "fallback": case.get("fallback", False),
                **_scores_row("ref_grid_", ref_grid),
                **_scores_row("ref_roundtrip_", ref_roundtrip),
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
    oracle = table.dropna(subset=["ref_roundtrip_total"])
    if len(oracle) and oracle.ref_total.sum() > 0:
        log.info(
            "%s: the native round trip of the reference keeps %.2f%% of its pooled score (%d gated scans)",
            model.experiment, 100.0 * float(oracle.ref_roundtrip_total.sum() / oracle.ref_total.sum()), len(oracle),
        )  # fmt: skip
    return table
