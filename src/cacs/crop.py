"""Crop every scan to the heart box + margin, and resample it onto the model grid.

Paper section 3.2: the predicted heart bounding box is extended by 16 mm in
the axial plane and every scan is cropped to it.  A crop that cuts off
calcium silently biases every score downstream, so this module also measures
how much reference calcium (voxels and Agatston score) each crop keeps, and
applies a flagged fallback box when the heart prediction is implausible.

All boxes are physical (mm, LPS).  Index ranges are derived per image, so
anisotropic spacing, non-zero origins and any direction matrix are handled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from cacs.io.nifti import Geometry


@dataclass(frozen=True)
class CropParams:
    margin_xy_mm: float = 16.0  # the paper's axial extension
    margin_z_mm: float = 0.0
    model_spacing_mm: tuple[float, float, float] = (1.5, 1.5, 3.0)  # x, y, z
    model_size: tuple[int, int, int] = (128, 128, 48)  # x, y, z
    min_heart_ml: float = 150.0  # plausible heart volumes; outside -> fallback
    max_heart_ml: float = 1500.0
    fallback_box_mm: tuple[float, float] = (160.0, 160.0)  # x, y around the image centre; all of z

    def __post_init__(self) -> None:
        if self.margin_xy_mm < 0 or self.margin_z_mm < 0:
            raise ValueError("crop margins must be >= 0 mm")
        if any(s <= 0 for s in self.model_spacing_mm) or any(n < 1 for n in self.model_size):
            raise ValueError("crop.model_spacing_mm must be > 0 and crop.model_size >= 1")
        if not 0 <= self.min_heart_ml < self.max_heart_ml:
            raise ValueError("crop.min_heart_ml must be >= 0 and below crop.max_heart_ml")


def _direction(geometry: Geometry) -> np.ndarray:
    return np.asarray(geometry.direction, dtype=float).reshape(3, 3)


def index_to_physical(geometry: Geometry, index_xyz: np.ndarray) -> np.ndarray:
    """Continuous (x, y, z) voxel index -> physical mm (rows of ``index_xyz``)."""
    idx = np.atleast_2d(np.asarray(index_xyz, dtype=float))
    return np.asarray(geometry.origin) + (idx * np.asarray(geometry.spacing)) @ _direction(geometry).T


def physical_to_index(geometry: Geometry, points_mm: np.ndarray) -> np.ndarray:
    """Physical mm -> continuous (x, y, z) voxel index (voxel centres are integers)."""
    pts = np.atleast_2d(np.asarray(points_mm, dtype=float))
    return ((pts - np.asarray(geometry.origin)) @ _direction(geometry)) / np.asarray(geometry.spacing)


def image_extent_mm(geometry: Geometry, shape_zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounds of an image, voxel edges included."""
    nz, ny, nx = shape_zyx
    corners = np.array([[i, j, k] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)])
    pts = index_to_physical(geometry, corners)
    return pts.min(axis=0), pts.max(axis=0)


def extend_box(lo: np.ndarray, hi: np.ndarray, params: CropParams) -> tuple[np.ndarray, np.ndarray]:
    margin = np.array([params.margin_xy_mm, params.margin_xy_mm, params.margin_z_mm])
    return np.asarray(lo, float) - margin, np.asarray(hi, float) + margin


def fallback_box(geometry: Geometry, shape_zyx: tuple[int, int, int], params: CropParams):
    """A fixed physical box around the image centre (full z): used when localisation fails."""
    lo, hi = image_extent_mm(geometry, shape_zyx)
    centre = (lo + hi) / 2
    half = np.array([params.fallback_box_mm[0] / 2, params.fallback_box_mm[1] / 2, np.inf])
    return np.maximum(lo, centre - half), np.minimum(hi, centre + half)


def box_to_index_range(
    lo_mm: np.ndarray, hi_mm: np.ndarray, geometry: Geometry, shape_zyx: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Voxels whose centres lie in the physical box: (start, stop) (x, y, z), clipped to the image.

    The box's 8 corners are mapped to index space, so an oblique direction
    gives the enclosing index box.  ``stop`` is exclusive.
    """
    lo_mm, hi_mm = np.asarray(lo_mm, float), np.asarray(hi_mm, float)
    corners = np.array(np.meshgrid(*zip(lo_mm, hi_mm, strict=True), indexing="ij")).reshape(3, -1).T
    idx = physical_to_index(geometry, corners)
    eps = 1e-6  # a centre exactly on the box edge is inside
    start = np.ceil(idx.min(axis=0) - eps).astype(int)
    stop = np.floor(idx.max(axis=0) + eps).astype(int) + 1
    size = np.array(shape_zyx[::-1])
    start = np.clip(start, 0, size)
    stop = np.clip(stop, 0, size)
    if np.any(stop <= start):
        raise ValueError(f"box {lo_mm.round(1).tolist()}..{hi_mm.round(1).tolist()} mm does not overlap the image")
    return start, stop


def crop_array(
    array: np.ndarray, geometry: Geometry, start: np.ndarray, stop: np.ndarray
) -> tuple[np.ndarray, Geometry]:
    """Crop a (z, y, x) array to an (x, y, z) index range; the origin moves with the crop."""
    out = array[start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]]
    origin = index_to_physical(geometry, start)[0]
    return out, Geometry(geometry.spacing, tuple(float(v) for v in origin), geometry.direction)


def model_grid(centre_mm: np.ndarray, params: CropParams, direction: tuple[float, ...]) -> Geometry:
    """The fixed-size model grid centred on ``centre_mm`` (axis directions of the scan)."""
    size = np.asarray(params.model_size, float)
    spacing = np.asarray(params.model_spacing_mm, float)
    d = np.asarray(direction, float).reshape(3, 3)
    origin = np.asarray(centre_mm, float) - d @ ((size - 1) / 2 * spacing)
    return Geometry(tuple(float(v) for v in spacing), tuple(float(v) for v in origin), tuple(direction))


def resample_onto(
    array: np.ndarray, geometry: Geometry, target: Geometry, size_xyz: tuple[int, int, int], is_label: bool
) -> np.ndarray:
    """Resample onto a target grid: linear for HU (outside -> -1024), nearest for labels (outside -> 0).

    One resampling does both the spacing change and the pad / centre-crop to
    the fixed model size, so no second interpolation blurs the calcium.
    """
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    ref = target.apply(sitk.Image([int(s) for s in size_xyz], image.GetPixelID()))
    out = sitk.Resample(
        image,
        ref,
        sitk.Transform(),
        sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear,
        0.0 if is_label else -1024.0,
        image.GetPixelID(),
    )
    return sitk.GetArrayFromImage(out)


def points_inside(points_mm: np.ndarray, geometry: Geometry, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Which physical points fall inside a grid (voxel edges included)."""
    idx = physical_to_index(geometry, points_mm)
    size = np.array(shape_zyx[::-1])
    return np.all((idx >= -0.5) & (idx <= size - 0.5), axis=1)


def voxel_centres_mm(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    kji = np.argwhere(mask)
    return index_to_physical(geometry, kji[:, ::-1]) if len(kji) else np.zeros((0, 3))
