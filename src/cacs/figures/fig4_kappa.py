"""Figure 4: Cohen's kappa of CVD ranks per method, gated and non-gated, ours vs the paper's.

Our kappas (with bootstrap 95 % CIs) come from ``metrics.json``; the paper's
reported kappas are drawn as black diamonds so a reader sees at once how far
the reproduction is from the publication.  SE-ResNeXt is not retrained: it
appears with its reported value only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cacs.figures.style import data_source_caption, figure_style, plt, save_figure, suptitle
from cacs.paper_reference import KAPPA, REPORTED_ONLY, TABLE1_ORDER, method_name

COHORTS: tuple[tuple[str, str, str], ...] = (
    ("gated", "gated CT", "#4c72b0"),
    ("nongated", "non-gated CT", "#dd8452"),
)


def kappa_table(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows (method, cohort, value, ci95, paper) in the paper's method order, then other experiments.

    ``value``/``ci95`` are None when not measured or undefined; ``paper`` is
    None when the paper gives no number.
    """
    experiments = metrics.get("experiments", {})
    paper = (metrics.get("paper") or {}).get("kappa") or KAPPA
    names = [m for m in TABLE1_ORDER if m in experiments or (m in REPORTED_ONLY and m in paper)]
    names += [e for e in experiments if e not in names]
    rows = []
    for name in names:
        cohorts = experiments.get(name, {}).get("cohorts", {})
        for cohort, _, _ in COHORTS:
            kappa = (cohorts.get(cohort) or {}).get("kappa", {}).get("unweighted") or {}
            rows.append(
                {
                    "experiment": name,
                    "method": method_name(name),
                    "cohort": cohort,
                    "measured": name in experiments,
                    "value": kappa.get("value"),
                    "ci95": kappa.get("ci95"),
                    "paper": (paper.get(name) or {}).get(cohort),
                }
            )
    return rows


def figure4(metrics: Mapping[str, Any], out_stem: str | os.PathLike[str], data_source: str) -> list[Path]:
    """Grouped bars of unweighted kappa per method and cohort, with CIs and the paper's values."""
    caption = data_source_caption(data_source)
    rows = kappa_table(metrics)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.38
    with figure_style():
        fig, ax = plt.subplots(figsize=(max(9.0, 2.0 * len(methods) + 2), 5.6), constrained_layout=True)
        lows = [0.0]
        for k, (cohort, _, colour) in enumerate(COHORTS):
            for i, method in enumerate(methods):
                row = next(r for r in rows if r["method"] == method and r["cohort"] == cohort)
                x = i + (k - 0.5) * width
                if row["value"] is not None:
                    value = float(row["value"])
                    yerr = None
                    if row["ci95"] is not None:
                        lo, hi = (float(v) for v in row["ci95"])
                        yerr = [[max(value - lo, 0.0)], [max(hi - value, 0.0)]]
                        lows.append(lo)
                    ax.bar(x, value, width, color=colour, edgecolor="black", linewidth=0.6, yerr=yerr, capsize=4)
                    lows.append(value)
                    if value >= 0.15:  # inside the bar's top: keeps the space above for the paper's marker
                        ax.text(
                            x,
                            value - 0.02,
                            f"{value:.2f}",
                            ha="center",
                            va="top",
                            fontsize=9,
                            color="white",
                            fontweight="bold",
                        )
                    else:
                        ax.text(x, max(value, 0.0) + 0.02, f"{value:.2f}", ha="center", va="bottom", fontsize=9)
                else:
                    text = "n/a" if row["measured"] else "not\nretrained"
                    ax.text(x, 0.02, text, ha="center", va="bottom", fontsize=9, color="dimgray")
                if row["paper"] is not None:
                    paper = float(row["paper"])
                    ax.plot(
                        x,
                        paper,
                        marker="D",
                        markersize=8,
                        color="black",
                        markerfacecolor="white",
                        markeredgewidth=1.8,
                        linestyle="none",
                    )
                    ax.annotate(
                        f"{paper:.3f}",
                        (x, paper),
                        xytext=(0, 7),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize=8,
                        fontstyle="italic",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5},
                    )
        # Legend built by hand: a cohort whose kappas are all null still gets its entry.
        handles = [plt.Rectangle((0, 0), 1, 1, color=c, ec="black", lw=0.6) for _, _, c in COHORTS]
        labels = [f"{lab} (this run, 95% CI)" for _, lab, _ in COHORTS]
        handles.append(
            plt.Line2D(
                [],
                [],
                marker="D",
                color="black",
                markerfacecolor="white",
                markeredgewidth=1.8,
                linestyle="none",
                markersize=8,
            )
        )
        labels.append("paper (reported)")
        fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
        ax.set_xticks(np.arange(len(methods)), methods)
        ax.set_xlim(-0.6, len(methods) - 0.4)  # explicit: with few bars autoscaling collapses the axis
        ax.set_xlabel("method")
        ax.set_ylabel("Cohen's kappa (unweighted, CVD ranks I-V)")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylim(min(min(lows) - 0.05, 0.0), 1.08)
        ax.grid(True, axis="y", alpha=0.3)
        suptitle(fig, f"Figure 4. CVD rank agreement on the gated and non-gated test sets; {caption}")
        return save_figure(fig, out_stem)


__all__ = ["figure4", "kappa_table"]
