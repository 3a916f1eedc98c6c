"""Lesion finding: connected components of candidate voxels, per artery, with their statistics.

Shared by the clinical score and the lesion table (:mod:`cacs.agatston.clinical`)
so that both always see the same lesions.  Candidates are voxels with
``HU >= threshold_hu`` inside one artery's mask (or anywhere, without labels);
lesions are formed separately per artery label, per axial slice
(``lesion_dim="2d"``) or in 3D.  Arrays are numpy ``(z, y, x)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from cacs import ARTERIES
from cacs.agatston.params import AgatstonParams

__all__ = ["Lesions", "find_lesions"]

_N_ARTERIES = len(ARTERIES)


@dataclass(frozen=True)
class Lesions:
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


def find_lesions(
    hu: np.ndarray,
    labels: np.ndarray | None,
    params: AgatstonParams,
    method: Literal["auto", "dense", "sparse"] = "auto",
) -> Lesions:
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
        return Lesions(empty, empty, empty, np.zeros(0, dtype=float))

    n_art = 1 if labels is None else _N_ARTERIES
    ids, n_lesions = _components(art, z, y, x, n_art, params, method)

    peak = np.full(n_lesions, -np.inf)
    np.maximum.at(peak, ids, hu[z, y, x].astype(float))
    first_z = np.full(n_lesions, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_z, ids, z.astype(np.int64))
    label = np.zeros(n_lesions, dtype=np.int64)
    label[ids] = art + (0 if labels is None else 1)  # one artery per lesion by construction
    return Lesions(
        label=label,
        z_index=first_z,
        n_voxels=np.bincount(ids, minlength=n_lesions).astype(np.int64),
        peak_hu=peak,
    )
