"""Benchmark: the oracle round trip of native scoring (reference -> model grid -> native -> clinical score).

Synthetic gated scans with reader-like reference masks (tests/native_phantoms.py)
at two native resolutions: 1.25 x 1.25 x 3 mm (60 small scans, the oracle test's
kind) and COCA's 0.4 x 0.4 x 3 mm on a 512 x 512 x 60 matrix (8 scans).  Each
reference goes to a model grid of 1.25 or 2.5 mm in-plane (3 mm slices), with
the model slices either at a random offset or halfway between native slices
(the pipeline's grid for gated scans whose crop has an odd number of slices),
and back through `cacs.native_scoring.to_native`; the native HU is scored.

Reported per setting: pooled score ratio (round trip / reference, summed over
scans), CVD rank agreement, the largest per-scan loss and gain, and seconds per
scan (round trip + scoring, one core), at several decision thresholds: the
network's own (1/2) erodes small calcium, lower ones grow the candidates.  With
``--run`` (after ``make run``), the same oracle on the default run's own gated
scans (``results/crops/index.csv``: every gated crop with its native scan and
reference), which calibrated the default, ``CALCIUM_THRESHOLD``.  Also: `to_native` of a
full-size model grid (128 x 128 x 48) onto a 512 x 512 x 60 scan, the cost
`cacs predict` and `cacs infer` add per scan.  Prints one JSON object; numbers, never pass/fail.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from common import REPO, pin_one_core

sys.path.insert(0, str(REPO))  # tests/native_phantoms.py: the oracle test's scans

GRIDS_MM = (1.25, 2.5)
PLACEMENTS = ("random", "halfway")
THRESHOLDS = (0.25, 0.35, 0.5)
COHORTS = {  # name -> (n scans, make_phantom keyword arguments)
    "native_1.25mm_72x72x20": (60, {"pixel_mm": 1.25, "shape_zyx": (20, 72, 72)}),
    "native_0.4mm_512x512x60": (8, {"pixel_mm": 0.4, "shape_zyx": (60, 512, 512), "max_lesions": 12}),
}


def _model_grid(phantom, spacing_mm, offset_vox):
    import numpy as np

    from cacs.io.nifti import Geometry, index_to_physical

    extent = np.array(phantom.hu.shape[::-1]) * np.array(phantom.geometry.spacing)
    size = np.ceil(extent / np.array(spacing_mm)).astype(int) + 2
    origin = index_to_physical(phantom.geometry, np.asarray(offset_vox, float) - 1.0)[0]
    return Geometry(tuple(spacing_mm), tuple(float(v) for v in origin), phantom.geometry.direction), tuple(size[::-1])


def _oracle(phantoms, grid_mm, placement, threshold) -> dict:
    import numpy as np

    from cacs.agatston import agatston_scores
    from cacs.cvd import cvd_rank
    from cacs.native_scoring import roundtrip_labels

    rng = np.random.default_rng(11)
    ref, back, seconds = [], [], []
    for p in phantoms:
        offset = rng.uniform(0, 1, 3) if placement == "random" else np.array([0.0, 0.0, 0.5])
        model, model_shape = _model_grid(p, (grid_mm, grid_mm, 3.0), offset)
        t0 = time.perf_counter()
        labels = roundtrip_labels(p.labels, p.geometry, model, model_shape, calcium_threshold=threshold)
        back.append(agatston_scores(p.hu, labels, p.geometry.spacing)["total"])
        seconds.append(time.perf_counter() - t0)
        ref.append(agatston_scores(p.hu, p.labels, p.geometry.spacing)["total"])
    ref, back = np.array(ref), np.array(back)
    return {
        "pooled_ratio": round(float(back.sum() / ref.sum()), 4),
        "rank_agreement": round(float(np.mean(cvd_rank(ref) == cvd_rank(back))), 4),
        "max_loss": round(float(np.max(ref - back)), 2),
        "max_gain": round(float(np.max(back - ref)), 2),
        "s_per_scan": round(statistics.median(seconds), 4),
    }


def _to_native_timing(repeats: int = 3) -> dict:
    """``to_native`` of a full-size model grid onto a 512 x 512 x 60 scan: 12 lesions in the heart, and
    calcium-like clusters spread over the whole grid (the worst case: the bounding boxes span everything)."""
    import numpy as np
    from scipy import ndimage

    from cacs.io.nifti import Geometry
    from cacs.native_scoring import to_native

    rng = np.random.default_rng(0)
    native = Geometry((0.39, 0.39, 3.0), (-100.0, -100.0, -90.0))
    model = Geometry((1.5, 1.5, 3.0), (-95.25, -95.25, -70.5))
    shape = (48, 128, 128)
    lesions = np.zeros(shape, bool)
    for z, y, x in rng.integers((12, 32, 32), (36, 96, 96), (12, 3)):
        lesions[z : z + 2, y : y + 3, x : x + 3] = True
    spread = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 1.0) > 0.6
    out = {}
    for name, calcium in (("heart_lesions", lesions), ("spread", spread)):
        probs = np.zeros((5, *shape), np.float32)
        p_cac = np.where(calcium, 0.9, 0.01).astype(np.float32)
        probs[0] = 1 - p_cac
        probs[1:] = p_cac * np.array([0.1, 0.2, 0.6, 0.1], np.float32)[:, None, None, None]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            labels = to_native(probs, model, native, (60, 512, 512))
            times.append(time.perf_counter() - t0)
        out[f"to_native_128x128x48_onto_512x512x60_{name}"] = {
            "s": round(statistics.median(times), 3),
            "calcified_model_voxels": int(calcium.sum()),
            "calcified_native_voxels": int(np.count_nonzero(labels)),
        }
    return out


def _run_oracle(index_csv: str = "results/crops/index.csv") -> dict:
    """The oracle on a pipeline run's gated crops: pooled ratio and rank agreement per threshold."""
    import numpy as np
    import pandas as pd

    from cacs.agatston import AgatstonParams, agatston_scores
    from cacs.cvd import cvd_rank
    from cacs.io.nifti import read_volume
    from cacs.native_scoring import roundtrip_labels

    index = pd.read_csv(index_csv, keep_default_na=False)
    gated = index[(index.cohort == "gated") & (index.source_labels != "")]
    ref, back = [], {t: [] for t in THRESHOLDS}
    for case in gated.to_dict("records"):
        hu, geometry = read_volume(case["source_image"])
        labels, _ = read_volume(case["source_labels"])
        crop_shape = np.load(case["image_npy"], mmap_mode="r").shape
        _, crop_geometry = read_volume(case["image_nii"])
        ref.append(agatston_scores(hu, labels, geometry.spacing, AgatstonParams())["total"])
        for t in THRESHOLDS:
            trip = roundtrip_labels(labels, geometry, crop_geometry, crop_shape, t)
            back[t].append(agatston_scores(hu, trip, geometry.spacing, AgatstonParams())["total"])
    ref_a = np.array(ref)
    return {
        f"threshold_{t}": {
            "n_scans": len(ref),
            "pooled_ratio": round(float(np.sum(v) / ref_a.sum()), 4),
            "rank_agreement": round(float(np.mean(cvd_rank(np.array(v)) == cvd_rank(ref_a))), 4),
        }
        for t, v in back.items()
    }


def main() -> None:
    if "--run" in sys.argv:
        print(json.dumps({"benchmark": "oracle_round_trip_default_run", **_run_oracle()}, indent=2))
        return
    pinned = pin_one_core()
    from tests.native_phantoms import make_cohort  # the repository root is on the path (above)

    result: dict = {"benchmark": "oracle_round_trip", "one_core": pinned, "cohorts": {}}
    for name, (n, kwargs) in COHORTS.items():
        t0 = time.perf_counter()
        phantoms = make_cohort(n, seed=1, **kwargs)
        cohort: dict = {"n_scans": n, "generate_s_per_scan": round((time.perf_counter() - t0) / n, 3)}
        for grid in GRIDS_MM:
            for placement in PLACEMENTS:
                for threshold in THRESHOLDS:
                    key = f"grid_{grid}mm_{placement}_threshold_{threshold}"
                    cohort[key] = _oracle(phantoms, grid, placement, threshold)
        result["cohorts"][name] = cohort
    result.update(_to_native_timing())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
