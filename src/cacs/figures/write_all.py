"""All of the paper's figures from the pipeline's outputs in one call (the ``cacs figures`` step)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cacs.figure_names import FIGURE_STEMS
from cacs.figures.fig1_cac_examples import figure1
from cacs.figures.fig3_convergence import figure3
from cacs.figures.fig4_kappa import figure4
from cacs.figures.fig5_segmentation import figure5
from cacs.figures.fig6_bland_altman import figure6
from cacs.figures.fig7_confusion import figure7
from cacs.figures.style import data_source_caption
from cacs.prediction_table import load_predictions

log = logging.getLogger(__name__)


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``metrics.json`` from ``cacs evaluate``; ``FileNotFoundError``/``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metrics file not found")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(metrics, dict) or not isinstance(metrics.get("experiments", {}), dict):
        raise ValueError(f"{path}: expected an object with an 'experiments' mapping")
    return metrics


def write_all_figures(
    predictions_csvs: Sequence[str | os.PathLike[str]],
    metrics_json: str | os.PathLike[str],
    curves: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    data_source: str,
    n_examples: int = 4,
) -> list[Path]:
    """Write Figures 1, 3, 4, 5, 6, 7 (PNG + PDF) into ``out_dir``; returns the written paths.

    Inputs are read (and checked) before anything is drawn, so a missing file
    fails at once and leaves no half set of figures behind.
    """
    data_source_caption(data_source)  # validate before any work
    started = time.perf_counter()
    predictions = load_predictions(predictions_csvs)
    metrics = read_metrics(metrics_json)
    for path in curves.values():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: training metrics file not found")
    if metrics.get("data_source") not in (None, data_source):
        log.warning(
            "metrics.json says data_source=%r but figures are captioned %r", metrics["data_source"], data_source
        )
    out = Path(out_dir)
    stems = dict(zip(("f1", "f3", "f4", "f5", "f6", "f7"), (out / s for s in FIGURE_STEMS), strict=True))
    written = figure1(predictions, stems["f1"], data_source)
    written += figure3(curves, stems["f3"], data_source)
    written += figure4(metrics, stems["f4"], data_source)
    written += figure5(predictions, stems["f5"], data_source, n_examples=n_examples)
    written += figure6(predictions, stems["f6"], data_source)
    written += figure7(predictions, stems["f7"], data_source)
    log.info("wrote %d figure files to %s in %.1f s", len(written), out, time.perf_counter() - started)
    return written


__all__ = ["FIGURE_STEMS", "read_metrics", "write_all_figures"]
