"""Loading scans and label maps for display, and drawing one axial slice or coronal plane.

The prediction tables point at the native scan, its reference label map and
the predicted label map, all on the scan's own grid (cacs.predict scores
natively); any image with label maps on its grid works, e.g. a model-grid crop.

Orientation: volumes are resampled (by axis permutation/flip only, no
interpolation) to LPS with SimpleITK's ``DICOMOrient``, so array index x runs
towards the patient's left and y towards posterior.  Drawn with row 0 at the
top, an axial slice is then in the *radiological* convention: patient's right
on the viewer's left, anterior at the top, as if looking up from the feet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.axes import Axes

from cacs.figures.style import CT_WINDOW, label_rgba
from cacs.io.nifti import Geometry, read_volume

ZOOM_MM = 140.0
"""Side of the field of view around calcium: the whole heart, calcium still several pixels wide."""

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Volume:
    """A (z, y, x) array in LPS orientation with its (x, y, z) spacing in mm."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    path: Path


def _to_lps(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, tuple[float, float, float]]:
    if np.allclose(geometry.direction, _IDENTITY):
        return array, geometry.spacing
    image = sitk.DICOMOrient(geometry.apply(sitk.GetImageFromArray(array)), "LPS")
    return sitk.GetArrayFromImage(image), tuple(float(v) for v in image.GetSpacing())


def _same_grid(a: np.ndarray, ga: Geometry, b: np.ndarray, gb: Geometry) -> bool:
    return (
        a.shape == b.shape
        and np.allclose(ga.spacing, gb.spacing, atol=1e-3)
        and np.allclose(ga.origin, gb.origin, atol=1e-2)
        and np.allclose(ga.direction, gb.direction, atol=1e-4)
    )


def load_scan(
    image_path: str | os.PathLike[str], label_paths: list[str | os.PathLike[str]] | None = None
) -> tuple[Volume, list[Volume]]:
    """Read an image (a native scan or a crop) and label maps that must lie on its grid.

    ``ValueError`` naming both files when a label map has another shape,
    spacing, origin or direction: an overlay on the wrong grid would put
    calcium colours on the wrong anatomy without any visible sign.
    """
    array, geometry = read_volume(image_path)
    image = Volume(*_to_lps(array.astype(np.float32), geometry), Path(image_path))
    labels = []
    for path in label_paths or []:
        lab, lgeo = read_volume(path)
        if not _same_grid(array, geometry, lab, lgeo):
            raise ValueError(
                f"label map {path} is not on the grid of image {image_path}: "
                f"shape {lab.shape} vs {array.shape}, spacing {lgeo.spacing} vs {geometry.spacing}, "
                f"origin {lgeo.origin} vs {geometry.origin}"
            )
        labels.append(Volume(*_to_lps(lab.astype(np.uint8), lgeo), Path(path)))
    return image, labels


def slice_with_most(mask: np.ndarray) -> int | None:
    """Axial index with the most nonzero voxels; None when the mask is empty."""
    counts = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    return int(np.argmax(counts)) if counts.max(initial=0) > 0 else None


def brightest_slice(image: np.ndarray) -> int:
    """Axial index holding the highest HU: the fallback when no calcium is marked."""
    return int(np.argmax(image.reshape(image.shape[0], -1).max(axis=1)))


def zoom_on(ax: Axes, image: Volume, mask2d: np.ndarray, size_mm: float = ZOOM_MM) -> None:
    """Show a ``size_mm`` square around the centroid of ``mask2d`` (kept inside the image).

    Calcium is a few voxels in a 200 mm crop: without a zoom it is hard to
    see at print size.  The axes stay in true mm, so the zoom is honest.
    """
    rows, cols = np.nonzero(mask2d)
    if rows.size == 0:
        return
    sx, sy, _ = image.spacing
    ny, nx = image.array.shape[1:]
    limits = []
    for centre, extent in (((cols.mean() + 0.5) * sx, nx * sx), ((rows.mean() + 0.5) * sy, ny * sy)):
        if extent <= size_mm:
            limits.append((0.0, extent))
            continue
        lo = min(max(centre - size_mm / 2, 0.0), extent - size_mm)
        limits.append((lo, lo + size_mm))
    ax.set_xlim(*limits[0])
    ax.set_ylim(limits[1][1], limits[1][0])  # inverted: anterior (row 0) stays at the top


