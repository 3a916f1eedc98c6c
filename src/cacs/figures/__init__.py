"""The paper's figures (1, 3, 4, 5, 6, 7) from predictions, metrics and training curves.

One module per figure; ``style`` holds what they share (colours, CT window,
captions, atomic PNG + PDF saving).  Importing this package selects
matplotlib's ``Agg`` backend: figures are drawn without a screen.
"""

from cacs.figure_names import FIGURE_STEMS
from cacs.figures.fig1_cac_examples import figure1
from cacs.figures.fig3_convergence import figure3
from cacs.figures.fig4_kappa import figure4
from cacs.figures.fig5_segmentation import figure5, select_examples
from cacs.figures.fig6_bland_altman import figure6
from cacs.figures.fig7_confusion import figure7
from cacs.figures.style import LABEL_CMAP, label_rgba
from cacs.figures.write_all import read_metrics, write_all_figures
from cacs.prediction_table import load_predictions

__all__ = [
    "FIGURE_STEMS",
    "LABEL_CMAP",
    "figure1",
    "figure3",
    "figure4",
    "figure5",
    "figure6",
    "figure7",
    "label_rgba",
    "load_predictions",
    "read_metrics",
    "select_examples",
    "write_all_figures",
]
