"""Calcium ROIs for synthetic gated scans, written as COCA's plist "XML".

An annotator outlines each calcified lesion on each slice with a polygon;
COCA stores the polygons in an Apple property list (``calcium_xml/<pid>.xml``)
with ``Point_px`` = (column x, row y) strings, ``Point_mm``, ROI statistics
over the >= 130 HU pixels, ``ImageIndex`` = rank of the slice in ascending z,
and placeholder ROIs with no points.  The generator draws an ellipse around
each plaque's footprint, formats its vertices exactly as COCA does and
rasterises the *formatted* vertices, so its ground-truth label map is what
any correct reader of the file must reproduce.
"""

from __future__ import annotations

import plistlib
from dataclasses import dataclass

import numpy as np
from skimage.draw import polygon as draw_polygon

from cacs.io.calcium_xml import parse_point_px
from cacs.synth.phantom import Blob, Grid, blob_profile

ROI_NAMES: dict[int, str] = {
    1: "Left Coronary Artery",  # COCA's name for the left main (LM)
    2: "Left Circumflex Artery",
    3: "Left Anterior Descending Artery",
    4: "Right Coronary Artery",
}



def fmt_px(x: float, y: float) -> str:
    return f"({x:.6f}, {y:.6f})"


def fmt_mm(x: float, y: float, z: float) -> str:
    return f"({x:.6f}, {y:.6f}, {z:.6f})"


@dataclass
class Roi:
    label: int
    slice_index: int  # ascending-z index
    vertices: np.ndarray  # (n, 2) float (x=col, y=row), already rounded as written


def footprint_rois(
    blob: Blob, grid: Grid, supersample: int, rng: np.random.Generator, n_vertices: int = 18
) -> list[Roi]:
    """One polygon per slice that the plaque crosses visibly (> ~105 HU before noise)."""
    xs, ys, zs = grid.axis(0), grid.axis(1), grid.axis(2)
    sx, sy, sz = grid.spacing
    offsets = ((np.arange(supersample) + 0.5) / supersample - 0.5) * sz
    cx, cy, cz = blob.center
    rx, ry, rz = blob.radii
    i0, i1 = np.searchsorted(xs, [cx - rx - sx, cx + rx + sx])
    j0, j1 = np.searchsorted(ys, [cy - ry - sy, cy + ry + sy])
    X, Y = np.meshgrid(xs[i0:i1], ys[j0:j1])
    base = -70.0
    f_thr = (105.0 - base) / (blob.peak_hu - base)
    rois: list[Roi] = []
    for k, zc in enumerate(zs):
        if abs(zc - cz) > rz + sz / 2:
            continue
        f = np.mean([blob_profile(blob, X, Y, zc + off) for off in offsets], axis=0)
        jj, ii = np.nonzero(f > f_thr)
        if jj.size == 0:
            continue
        cols, rows = ii + i0, jj + j0
        ccol, crow = cols.mean(), rows.mean()
        a = np.abs(cols - ccol).max() + 0.75 + rng.uniform(0, 0.3)
        b = np.abs(rows - crow).max() + 0.75 + rng.uniform(0, 0.3)
        phase = rng.uniform(0, 2 * np.pi)
        t = phase + np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
        verts = np.stack([ccol + a * np.cos(t), crow + b * np.sin(t)], axis=1)
        # Round-trip through the file's text and the reader's parser, so truth == what ingest reads.
        verts = parse_point_px([fmt_px(x, y) for x, y in verts])
        rois.append(Roi(blob.label, k, verts))
    return rois


def roi_pixels(roi: Roi, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) inside the polygon: rows = y, cols = x on the raw float vertices."""
    return draw_polygon(roi.vertices[:, 1], roi.vertices[:, 0], shape=shape)


def rasterise(rois: list[Roi], shape: tuple[int, int, int]) -> np.ndarray:
    """Label map from ROIs (later ROIs overwrite earlier ones, as ingest does)."""
    labels = np.zeros(shape, dtype=np.uint8)
    for roi in rois:
        labels[(roi.slice_index, *roi_pixels(roi, shape[1:]))] = roi.label
    return labels


def _roi_dict(roi: Roi, hu: np.ndarray, grid: Grid, index_in_image: int) -> dict:
    sx, sy, _ = grid.spacing
    z = float(grid.axis(2)[roi.slice_index])
    vals = hu[roi.slice_index][roi_pixels(roi, hu.shape[1:])].astype(float)
    vals = vals[vals >= 130]  # COCA's ROI statistics are over the thresholded pixels
    ox, oy = grid.origin[0], grid.origin[1]
    pts_mm = [fmt_mm(ox + x * sx, oy + y * sy, z) for x, y in roi.vertices]
    closed = np.vstack([roi.vertices, roi.vertices[:1]])
    length_mm = float(np.sum(np.hypot(np.diff(closed[:, 0]) * sx, np.diff(closed[:, 1]) * sy)))
    ccol, crow = roi.vertices.mean(axis=0)
    return {
        "Name": ROI_NAMES[roi.label],
        "NumberOfPoints": len(roi.vertices),
        "Point_px": [fmt_px(x, y) for x, y in roi.vertices],
        "Point_mm": pts_mm,
        "Area": round(vals.size * sx * sy / 100.0, 6),  # cm^2
        "Mean": round(float(vals.mean()), 4) if vals.size else 0.0,
        "Min": round(float(vals.min()), 4) if vals.size else 0.0,
        "Max": round(float(vals.max()), 4) if vals.size else 0.0,
        "Total": round(float(vals.sum()), 4),
        "Dev": round(float(vals.std()), 4) if vals.size else 0.0,
        "Center": fmt_mm(ox + ccol * sx, oy + crow * sy, z),
        "Length": round(length_mm / 10.0, 6),  # cm
        "IndexInImage": index_in_image,
        "Type": 15,
    }


def _placeholder(rng: np.random.Generator, index_in_image: int) -> dict:
    return {
        "Name": str(rng.choice(["Unnamed", ROI_NAMES[int(rng.integers(1, 5))]])),
        "NumberOfPoints": 0,
        "Point_px": [],
        "Point_mm": [],
        "Area": 0.0,
        "Mean": 0.0,
        "Min": 0.0,
        "Max": 0.0,
        "Total": 0.0,
        "Dev": 0.0,
        "Center": fmt_mm(0.0, 0.0, 0.0),
        "Length": 0.0,
        "IndexInImage": index_in_image,
        "Type": 15,
    }


def calcium_plist(rois: list[Roi], hu: np.ndarray, grid: Grid, rng: np.random.Generator) -> bytes:
    """The plist bytes of ``calcium_xml/<pid>.xml`` (about a quarter placeholder ROIs)."""
    by_slice: dict[int, list[Roi]] = {}
    for roi in rois:
        by_slice.setdefault(roi.slice_index, []).append(roi)
    images = []
    for k in sorted(by_slice):
        entries = []
        for roi in by_slice[k]:
            if rng.random() < 0.33:
                entries.append(_placeholder(rng, len(entries)))
            entries.append(_roi_dict(roi, hu, grid, len(entries)))
        images.append({"ImageIndex": k, "NumberOfROIs": len(entries), "ROIs": entries})
    return plistlib.dumps({"Images": images}, fmt=plistlib.FMT_XML, sort_keys=True)
