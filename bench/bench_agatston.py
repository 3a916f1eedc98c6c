"""Benchmark: clinical Agatston scoring of a realistic 512x512x60 gated volume.

Target (issue 2): median under 50 ms on one core for the scoring itself.
Also reported: the whole `cacs score IMAGE LABELS` command (process start,
imports and NIfTI reading included), which is dominated by start-up.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from common import pin_one_core, realistic_cohort


def main() -> None:
    pinned = pin_one_core()
    import numpy as np
    import pandas as pd

    from cacs.agatston import agatston_scores, lesion_weight_map
    from cacs.io.nifti import read_volume

    root = realistic_cohort()
    truth = pd.read_csv(root / "truth" / "scores.csv")
    pid = int(truth.loc[truth.total.idxmax(), "pid"])
    image = root / "truth" / "gated" / f"{pid}_image.nii.gz"
    labels_path = root / "truth" / "gated" / f"{pid}_labels.nii.gz"
    hu, geo = read_volume(image)
    labels, _ = read_volume(labels_path)
    agatston_scores(hu, labels, geo.spacing)  # warm-up
    runs = []
    for _ in range(30):
        t0 = time.perf_counter()
        scores = agatston_scores(hu, labels, geo.spacing)
        runs.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    lesion_weight_map(hu)
    weight_map_ms = (time.perf_counter() - t0) * 1e3
    cli = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cacs", "score", str(image), str(labels_path)], check=True, capture_output=True
        )
        cli.append((time.perf_counter() - t0) * 1e3)
    print(
        json.dumps(
            {
                "benchmark": "agatston_score",
                "volume_shape_zyx": list(hu.shape),
                "labelled_voxels": int(np.count_nonzero(labels)),
                "total_score": round(scores["total"], 3),
                "one_core": pinned,
                "score_ms_median": round(statistics.median(runs), 3),
                "score_ms_p90": round(float(np.percentile(runs, 90)), 3),
                "target_ms": 50,
                "lesion_weight_map_ms": round(weight_map_ms, 1),
                "cli_score_command_ms_median": round(statistics.median(cli), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
