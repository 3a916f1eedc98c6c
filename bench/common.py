"""Shared set-up for the benchmarks: a cached `realistic` synthetic cohort.

Benchmarks print one JSON object on stdout; numbers, never pass/fail.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("CACS_BENCH_CACHE", REPO / "results" / "bench-cache"))


def pin_one_core() -> bool:
    """Run on one core (the targets are single-core numbers); False where unsupported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        return True
    return False


def realistic_cohort(n_patients: int = 5, seed: int = 11) -> Path:
    """Generate (once) a `realistic` 512x512 cohort; return its root folder."""
    from cacs.synth.cohort import SynthOptions, generate_cohort

    root = CACHE / f"realistic-n{n_patients}-s{seed}"
    if not (root / "truth" / "scores.csv").exists():
        print(f"generating realistic cohort in {root} (once) ...", file=sys.stderr)
        opts = SynthOptions(preset="realistic", seed=seed, n_patients=n_patients, n_segthor_train=1, n_segthor_test=0)
        generate_cohort(opts, root / "coca", root / "segthor", root / "truth")
    return root
