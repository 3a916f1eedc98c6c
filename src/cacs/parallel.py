"""Run independent per-case jobs, in worker processes when asked, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from tqdm import tqdm


def run_cases(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int, desc: str) -> list[Any]:
    """``[fn(*job) for job in jobs]`` in order; ``workers > 1`` uses that many processes."""
    if workers <= 1:
        return [fn(*job) for job in tqdm(jobs, desc=desc, unit="case")]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        return [f.result() for f in tqdm(futures, desc=desc, unit="case")]
