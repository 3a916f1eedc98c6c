"""The prediction table contract: what ``cacs predict`` writes and evaluate / figures read.

Kept in a module of its own, free of torch, because the statistics and
figures run in the plotting environment (envs/plot.yaml), which has no torch.
"""

from __future__ import annotations

from cacs import SCORE_COLUMNS

REF_COLUMNS: tuple[str, ...] = tuple(f"ref_{c}" for c in SCORE_COLUMNS)
PRED_COLUMNS: tuple[str, ...] = tuple(f"pred_{c}" for c in SCORE_COLUMNS)
PATH_COLUMNS: tuple[str, ...] = ("image", "ref_labels", "label_map")
"""Native scan, its reference label map (gated only, else empty), predicted label map (SPSS-type only, else empty):
all on the scan's own grid, so they overlay."""

CONTRACT_COLUMNS: tuple[str, ...] = (
    "case_id",
    "patient_id",
    "cohort",
    "split",
    "experiment",
    "model",
    *REF_COLUMNS,
    *PRED_COLUMNS,
    "ref_rank",
    "pred_rank",
    *PATH_COLUMNS,
    "fallback",
)
"""One row per test scan, in this order; a writer may append more columns (``cacs predict`` adds ``ref_grid_*``
and ``ref_roundtrip_*``)."""
