"""Figure 1: calcium on a gated and a non-gated axial slice, coloured by artery, and a coronal view.

COCA has no non-gated masks, so the non-gated panel colours what SPSS
predicted, and says so; the gated panel shows the reference mask.  The third
panel is a coronal plane of the gated scan through its most superior calcium:
the heart's base, the aortic root and the coronary origins above the base,
where a heart box is likeliest to cut (docs/crops.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from cacs.figures.data import check_predictions, experiment_row, reference_table, spss_experiment
from cacs.figures.style import (
    artery_legend_handles,
    data_source_caption,
    figure_style,
    format_scores,
    plt,
    save_figure,
    suptitle,
)
from cacs.figures.volumes import (
    brightest_slice,
    draw_axial,
    draw_coronal,
    highest_calcium_row,
    load_scan,
    slice_with_most,
)
from cacs.paper_reference import method_name

log = logging.getLogger(__name__)


def choose_pair(ref: pd.DataFrame) -> tuple[pd.Series | None, pd.Series | None, bool]:
    """(gated row, non-gated row, same patient?) for Figure 1.

    A patient with both scans and calcium in both is preferred (highest gated
    reference total); unpaired data (real COCA) falls back to the gated scan
    with a reference mask and the non-gated scan with the highest totals.
    """
    by_total = ref.sort_values(["ref_total", "case_id"], ascending=[False, True])
    gated = by_total[(by_total["cohort"] == "gated") & (by_total["ref_labels"] != "")]
    nongated = by_total[by_total["cohort"] == "nongated"]
    calcified_ng = nongated[nongated["ref_total"] > 0]
    paired = gated[(gated["ref_total"] > 0) & gated["patient_id"].isin(calcified_ng["patient_id"])]
    if not paired.empty:
        g = paired.iloc[0]
        return g, calcified_ng[calcified_ng["patient_id"] == g["patient_id"]].iloc[0], True
    g = gated.iloc[0] if not gated.empty else None
    n = nongated.iloc[0] if not nongated.empty else None
    return g, n, False


def left_main_scan(ref: pd.DataFrame) -> pd.Series | None:
    """The gated scan with a reference mask and the most left-main calcium (else the most calcium).

    The left main leaves the aortic root above the heart's base: its calcium is the
    first a heart box cuts, so this scan shows what the crop must keep.
    """
    gated = ref[(ref["cohort"] == "gated") & (ref["ref_labels"] != "")]
    if gated.empty:
        return None
    return gated.sort_values(["ref_LM", "ref_total", "case_id"], ascending=[False, False, True]).iloc[0]


def _empty_panel(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_xticks([])
    ax.set_yticks([])


def figure1(predictions: pd.DataFrame, out_stem: str | os.PathLike[str], data_source: str) -> list[Path]:
    """Gated (reference mask) and non-gated (SPSS prediction) slice with calcium by artery."""
    caption = data_source_caption(data_source)
    predictions = check_predictions(predictions)
    gated, nongated, same_patient = choose_pair(reference_table(predictions))
    spss = spss_experiment(predictions)
    if spss is None:
        log.warning("figure 1: no SPSS-type experiment with label maps; non-gated panel shows the CT only")
    who = "same patient" if same_patient else "two different patients: no paired scans with calcium"

    with figure_style():
        fig, axes = plt.subplots(1, 3, figsize=(17.0, 7.0), constrained_layout=True)
        if gated is None:
            _empty_panel(axes[0], "no gated test scan with a reference mask")
            _empty_panel(axes[2], "no gated test scan with a reference mask")
        else:
            image, (labels,) = load_scan(gated["image"], [gated["ref_labels"]])
            z = slice_with_most(labels.array)
            z = brightest_slice(image.array) if z is None else z
            draw_axial(axes[0], image, z, labels.array, zoom_mask=labels.array)
            axes[0].set_title(
                f"(a) gated CT, reference mask: {gated['case_id']} (slice {z})\n"
                f"reference: {format_scores(gated, 'ref_')}",
                fontsize=10,
            )
        base = left_main_scan(reference_table(predictions))
        if base is not None:
            image, (labels,) = load_scan(base["image"], [base["ref_labels"]])
            y = highest_calcium_row(labels.array)
            y = image.array.shape[1] // 2 if y is None else y
            draw_coronal(axes[2], image, y, labels.array)
            axes[2].set_title(
                f"(c) gated CT with most left-main calcium, reference mask:\n{base['case_id']}, coronal row {y} "
                f"(most superior calcium)\nreference: LM {base['ref_LM']:.1f}, total {base['ref_total']:.1f}",
                fontsize=10,
            )
        if nongated is None:
            _empty_panel(axes[1], "no non-gated test scan")
        else:
            row = experiment_row(predictions, spss, nongated["case_id"]) if spss else None
            label_path = row["label_map"] if row is not None and row["label_map"] else None
            image, loaded = load_scan(nongated["image"], [label_path] if label_path else [])
            pred = loaded[0].array if loaded else None
            z = slice_with_most(pred) if pred is not None else None
            z = brightest_slice(image.array) if z is None else z
            draw_axial(axes[1], image, z, pred, zoom_mask=pred)
            source = f"{method_name(spss)} prediction" if pred is not None else "no prediction available"
            axes[1].set_title(
                f"(b) non-gated CT, {source}: {nongated['case_id']} (slice {z})\n"
                f"(COCA has no non-gated masks)\nreference: {format_scores(nongated, 'ref_')}",
                fontsize=10,
            )
        fig.legend(handles=artery_legend_handles(), loc="outside lower center", ncol=4, title="calcium by artery")
        suptitle(
            fig,
            f"Figure 1. Coronary calcium on gated and non-gated test CT ({who}); {caption}\n"
            "(a, b) axial slices around the calcium, (c) coronal plane; radiological view (patient right on image "
            "left), window W 800 / L 200 HU",
        )
        return save_figure(fig, out_stem)


__all__ = ["choose_pair", "figure1", "left_main_scan"]
