"""Benchmark: heart prediction + crop per scan on CPU, `realistic` preset (512x512).

Uses the pipeline's trained localizer when ``results/localizer/model.pt``
exists (``make run``), else an untrained network of the default size: the
compute is the same, only the boxes differ (then most crops take the
fallback path, which costs the same as a normal crop).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from common import REPO, realistic_cohort


def main() -> None:
    import torch

    from cacs.agatston import AgatstonParams
    from cacs.crop import CropParams, crop_case, image_extent_mm
    from cacs.heart_boxes import Plausibility, judge_box
    from cacs.io.nifti import read_volume
    from cacs.localizer import (
        LocalizerParams,
        build_unet,
        load_localizer,
        mask_bounding_box_mm,
        mask_volume_ml,
        predict_heart,
    )

    torch.set_num_threads(1)
    trained = REPO / "results" / "localizer" / "model.pt"
    if trained.exists():
        model, params = load_localizer(trained, "cpu")
    else:
        params = LocalizerParams()
        model = build_unet(params).eval()
    root = realistic_cohort()
    scans = sorted((root / "truth" / "gated").glob("*_image.nii.gz"))
    predict_s, crop_s = [], []
    with tempfile.TemporaryDirectory() as out:
        for image in scans:
            hu, geo = read_volume(image)
            t0 = time.perf_counter()
            with torch.inference_mode():
                mask, coarse = predict_heart(model, params, hu, geo, "cpu")
            ml = mask_volume_ml(mask, coarse)
            lo, hi = mask_bounding_box_mm(mask, coarse) if mask.any() else (None, None)
            problem = judge_box(ml, lo, hi, image_extent_mm(geo, hu.shape), Plausibility())
            predict_s.append(time.perf_counter() - t0)
            box = {"plausible": not problem, "problem": problem}
            if lo is not None:
                box |= {f"box_lo_{a}": v for a, v in zip("xyz", lo, strict=True)}
                box |= {f"box_hi_{a}": v for a, v in zip("xyz", hi, strict=True)}
            case = {"case_id": image.name.split("_")[0], "cohort": "gated", "image": str(image),
                    "labels": str(image).replace("_image", "_labels")}  # fmt: skip
            t0 = time.perf_counter()
            crop_case(case, box, Path(out), CropParams(), AgatstonParams())
            crop_s.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "benchmark": "predict_heart_and_crop",
                "preset": "realistic (512x512, 60 x 3 mm gated)",
                "localizer": "trained" if trained.exists() else "untrained (same compute)",
                "threads": 1,
                "scans": len(scans),
                "predict_heart_s_median": round(statistics.median(predict_s), 3),
                "crop_s_median": round(statistics.median(crop_s), 3),
                "total_s_per_scan_median": round(statistics.median(map(sum, zip(predict_s, crop_s, strict=True))), 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
