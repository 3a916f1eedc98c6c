"""Shared look of the paper's figures: artery colours, CT window, captions, saving.

Every figure module imports pyplot from here, so the non-interactive ``Agg``
backend is selected before pyplot is first imported: the pipeline runs on
machines without a display, and a figure must render identically there and
on a laptop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no screen on cluster nodes or CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from cacs import ARTERIES  # noqa: E402
from cacs.figure_names import FIGURE_EXTENSIONS  # noqa: E402
from cacs.io.atomic import atomic_path  # noqa: E402

# PDF font subsetting logs every glyph at INFO; the CLI runs at INFO, so keep it quiet.
logging.getLogger("fontTools").setLevel(logging.WARNING)

__all__ = [
    "ARTERY_COLOURS",
    "CT_WINDOW",
    "DATA_SOURCES",
    "DPI",
    "LABEL_CMAP",
    "artery_legend_handles",
    "data_source_caption",
    "figure_style",
    "format_scores",
    "label_rgba",
    "panel_grid",
    "plt",
    "save_figure",
    "suptitle",
]

DPI = 150
"""Raster resolution of the PNGs: legible on screen, small enough for a report."""

ARTERY_COLOURS: dict[str, tuple[float, float, float]] = {
    "LM": (1.0, 0.0, 0.0),  # red
    "LCX": (0.0, 0.85, 0.0),  # green
    "LAD": (0.15, 0.45, 1.0),  # blue, lightened so it stays visible on dark CT
    "RCA": (1.0, 0.9, 0.0),  # yellow
}
"""The paper's colours (Figures 1 and 5): LM red, LCX green, LAD blue, RCA yellow."""

LABEL_CMAP = ListedColormap(
    [(0.0, 0.0, 0.0, 0.0)] + [(*ARTERY_COLOURS[a], 1.0) for a in ARTERIES],
    name="cacs_arteries",
)
"""Label value -> RGBA: index 0 (background) is fully transparent so the CT shows through."""

CT_WINDOW: tuple[float, float] = (-200.0, 600.0)
"""Display window in HU (W 800 / L 200): soft tissue stays grey, calcium (>= 130 HU) bright."""

DATA_SOURCES: dict[str, str] = {
    "synthetic": "synthetic data (not COCA)",
    "local": "real COCA data",
    "download": "real COCA data",
}
"""``data_source`` (the config's data.source) -> the suptitle's words: no synthetic figure passes for COCA."""

TITLE_SIZE = 13.0

_RC: dict[str, object] = {
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 10,
    "figure.titlesize": TITLE_SIZE,
    "pdf.fonttype": 42,  # embed TrueType: text in the PDF stays text (searchable, editable)
    "savefig.facecolor": "white",
}


def data_source_caption(data_source: str) -> str:
    """The caption words for a ``data_source``; ``ValueError`` for anything else."""
    try:
        return DATA_SOURCES[data_source]
    except KeyError:
        raise ValueError(f"data_source must be one of {sorted(DATA_SOURCES)}, got {data_source!r}") from None


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Font sizes for every figure, scoped so importing this package changes no global rcParams."""
    with matplotlib.rc_context(_RC):
        yield


def label_rgba(labels: np.ndarray) -> np.ndarray:
    """Label map (0..4) -> RGBA float array (shape + (4,)), background transparent.

    ``ValueError`` for values outside 0..4: a colour silently clipped would
    show calcium in the wrong artery.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > len(ARTERIES)):
        raise ValueError(f"label values must be in 0..{len(ARTERIES)}, got {labels.min()}..{labels.max()}")
    return LABEL_CMAP(labels.astype(np.intp))


def artery_legend_handles() -> list[Patch]:
    """One coloured patch per artery, for ``fig.legend``."""
    return [Patch(facecolor=ARTERY_COLOURS[a], edgecolor="black", label=a) for a in ARTERIES]


def _num(value: float) -> str:
    """Compact score: 0 -> '0', 90.0 -> '90', 12.14 -> '12.1'."""
    text = f"{float(value):.1f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_scores(scores: Mapping[str, float], prefix: str = "") -> str:
    """``'total 123.4 | LM 0 LCX 12.1 LAD 90 RCA 21.3'`` from keys ``{prefix}LM`` ... ``{prefix}total``."""
    arteries = " ".join(f"{a} {_num(scores[f'{prefix}{a}'])}" for a in ARTERIES)
    return f"total {_num(scores[f'{prefix}total'])} | {arteries}"


def suptitle(fig: Figure, text: str) -> None:
    """Figure title wrapped to the figure's width (an over-wide title collapses constrained layout)."""
    chars = max(20, int(fig.get_figwidth() * 72 / (0.55 * TITLE_SIZE)))  # ~0.55 em per character
    lines = [textwrap.fill(line, chars) for line in text.split("\n")]
    fig.suptitle("\n".join(lines), fontsize=TITLE_SIZE)


def panel_grid(n: int, per_row: int = 3) -> tuple[int, int]:
    """(rows, columns) for n panels, at most ``per_row`` per row, never 0."""
    n = max(n, 1)
    return math.ceil(n / per_row), min(n, per_row)


def save_figure(fig: Figure, out_stem: str | os.PathLike[str]) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically, close the figure, return both paths.

    The temporary names carry the right suffix, but the format is also given
    explicitly so matplotlib never guesses it from a temp name.  The suffix is
    appended (not ``with_suffix``) so a stem with a dot keeps its full name.
    """
    out_stem = Path(out_stem)
    written: list[Path] = []
    try:
        for ext in FIGURE_EXTENSIONS:
            fmt = ext.removeprefix(".")
            dest = out_stem.parent / f"{out_stem.name}.{fmt}"
            with atomic_path(dest, suffix=f".{fmt}") as tmp:
                fig.savefig(tmp, format=fmt, dpi=DPI)
            written.append(dest)
    finally:
        plt.close(fig)
    return written
