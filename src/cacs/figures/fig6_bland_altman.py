"""Figure 6: Bland-Altman agreement of predicted and reference total CCS, one panel per method.

statsmodels draws the points, the bias and the +-1.96 SD limits; its own
annotations (large, in ``%.2g``) are replaced by compact ones so four panels
fit side by side, and the y range is widened so no scan falls off the plot.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.graphics.agreement import mean_diff_plot

from cacs.figures.data import check_predictions, cohort_words, ordered_experiments
from cacs.figures.style import data_source_caption, figure_style, panel_grid, plt, save_figure, suptitle
from cacs.paper_reference import BLAND_ALTMAN_LIMITS, method_name

XLABEL = "mean of predicted and reference CCS"
YLABEL = "predicted − reference CCS"


def _bland_altman_panel(ax, pred: np.ndarray, ref: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # identical ylims when every difference is equal
        mean_diff_plot(pred, ref, sd_limit=1.96, ax=ax, scatter_kwds={"s": 22, "alpha": 0.75})
    for text in list(ax.texts):  # statsmodels' 14 pt annotations: replaced below
        text.remove()
    diff = pred - ref
    bias, sd = float(np.mean(diff)), float(np.std(diff))  # np.std (ddof 0), as mean_diff_plot draws
    lower, upper = bias - 1.96 * sd, bias + 1.96 * sd
    span = max(upper - lower, np.ptp(diff), 1.0)
    ax.set_ylim(min(diff.min(), lower) - 0.15 * span, max(diff.max(), upper) + 0.25 * span)
    for y, text in ((upper, f"+1.96 SD: {upper:.1f}"), (bias, f"bias: {bias:.1f}"), (lower, f"−1.96 SD: {lower:.1f}")):
        ax.annotate(
            text,
            xy=(1.0, y),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=9,
            color="dimgray",
        )


def figure6(
    predictions: pd.DataFrame, out_stem: str | os.PathLike[str], data_source: str, cohort: str = "nongated"
) -> list[Path]:
    """Bland-Altman plots of the total score per method on one cohort's test scans."""
    caption = data_source_caption(data_source)
    words = cohort_words(cohort)
    predictions = check_predictions(predictions)
    frame = predictions[predictions["cohort"] == cohort]
    experiments = ordered_experiments(frame)
    nrows, ncols = panel_grid(len(experiments))
    with figure_style():
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(max(5.2 * ncols, 9.0), 4.6 * nrows), squeeze=False, constrained_layout=True
        )
        flat = axes.ravel()
        for ax in flat[len(experiments) :]:
            ax.set_axis_off()
        if not experiments:
            flat[0].set_axis_on()
            flat[0].text(0.5, 0.5, f"no {words} test scans", ha="center", va="center", transform=flat[0].transAxes)
        for ax, name in zip(flat, experiments, strict=False):
            rows = frame[frame["experiment"] == name]
            pred, ref = rows["pred_total"].to_numpy(float), rows["ref_total"].to_numpy(float)
            if len(rows) < 2:
                ax.text(
                    0.5, 0.5, f"not enough scans (n = {len(rows)})", ha="center", va="center", transform=ax.transAxes
                )
            else:
                _bland_altman_panel(ax, pred, ref)
            if cohort == "nongated" and name in BLAND_ALTMAN_LIMITS:
                lo, hi = BLAND_ALTMAN_LIMITS[name]
                ax.text(
                    0.02,
                    0.97,
                    f"paper (reported, COCA):\n95% limits [{lo:.2f}, {hi:.2f}]",
                    transform=ax.transAxes,
                    ha="left",
                    va="top",
                    fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "gray"},
                )
            ax.set_title(f"{method_name(name)} (n = {len(rows)} scans)")
            ax.set_xlabel(XLABEL, fontsize=11)  # statsmodels sets 15 pt: too big for a row of panels
            ax.set_ylabel(YLABEL, fontsize=11)
            ax.tick_params(labelsize=9)
            ax.grid(True, alpha=0.3)
        fig.set_layout_engine("constrained")  # mean_diff_plot ran tight_layout, which replaced it
        suptitle(fig, f"Figure 6. Bland-Altman agreement of total CCS, {words} test set, limits ±1.96 SD; {caption}")
        return save_figure(fig, out_stem)


__all__ = ["figure6"]
