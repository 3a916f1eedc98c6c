"""Native-resolution scoring: the network's maps back onto the scan, scored on the scan's own HU.

Why: the network works on a coarse, fixed model grid (:mod:`cacs.crop`), and
resampling the HU onto it averages small calcium below 130 HU, so a score
computed on that grid loses exactly the lesions that decide the low CVD
ranks.  A reader scores the native slices.  So we keep the *decision* of the
network (which voxels are calcium, of which artery), take it back to the scan's
native grid, and run the clinical scorer (:func:`cacs.agatston.agatston_scores`)
on the native HU, as a reader would.

How:

1. :func:`class_probabilities` turns the two heads into five class
   probabilities on the model grid, ``[5, Z, Y, X]``: ``p0 = 1 - p_cac`` and
   ``p_k = p_cac * softmax(artery)_k`` (k = 1..4: LM, LCX, LAD, RCA), with
   ``p_cac = softmax(cac_logits)[1]``.  The five sum to 1 at every voxel.
2. :func:`to_native` resamples them onto the native grid with *linear*
   interpolation (a probability, unlike a label, can be interpolated), only
   over the native index box that the model grid covers (outside it:
   background, ``p0 = 1``), and decides each native voxel with
   :func:`decide_labels`.
3. :func:`score_native` is the clinical scorer itself, unchanged.

The decision (:func:`decide_labels`): a native voxel is a calcium *candidate*
where the interpolated ``p_cac = 1 - p0`` exceeds ``calcium_threshold``, and its
label is the artery with the largest ``p_k``.  The clinical scorer then keeps
only the candidates >= 130 HU, exactly as it does inside a reader's ROI.

* With ``calcium_threshold = 0.5`` this is the network's own rule
  (:meth:`cacs.models.spss.SPSSNet.predict_labels`: calcium where
  ``argmax(cac) = 1``, i.e. ``p_cac > 1/2``, artery ``argmax(artery)``, which is
  ``argmax_k p_k`` since ``p_k = p_cac * softmax_k``): at a native voxel centre
  that coincides with a model voxel centre it gives the model-grid label map
  exactly (both call an exact ``p_cac = 1/2`` background).  A plain argmax over
  the five classes would not: with ``p_cac = 0.6`` split evenly between two
  arteries (0.3 each), ``p0 = 0.4`` wins and calcium the network found is lost.
* The default, :data:`CALCIUM_THRESHOLD` = 0.35, is deliberately lower.  Linear
  interpolation thresholded at 1/2 erodes small structures: an isolated calcified
  model voxel comes back as only ~27 % of its own volume (the region where the
  product of the three tent weights exceeds 1/2), and a calcification the
  network marks on one model slice vanishes completely where native slices lie
  halfway between model slices (both neighbours get ``p_cac / 2``).  The
  pipeline's grid does exactly that for every 3 mm gated scan whose crop has an
  odd number of slices (3 mm model slices, an even model size).  Lower thresholds
  grow the candidates instead (the scorer's 130 HU threshold still applies, but
  bright voxels beside a lesion join it).  0.35 passes the oracle (below) on the
  default run's own 80 gated scans (1.25 mm native, 1.5 mm model grid;
  ``bench/bench_oracle.py --run``) in both runs measured, whose crops differ by
  their localizer: pooled score 0.994 and 0.992 of the reference, CVD rank kept
  for 95 % and 97.5 % of scans (0.25: 1.017 / 94 % and 1.005 / 99 %, failing the
  95 % once; 0.5: 0.950 / 90 % and 0.943 / 90 %).  It also keeps the synthetic
  0.4 mm COCA-like scans with halfway slices of tests/test_native_scoring.py
  within 2 %, which 0.4 does not.

:func:`roundtrip_labels` is that oracle: a reference label map as one-hot
probabilities, linearly onto the model grid, and back through the same
:func:`to_native`.  Scoring its result tells how much of the reference score
the round trip alone loses (a network that reproduced the reference on the
model grid can do no better).

Arrays are numpy ``(z, y, x)`` (probabilities ``(class, z, y, x)``), float32 for
probabilities, uint8 for label maps; geometry is :class:`cacs.io.nifti.Geometry`
(spacing, origin, direction in SimpleITK's (x, y, z) / LPS convention).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import SimpleITK as sitk

from cacs.agatston import AgatstonParams, agatston_scores
from cacs.io.nifti import Geometry, box_corners, index_to_physical, physical_to_index

if TYPE_CHECKING:
    import torch

__all__ = [
    "CALCIUM_THRESHOLD",
    "N_CLASSES",
    "class_probabilities",
    "covered_index_box",
    "decide_labels",
    "resample_probabilities",
    "roundtrip_labels",
    "score_native",
    "to_native",
]

N_CLASSES = 5
"""Background + the four arteries, in label order (0 bg, 1 LM, 2 LCX, 3 LAD, 4 RCA)."""

CALCIUM_THRESHOLD = 0.35  # the oracle calibration above
"""Native voxels with an interpolated ``p_cac`` above this are calcium candidates (see the module docstring)."""

_IDX_EPS = 1e-6
"""Slack on continuous indices: a native voxel centre exactly on the model grid's edge is covered."""


