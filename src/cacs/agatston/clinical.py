"""The clinical (hard) Agatston score and its per-lesion explanation.

The convention is fixed by ``docs/agatston.md`` and spelled out in
:mod:`cacs.agatston` (the package docstring); its parameters are
:class:`~cacs.agatston.params.AgatstonParams` and the lesions come from
:func:`~cacs.agatston.lesions.find_lesions`.  This module turns lesions into
scores: area x weight per lesion, the minimum-area rule, the slice correction,
and the sums per artery.

Arrays are numpy ``(z, y, x)``; spacing is SimpleITK's ``(x, y, z)`` in mm.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cacs import ARTERIES
from cacs.agatston.lesions import Lesions, find_lesions
from cacs.agatston.params import DEFAULT_PARAMS, AgatstonParams, agatston_weight, check_spacing, slice_correction_factor

__all__ = ["LESION_COLUMNS", "agatston_scores", "lesion_table"]

_AREA_TOL_MM2 = 1e-9
"""Areas are pixel count x a float pixel area, so an area that is 1 mm^2 on paper can
come out as 0.9999999999999999; the tolerance keeps such a lesion at a 1 mm^2 minimum."""

_N_ARTERIES = len(ARTERIES)


def _lesion_scores(
    lesions: Lesions, spacing: tuple[float, float, float], params: AgatstonParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(area mm^2, weight, kept, corrected score; 0 when dropped) per lesion."""
    area = lesions.n_voxels * (spacing[0] * spacing[1])
    weight = agatston_weight(lesions.peak_hu, params.weight_edges)
    kept = area + _AREA_TOL_MM2 >= params.min_area_mm2
    factor = slice_correction_factor(spacing, params)
    score = np.where(kept, area * weight * factor, 0.0)
    return area, weight, kept, score


def _validated(
    hu: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, tuple[float, float, float]]:
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3D (z, y, x) array, got shape {hu.shape}")
    return hu, check_spacing(spacing)


def agatston_scores(
    hu: np.ndarray,
    labels: np.ndarray | None,
    spacing: tuple[float, float, float],
    params: AgatstonParams = DEFAULT_PARAMS,
) -> dict[str, float]:
    """Per-artery and total Agatston scores of a CT volume in HU.

    Args:
        hu: (z, y, x) volume in HU.
        labels: (z, y, x) artery label map (0 background, 1 LM, 2 LCX, 3 LAD, 4 RCA),
            or None to score every candidate of the image (then only ``total`` is
            defined and the arteries are NaN: there is nothing to assign them from).
        spacing: (x, y, z) mm; z is the slice increment.
        params: the convention (see :class:`AgatstonParams`).

    Returns:
        ``{"LM", "LCX", "LAD", "RCA", "total"}`` -> float.

    Raises:
        ValueError: shapes differ, a label is not 0-4, or the spacing is not positive.
    """
    hu, sp = _validated(hu, spacing)
    lesions = find_lesions(hu, None if labels is None else np.asarray(labels), params)
    _, _, _, score = _lesion_scores(lesions, sp, params)
    if labels is None:
        out = dict.fromkeys(ARTERIES, math.nan)
        out["total"] = float(score.sum())
        return out
    per_label = np.bincount(lesions.label, weights=score, minlength=_N_ARTERIES + 1)
    out = {name: float(per_label[i + 1]) for i, name in enumerate(ARTERIES)}
    out["total"] = float(sum(out[name] for name in ARTERIES))
    return out


LESION_COLUMNS: tuple[str, ...] = (
    "artery",
    "label",
    "z_index",
    "n_voxels",
    "area_mm2",
    "peak_hu",
    "weight",
    "score",
    "kept",
)


def lesion_table(
    hu: np.ndarray,
    labels: np.ndarray | None,
    spacing: tuple[float, float, float],
    params: AgatstonParams = DEFAULT_PARAMS,
) -> pd.DataFrame:
    """One row per lesion, for QC and for explaining a score.

    Columns: ``artery`` (name, ``"all"`` when labels is None), ``label`` (1-4, 0),
    ``z_index`` (the slice in 2D mode, the first slice in 3D), ``n_voxels``,
    ``area_mm2`` (summed over slices in 3D), ``peak_hu``, ``weight``, ``score`` and
    ``kept``.  ``score`` is the lesion's contribution to its artery score: area x
    weight x slice correction, and 0 when the lesion is dropped (``kept`` False,
    under ``min_area_mm2``), so the column sums to :func:`agatston_scores`' total.
    Rows are sorted by label, slice and peak.
    """
    hu, sp = _validated(hu, spacing)
    lesions = find_lesions(hu, None if labels is None else np.asarray(labels), params)
    area, weight, kept, score = _lesion_scores(lesions, sp, params)
    names = np.array(("all", *ARTERIES), dtype=object)
    table = pd.DataFrame(
        {
            "artery": names[lesions.label],
            "label": lesions.label,
            "z_index": lesions.z_index,
            "n_voxels": lesions.n_voxels,
            "area_mm2": area.astype(float),
            "peak_hu": lesions.peak_hu,
            "weight": np.asarray(weight, dtype=np.int64),
            "score": score.astype(float),
            "kept": kept.astype(bool),
        },
        columns=list(LESION_COLUMNS),
    )
    return table.sort_values(["label", "z_index", "peak_hu"], kind="stable").reset_index(drop=True)
