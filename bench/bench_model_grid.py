"""Benchmark: how much calcium each candidate model grid keeps visible (>= 130 HU).

For every gated scan of a run (``results/split/cases.csv`` with its heart box
from ``results/localizer/boxes.csv``), the scan is cropped exactly as the
crop stage does and resampled onto model grids of several in-plane spacings.
Per scan and grid it reports the reference calcium voxels >= 130 HU natively
and on the grid, and the share of reference lesions (3D components of the
mask) that keep at least one voxel >= 130 HU on the grid: a lesion without
one is invisible to a scorer on that grid, and hard for a network to find.

Run after ``snakemake results/localizer/boxes.csv`` (or ``make run``)::

    .venv/bin/python bench/bench_model_grid.py [--spacings 1.25 1.5 2.0 2.5] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from cacs.crop import CropParams, box_to_index_range, crop_array, extend_box, image_extent_mm, model_grid, resample_onto
from cacs.io.nifti import read_volume

THRESHOLD_HU = 130.0


def grid_visibility(case: dict, box: dict, spacing_xy: float, slice_mm: float = 3.0) -> dict:
    """Calcium voxels >= 130 HU natively and on one model grid, and lesions still visible there."""
    hu, geometry = read_volume(case["image"])
    labels, _ = read_volume(case["labels"])
    lo, hi = extend_box(
        np.array([box[f"box_lo_{a}"] for a in "xyz"], float), np.array([box[f"box_hi_{a}"] for a in "xyz"], float),
        CropParams(),
    )
    start, stop = box_to_index_range(lo, hi, geometry, hu.shape)
    hu_c, geo_c = crop_array(hu, geometry, start, stop)
    lab_c, _ = crop_array(labels, geometry, start, stop)
    c_lo, c_hi = image_extent_mm(geo_c, hu_c.shape)
    spacing = np.array([spacing_xy, spacing_xy, slice_mm])
    size = tuple(int(np.ceil((c_hi[i] - c_lo[i]) / spacing[i])) + 1 for i in range(3))
    params = CropParams(model_spacing_mm=tuple(spacing), model_size=size)
    grid = model_grid((c_lo + c_hi) / 2, params, geometry.direction)
    hu_g = resample_onto(hu_c, geo_c, grid, size, is_label=False)
    # Each lesion separately (nearest neighbour would drop thin ones): its mask resampled linearly, > 0.
    lesions, n = ndimage.label(lab_c > 0, structure=np.ones((3, 3, 3)))
    native = int(((lab_c > 0) & (hu_c >= THRESHOLD_HU)).sum())
    on_grid, visible = 0, 0
    for k in range(1, n + 1):
        mask = resample_onto((lesions == k).astype(np.float32), geo_c, grid, size, is_label=False) > 0.25
        count = int((mask & (hu_g >= THRESHOLD_HU)).sum())
        on_grid += count
        visible += count > 0
    return {"native_voxels": native, "grid_voxels": on_grid, "lesions": n, "visible_lesions": visible}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="results/split/cases.csv")
    parser.add_argument("--boxes", default="results/localizer/boxes.csv")
    parser.add_argument("--spacings", type=float, nargs="+", default=[1.25, 1.5, 2.0, 2.5])
    parser.add_argument("--csv", default=None, help="also write the per-scan table here")
    args = parser.parse_args()
    cases = pd.read_csv(args.cases, keep_default_na=False)
    boxes = pd.read_csv(args.boxes).set_index("case_id")
    gated = cases[(cases.cohort == "gated") & (cases.labels != "")]
    rows = []
    for case in gated.to_dict("records"):
        for spacing in args.spacings:
            rows.append({"case_id": case["case_id"], "total": case["total"], "spacing_xy_mm": spacing,
                         **grid_visibility(case, boxes.loc[case["case_id"]].to_dict(), spacing)})  # fmt: skip
    table = pd.DataFrame(rows)
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
    calcified = table[table.lesions > 0]
    summary = []
    for spacing, sub in calcified.groupby("spacing_xy_mm"):
        summary.append({
            "spacing_xy_mm": spacing,
            "scans": int(len(sub)),
            "native_voxels": int(sub.native_voxels.sum()),
            "grid_voxels": int(sub.grid_voxels.sum()),
            "lesions_visible_share": round(float(sub.visible_lesions.sum() / sub.lesions.sum()), 4),
            "scans_with_every_lesion_visible": int((sub.visible_lesions == sub.lesions).sum()),
            "scans_with_no_lesion_visible": int((sub.visible_lesions == 0).sum()),
        })  # fmt: skip
    print(json.dumps({"benchmark": "model_grid_visibility", "slice_mm": 3.0, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
