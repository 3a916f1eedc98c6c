"""Small synthetic gated scans at native resolution, with reader-like reference label maps.

Shared by tests/test_native_scoring.py (the oracle test) and
bench/bench_oracle.py.  Built with numpy alone (no DICOM, no files) so that a
test can make dozens in a second: calcified blobs of varying sizes and peaks on
a noisy soft-tissue background, each voxel averaging sub-samples across its
extent (partial volume, as in :mod:`cacs.synth.phantom`), and per slice an ROI
like an annotator's: the blob's visible footprint (> 105 HU before noise) grown
by one pixel, labelled with the blob's artery.

Next to about half of the lesions lies an unlabelled bright structure (bone,
aortic or valve calcium) a few mm away: a round trip that grows the masks too
much scores it and shows up as a gain, not only losses show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cacs.io.nifti import Geometry

SOFT_TISSUE_HU = 40.0
BLOB_BASE_HU = -70.0  # the blob profile's base, as in cacs.synth.phantom
FOOTPRINT_HU = 105.0  # an annotator outlines what is visibly bright
EDGE_MM = 6.0  # lesions keep this far from the scan's edges


@dataclass(frozen=True)
class Phantom:
    hu: np.ndarray  # (z, y, x) float32
    labels: np.ndarray  # (z, y, x) uint8, 0-4
    geometry: Geometry


def render_blob(
    hu: np.ndarray, axes_mm: list[np.ndarray], spacing: np.ndarray, centre: np.ndarray, radii: np.ndarray, peak: float
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Raise ``hu`` towards ``peak`` inside an ellipsoid (in place); return its window and noise-free HU there.

    ``axes_mm`` are the sub-sample positions (n, s) along x, y, z; the plateau
    fraction is 1 inside half the radius and falls linearly to 0 at the radius.
    """
    shape_xyz = np.array(hu.shape[::-1])
    lo = np.clip(np.floor((centre - radii) / spacing).astype(int) - 1, 0, shape_xyz)
    hi = np.clip(np.ceil((centre + radii) / spacing).astype(int) + 2, 0, shape_xyz)
    dx, dy, dz = ((axes_mm[i][lo[i] : hi[i]] - centre[i]) / radii[i] for i in range(3))
    d = np.sqrt(
        dz[:, None, None, :, None, None] ** 2 + dy[None, :, None, None, :, None] ** 2
        + dx[None, None, :, None, None, :] ** 2
    )  # fmt: skip
    frac = np.clip((1.0 - d) / 0.5, 0.0, 1.0).mean(axis=(3, 4, 5))
    window = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    bright = (BLOB_BASE_HU + (peak - BLOB_BASE_HU) * frac).astype(np.float32)
    hu[window] = np.maximum(hu[window], bright)
    return window, bright


def make_phantom(
    rng: np.random.Generator,
    shape_zyx: tuple[int, int, int] = (20, 72, 72),
    pixel_mm: float = 1.25,
    slice_mm: float = 3.0,
    max_lesions: int = 6,
    noise_sd: float = 12.0,
    supersample: int = 3,
    distractors: bool = True,
) -> Phantom:
    """One scan: 0..``max_lesions`` lesions (arteries 1-4, radii 0.8-4 mm in-plane, peaks 150-900 HU)."""
    nz, ny, nx = shape_zyx
    spacing = np.array([pixel_mm, pixel_mm, slice_mm])
    geometry = Geometry(tuple(float(v) for v in spacing), tuple(float(v) for v in rng.uniform(-150.0, 150.0, 3)))
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    axes_mm = [(np.arange(n)[:, None] + sub[None]) * s for n, s in zip((nx, ny, nz), spacing, strict=True)]
    extent = np.array([nx, ny, nz]) * spacing
    hu = np.full(shape_zyx, SOFT_TISSUE_HU, dtype=np.float32)
    labels = np.zeros(shape_zyx, dtype=np.uint8)
    placed: list[tuple[np.ndarray, float]] = []  # (centre, radius) of everything drawn, lesions and distractors

    def free(centre: np.ndarray, radius: float, gap: float, others: list[tuple[np.ndarray, float]]) -> bool:
        """Inside the scan (EDGE_MM from its edges) and ``gap`` mm clear of ``others``."""
        inside = np.all(centre - radius - EDGE_MM > 0) and np.all(centre + radius + EDGE_MM < extent)
        return bool(inside) and all(np.linalg.norm(centre - c) >= radius + r + gap for c, r in others)

    for _ in range(int(rng.integers(0, max_lesions + 1))):
        r_xy = float(rng.uniform(0.8, 4.0))
        radii = np.array([r_xy * rng.uniform(0.8, 1.2), r_xy * rng.uniform(0.8, 1.2), rng.uniform(max(2.0, r_xy), 5)])
        centre = rng.uniform(radii + EDGE_MM, extent - radii - EDGE_MM)
        if not free(centre, float(radii.max()), 8.0, placed):
            continue
        placed.append((centre, float(radii.max())))
        window, bright = render_blob(hu, axes_mm, spacing, centre, radii, float(rng.uniform(150.0, 900.0)))
        roi = ndimage.binary_dilation(bright > FOOTPRINT_HU, structure=np.ones((1, 3, 3), bool))  # one pixel
        labels[window][roi] = int(rng.integers(1, 5))
        if distractors and rng.random() < 0.5:
            r = float(rng.uniform(1.5, 3.0))
            angle = rng.uniform(0, 2 * np.pi)
            gap = float(rng.uniform(0.5, 4.0))  # between the outer surfaces, in-plane
            where = centre + (radii[:2].max() + r + gap) * np.array([np.cos(angle), np.sin(angle), 0.0])
            if free(where, r, 2.0, placed[:-1]):  # its own lesion is `gap` away by construction
                placed.append((where, r))
                render_blob(hu, axes_mm, spacing, where, np.array([r, r, 1.5 * r]), float(rng.uniform(300, 1000)))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape_zyx).astype(np.float32), (0, 0.7, 0.7))
    hu += noise * (noise_sd / max(float(noise.std()), 1e-6))
    return Phantom(hu, labels, geometry)


def make_cohort(n: int, seed: int, **kwargs) -> list[Phantom]:
    """``n`` phantoms from one seed (deterministic)."""
    rng = np.random.default_rng(seed)
    return [make_phantom(rng, **kwargs) for _ in range(n)]