class _SpssMaps(Protocol):
    cac_logits: torch.Tensor
    artery_logits: torch.Tensor


def class_probabilities(output: _SpssMaps) -> np.ndarray:
    """Five class probabilities ``[5, Z, Y, X]`` (float32) of one scan on the model grid.

    Args:
        output: SPSS outputs (:class:`cacs.models.spss.SPSSOutput`): ``cac_logits``
            ``[1, 2, Z, Y, X]`` (background, CAC) and ``artery_logits``
            ``[1, 4, Z, Y, X]`` (LM, LCX, LAD, RCA); a batch of one.

    Returns:
        ``p0 = 1 - p_cac`` and ``p_k = p_cac * softmax(artery)_k``: the joint
        probability of "calcium of artery k", computed in float32 even when the
        network ran in bfloat16 (the classes sum to 1 to float precision).
    """
    import torch  # lazy: the oracle and the benchmarks need no torch

    cac, art = output.cac_logits, output.artery_logits
    if cac.ndim != 5 or tuple(cac.shape[:2]) != (1, 2) or tuple(art.shape) != (1, 4, *cac.shape[2:]):
        raise ValueError(
            "expected cac_logits [1, 2, Z, Y, X] and artery_logits [1, 4, Z, Y, X], got "
            f"{tuple(cac.shape)} and {tuple(art.shape)}"
        )
    with torch.no_grad():
        p_cac = torch.softmax(cac[0].float(), dim=0)[1]
        joint = p_cac[None] * torch.softmax(art[0].float(), dim=0)
        probs = torch.cat([(1.0 - p_cac)[None], joint], dim=0)
    return np.ascontiguousarray(probs.cpu().numpy(), dtype=np.float32)


def _decide(p_cac: np.ndarray, arteries: np.ndarray, calcium_threshold: float) -> np.ndarray:
    """uint8 labels from ``p_cac`` (...) and the four artery probabilities ``[4, ...]``."""
    calcium = p_cac > calcium_threshold
    out = np.zeros(p_cac.shape, dtype=np.uint8)
    if calcium.any():
        out[calcium] = (np.argmax(arteries[:, calcium], axis=0) + 1).astype(np.uint8)
    return out


def decide_labels(probs: np.ndarray, calcium_threshold: float = CALCIUM_THRESHOLD) -> np.ndarray:
    """uint8 label map (0-4) from ``[5, ...]`` class probabilities.

    Calcium where ``p_cac = 1 - p0 > calcium_threshold``; its label is
    ``1 + argmax(p1..p4)`` (the first artery on an exact tie).  With
    ``calcium_threshold=0.5`` this is :meth:`cacs.models.spss.SPSSNet.predict_labels`;
    see the module docstring for the default and for why not a five-way argmax.
    """
    probs = np.asarray(probs)
    if probs.ndim < 1 or probs.shape[0] != N_CLASSES:
        raise ValueError(f"expected {N_CLASSES} class probabilities first, got shape {probs.shape}")
    return _decide(1.0 - probs[0], probs[1:], calcium_threshold)


