"""One-page visual QC report of a scored scan (PNG + PDF), written by ``cacs infer``.

Why: a score is only as good as the calcium behind it.  Before a cohort's
numbers go into an analysis, someone should see *what* was scored: the page
shows axial slices through the calcium with each artery in its colour (the
figures' colours: LM red, LCX green, LAD blue, RCA yellow), the per-artery
Agatston table, the total and its CVD rank, and what produced it (model
file and checksum, experiment, device, package versions), so a page found in
a folder months later still says how it was made.

Slices are drawn by :func:`cacs.figures.volumes.draw_axial` in the
radiological convention (patient's right on the left, anterior up), zoomed
on the calcium, in the CT window of the paper's figures.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cacs import ARTERIES
from cacs.cvd import RANK_NAMES, RANK_UPPER_EDGES
from cacs.figures.style import ARTERY_COLOURS, figure_style, plt, save_figure
from cacs.figures.volumes import brightest_slice, draw_axial, load_scan

N_SLICES = 4
"""Axial panels on the page: the slices holding the most calcium, in z order."""
PAGE_WIDTH_IN = 8.27  # A4 width; the height follows the number of panel rows (one page in any case)
PANEL_ROW_IN = 3.9
TABLE_ROW_IN = 3.4


def calcium_slices(labels: np.ndarray | None, image: np.ndarray, n: int = N_SLICES) -> list[int]:
    """Up to ``n`` axial indices to show: the ones with the most calcium voxels, ascending in z.

    Every artery with calcium gets its best slice first, so a small lesion in
    one artery is not crowded out by a large one in another.  Without
    calcium: the slice with the highest HU (where calcium would show first).
    """
    if labels is None or not labels.any():
        return [brightest_slice(image)]
    picked: list[int] = []
    flat = labels.reshape(labels.shape[0], -1)
    for value in range(1, len(ARTERIES) + 1):
        counts = np.count_nonzero(flat == value, axis=1)
        if counts.max() > 0 and int(np.argmax(counts)) not in picked:
            picked.append(int(np.argmax(counts)))
    totals = np.count_nonzero(flat, axis=1)
    for z in np.argsort(-totals, kind="stable"):
        if len(picked) >= n or totals[z] == 0:
            break
        if int(z) not in picked:
            picked.append(int(z))
    return sorted(picked[:n])


def _rank_range(rank: int) -> str:
    """The total-score interval of a rank, e.g. ``'(10, 100]'`` for II... III (cacs.cvd's convention)."""
    edges = (0.0, *RANK_UPPER_EDGES)
    if rank == 1:
        return "0"
    if rank == len(RANK_NAMES):
        return f"> {edges[-1]:g}"
    return f"({edges[rank - 1]:g}, {edges[rank]:g}]"


def _provenance(record: Mapping) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items())
    lines = [
        f"scan: {record.get('scan', '')}",
        f"series: {record.get('series') or 'n/a (volume input)'}",
        f"model: {record.get('model_path', '')}  (sha256 {str(record.get('model_sha256', ''))[:12]})",
        f"experiment: {record.get('experiment', '')} ({record.get('model', '')}), device {record.get('device', '')}",
        f"localizer: {record.get('localizer_path', '')}",
        f"versions: {versions}",
        f"scored: {record.get('scored_at', '')}",
    ]
    notes = list(record.get("notes") or [])
    if notes:
        lines.append(f"notes ({len(notes)}):")
        lines += [f"  - {n}" for n in notes[:6]]
        if len(notes) > 6:
            lines.append(f"  ... {len(notes) - 6} more in scores.json")
    return "\n".join(textwrap.fill(line, 84, subsequent_indent="      ") for line in lines)


def write_qc_page(
    out_stem: str | os.PathLike[str],
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None,
    record: Mapping,
) -> list[Path]:
    """Draw the page for one scored scan; write ``<stem>.png`` and ``<stem>.pdf``; return both paths.

    ``record`` is the scan's ``scores.json`` record (scores, ``cvd_rank``,
    provenance keys); ``labels_path`` the predicted label map on the scan's
    grid, or ``None`` (a ConvNet has no map: slices are shown without overlay).
    """
    image, label_volumes = load_scan(image_path, [labels_path] if labels_path else [])
    labels = label_volumes[0].array if label_volumes else None
    slices = calcium_slices(labels, image.array)
    rows = math.ceil(len(slices) / 2)
    with figure_style():
        fig = plt.figure(figsize=(PAGE_WIDTH_IN, PANEL_ROW_IN * rows + TABLE_ROW_IN), layout="constrained")
        grid = fig.add_gridspec(rows + 1, 2, height_ratios=[PANEL_ROW_IN] * rows + [TABLE_ROW_IN - 0.6])
        name = record.get("scan_id") or Path(str(record.get("scan", "scan"))).name
        fig.suptitle(f"Coronary calcium QC: {name}\nresearch use only, not for diagnosis", fontsize=13)
        for i, z in enumerate(slices):
            ax = fig.add_subplot(grid[i // 2, i % 2])
            zoom = labels if labels is not None and labels[z].any() else None
            draw_axial(ax, image, z, labels, zoom_mask=zoom, axis_labels=(i >= len(slices) - 2, i % 2 == 0))
            found = [a for v, a in enumerate(ARTERIES, start=1) if labels is not None and (labels[z] == v).any()]
            ax.set_title(f"axial slice {z + 1}/{image.array.shape[0]}" + (f": {', '.join(found)}" if found else ""))
        bottom = grid[rows, :].subgridspec(1, 2, width_ratios=[0.75, 1.25])
        _score_table(fig.add_subplot(bottom[0, 0]), record)
        text = fig.add_subplot(bottom[0, 1])
        text.axis("off")
        text.text(0.0, 1.0, _provenance(record), va="top", ha="left", fontsize=6.5, family="monospace",
                  transform=text.transAxes)  # fmt: skip
        return save_figure(fig, out_stem)


def _score_table(ax, record: Mapping) -> None:
    ax.axis("off")
    rows = [[a, f"{float(record[a]):.1f}"] for a in ARTERIES]
    rows.append(["total", f"{float(record['total']):.1f}"])
    rank = int(record["cvd_rank"])
    rows.append(["CVD rank", f"{RANK_NAMES[rank - 1]}  (total {_rank_range(rank)})"])
    colours = [[(*ARTERY_COLOURS[a], 0.55), "white"] for a in ARTERIES] + [["#dddddd", "white"]] * 2
    table = ax.table(cellText=rows, colLabels=["artery", "Agatston"], cellColours=colours, loc="upper center",
                     colWidths=[0.36, 0.64])  # fmt: skip
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.scale(1.0, 1.6)
    ax.set_title("per-artery Agatston score", fontsize=11)
