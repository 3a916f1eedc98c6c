"""Scoring from files: an image in HU and its artery label map, read and checked to share one grid.

Separate from the scorers so that they stay pure array functions (no file
formats); this is the ``cacs score IMAGE LABELS`` entry point.
"""

from __future__ import annotations

import os

from cacs.agatston.clinical import agatston_scores
from cacs.agatston.params import DEFAULT_PARAMS, AgatstonParams

__all__ = ["score_files"]

_GEOMETRY_TOL_MM = 1e-3
"""Image and label map must share their grid; this absorbs header float noise only."""


def score_files(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    params: AgatstonParams = DEFAULT_PARAMS,
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