def draw_axial(
    ax: Axes,
    image: Volume,
    z: int,
    labels: np.ndarray | None = None,
    *,
    axis_labels: tuple[bool, bool] = (True, True),
    orientation_marks: bool = True,
    zoom_mask: np.ndarray | None = None,
    zoom_mm: float = ZOOM_MM,
) -> None:
    """CT slice ``z`` in the CT window with an optional label overlay, in mm at true aspect.

    The extent in mm (not pixels) makes anisotropic in-plane spacing display
    with the right aspect; ``axis_labels`` = (x, y) lets grids label only
    their outer panels; ``zoom_mask`` (a 3D mask) centres a ``zoom_mm`` window
    on its calcium in slice ``z``.
    """
    nz, ny, nx = image.array.shape
    sx, sy, _ = image.spacing
    extent = (0.0, nx * sx, ny * sy, 0.0)  # row 0 (anterior) at the top
    ax.imshow(
        image.array[z], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], extent=extent, interpolation="bilinear"
    )
    if labels is not None and np.any(labels[z]):
        ax.imshow(label_rgba(labels[z]), extent=extent, interpolation="nearest")
    ax.set_aspect("equal")
    if zoom_mask is not None:
        zoom_on(ax, image, zoom_mask[z], zoom_mm)
    if axis_labels[0]:
        ax.set_xlabel("x (mm)")
    if axis_labels[1]:
        ax.set_ylabel("y (mm)")
    if orientation_marks:
        style = {"color": "white", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
        ax.text(0.02, 0.5, "R", ha="left", va="center", **style)
        ax.text(0.98, 0.5, "L", ha="right", va="center", **style)
        ax.text(0.5, 0.98, "A", ha="center", va="top", **style)
        ax.text(0.5, 0.02, "P", ha="center", va="bottom", **style)


def highest_calcium_row(mask: np.ndarray) -> int | None:
    """Coronal row (y index) through the most superior labelled voxels; None when the mask is empty.

    The most superior calcium is where a heart box is likeliest to cut (the coronary
    origins above the heart's base), so that is the plane a coronal check should show.
    """
    kji = np.argwhere(mask)
    if not len(kji):
        return None
    top = kji[kji[:, 0] == kji[:, 0].max()]
    return int(round(float(top[:, 1].mean())))


def draw_coronal(ax: Axes, image: Volume, y: int, labels: np.ndarray | None = None) -> None:
    """Coronal plane ``y`` (LPS row) in the CT window, superior at the top, in mm at true aspect.

    Radiological convention as in :func:`draw_axial`: patient's right on the viewer's left.
    """
    nz, ny, nx = image.array.shape
    sx, _, sz = image.spacing
    extent = (0.0, nx * sx, 0.0, nz * sz)  # origin "lower": z index 0 (inferior) at the bottom
    plane = image.array[:, y, :]
    ax.imshow(plane, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], extent=extent, origin="lower",
              interpolation="bilinear")  # fmt: skip
    if labels is not None and np.any(labels[:, y, :]):
        ax.imshow(label_rgba(labels[:, y, :]), extent=extent, origin="lower", interpolation="nearest")
    ax.set_aspect("equal")
    if labels is not None and np.any(labels[:, y, :]):
        # A ZOOM_MM-wide window around the calcium of the plane (the full height: the base and above).
        cols = np.nonzero(labels[:, y, :])[1]
        extent_x = nx * sx
        if extent_x > ZOOM_MM:
            lo = min(max((cols.mean() + 0.5) * sx - ZOOM_MM / 2, 0.0), extent_x - ZOOM_MM)
            ax.set_xlim(lo, lo + ZOOM_MM)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("z (mm, from the first slice)")
    style = {"color": "white", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.02, 0.5, "R", ha="left", va="center", **style)
    ax.text(0.98, 0.5, "L", ha="right", va="center", **style)
    ax.text(0.5, 0.98, "S", ha="center", va="top", **style)
    ax.text(0.5, 0.02, "I", ha="center", va="bottom", **style)
