"""cacs: coronary artery calcium scoring pipeline reproducing the SPSS paper.

Label values used everywhere (architecture contract): 0 background, 1 LM, 2 LCX, 3 LAD, 4 RCA.
"""

ARTERIES: tuple[str, ...] = ("LM", "LCX", "LAD", "RCA")
"""Artery names in label order: label value = index + 1."""

SCORE_COLUMNS: tuple[str, ...] = (*ARTERIES, "total")

__version__ = "0.1.0"
