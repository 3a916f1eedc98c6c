"""Agatston calcium scores: the clinical (hard) score and the paper's differentiable one.

The convention is fixed by ``docs/agatston.md``; every choice that
implementations disagree on is a field of :class:`AgatstonParams` so that another
tool's numbers can be reproduced:

* candidates are voxels with ``HU >= threshold_hu`` (130) *inside one artery's mask*;
* lesions are connected components of those candidates, formed separately for each
  artery label, per axial slice (``lesion_dim="2d"``, the clinical default) or in 3D;
* a lesion's weight comes from its **peak** HU (1: [130, 200), 2: [200, 300),
  3: [300, 400), 4: >= 400); its area is pixel count x pixel area;
* lesions smaller than ``min_area_mm2`` are dropped (an area exactly equal is kept);
* artery score = sum of area x weight, times ``slice increment / 3 mm`` so that the
  same calcium scanned with thinner, overlapping or thicker slices scores the same;
* total = LM + LCX + LAD + RCA.

Arrays are numpy ``(z, y, x)``; spacing is SimpleITK's ``(x, y, z)`` in mm, the z
spacing being the slice *increment* (distance between slice centres), which is what
a NIfTI volume records.

3D lesions (``lesion_dim="3d"``): a lesion's "area" is the sum of its per-slice areas
(voxel count x pixel area), and the minimum-area rule is applied to that sum.  With
the slice correction this makes a 3D lesion score ``volume x weight / 3 mm``, which is
exactly what the paper's differentiable score (eq. 1) sums voxel by voxel, so the hard
3D score and :func:`differentiable_agatston` agree on one-hot inputs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import ndimage

from cacs import ARTERIES
from cacs.cvd import cvd_rank

if TYPE_CHECKING:  # torch is heavy; only the differentiable functions import it
    import torch

__all__ = [
    "AgatstonParams",
    "agatston_scores",
    "agatston_weight",
    "cvd_rank",
    "differentiable_agatston",
    "differentiable_agatston_from_logits",
    "lesion_table",
    "lesion_weight_map",
    "score_files",
    "slice_correction_factor",
    "voxel_score_factor",
]

_AREA_TOL_MM2 = 1e-9
"""Areas are pixel count x a float pixel area, so an area that is 1 mm^2 on paper can
come out as 0.9999999999999999; the tolerance keeps such a lesion at a 1 mm^2 minimum."""

_GEOMETRY_TOL_MM = 1e-3
"""Image and label map must share their grid; this absorbs header float noise only."""

_N_ARTERIES = len(ARTERIES)


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


_DEFAULT_PARAMS = AgatstonParams()


def agatston_weight(
    peak_hu: float | np.ndarray,
    weight_edges: tuple[float, ...] = _DEFAULT_PARAMS.weight_edges,
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


def _check_spacing(spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    sp = tuple(float(v) for v in spacing)
    if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"spacing must be three finite, positive (x, y, z) mm, got {spacing!r}")
    return sp  # type: ignore[return-value]


def slice_correction_factor(
    spacing: tuple[float, float, float], params: AgatstonParams = _DEFAULT_PARAMS
) -> float:
    """``increment / reference thickness`` (or 1): rescales the sum over slices so
    that denser slicing of the same calcium does not inflate the score."""
    sp = _check_spacing(spacing)
    return sp[2] / params.reference_thickness_mm if params.slice_correction else 1.0


def voxel_score_factor(
    spacing: tuple[float, float, float], params: AgatstonParams = _DEFAULT_PARAMS
) -> float:
    """The paper's ``s`` in eq. 1: pixel area x (increment / 3 mm if corrected, else 1).

    One calcified voxel of weight W contributes ``W x s`` to the score, so the
    voxel-wise sum reproduces the lesion-wise area x weight x correction.
    """
    sp = _check_spacing(spacing)
    return sp[0] * sp[1] * slice_correction_factor(sp, params)


# ---------------------------------------------------------------------------
# Lesion finding (shared by the scores and the lesion table)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lesions:
    """Per-lesion statistics, parallel arrays (one entry per lesion)."""

    label: np.ndarray  # artery label 1..4, 0 when the whole image is scored
    z_index: np.ndarray  # first slice
    n_voxels: np.ndarray
    peak_hu: np.ndarray


def _structure(params: AgatstonParams) -> np.ndarray:
    """Connectivity for a 4D (artery, z, y, x) mask: never across the artery axis,
    so two arteries' touching lesions stay separate; across z only in 3D mode."""
    if params.lesion_dim == "3d":
        s3 = ndimage.generate_binary_structure(3, 3 if params.connectivity == 8 else 1)
    else:
        s3 = np.zeros((3, 3, 3), dtype=bool)
        s3[1] = ndimage.generate_binary_structure(2, 2 if params.connectivity == 8 else 1)
    s4 = np.zeros((3, 3, 3, 3), dtype=bool)
    s4[1] = s3
    return s4


