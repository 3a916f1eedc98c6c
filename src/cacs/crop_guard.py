"""Guard against heart boxes that cut calcium: look just outside the box, grow it or flag the scan.

A crop that cuts a calcification turns straight into under-scoring, and on
non-gated scans or in ``cacs infer`` no reference mask would ever show it.  On
real CT the localizer's heart box tends to stop at the base of the heart while
the left main and the proximal LAD / LCX run above it, beside the aortic root.

So every box is checked against the scan itself: inside a shell of
``shell_mm`` just outside the box (x, y and z), we look for *calcium-like*
voxels, i.e. voxels of connected bright components (>= the Agatston threshold)
that are shaped like a lesion rather than like bone:

* after an in-plane median filter about 2 mm wide (``MEDIAN_MM``; none at
  pixels of 1.1 mm and more) it still holds a lesion by the scorer's own
  definition, a slice where it covers the minimum lesion area
  (``min_area_mm2``): clusters of noise voxels of a chest CT do not count
  (nor do lesions under ~1.5 mm across on such a scan);
* its peak stands out of the scan's own noise: at least ``PEAK_SIGMAS`` noise SDs above
  the soft tissue around the box (on a cardiac CT the threshold binds; on a noisy chest CT
  the faintest lesions, indistinguishable from noise, are not seen);
* it is compact: smaller than ``MAX_LESION_ML`` and it does not reach the
  outer edge of the search region (box + 2 shells, or the image's edge).  Ribs,
  sternum, spine and long stretches of calcified aortic wall are large or run on
  beyond the region.

Calcium of the aortic wall next to the box can pass these tests (nothing in
the pipeline segments the aorta): it then grows the box a little or flags the
scan, which costs a larger crop or a QC row, never a silent cut.

Faces are named by image index axis and side: ``x-``, ``x+``, ``y-``, ``y+``,
``z-``, ``z+`` (for an axial LPS scan, ``z+`` is superior).  Hand-written here:
this is a rule specific to the pipeline's crops, not a library operation; the
connected components come from :func:`scipy.ndimage.label`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

GUARD_MODES = ("grow", "flag", "off")
FACES = ("x-", "x+", "y-", "y+", "z-", "z+")

MAX_LESION_ML = 1.5
# Largest bright component still taken for a calcification.  The heaviest single
# coronary lesions (scores of several hundred) are a few hundred mm^3; a rib or the
# sternum inside a box + 2 x 10 mm region is several mL.
MAX_GROW_MM = 40.0
# A face moves out by at most this much: a component further out is not the heart's.
MAX_PASSES = 4
# Grow-and-look-again rounds: each can follow the next lesion of a chain within one shell.
PEAK_SIGMAS = 6.0
# A candidate's peak must stand this many noise SDs (robust, from the residual of a median
# filter) above soft tissue.  On the default run's chest CT (28 HU of correlated noise) soft
# tissue alone passes 130 HU thousands of times per scan and a median filter does not remove
# correlated noise: at 5 SDs the guard grew 37 of the 80 non-gated boxes, 8 more than at 6,
# the extra ones towards patient right (the liver, the heart-lung border), where only noise
# lies.  On cardiac CT (14 HU) the Agatston threshold is the stricter bound.
MEDIAN_MM = 2.2
# In-plane median filter width: chest-CT noise puts single voxels and pairs above the
# threshold all over soft tissue; a median over ~2 mm removes them and keeps lesions of
# ~1.5 mm and more.  At coarse pixels (>= 1.1 mm) no filter is needed (nor affordable:
# a 3-pixel window would erase the smallest real lesions).


@dataclass(frozen=True)
class GuardResult:
    """What the guard found around one box (index ranges are (x, y, z), ``stop`` exclusive).

    ``candidates_outside``: calcium-like voxels in the shell outside the original box;
    ``candidates_after``: those still outside the returned box (0 after a complete grow);
    ``grown_mm``: face -> how far the returned box moved out there (empty if it did not);
    ``faces``: faces with candidates outside the original box.
    """

    start: np.ndarray
    stop: np.ndarray
    candidates_outside: int
    candidates_after: int
    faces: tuple[str, ...] = ()
    grown_mm: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for a QC row or an infer note; '' when nothing was found."""
        if not self.candidates_outside:
            return ""
        return (
            f"{self.candidates_outside} calcium-like voxel(s) (lesion-sized, >= threshold, not bone) just outside "
            f"the heart box at face(s) {', '.join(self.faces)}"
        )


