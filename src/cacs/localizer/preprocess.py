"""Localiser input and mask geometry, all in physical space (numpy / SimpleITK, no torch).

Scans differ in field of view, matrix and slice thickness, so every scan is
resampled onto a coarse isotropic grid (``spacing_mm``) that keeps its origin
and direction: a voxel of the coarse mask maps back to the same millimetres in
the original scan.  The network sees clipped, normalised HU (``hu_window`` ->
[-1, 1]), so scanners that store out-of-FOV air as -2048 or -3024 look the
same.  The predicted box is returned in physical mm
(:func:`mask_bounding_box_mm`), which the crop step maps onto each scan's own
index grid.  All arrays are (z, y, x); all spatial tuples (x, y, z).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from cacs.io.nifti import Geometry, index_box_extent_mm
from cacs.localizer.params import LocalizerParams

_OUTSIDE_HU = -1024.0  # what "outside the scan" is filled with when a grid overhangs it


def _to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    return geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))


def resample_to_spacing(
    array: np.ndarray, geometry: Geometry, spacing_mm: tuple[float, float, float], is_label: bool
) -> tuple[np.ndarray, Geometry]:
    """Resample a (z, y, x) array onto a grid of ``spacing_mm`` (x, y, z) covering the same extent.

    Origin and direction are kept, so voxel (0, 0, 0) stays centred on the
    same physical point and every mm position means the same anatomy on both
    grids; size is ``ceil(extent / spacing)`` so nothing is cut off.  Images
    are low-pass filtered along axes that get coarser before linear
    interpolation (otherwise noise and thin bright structures alias into the
    coarse grid) and come back as float32; labels use nearest neighbour and
    keep their dtype.
    """
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) array, got shape {array.shape}")
    spacing_in = np.asarray(geometry.spacing, dtype=float)
    spacing_out = np.asarray(spacing_mm, dtype=float)
    extent = np.asarray(array.shape[::-1], dtype=float) * spacing_in
    size = [max(1, int(math.ceil(v - 1e-6))) for v in extent / spacing_out]
    image = _to_sitk(array if is_label else array.astype(np.float32, copy=False), geometry)
    if not is_label:
        for axis in range(3):
            ratio = spacing_out[axis] / spacing_in[axis]
            if ratio > 1.0 and image.GetSize()[axis] >= 4:  # ITK's recursive Gaussian needs >= 4 voxels
                sigma_mm = (ratio - 1.0) / 2.0 * spacing_in[axis]  # scikit-image's anti-aliasing rule
                image = sitk.RecursiveGaussian(
                    image, sigma_mm, False, sitk.RecursiveGaussianImageFilter.ZeroOrder, axis
                )
    out_geometry = Geometry(tuple(float(v) for v in spacing_out), geometry.origin, geometry.direction)
    reference = out_geometry.apply(sitk.Image(size, image.GetPixelID()))
    resampled = sitk.Resample(
        image,
        reference,
        sitk.Transform(),
        sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear,
        0.0 if is_label else _OUTSIDE_HU,
        image.GetPixelID(),
    )
    return sitk.GetArrayFromImage(resampled), out_geometry


def resample_mask_to(
    mask: np.ndarray, geometry: Geometry, target: Geometry, target_shape_zyx: tuple[int, int, int]
) -> np.ndarray:
    """Nearest-neighbour resampling of a mask onto another grid (e.g. coarse prediction -> native scan)."""
    image = _to_sitk(mask.astype(np.uint8, copy=False), geometry)
    reference = target.apply(sitk.Image([int(s) for s in target_shape_zyx[::-1]], sitk.sitkUInt8))
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def prepare_input(hu: np.ndarray, geometry: Geometry, params: LocalizerParams) -> tuple[np.ndarray, Geometry]:
    """Resample HU onto the coarse grid and map ``hu_window`` linearly to [-1, 1] (float32, (z, y, x)).

    Clipping first makes the input independent of how a scanner encodes
    out-of-FOV air and of metal/contrast extremes; padding for the network is
    left to inference, so the returned grid is the physical coarse grid.
    """
    coarse, coarse_geometry = resample_to_spacing(hu, geometry, params.spacing_mm, is_label=False)
    lo, hi = params.hu_window
    out = (np.clip(coarse, lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0
    return out.astype(np.float32, copy=False), coarse_geometry


def mask_bounding_box_mm(mask: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Physical (x, y, z) min and max corners of the axis-aligned box around a mask's voxels.

    The box covers whole voxels (index bounds -/+ 0.5, i.e. voxel edges), so
    a one-voxel mask has the size of one voxel, not zero.  All 8 corners of
    the index box are transformed, which makes it right for any origin,
    anisotropic spacing and direction matrix (flips and obliques included).
    """
    kji = np.argwhere(np.asarray(mask) > 0)
    if len(kji) == 0:
        raise ValueError("mask is empty: no heart voxels to box")
    return index_box_extent_mm(geometry, kji.min(axis=0)[::-1] - 0.5, kji.max(axis=0)[::-1] + 0.5)


def mask_volume_ml(mask: np.ndarray, geometry: Geometry) -> float:
    """Mask volume in millilitres (a plausibility check on the predicted heart)."""
    return float(np.count_nonzero(mask)) * float(np.prod(geometry.spacing)) / 1000.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks; 1.0 when both are empty (nothing to find, nothing found)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"dice: shapes differ {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest face-connected component (uint8): stray blobs would stretch the heart box."""
    labels, n = ndimage.label(np.asarray(mask) > 0)
    if n <= 1:
        return (labels > 0).astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(np.argmax(sizes))).astype(np.uint8)