def _labelled_voxels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(z, y, x, value) of every non-zero label voxel, fast on sparse label maps.

    ``np.flatnonzero`` over a 512x512x60 volume costs ~25 ms, half the time budget;
    a SIMD row-wise max (~1.5 ms) first finds the few rows holding labels.  Labels
    are viewed as unsigned ints of the same width so that negative values and NaN
    (non-zero bit patterns) are found too and then rejected by the caller.
    """
    lab = np.ascontiguousarray(labels)
    nz_, ny, nx = lab.shape
    rows2d = lab.reshape(nz_ * ny, nx)
    bits = rows2d.view(np.dtype(f"u{lab.dtype.itemsize}"))
    rows = np.flatnonzero(bits.max(axis=1)) if bits.size else np.zeros(0, dtype=np.intp)
    sub = rows2d[rows]
    ri, x = np.nonzero(sub)  # exact test: -0.0 has non-zero bits but is background
    row = rows[ri]
    return row // ny, row % ny, x, sub[ri, x]


_SPARSE_MIN_BOX_PER_VOXEL = 256
"""Dense labelling costs ~3 ns per voxel of the bounding box, the sparse graph ~1 us
per candidate voxel: go sparse when the box holds more than this many voxels per
candidate (typically scattered labels, e.g. false positives far from the heart)."""


def _components(
    art: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    n_art: int,
    params: AgatstonParams,
    method: Literal["auto", "dense", "sparse"] = "auto",
) -> tuple[np.ndarray, int]:
    """0-based component index of every candidate voxel ``(art, z, y, x)``, and the count.

    Two equivalent algorithms, chosen by cost so that the run time follows the number
    of candidates rather than the volume size: ``ndimage.label`` on a mask rebuilt on
    the candidates' bounding box, or connected components of a sparse neighbour graph.
    Both use a leading artery axis with no connectivity across it, so all four
    arteries (and, in 2D mode, all slices) are handled in one call.
    """
    structure = _structure(params)
    z0, y0, x0 = int(z.min()), int(y.min()), int(x.min())
    zc, yc, xc = z - z0, y - y0, x - x0
    box = (n_art, int(zc.max()) + 1, int(yc.max()) + 1, int(xc.max()) + 1)
    if method == "auto":
        sparse = math.prod(box) > _SPARSE_MIN_BOX_PER_VOXEL * z.size
        method = "sparse" if sparse else "dense"
    if method == "dense":
        mask = np.zeros(box, dtype=bool)
        mask[art, zc, yc, xc] = True
        comp, n = ndimage.label(mask, structure=structure)
        return comp[art, zc, yc, xc] - 1, int(n)

    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    # Linear keys in a grid padded by one voxel on z, y, x, so that a neighbour
    # offset can never wrap around into the next row, slice or artery.
    dims = np.array([box[0], box[1] + 2, box[2] + 2, box[3] + 2], dtype=np.int64)
    strides = np.array([dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1])
    keys = (
        art.astype(np.int64) * strides[0] + (zc + 1) * strides[1] + (yc + 1) * strides[2] + (xc + 1)
    )
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    offsets = np.argwhere(structure) - 1
    # Half of the symmetric neighbourhood suffices for an undirected graph.
    forward = [o for o in offsets if tuple(o) > (0, 0, 0, 0)]
    rows, cols = [], []
    node = np.arange(sorted_keys.size)
    for off in forward:
        target = sorted_keys + int(off @ strides)
        pos = np.searchsorted(sorted_keys, target)
        pos_c = np.minimum(pos, sorted_keys.size - 1)
        hit = sorted_keys[pos_c] == target
        rows.append(node[hit])
        cols.append(pos_c[hit])
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.intp)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.intp)
    graph = coo_array((np.ones(r.size, dtype=np.int8), (r, c)), shape=(node.size, node.size))
    n, comp_sorted = connected_components(graph, directed=False)
    ids = np.empty(keys.size, dtype=np.int64)
    ids[order] = comp_sorted
    return ids, int(n)


def _find_lesions(
    hu: np.ndarray,
    labels: np.ndarray | None,
    params: AgatstonParams,
    method: Literal["auto", "dense", "sparse"] = "auto",
) -> _Lesions:
    """Connected components of candidates, per artery, with count/peak/first slice.

    Only the candidate voxels' coordinates are gathered (a few hundred for a label
    map), so the full volume is touched just twice: one row-wise max over the
    labels and nothing else; see :func:`_components` for the labelling itself.
    """
    if labels is None:
        z, y, x = np.nonzero(hu >= params.threshold_hu)
        art = np.zeros(z.shape, dtype=np.intp)
    else:
        if labels.shape != hu.shape:
            raise ValueError(f"labels shape {labels.shape} differs from hu shape {hu.shape}")
        if labels.dtype == bool:
            raise ValueError(
                "labels must hold artery values 0-4 (1 LM, 2 LCX, 3 LAD, 4 RCA), got a boolean "
                "mask; pass labels=None to score the whole image"
            )
        z, y, x, values = _labelled_voxels(labels)
        valid = (values >= 1) & (values <= _N_ARTERIES) & (values == np.round(values))
        if not np.all(valid):
            bad = np.unique(values[~valid])[:10]
            raise ValueError(
                f"labels must be 0 (background) or 1-4 (1 LM, 2 LCX, 3 LAD, 4 RCA), "
                f"found {bad.tolist()}"
            )
        cand = hu[z, y, x] >= params.threshold_hu
        z, y, x = z[cand], y[cand], x[cand]
        art = values[cand].astype(np.intp) - 1
    if z.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Lesions(empty, empty, empty, np.zeros(0, dtype=float))

    n_art = 1 if labels is None else _N_ARTERIES
    ids, n_lesions = _components(art, z, y, x, n_art, params, method)

    peak = np.full(n_lesions, -np.inf)
    np.maximum.at(peak, ids, hu[z, y, x].astype(float))
    first_z = np.full(n_lesions, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_z, ids, z.astype(np.int64))
    label = np.zeros(n_lesions, dtype=np.int64)
    label[ids] = art + (0 if labels is None else 1)  # one artery per lesion by construction
    return _Lesions(
        label=label,
        z_index=first_z,
        n_voxels=np.bincount(ids, minlength=n_lesions).astype(np.int64),
        peak_hu=peak,
    )


def _lesion_scores(
    lesions: _Lesions, spacing: tuple[float, float, float], params: AgatstonParams
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
    return hu, _check_spacing(spacing)


def agatston_scores(
    hu: np.ndarray,
    labels: np.ndarray | None,
    spacing: tuple[float, float, float],
    params: AgatstonParams = _DEFAULT_PARAMS,
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
    lesions = _find_lesions(hu, None if labels is None else np.asarray(labels), params)
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
    params: AgatstonParams = _DEFAULT_PARAMS,
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
    lesions = _find_lesions(hu, None if labels is None else np.asarray(labels), params)
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


def score_files(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    params: AgatstonParams = _DEFAULT_PARAMS,
) -> dict[str, float]:
    """Score an image (HU) with its label map, both files on the same grid.

    The grids must match (size, spacing, origin, direction): a label map resampled
    or shifted by a voxel would silently score the wrong voxels.

    Raises:
        ValueError: naming both files when their grids differ.
    """
    from cacs.io.nifti import read_volume

    hu, geom = read_volume(image_path)
    labels, lgeom = read_volume(labels_path)
    where = f"{image_path} vs {labels_path}"
    if hu.shape != labels.shape:
        raise ValueError(f"{where}: size differs (image z,y,x {hu.shape}, labels {labels.shape})")
    for field in ("spacing", "origin", "direction"):
        a, b = getattr(geom, field), getattr(lgeom, field)
        if (
            len(a) != len(b)
            or max(abs(u - v) for u, v in zip(a, b, strict=True)) > _GEOMETRY_TOL_MM
        ):
            raise ValueError(f"{where}: {field} differs (image {a}, labels {b})")
    return agatston_scores(hu, labels, geom.spacing, params)


# ---------------------------------------------------------------------------
# Differentiable score (paper eq. 1)
# ---------------------------------------------------------------------------


def lesion_weight_map(hu: np.ndarray, params: AgatstonParams = _DEFAULT_PARAMS) -> np.ndarray:
    """W of eq. 1: each voxel's Agatston weight, that of the 3D lesion it belongs to.

    Lesions are 3D connected components of ``hu >= threshold_hu`` over the *whole*
    input (26-connectivity for ``connectivity=8``, 6 for 4), weighted by their peak
    HU; voxels under the threshold get 0.  W depends on the image only (not on any
    mask), which is what lets eq. 1 be differentiated with respect to the network's
    masks; compute it once per case.  ``params.lesion_dim`` is ignored: eq. 1 is 3D.

    Returns:
        float32 array with the shape of ``hu``.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3D (z, y, x) array, got shape {hu.shape}")
    structure = ndimage.generate_binary_structure(3, 3 if params.connectivity == 8 else 1)
    comp, n = ndimage.label(hu >= params.threshold_hu, structure=structure)
    if n == 0:
        return np.zeros(hu.shape, dtype=np.float32)
    inside = comp > 0
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, comp[inside], hu[inside].astype(float))
    weight = np.asarray(agatston_weight(peak, params.weight_edges), dtype=np.float32)
    weight[0] = 0.0  # background
    return weight[comp]


