"""Figure 7: CVD-rank confusion matrices per method (reference on y, predicted on x, as the paper).

All panels share one colour scale, so equal counts look equal across methods.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay

from cacs.cvd import RANK_NAMES
from cacs.evaluate import confusion
from cacs.figures.data import check_predictions, cohort_words, ordered_experiments
from cacs.figures.style import data_source_caption, figure_style, panel_grid, plt, save_figure, suptitle
from cacs.paper_reference import method_name


def rank_confusion(rows: pd.DataFrame) -> np.ndarray:
    """5x5 counts, rows = reference rank I..V, columns = predicted rank I..V (the statistics' own matrix)."""
    return confusion(rows["ref_rank"], rows["pred_rank"])


def figure7(
    predictions: pd.DataFrame, out_stem: str | os.PathLike[str], data_source: str, cohort: str = "nongated"
) -> list[Path]:
    """Confusion matrices of CVD ranks I-V per method on one cohort's test scans."""
    caption = data_source_caption(data_source)
    words = cohort_words(cohort)
    predictions = check_predictions(predictions)
    frame = predictions[predictions["cohort"] == cohort]
    experiments = ordered_experiments(frame)
    matrices = {e: rank_confusion(frame[frame["experiment"] == e]) for e in experiments}
    vmax = max([int(m.max()) for m in matrices.values()] + [1])
    nrows, ncols = panel_grid(len(experiments))
    with figure_style():
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(max(4.6 * ncols + 0.8, 9.0), 4.4 * nrows), squeeze=False, constrained_layout=True
        )
        flat = axes.ravel()
        for ax in flat[len(experiments) :]:
            ax.set_axis_off()
        if not experiments:
            flat[0].set_axis_on()
            flat[0].text(0.5, 0.5, f"no {words} test scans", ha="center", va="center", transform=flat[0].transAxes)
        image = None
        for ax, name in zip(flat, experiments, strict=False):
            matrix = matrices[name]
            display = ConfusionMatrixDisplay(matrix, display_labels=list(RANK_NAMES))
            display.plot(ax=ax, cmap="Blues", colorbar=False, im_kw={"vmin": 0, "vmax": vmax}, text_kw={"fontsize": 11})
            # sklearn picks text colours from each panel's own range; use the shared scale instead.
            for (i, j), text in np.ndenumerate(display.text_):
                text.set_color("white" if matrix[i, j] > 0.5 * vmax else "black")
            image = display.im_
            agree = np.trace(matrix) / matrix.sum() if matrix.sum() else float("nan")
            ax.set_title(f"{method_name(name)} (n = {matrix.sum()}, exact rank {agree:.0%})")
            ax.set_xlabel("predicted CVD rank")
            ax.set_ylabel("reference CVD rank")
        if image is not None:
            bar = fig.colorbar(image, ax=axes, shrink=0.8, label="scans")
            bar.locator = MaxNLocator(integer=True)  # counts: no 0.25-scan ticks
            bar.update_ticks()
        suptitle(fig, f"Figure 7. CVD rank confusion matrices, {words} test set; {caption}")
        return save_figure(fig, out_stem)


__all__ = ["figure7", "rank_confusion"]
