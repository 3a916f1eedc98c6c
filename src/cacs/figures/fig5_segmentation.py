"""Figure 5: segmentation examples, reference vs SPSS w/o SSL vs SPSS, one column per scan.

Like the paper, non-gated scans are preferred: their reference row shows the
CT and the reference CCS only (COCA has no non-gated masks).  Gated scans
fill in when there are too few calcified non-gated ones, and then the
reference row shows the reference mask.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cacs.cvd import rank_name
from cacs.figures.data import check_predictions, experiment_row, reference_table
from cacs.figures.style import (
    artery_legend_handles,
    data_source_caption,
    figure_style,
    format_scores,
    plt,
    save_figure,
    suptitle,
)
from cacs.figures.volumes import brightest_slice, draw_axial, load_scan, slice_with_most
from cacs.paper_reference import method_name

log = logging.getLogger(__name__)

ROW_EXPERIMENTS: tuple[str, ...] = ("spss_wo_ssl", "spss")
"""Model rows under the reference row, in the paper's order."""

RANK_CYCLE: tuple[int, ...] = (5, 4, 3, 2, 1)
"""Columns span the CVD ranks: the worst rank first, as the eye needs calcium to judge a mask."""


def _cycle_ranks(pool: pd.DataFrame, limit: int) -> list[str]:
    """Up to ``limit`` case ids, cycling ranks V..I, highest reference total first within a rank."""
    queues = {
        rank: list(group.sort_values(["ref_total", "case_id"], ascending=[False, True])["case_id"])
        for rank, group in pool.groupby("ref_rank")
    }
    picked: list[str] = []
    while len(picked) < limit and any(queues.values()):
        for rank in RANK_CYCLE:
            if queues.get(rank) and len(picked) < limit:
                picked.append(queues[rank].pop(0))
    return picked


def select_examples(predictions: pd.DataFrame, n_examples: int = 4) -> list[str]:
    """Deterministic choice of the Figure 5 scans (case ids, column order).

    Pools in order of preference, each drained by cycling CVD ranks: calcified
    non-gated scans, calcified gated scans, then calcium-free scans (non-gated
    first) only if the test set has nothing better.
    """
    if n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples}")
    ref = reference_table(predictions)
    calcified = ref["ref_total"] > 0
    nongated = ref["cohort"] == "nongated"
    pools = (
        ref[calcified & nongated],
        ref[calcified & ~nongated],
        ref[~calcified & nongated],
        ref[~calcified & ~nongated],
    )
    chosen: list[str] = []
    for pool in pools:
        chosen += _cycle_ranks(pool, n_examples - len(chosen))
    return chosen


def _panel_note(ax, text: str) -> None:
    ax.text(
        0.03,
        0.90,
        text,
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=9,
        color="white",
        bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 2},
    )


def figure5(
    predictions: pd.DataFrame, out_stem: str | os.PathLike[str], data_source: str, n_examples: int = 4
) -> list[Path]:
    """Grid of axial slices: rows reference / SPSS w/o SSL / SPSS, columns the selected scans."""
    caption = data_source_caption(data_source)
    predictions = check_predictions(predictions)
    present = set(predictions["experiment"])
    experiments = []
    for name in ROW_EXPERIMENTS:
        if name in present:
            experiments.append(name)
        else:
            log.warning("figure 5: experiment %r has no predictions: its row is skipped", name)
    ref = reference_table(predictions).set_index("case_id")
    cases = select_examples(predictions, n_examples)
    nrows, ncols = 1 + len(experiments), max(len(cases), 1)

    with figure_style():
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(max(4.3 * ncols, 9.0), 4.5 * nrows + 0.8), squeeze=False, constrained_layout=True
        )
        if not cases:
            axes[0, 0].text(0.5, 0.5, "no test scans", ha="center", va="center", transform=axes[0, 0].transAxes)
        for col, case_id in enumerate(cases):
            case = ref.loc[case_id]
            gated = case["cohort"] == "gated"
            paths: list[str] = [case["ref_labels"]] if gated and case["ref_labels"] else []
            rows = [experiment_row(predictions, e, case_id) for e in experiments]
            paths += [r["label_map"] for r in rows if r is not None and r["label_map"]]
            image, loaded = load_scan(case["image"], paths)
            maps = iter(v.array for v in loaded)
            ref_mask = next(maps) if gated and case["ref_labels"] else None
            pred_masks = [next(maps) if r is not None and r["label_map"] else None for r in rows]
            shown = [m for m in (ref_mask, *pred_masks) if m is not None]
            union = np.any(np.stack(shown), axis=0) if shown else None
            z = slice_with_most(union) if union is not None else None
            z = brightest_slice(image.array) if z is None else z

            def labels_for(r: int, c: int = col) -> tuple[bool, bool]:
                return (r == nrows - 1, c == 0)

            # Native scans are wide (a 350 mm chest): every panel of the column zooms on the same calcium.
            ax = axes[0, col]
            draw_axial(ax, image, z, ref_mask, axis_labels=labels_for(0), zoom_mask=union)
            cohort = "gated" if gated else "non-gated"
            ax.set_title(
                f"{case_id} ({cohort}, rank {rank_name(int(case['ref_rank']))}, slice {z})\n"
                f"reference: {format_scores(case, 'ref_')}",
                fontsize=9.5,
            )
            if ref_mask is None:
                _panel_note(ax, "no reference mask (non-gated)" if not gated else "no reference mask")
            for r, (name, row, mask) in enumerate(zip(experiments, rows, pred_masks, strict=True), start=1):
                ax = axes[r, col]
                draw_axial(ax, image, z, mask, axis_labels=labels_for(r), zoom_mask=union)
                if row is None:
                    ax.set_title(f"{method_name(name)}: no prediction", fontsize=9.5)
                    continue
                ax.set_title(
                    f"{method_name(name)} (rank {rank_name(int(row['pred_rank']))})\n{format_scores(row, 'pred_')}",
                    fontsize=9.5,
                )
                if mask is None:
                    _panel_note(ax, "no label map")
        for r, name in enumerate(["Reference", *map(method_name, experiments)]):
            axes[r, 0].set_ylabel(f"{name}\n\ny (mm)", fontsize=11)
        fig.legend(handles=artery_legend_handles(), loc="outside lower center", ncol=4, title="calcium by artery")
        suptitle(
            fig,
            f"Figure 5. CAC segmentation and CCS prediction on test scans; {caption}\n"
            "rows: reference, "
            + ", ".join(map(method_name, experiments))
            + "; native scan, radiological view, W 800 / L 200 HU; same slice and zoom in each column",
        )
        return save_figure(fig, out_stem)


__all__ = ["figure5", "select_examples"]
