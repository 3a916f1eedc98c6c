"""NIfTI reading/writing through SimpleITK, keeping physical geometry.

Arrays are numpy in SimpleITK's (z, y, x) order; spacing, origin and
direction are always in SimpleITK's (x, y, z) / LPS convention.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cacs.io.atomic import atomic_path


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a (z, y, x) array: what ITK-SNAP / Slicer need."""

    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float]  # (x, y, z) mm, centre of voxel (0, 0, 0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def write_volume(dest: str | os.PathLike[str], array: np.ndarray, geometry: Geometry) -> None:
    """Write a (z, y, x) array with its geometry, atomically (compressed if ``.gz``)."""
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    with atomic_path(dest) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=str(dest).endswith(".gz"))


def read_volume(path: str | os.PathLike[str]) -> tuple[np.ndarray, Geometry]:
    """Read a volume; raise ``ValueError`` naming the file when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:  # SimpleITK reports every read failure this way
        raise ValueError(f"{path}: cannot read image ({str(exc).strip().splitlines()[-1]})") from exc
    if image.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D image, got {image.GetDimension()}D")
    return sitk.GetArrayFromImage(image), Geometry.of(image)


def direction_matrix(geometry: Geometry) -> np.ndarray:
    """3x3 direction matrix; column i is the physical direction of index axis i."""
    return np.asarray(geometry.direction, dtype=float).reshape(3, 3)


def index_to_physical(geometry: Geometry, index_xyz: np.ndarray) -> np.ndarray:
    """Continuous (x, y, z) index -> physical mm, rows in rows out (ITK's formula)."""
    idx = np.atleast_2d(np.asarray(index_xyz, dtype=float))
    return np.asarray(geometry.origin) + (idx * np.asarray(geometry.spacing)) @ direction_matrix(geometry).T


def physical_to_index(geometry: Geometry, points_mm: np.ndarray) -> np.ndarray:
    """Physical mm -> continuous (x, y, z) index (voxel centres are integers)."""
    pts = np.atleast_2d(np.asarray(points_mm, dtype=float))
    return ((pts - np.asarray(geometry.origin)) @ direction_matrix(geometry)) / np.asarray(geometry.spacing)


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 8 corners (rows) of the axis-aligned box lo..hi."""
    return np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1).T


def index_box_extent_mm(geometry: Geometry, lo_idx: np.ndarray, hi_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounds of an index box: all 8 corners mapped, so any direction works."""
    points = index_to_physical(geometry, box_corners(lo_idx, hi_idx))
    return points.min(axis=0), points.max(axis=0)