def _native_index_box(
    model_geometry: Geometry,
    lo_xyz: np.ndarray,
    hi_xyz: np.ndarray,
    native_geometry: Geometry,
    native_shape_zyx: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray] | None:
    """Native ``(start, stop)`` (x, y, z) voxels whose centres lie in a continuous model index box; None if none.

    The box's 8 corners are mapped into native index space, so any pair of
    directions works (giving the enclosing box).  ``stop`` is exclusive.
    """
    corners = index_to_physical(model_geometry, box_corners(np.asarray(lo_xyz, float), np.asarray(hi_xyz, float)))
    idx = physical_to_index(native_geometry, corners)
    size = np.asarray(native_shape_zyx[::-1])
    start = np.clip(np.ceil(idx.min(axis=0) - _IDX_EPS).astype(int), 0, size)
    stop = np.clip(np.floor(idx.max(axis=0) + _IDX_EPS).astype(int) + 1, 0, size)
    if np.any(stop <= start):
        return None
    return start, stop


def covered_index_box(
    model_geometry: Geometry,
    model_shape_zyx: tuple[int, ...],
    native_geometry: Geometry,
    native_shape_zyx: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray] | None:
    """Native ``(start, stop)`` (x, y, z) index box enclosing the model grid; None if they do not overlap.

    The model grid reaches half a voxel beyond its outer voxel centres (where
    linear interpolation still returns a value).  ``stop`` is exclusive.
    """
    hi = np.asarray(model_shape_zyx[::-1], float) - 0.5
    return _native_index_box(model_geometry, np.full(3, -0.5), hi, native_geometry, native_shape_zyx)


def _sub_geometry(geometry: Geometry, start_xyz: np.ndarray) -> Geometry:
    """The geometry of ``array[start:]``: same spacing and direction, origin moved to ``start``."""
    origin = index_to_physical(geometry, np.asarray(start_xyz))[0]
    return Geometry(geometry.spacing, tuple(float(v) for v in origin), geometry.direction)


