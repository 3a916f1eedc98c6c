"""The score's conventions: :class:`AgatstonParams`, the weight of a peak HU, and the spacing factors.

Kept apart from the scorers because every Agatston computation in the project
(the clinical score, the lesion table, the weights W of the paper's eq. 1, the
crop guard, kVp-adjusted thresholds) reads its convention from here and needs
nothing else: this module imports no torch and no image I/O.

Spacing is SimpleITK's ``(x, y, z)`` in mm, the z spacing being the slice
*increment* (distance between slice centres), which is what a NIfTI volume records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "DEFAULT_PARAMS",
    "AgatstonParams",
    "agatston_weight",
    "check_spacing",
    "slice_correction_factor",
    "voxel_score_factor",
]

@dataclass(frozen=True)
class AgatstonParams:
    """Every convention choice of the score, with the project's defaults (docs/agatston.md).

    Attributes:
        threshold_hu: candidate voxels have ``HU >= threshold_hu``.  Exposed because
            kVp-adjusted protocols use other thresholds; the weights still follow
            ``weight_edges``, so a peak under ``weight_edges[0]`` weighs 0.
        connectivity: in-plane connectivity, 4 or 8.  3D lesions use the matching
            3D neighbourhood: 8 -> 26-connectivity, 4 -> 6-connectivity.
        min_area_mm2: lesions with a smaller area are dropped; equal is kept.
        lesion_dim: ``"2d"`` (per axial slice, clinical) or ``"3d"``.
        slice_correction: multiply by ``slice increment / reference_thickness_mm``.
        reference_thickness_mm: the slice thickness the original score assumes (3 mm).
        weight_edges: HU lower edges of weights 1, 2, 3 and 4.
    """

    threshold_hu: float = 130.0
    connectivity: int = 8
    min_area_mm2: float = 1.0
    lesion_dim: Literal["2d", "3d"] = "2d"
    slice_correction: bool = True
    reference_thickness_mm: float = 3.0
    weight_edges: tuple[float, float, float, float] = (130.0, 200.0, 300.0, 400.0)

    def __post_init__(self) -> None:
        # Fail at construction, naming the field: a silently wrong convention would
        # only show up as slightly-off scores much later in the pipeline.
        if not _is_real(self.threshold_hu) or not math.isfinite(self.threshold_hu):
            raise ValueError(f"threshold_hu must be a finite number, got {self.threshold_hu!r}")
        if isinstance(self.connectivity, bool) or self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity!r}")
        if (
            not _is_real(self.min_area_mm2)
            or not math.isfinite(self.min_area_mm2)
            or self.min_area_mm2 < 0
        ):
            raise ValueError(f"min_area_mm2 must be finite and >= 0, got {self.min_area_mm2!r}")
        if self.lesion_dim not in ("2d", "3d"):
            raise ValueError(f"lesion_dim must be '2d' or '3d', got {self.lesion_dim!r}")
        if not isinstance(self.slice_correction, bool | np.bool_):
            raise ValueError(f"slice_correction must be a bool, got {self.slice_correction!r}")
        if (
            not _is_real(self.reference_thickness_mm)
            or not math.isfinite(self.reference_thickness_mm)
            or self.reference_thickness_mm <= 0
        ):
            raise ValueError(
                "reference_thickness_mm must be finite and > 0, "
                f"got {self.reference_thickness_mm!r}"
            )
        edges = tuple(self.weight_edges)
        if (
            len(edges) != 4
            or not all(_is_real(e) and math.isfinite(e) for e in edges)
            or any(b <= a for a, b in zip(edges, edges[1:], strict=False))
        ):
            raise ValueError(
                "weight_edges must be 4 finite, strictly increasing HU values, "
                f"got {self.weight_edges!r}"
            )


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


DEFAULT_PARAMS = AgatstonParams()
"""The project's convention (docs/agatston.md); the default of every scorer's ``params``."""


def agatston_weight(
    peak_hu: float | np.ndarray,
    weight_edges: tuple[float, ...] = DEFAULT_PARAMS.weight_edges,
) -> int | np.ndarray:
    """Agatston weight (0-4) of a peak HU; vectorised, an int for scalar input.

    ``searchsorted(side="right")`` counts the edges <= peak, which is exactly the
    half-open bins [130, 200) -> 1, [200, 300) -> 2, [300, 400) -> 3, >= 400 -> 4 and
    0 below 130.  NaN (not a density) weighs 0.
    """
    arr = np.asarray(peak_hu, dtype=float)
    weights = np.searchsorted(np.asarray(weight_edges, dtype=float), arr, side="right")
    weights = np.where(np.isnan(arr), 0, weights)
    return int(weights) if weights.ndim == 0 else weights.astype(np.int64)


def check_spacing(spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """The spacing as three floats; ``ValueError`` unless each is finite and > 0.

    Every score multiplies by the spacing, so a zero, negative or NaN entry
    (a broken header) would give a plausible-looking but wrong number.
    """
    sp = tuple(float(v) for v in spacing)
    if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"spacing must be three finite, positive (x, y, z) mm, got {spacing!r}")
    return sp  # type: ignore[return-value]


def slice_correction_factor(
    spacing: tuple[float, float, float], params: AgatstonParams = DEFAULT_PARAMS
) -> float:
    """``increment / reference thickness`` (or 1): rescales the sum over slices so
    that denser slicing of the same calcium does not inflate the score."""
    sp = check_spacing(spacing)
    return sp[2] / params.reference_thickness_mm if params.slice_correction else 1.0


def voxel_score_factor(
    spacing: tuple[float, float, float], params: AgatstonParams = DEFAULT_PARAMS
) -> float:
    """The paper's ``s`` in eq. 1: pixel area x (increment / 3 mm if corrected, else 1).

    One calcified voxel of weight W contributes ``W x s`` to the score, so the
    voxel-wise sum reproduces the lesion-wise area x weight x correction.
    """
    sp = check_spacing(spacing)
    return sp[0] * sp[1] * slice_correction_factor(sp, params)

