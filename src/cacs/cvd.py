"""CVD risk ranks from a total Agatston score (the paper's ranks I-V).

I = 0, II = (0, 10], III = (10, 100], IV = (100, 400], V > 400 (docs/agatston.md).
"""

from __future__ import annotations

import numpy as np

RANK_NAMES: tuple[str, ...] = ("I", "II", "III", "IV", "V")
RANKS: tuple[int, ...] = tuple(range(1, len(RANK_NAMES) + 1))
"""The rank values 1..5 that :func:`cvd_rank` returns (I..V), as tables store them."""
RANK_UPPER_EDGES: tuple[float, ...] = (0.0, 10.0, 100.0, 400.0)
"""Inclusive upper edge of ranks I-IV; anything above the last edge is rank V."""


def cvd_rank(total: float | np.ndarray) -> int | np.ndarray:
    """Rank 1..5 (I..V) of a total score; vectorised over arrays.

    ``np.searchsorted(..., side="left")`` puts a score equal to an edge in the
    lower rank, which is exactly the (a, b] convention above.
    """
    arr = np.asarray(total, dtype=float)
    if np.any(arr < 0) or np.any(~np.isfinite(arr)):
        raise ValueError(f"scores must be finite and >= 0, got {total!r}")
    ranks = np.searchsorted(np.asarray(RANK_UPPER_EDGES), arr, side="left") + 1
    return int(ranks) if ranks.ndim == 0 else ranks


def rank_name(rank: int) -> str:
    return RANK_NAMES[rank - 1]