def _resample_linear(
    array: np.ndarray, geometry: Geometry, target: Geometry, size_xyz: np.ndarray, outside: float
) -> np.ndarray:
    """One float32 channel linearly onto ``target`` (``outside`` beyond the source's voxel edges)."""
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32)))
    ref = target.apply(sitk.Image([int(s) for s in size_xyz], sitk.sitkFloat32))
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, float(outside), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def resample_probabilities(
    probs: np.ndarray, geometry: Geometry, target: Geometry, target_shape_zyx: tuple[int, ...]
) -> np.ndarray:
    """``[5, ...]`` class probabilities linearly onto another grid; outside the source: background.

    Only the four artery channels are interpolated; ``p0`` is one minus their
    sum, which is what interpolating it would give (interpolation is linear),
    and 1 outside the source grid.
    """
    size = np.asarray(target_shape_zyx[::-1])
    arteries = np.stack([_resample_linear(probs[k], geometry, target, size, 0.0) for k in range(1, N_CLASSES)])
    return np.concatenate([(1.0 - arteries.sum(axis=0))[None], arteries]).astype(np.float32)


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo, hi) (z, y, x), hi exclusive, of a mask's true voxels; None when it has none."""
    nz = [np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(v.size == 0 for v in nz):
        return None
    return np.array([v[0] for v in nz]), np.array([v[-1] for v in nz]) + 1


def to_native(
    probs: np.ndarray,
    model_geometry: Geometry,
    native_geometry: Geometry,
    native_shape_zyx: tuple[int, ...],
    calcium_threshold: float = CALCIUM_THRESHOLD,
) -> np.ndarray:
    """The native-grid label map (uint8, ``native_shape_zyx``) of model-grid class probabilities.

    Args:
        probs: ``[5, Z, Y, X]`` class probabilities on the model grid
            (:func:`class_probabilities`, or a one-hot map resampled there).
        model_geometry: geometry of the model grid.
        native_geometry, native_shape_zyx: the scan's own grid.
        calcium_threshold: see :func:`decide_labels`.

    Each probability is interpolated linearly at the native voxel centres and
    :func:`decide_labels` decides; outside the model grid is background.
    Memory and time follow the calcium, not the scan: ``p_cac`` is resampled
    only over the native voxels within the model grid and within one model
    voxel of the model voxels above the threshold (no other point can exceed
    it), and the four artery channels only over the bounding box of the native
    candidates.  A 512 x 512 x 60 scan is never held as floats.
    """
    probs = np.asarray(probs)
    if probs.ndim != 4 or probs.shape[0] != N_CLASSES:
        raise ValueError(f"probs must be [{N_CLASSES}, Z, Y, X], got shape {probs.shape}")
    out = np.zeros(tuple(native_shape_zyx), dtype=np.uint8)
    covered = covered_index_box(model_geometry, probs.shape[1:], native_geometry, native_shape_zyx)
    p_cac_model = 1.0 - probs[0]
    hot = _bounding_box(p_cac_model > calcium_threshold)
    if covered is None or hot is None:
        return out
    # Interpolation is a convex combination of the 8 surrounding model voxels, so p_cac can exceed the
    # threshold only at native points within one model voxel of a model voxel that does: resample there.
    reach = _native_index_box(model_geometry, hot[0][::-1] - 1.0, hot[1][::-1], native_geometry, native_shape_zyx)
    if reach is None:
        return out
    start, stop = np.maximum(covered[0], reach[0]), np.minimum(covered[1], reach[1])
    if np.any(stop <= start):
        return out
    p_cac = _resample_linear(p_cac_model, model_geometry, _sub_geometry(native_geometry, start), stop - start, 0.0)
    candidates = _bounding_box(p_cac > calcium_threshold)
    if candidates is None:
        return out
    lo, hi = candidates  # (z, y, x) within the resampled box
    p_cac = p_cac[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].copy()  # frees the larger box
    sub_start = start + lo[::-1]
    sub_geo = _sub_geometry(native_geometry, sub_start)
    arteries = np.stack(
        [_resample_linear(probs[k], model_geometry, sub_geo, (hi - lo)[::-1], 0.0) for k in range(1, N_CLASSES)]
    )
    labels = _decide(p_cac, arteries, calcium_threshold)
    z0, y0, x0 = sub_start[::-1]
    out[z0 : z0 + labels.shape[0], y0 : y0 + labels.shape[1], x0 : x0 + labels.shape[2]] = labels
    return out


def roundtrip_labels(
    native_labels: np.ndarray,
    native_geometry: Geometry,
    model_geometry: Geometry,
    model_shape_zyx: tuple[int, ...],
    calcium_threshold: float = CALCIUM_THRESHOLD,
) -> np.ndarray:
    """The oracle: a native label map -> one-hot -> model grid (linear) -> :func:`to_native`.

    What a network that reproduced the reference *on the model grid* would
    give back on the native grid; scoring it on the native HU measures what
    the round trip itself loses.  Only the labelled bounding box plus a
    one-voxel background margin (so that interpolation at its edge sees zeros)
    is resampled: reference masks are sparse.

    Returns:
        uint8 label map with the shape of ``native_labels``.
    """
    native_labels = np.asarray(native_labels)
    box = _bounding_box(native_labels > 0)
    if box is None:
        return np.zeros(native_labels.shape, dtype=np.uint8)
    lo = np.maximum(box[0] - 1, 0)
    hi = np.minimum(box[1] + 1, native_labels.shape)
    sub = native_labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    sub_geo = _sub_geometry(native_geometry, lo[::-1])
    size = np.asarray(model_shape_zyx[::-1])
    # One artery's one-hot channel at a time: a 5-channel float copy of the reference would be the largest array.
    arteries = np.stack(
        [_resample_linear(sub == k, sub_geo, model_geometry, size, 0.0) for k in range(1, N_CLASSES)]
    )
    model_probs = np.concatenate([(1.0 - arteries.sum(axis=0))[None], arteries])
    return to_native(model_probs, model_geometry, native_geometry, native_labels.shape, calcium_threshold)


def score_native(
    native_hu: np.ndarray,
    native_labels: np.ndarray,
    native_spacing: tuple[float, float, float],
    params: AgatstonParams | None = None,
) -> dict[str, float]:
    """Clinical Agatston scores on the native grid: exactly :func:`cacs.agatston.agatston_scores`.

    A name for the step, not a second scorer: the convention lives in one place.
    """
    return agatston_scores(native_hu, native_labels, native_spacing, params or AgatstonParams())
