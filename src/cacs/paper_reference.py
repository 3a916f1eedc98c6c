"""The paper's reported numbers and the display names of its methods.

Everything here is transcribed from the SPSS paper (ICCV 2023 workshop,
*Combating Coronary Calcium Scoring Bias for Non-gated CT by Semantic
Learning on Gated CT*): Table 1 (mean error +- SD per artery, COCA
test set) and the Cohen's kappas quoted in the text.  These numbers are
*reported*, not recomputed: SE-ResNeXt (Eng et al.) is not retrained because
its non-gated training masks are private, so our tables show its published
values, marked as such.  Values the paper does not give are ``None`` (the
paper prints "/").
"""

from __future__ import annotations

from collections.abc import Iterable

from cacs import SCORE_COLUMNS

METHOD_NAMES: dict[str, str] = {
    "convnet": "ConvNet",
    "se_resnext": "SE-ResNeXt",
    "spss_wo_ssl": "SPSS w/o SSL",
    "spss": "SPSS",
    "spss_ce": "SPSS (L_ce)",
}
"""Experiment name -> the paper's method name; unknown experiments show their own name."""

TABLE1_ORDER: tuple[str, ...] = ("convnet", "se_resnext", "spss_wo_ssl", "spss")
"""Row order of the paper's Table 1."""

REPORTED_ONLY: frozenset[str] = frozenset({"se_resnext"})
"""Methods we cannot retrain: only the paper's values are shown."""

# method -> cohort -> artery -> (mean error, SD); SD None where the paper prints "/".
TABLE1: dict[str, dict[str, dict[str, tuple[float | None, float | None]]]] = {
    "convnet": {
        "gated": {
            "LM": (-12.81, 23.10),
            "LCX": (-18.10, 32.71),
            "LAD": (-13.30, 28.27),
            "RCA": (-15.15, 24.12),
            "total": (-19.36, 29.45),
        },
        "nongated": {
            "LM": (-6.28, 23.47),
            "LCX": (14.77, 76.79),
            "LAD": (4.39, 43.05),
            "RCA": (9.90, 52.55),
            "total": (23.50, 68.42),
        },
    },
    "se_resnext": {
        "gated": {
            "LM": (-3.10, None),
            "LCX": (-1.99, None),
            "LAD": (-4.57, None),
            "RCA": (-2.37, None),
            "total": (-2.86, None),
        },
        "nongated": {a: (None, None) for a in SCORE_COLUMNS},
    },
    "spss_wo_ssl": {
        "gated": {
            "LM": (8.16, 20.19),
            "LCX": (1.09, 13.28),
            "LAD": (-14.38, 27.87),
            "RCA": (1.00, 12.12),
            "total": (-4.13, 15.28),
        },
        "nongated": {
            "LM": (6.67, 45.38),
            "LCX": (1.48, 27.12),
            "LAD": (-25.39, 64.89),
            "RCA": (-10.03, 54.35),
            "total": (-26.54, 62.64),
        },
    },
    "spss": {
        "gated": {
            "LM": (-2.62, 9.21),
            "LCX": (0.54, 4.62),
            "LAD": (-0.11, 5.18),
            "RCA": (4.49, 10.34),
            "total": (2.31, 8.90),
        },
        "nongated": {
            "LM": (-0.25, 20.44),
            "LCX": (-2.02, 21.10),
            "LAD": (-12.30, 68.01),
            "RCA": (-1.99, 33.40),
            "total": (-15.83, 44.57),
        },
    },
}

# Cohen's kappa (unweighted, CVD ranks I-V) quoted in the text, as fractions.
# SPSS: 92.4 % gated, 85.2 % non-gated; SE-ResNeXt non-gated is "1.6 % less
# than SPSS" (83.6 %).  The other kappas appear only as bars in Figure 4.
KAPPA: dict[str, dict[str, float | None]] = {
    "spss": {"gated": 0.924, "nongated": 0.852},
    "se_resnext": {"gated": None, "nongated": 0.836},
    "convnet": {"gated": None, "nongated": None},
    "spss_wo_ssl": {"gated": None, "nongated": None},
}

# Figure 6: SPSS's non-gated Bland-Altman 95 % limits of agreement (total score).
BLAND_ALTMAN_LIMITS: dict[str, tuple[float, float]] = {"spss": (-122.34, 90.67)}

# The paper's test set (section 4.1): 89 gated and 63 non-gated scans.
TEST_SET_SIZE: dict[str, int] = {"gated": 89, "nongated": 63}


def method_name(experiment: str) -> str:
    """The paper's name of an experiment (its own name when the paper has none)."""
    return METHOD_NAMES.get(experiment, experiment)


def experiment_order(experiments: Iterable[str]) -> list[str]:
    """The paper's Table 1 order for the experiments it has, then the others alphabetically.

    Lives beside :data:`TABLE1_ORDER` so that metrics.json (:mod:`cacs.evaluate`)
    and the rendered tables (:mod:`cacs.tables`) order experiments the same way
    without importing each other.
    """
    names = set(experiments)
    return [e for e in TABLE1_ORDER if e in names] + sorted(names - set(TABLE1_ORDER))
