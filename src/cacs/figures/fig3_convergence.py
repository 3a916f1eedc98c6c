"""Figure 3: training loss and validation scoring bias per epoch, one line per experiment.

The paper compares L_ssl with the local-sampled L_ls against plain
cross-entropy: the CE run stagnates between epochs 5 and 25.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from cacs.figures.style import data_source_caption, figure_style, plt, save_figure, suptitle

CURVE_COLUMNS: tuple[str, ...] = ("epoch", "loss_total", "val_mae_total")

CURVE_LABELS: dict[str, str] = {
    "spss": "L_ssl w/ L_ls (local-sampled)",
    "spss_ce": "L_ssl w/ L_ce",
}
"""Legend text of the paper's Figure 3 for experiment names; any other key is shown as given."""


def read_curve(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A training ``metrics.csv``: ``FileNotFoundError``/``ValueError`` naming the file when unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training metrics file not found")
    frame = pd.read_csv(path)
    missing = [c for c in CURVE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: training metrics lack columns {missing}")
    return frame.sort_values("epoch")


def _spans_decades(values: np.ndarray) -> bool:
    """Log scale only when it helps and is possible: all positive and max/min >= 10."""
    values = values[np.isfinite(values)]
    return values.size > 1 and values.min() > 0 and values.max() / values.min() >= 10


def figure3(
    curves: Mapping[str, str | os.PathLike[str]], out_stem: str | os.PathLike[str], data_source: str
) -> list[Path]:
    """Two panels (total loss, validation mean absolute scoring bias) vs epoch.

    ``curves`` maps a legend label, or an experiment name from ``CURVE_LABELS``,
    to that experiment's training ``metrics.csv``.
    """
    caption = data_source_caption(data_source)
    frames = {CURVE_LABELS.get(label, label): read_curve(path) for label, path in curves.items()}
    panels = (
        ("loss_total", "total training loss"),
        ("val_mae_total", "mean absolute scoring bias\n(total CCS, validation scans)"),
    )
    with figure_style():
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
        for ax, (column, ylabel) in zip(axes, panels, strict=True):
            values = []
            for label, frame in frames.items():
                frame = frame.dropna(subset=[column])  # epochs without validation (train.validate_every)
                few = len(frame) <= 30  # markers make short runs readable
                ax.plot(frame["epoch"], frame[column], marker="o" if few else None, markersize=4, label=label)
                values.append(frame[column].to_numpy(dtype=float))
            if values and _spans_decades(np.concatenate(values)):
                ax.set_yscale("log")
            if not frames:
                ax.text(0.5, 0.5, "no training curves given", ha="center", va="center", transform=ax.transAxes)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        axes[0].set_title("(a) loss")
        axes[1].set_title("(b) mean absolute scoring bias")
        if frames:
            axes[1].legend(loc="best")  # L_ce flat at the top, local-sampled falling: no fixed corner is free
        suptitle(fig, f"Figure 3. Convergence of SPSS with different segmentation losses; {caption}")
        return save_figure(fig, out_stem)


__all__ = ["figure3", "read_curve"]