def noise_floor(hu: np.ndarray) -> float:
    """Highest HU that noise alone makes of soft tissue here: its median + ``PEAK_SIGMAS`` x the noise SD.

    ``hu`` (z, y, x) is the search region.  The noise SD is robust (1.4826 x MAD) and taken
    from soft-tissue voxels (-50..150 HU) minus their 5 x 5 in-plane median, on at most 8
    slices: the anatomy's edges and the calcium itself barely move it, and the cost stays
    small on a 512 x 512 chest CT.
    """
    step = max(1, hu.shape[0] // 8)
    sample = hu[::step].astype(np.float32)
    soft = (sample > -50) & (sample < 150)
    if soft.sum() < 100:
        return -np.inf
    residual = (sample - ndimage.median_filter(sample, size=(1, 5, 5)))[soft]
    sd = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    return float(np.median(sample[soft])) + PEAK_SIGMAS * sd


def median_window(spacing: np.ndarray) -> int:
    """In-plane median window (odd, pixels) spanning at most ``MEDIAN_MM``: 3 at 0.7 mm, 1 (none) at 1.2 mm."""
    n = int(MEDIAN_MM / min(spacing[0], spacing[1]))
    return max(1, n if n % 2 else n - 1)


def _holds_a_lesion(
    hu: np.ndarray,
    sl: tuple[slice, ...],
    component: np.ndarray,
    window: int,
    threshold_hu: float,
    spacing: np.ndarray,
    min_area_mm2: float,
) -> bool:
    """After the median filter, does the component (``component``, boolean, at ``sl`` of ``hu``) keep a lesion?

    A lesion by the scorer's own definition: a slice in which it covers at least
    ``min_area_mm2``.  The filter runs on the component's box only (padded by the
    window), so the cost follows the candidates, not the size of the search region.
    """
    pad = window // 2
    ys, xs = sl[1], sl[2]
    y0, x0 = max(ys.start - pad, 0), max(xs.start - pad, 0)
    patch = hu[sl[0], y0 : ys.stop + pad, x0 : xs.stop + pad]
    smooth = ndimage.median_filter(patch, size=(1, window, window)) if window > 1 else patch
    dy, dx = ys.start - y0, xs.start - x0
    smooth = smooth[:, dy : dy + component.shape[1], dx : dx + component.shape[2]]
    solid = (smooth >= threshold_hu) & component
    per_slice_mm2 = solid.reshape(solid.shape[0], -1).sum(axis=1) * spacing[0] * spacing[1]
    return bool(per_slice_mm2.max() >= min_area_mm2)


@dataclass(frozen=True)
class _Candidate:
    """A calcium-like component reaching outside the box: its index bounds (x, y, z; stop exclusive)."""

    lo: np.ndarray
    hi: np.ndarray
    outside: int  # its voxels in the shell outside the box


def _candidates(
    hu: np.ndarray,
    spacing: np.ndarray,
    start: np.ndarray,
    stop: np.ndarray,
    threshold_hu: float,
    min_area_mm2: float,
    shell_mm: float,
) -> list[_Candidate]:
    """Calcium-like components with voxels in the shell just outside ``start:stop`` (one pass)."""
    size = np.array(hu.shape[::-1])
    shell = np.ceil(shell_mm / spacing).astype(int)
    outer_lo, outer_hi = np.maximum(start - 2 * shell, 0), np.minimum(stop + 2 * shell, size)
    region = tuple(slice(outer_lo[a], outer_hi[a]) for a in (2, 1, 0))
    bright = hu[region] >= threshold_hu
    labels, n = ndimage.label(bright, structure=ndimage.generate_binary_structure(3, 3))
    if n == 0:
        return []
    window = median_window(spacing)
    min_peak = max(threshold_hu, noise_floor(hu[region]))
    # Offsets of the box and the shell inside the region, (z, y, x).
    box_lo, box_hi = (start - outer_lo)[::-1], (stop - outer_lo)[::-1]
    shell_lo, shell_hi = np.maximum(box_lo - shell[::-1], 0), box_hi + shell[::-1]
    region_shape = np.array(bright.shape)
    found = []
    for label, sl in enumerate(ndimage.find_objects(labels), start=1):
        lo = np.array([s.start for s in sl])
        hi = np.array([s.stop for s in sl])
        if np.all(lo >= box_lo) and np.all(hi <= box_hi):
            continue  # wholly inside the box
        if np.any(hi <= shell_lo) or np.any(lo >= shell_hi):
            continue  # wholly beyond the shell
        # A component reaching the region's edge runs on beyond it (bone, a vessel wall), or is cut by
        # the image's own edge, which no box can help.
        touches = bool(np.any(lo == 0) or np.any(hi == region_shape))
        component = labels[sl] == label
        if touches or component.sum() * np.prod(spacing) / 1000.0 > MAX_LESION_ML:
            continue
        if hu[region][sl][component].max() < min_peak:
            continue  # no brighter than the scan's own noise can make soft tissue
        if not _holds_a_lesion(hu[region], sl, component, window, threshold_hu, spacing, min_area_mm2):
            continue
        idx = np.argwhere(component) + lo
        in_shell = np.all((idx >= shell_lo) & (idx < shell_hi), axis=1)
        outside = int((in_shell & ~np.all((idx >= box_lo) & (idx < box_hi), axis=1)).sum())
        if outside:
            found.append(_Candidate(lo[::-1] + outer_lo, hi[::-1] + outer_lo, outside))
    return found


def _faces(found: list[_Candidate], start: np.ndarray, stop: np.ndarray) -> tuple[str, ...]:
    faces = set()
    for c in found:
        for axis, name in enumerate("xyz"):
            if c.lo[axis] < start[axis]:
                faces.add(f"{name}-")
            if c.hi[axis] > stop[axis]:
                faces.add(f"{name}+")
    return tuple(f for f in FACES if f in faces)


def guard_box(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    start: np.ndarray,
    stop: np.ndarray,
    threshold_hu: float,
    min_area_mm2: float,
    shell_mm: float,
    grow: bool,
) -> GuardResult:
    """Check the box ``start:stop`` (x, y, z voxel indices) of ``hu`` (z, y, x) for cut calcium.

    ``spacing`` is (x, y, z) mm.  With ``grow``, every face with calcium-like
    voxels outside moves out to include their whole components (plus one
    voxel), and the check repeats from the new box, so a chain of lesions (a
    calcified left main above the box) is followed; each face moves by at most
    ``MAX_GROW_MM``.  Without it the box is returned as it was.
    """
    sp = np.asarray(spacing, float)
    start0, stop0 = np.asarray(start, int), np.asarray(stop, int)
    limit = np.floor(MAX_GROW_MM / sp).astype(int)
    size = np.array(hu.shape[::-1])
    floor, ceiling = np.maximum(start0 - limit, 0), np.minimum(stop0 + limit, size)
    first = found = _candidates(hu, sp, start0, stop0, threshold_hu, min_area_mm2, shell_mm)
    if not first:
        return GuardResult(start0, stop0, 0, 0)
    faces = _faces(first, start0, stop0)
    n_first = sum(c.outside for c in first)
    if not grow:
        return GuardResult(start0, stop0, n_first, n_first, faces)
    start, stop = start0.copy(), stop0.copy()
    for _ in range(MAX_PASSES):
        new_start = np.maximum(np.minimum(start, np.min([c.lo for c in found], axis=0) - 1), floor)
        new_stop = np.minimum(np.maximum(stop, np.max([c.hi for c in found], axis=0) + 1), ceiling)
        if np.array_equal(new_start, start) and np.array_equal(new_stop, stop):
            break  # at the growth limit
        start, stop = new_start, new_stop
        found = _candidates(hu, sp, start, stop, threshold_hu, min_area_mm2, shell_mm)
        if not found:
            break
    grown = {}
    for axis, name in enumerate("xyz"):
        if start[axis] < start0[axis]:
            grown[f"{name}-"] = round(float((start0[axis] - start[axis]) * sp[axis]), 2)
        if stop[axis] > stop0[axis]:
            grown[f"{name}+"] = round(float((stop[axis] - stop0[axis]) * sp[axis]), 2)
    return GuardResult(start, stop, n_first, sum(c.outside for c in found), faces, grown)


def grown_text(grown: dict[str, float]) -> str:
    """``{'z+': 9.0}`` -> ``'z+ 9 mm'`` (crop-table cell, QC action)."""
    return "; ".join(f"{face} {mm:g} mm" for face, mm in grown.items())