# Hand-written on purpose: eq. 1 is specific to the SPSS paper (a soft, per-artery
# Agatston sum of two softmax outputs weighted by an image-derived W); no library
# (MONAI, torchmetrics, ...) provides it, and it is a two-line einsum anyway.


def differentiable_agatston(
    cac_prob: torch.Tensor,
    artery_prob: torch.Tensor,
    weight_map: torch.Tensor | np.ndarray,
    voxel_factor: float | torch.Tensor,
) -> torch.Tensor:
    """Per-artery soft Agatston score, paper eq. 1: ``y_k = sum(p_CAC x p_k x W) x s``.

    Args:
        cac_prob: [B, Z, Y, X] probability that a voxel is calcium (softmax(m)_CAC).
        artery_prob: [B, 4, Z, Y, X] artery probabilities (softmax(M)), order
            LM, LCX, LAD, RCA.
        weight_map: [B, Z, Y, X] :func:`lesion_weight_map` of each case (no gradient).
        voxel_factor: ``s`` = :func:`voxel_score_factor`, a float or a [B] tensor (one
            per case, since spacings differ between cases).

    Returns:
        [B, 4] scores, differentiable with respect to both probability tensors.

    Same-convention relation: if the probabilities are one-hot copies of a reference
    mask (``cac_prob = labels > 0``, ``artery_prob[:, k] = labels == k + 1``) whose
    lesions are whole 3D components of ``hu >= 130`` (each component entirely inside
    one artery's mask, or entirely outside), then every masked component is exactly
    one hard 3D lesion with the same peak, so the result equals
    ``agatston_scores(hu, labels, spacing, AgatstonParams(lesion_dim="3d",
    min_area_mm2=0))`` per artery (W and s built with the same threshold,
    connectivity and slice correction).  Eq. 1 has no minimum area, hence the 0.
    Mask voxels under 130 HU have W = 0 and count for nothing, as in the hard score.
    """
    import torch

    if cac_prob.ndim < 2:
        raise ValueError(f"cac_prob must be [B, Z, Y, X], got shape {tuple(cac_prob.shape)}")
    batch, spatial = cac_prob.shape[0], tuple(cac_prob.shape[1:])
    if tuple(artery_prob.shape) != (batch, _N_ARTERIES, *spatial):
        raise ValueError(
            f"artery_prob must be [B, {_N_ARTERIES}, *spatial] = "
            f"{(batch, _N_ARTERIES, *spatial)}, got {tuple(artery_prob.shape)}"
        )
    w = torch.as_tensor(weight_map, dtype=cac_prob.dtype, device=cac_prob.device)
    if tuple(w.shape) != tuple(cac_prob.shape):
        raise ValueError(
            f"weight_map shape {tuple(w.shape)} differs from cac_prob {tuple(cac_prob.shape)}"
        )
    s = torch.as_tensor(voxel_factor, dtype=cac_prob.dtype, device=cac_prob.device)
    if s.ndim == 0:
        s = s.expand(batch)
    if tuple(s.shape) != (batch,):
        raise ValueError(
            f"voxel_factor must be a float or a [{batch}] tensor, got {tuple(s.shape)}"
        )
    weighted = (cac_prob * w).reshape(batch, -1)
    per_artery = torch.einsum("bn,bkn->bk", weighted, artery_prob.reshape(batch, _N_ARTERIES, -1))
    return per_artery * s[:, None]


def differentiable_agatston_from_logits(
    cac_logits: torch.Tensor,
    artery_logits: torch.Tensor,
    weight_map: torch.Tensor | np.ndarray,
    voxel_factor: float | torch.Tensor,
) -> torch.Tensor:
    """Eq. 1 from raw network outputs: softmax over channels, then
    :func:`differentiable_agatston`.

    Args:
        cac_logits: [B, 2, Z, Y, X] (channel 0 background, channel 1 CAC).
        artery_logits: [B, 4, Z, Y, X] (LM, LCX, LAD, RCA).
        weight_map, voxel_factor: as in :func:`differentiable_agatston`.
    """
    import torch

    if cac_logits.ndim < 3 or cac_logits.shape[1] != 2:
        raise ValueError(
            f"cac_logits must be [B, 2, Z, Y, X] (background, CAC), got {tuple(cac_logits.shape)}"
        )
    cac_prob = torch.softmax(cac_logits, dim=1)[:, 1]
    artery_prob = torch.softmax(artery_logits, dim=1)
    return differentiable_agatston(cac_prob, artery_prob, weight_map, voxel_factor)
