"""Benchmark: prediction per scan and the statistics with the bootstrap.

- predict: one crop through an (untrained) SPSS + the clinical scorer, and the
  ConvNet, at the default run's 80x80x48 grid and at the full 128x128x48 grid,
  2 CPU threads (a GPU run is faster; this is the CPU floor);
- evaluate: `run_evaluate` on a fabricated table of 4 experiments x 152 test
  scans (the paper's test-set size) with 1000 bootstrap resamples.
The figures' time is in the default run's results/benchmarks/figures.tsv.
Prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cacs import SCORE_COLUMNS
from cacs.cvd import cvd_rank

# name -> (crop shape z, y, x; model configs): the default run's scaled-down models (config/config.yaml)
# and the full defaults (config/coca.yaml's models, meant for a GPU).
SIZES = {
    "default_run_80x80x48": ((48, 80, 80), {"spss": {"channels": [8, 16, 32, 64], "feature_width": 8,
                                                     "small_width": 8, "large_width": 16},
                                            "convnet": {"channels": [8, 16, 32, 64, 128]}}),
    "full_128x128x48": ((48, 128, 128), {"spss": {}, "convnet": {}}),
}  # fmt: skip


def _predict_timings(repeats: int = 5) -> dict:
    import torch

    from cacs.agatston import AgatstonParams
    from cacs.io.nifti import Geometry
    from cacs.models import build_model
    from cacs.predict import TrainedModel, predict_native

    torch.set_num_threads(2)
    out = {}
    rng = np.random.default_rng(0)
    for name, (shape, configs) in SIZES.items():
        hu = rng.normal(40, 20, shape).astype(np.float32)
        hu[20:23, 30:34, 30:34] = 450
        grid = Geometry((1.5, 1.5, 3.0), (0.0, 0.0, 0.0))  # the crop is its own native scan: no resampling cost
        for kind in ("spss", "convnet"):
            model = TrainedModel(kind, kind, build_model(kind, configs[kind]).eval(), torch.device("cpu"), amp=False)
            predict_native(model, hu, grid, hu, grid, AgatstonParams())  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                predict_native(model, hu, grid, hu, grid, AgatstonParams())
                times.append(time.perf_counter() - t0)
            out[f"predict_{kind}_{name}_s"] = round(statistics.median(times), 3)
    return out


def _fabricated_predictions(folder: Path, n_scans: int = 152) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for experiment, model in (("convnet", "convnet"), ("spss_wo_ssl", "spss"), ("spss", "spss"), ("spss_ce", "spss")):
        rows = []
        for i in range(n_scans):
            cohort = "gated" if i % 2 == 0 else "nongated"
            ref = {a: float(rng.choice([0.0, rng.gamma(1.0, 60.0)])) for a in SCORE_COLUMNS[:4]}
            pred = {a: max(0.0, v + float(rng.normal(0, 15))) for a, v in ref.items()}
            ref["total"], pred["total"] = sum(ref.values()), sum(pred.values())
            rows.append({
                "case_id": f"{cohort}-{i}", "patient_id": f"P{i // 2}", "cohort": cohort, "split": "test",
                "experiment": experiment, "model": model, **{f"ref_{k}": v for k, v in ref.items()},
                **{f"pred_{k}": v for k, v in pred.items()}, "ref_rank": cvd_rank(ref["total"]),
                "pred_rank": cvd_rank(pred["total"]), "image": "", "ref_labels": "", "label_map": "",
                "fallback": False,
            })  # fmt: skip
        path = folder / experiment / "predictions.csv"
        path.parent.mkdir(parents=True)
        pd.DataFrame(rows).to_csv(path, index=False)
        paths.append(path)
    return paths


def _evaluate_timing() -> dict:
    from cacs.evaluate import run_evaluate

    with tempfile.TemporaryDirectory() as tmp:
        paths = _fabricated_predictions(Path(tmp))
        t0 = time.perf_counter()
        run_evaluate(paths, Path(tmp) / "paper", n_bootstrap=1000, seed=42, data_source="synthetic")
        return {"evaluate_4x152_scans_1000_bootstrap_s": round(time.perf_counter() - t0, 3)}


def main() -> None:
    result = {"benchmark": "evaluate"}
    result.update(_predict_timings())
    result.update(_evaluate_timing())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
