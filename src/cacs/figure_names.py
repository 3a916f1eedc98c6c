"""File stems of the paper's figures: the one list that the pipeline and ``cacs figures`` share.

The Snakemake workflow (``workflow/rules/common.smk`` loads this file by its
path) declares these files as the figure rule's outputs, and
:func:`cacs.figures.write_all_figures` writes them; keeping one tuple here
means a renamed or added figure cannot leave the rule expecting a file that is
never written.  The module lives outside :mod:`cacs.figures` and imports
nothing, because importing that package loads matplotlib, which the workflow's
own process (reading common.smk) should not need.
"""

from __future__ import annotations

FIGURE_STEMS: tuple[str, ...] = (
    "figure1_cac_examples",
    "figure3_convergence",
    "figure4_kappa",
    "figure5_segmentation",
    "figure6_bland_altman",
    "figure7_confusion",
)
"""File stems under the output folder; each is written as ``.png`` and ``.pdf``."""

FIGURE_EXTENSIONS: tuple[str, ...] = (".png", ".pdf")
"""Every figure is saved in each of these formats."""
