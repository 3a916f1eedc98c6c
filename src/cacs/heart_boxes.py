"""Predict the heart of every COCA scan and turn it into a physical bounding box.

For each scan: the localizer's heart mask on its coarse grid (largest
connected component), the mask's volume and its bounding box in mm (voxel
edges included), and a plausibility verdict.  Implausible predictions (empty,
volume outside the configured range, box touching the in-plane image edge)
are not fixed here: the crop stage applies its flagged fallback and writes
the QC row, so the decision and its record live in one place.

The box touching the image edge is checked in-plane only: gated scans are
reconstructed around the heart, so their z range routinely clips it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cacs.bundle import boxes_meta_path, localizer_summary, plain, read_bundle
from cacs.crop import image_extent_mm
from cacs.io.atomic import write_csv, write_json
from cacs.io.nifti import read_volume
from cacs.localizer import load_localizer, mask_bounding_box_mm, mask_volume_ml, predict_heart, resolve_device

log = logging.getLogger(__name__)

EDGE_TOL_MM = 1e-3


@dataclass(frozen=True)
class Plausibility:
    """Heart volumes outside this range mean the localizer failed on the scan."""

    min_heart_ml: float = 150.0
    max_heart_ml: float = 1500.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_heart_ml < self.max_heart_ml:
            raise ValueError("localizer.min_heart_ml must be >= 0 and below localizer.max_heart_ml")


def judge_box(
    heart_ml: float,
    lo: np.ndarray | None,
    hi: np.ndarray | None,
    extent: tuple[np.ndarray, np.ndarray],
    limits: Plausibility,
) -> str:
    """Empty string when the prediction is plausible, else the reason."""
    if lo is None or hi is None:
        return "empty heart prediction"
    if not limits.min_heart_ml <= heart_ml <= limits.max_heart_ml:
        return f"heart volume {heart_ml:.0f} mL outside [{limits.min_heart_ml:g}, {limits.max_heart_ml:g}] mL"
    img_lo, img_hi = extent
    touching = [
        axis
        for i, axis in enumerate("xy")
        if lo[i] <= img_lo[i] + EDGE_TOL_MM or hi[i] >= img_hi[i] - EDGE_TOL_MM
    ]
    if touching:
        return f"heart box touches the image edge in {'/'.join(touching)}"
    return ""


def heart_box(
    model,
    params,
    hu: np.ndarray,
    geometry,
    device,
    limits: Plausibility,
) -> dict:
    """Heart volume, box in mm (``box_{lo,hi}_{x,y,z}``, NaN when empty) and plausibility of one scan.

    Rounded as the box table stores it, so that ``cacs infer`` crops a scan
    exactly as the pipeline does after its round trip through ``boxes.csv``.
    """
    mask, coarse = predict_heart(model, params, hu, geometry, device)
    heart_ml = mask_volume_ml(mask, coarse)
    lo = hi = None
    if mask.any():
        lo, hi = mask_bounding_box_mm(mask, coarse)
    problem = judge_box(heart_ml, lo, hi, image_extent_mm(geometry, hu.shape), limits)
    flat = {"heart_ml": round(heart_ml, 3), "plausible": not problem, "problem": problem}
    for name, corner in (("lo", lo), ("hi", hi)):
        for i, axis in enumerate("xyz"):
            flat[f"box_{name}_{axis}"] = np.nan if corner is None else round(float(corner[i]), 4)
    return flat


def _corner(flat: dict, name: str) -> list[float] | None:
    values = [flat[f"box_{name}_{axis}"] for axis in "xyz"]
    return None if any(np.isnan(v) for v in values) else values


def predict_boxes(
    cases_csv: Path,
    model_path: Path,
    out_dir: Path,
    table_path: Path,
    limits: Plausibility,
    device: str = "auto",
    require_gpu: bool = False,
) -> pd.DataFrame:
    """One JSON per scan in ``out_dir`` and the collected table at ``table_path``.

    ``require_gpu`` (config ``localizer.require_gpu``): fail rather than predict on the CPU.
    """
    cases = pd.read_csv(cases_csv, dtype={"source_id": str}, keep_default_na=False)
    dev = resolve_device(device, require_gpu, section="localizer")
    model, params = load_localizer(model_path, dev)
    bundle = read_bundle(model_path, "localizer")
    rows = []
    for case in tqdm(cases.itertuples(index=False), total=len(cases), desc="predict heart", unit="scan"):
        hu, geometry = read_volume(case.image)
        flat = heart_box(model, params, hu, geometry, dev, limits)
        record = {
            "case_id": case.case_id,
            "cohort": case.cohort,
            "heart_ml": flat["heart_ml"],
            "box_lo_mm": _corner(flat, "lo"),
            "box_hi_mm": _corner(flat, "hi"),
            "plausible": flat["plausible"],
            "problem": flat["problem"],
        }
        write_json(out_dir / f"{case.case_id}.json", record)
        rows.append({"case_id": case.case_id, "cohort": case.cohort, **flat})
        if flat["problem"]:
            log.warning("%s: %s (the crop stage will use the fallback box)", case.case_id, flat["problem"])
    table = pd.DataFrame(rows)
    write_csv(table_path, table)
    # What the crops cut with these boxes inherit (cacs crop -> index.json -> the model file's bundle).
    localizer = localizer_summary(Path(model_path), bundle, model.state_dict())
    write_json(boxes_meta_path(table_path), {"plausibility": plain(limits), "localizer": localizer})
    log.info("heart boxes: %d scans, %d implausible", len(table), int((~table.plausible).sum()) if len(table) else 0)
    return table
