"""Benchmark: how much reference calcium the heart-box crops keep, by z margin, with and without the guard.

Run after ``make run`` (or on any run directory with ``--run DIR``): every gated
scan of the run (all splits: containment is a property of the boxes, not of a
model) is cropped again with the run's own heart boxes at several
``crop.margin_z_mm`` values, the guard off (``crop.guard: off``) and on
(``grow``).  Per setting: scans whose crop loses reference calcium, the pooled
share of the reference score kept (score-weighted), the worst scan, how many
boxes the guard grew, and the tallest crop (mm, to compare with the model
grid's z extent).  This measurement chose the default ``crop.margin_z_mm``
(docs/crops.md).  Prints one JSON object; numbers, never pass/fail.

    .venv/bin/python bench/bench_crop_margin.py [--run .] [--margins 0 5 10 15]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

MARGINS_MM = (0.0, 5.0, 10.0, 15.0)


def _setting(cases: list[dict], boxes, params, agatston) -> dict:
    import pandas as pd

    from cacs.crop import crop_case

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rows = [crop_case(c, boxes.loc[c["case_id"]].to_dict(), Path(tmp), params, agatston)[0] for c in cases]
        seconds = (time.perf_counter() - t0) / max(len(cases), 1)
    d = pd.DataFrame(rows)
    weights = d.total / d.total.sum()
    return {
        "scans_losing_calcium": int((d.score_in_crop < 1).sum()),
        "pooled_score_kept": round(float((d.score_in_crop * weights).sum()), 5),
        "worst_scan_score_kept": round(float(d.score_in_crop.min()), 4),
        "scans_cut_by_model_grid": int((d.calcium_voxels_in_model_grid < 1).sum()),
        "boxes_grown": int((d.box_grown != "").sum()),
        "tallest_crop_mm": round(float((d.crop_hi_z - d.crop_lo_z).max()), 1),
        "seconds_per_scan": round(seconds, 3),
    }


def main() -> None:
    import pandas as pd
    import yaml

    from cacs.agatston import AgatstonParams
    from cacs.crop import CropParams

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=".", help="directory holding results/ (snakemake's working directory)")
    ap.add_argument("--config", default="config/config.yaml", help="the run's config (crop grid, Agatston)")
    ap.add_argument("--margins", type=float, nargs="+", default=list(MARGINS_MM))
    args = ap.parse_args()
    run = Path(args.run)
    cfg = yaml.safe_load(Path(args.config).read_text())
    crop, agatston = cfg["crop"], AgatstonParams(**cfg["agatston"])
    cases = pd.read_csv(run / "results/split/cases.csv", dtype={"source_id": str, "labels": str}, keep_default_na=False)
    gated = cases[(cases.cohort == "gated") & (cases.labels != "")].to_dict("records")
    boxes = pd.read_csv(run / "results/localizer/boxes.csv").set_index("case_id")
    base = {k: crop[k] for k in ("margin_xy_mm", "model_spacing_mm", "model_size", "fallback_box_mm", "guard_shell_mm")}
    base = {k: tuple(v) if isinstance(v, list) else v for k, v in base.items()}
    out: dict[str, object] = {"gated_scans": len(gated), "settings": {}}
    for guard in ("off", "grow"):
        for margin in args.margins:
            params = CropParams(**base, margin_z_mm=margin, guard=guard)
            out["settings"][f"margin_z_{margin:g}mm_guard_{guard}"] = _setting(gated, boxes, params, agatston)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
