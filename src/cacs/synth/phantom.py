"""Analytic thorax phantom: anatomy, coronary plaques, and rendering onto CT grids.

Everything is defined in patient coordinates (DICOM LPS, millimetres: x to the
patient's left, y posterior, z superior), independent of any grid, so the same
patient can be rendered as a gated cardiac scan (small FOV, 3 mm) and as a
non-gated chest scan (body FOV, 5 mm, motion) and as a SegTHOR-style volume.

What matters for the pipeline is reproduced on purpose:

* bright non-coronary distractors (spine, ribs, sternum, aortic calcium) that a
  threshold alone would score;
* calcified plaques on four coronary paths on the heart surface, with peak HU
  spanning the four Agatston weight bands;
* partial-volume averaging over the slice thickness (z super-sampling);
* on non-gated scans, cardiac motion: calcium displaced, doubled (a ghost
  copy) and blurred, so that a mask drawn on them would be wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

LM, LCX, LAD, RCA = 1, 2, 3, 4

# Peak-HU draws per Agatston weight band (weight 4 is open-ended: log-uniform).
_BAND_PEAKS: dict[int, tuple[float, float]] = {1: (160, 192), 2: (212, 288), 3: (312, 388), 4: (430, 1100)}
# COCA's ROI share per weight band (docs/data-formats.md): 25/24/12/38 %.
_BAND_P = np.array([0.25, 0.24, 0.12, 0.39])

# Artery paths on the heart ellipsoid, as (azimuth, elevation) waypoints in
# degrees in the heart's local frame.  Rough anatomy, chosen so the four
# arteries are spatially separate (per-artery labels must be learnable).
_PATHS: dict[int, list[tuple[float, float]]] = {
    LM: [(200, 46), (222, 40)],
    LAD: [(228, 38), (270, 22), (310, 0), (345, -30)],
    LCX: [(222, 30), (185, 18), (150, 6), (120, -6)],
    RCA: [(125, 40), (90, 18), (60, -4)],
}
EPICARDIAL_OFFSET = 1.08  # paths lie in the epicardial fat just outside the myocardium
PERICARDIUM_SCALE = 1.16  # outer edge of the epicardial fat (= the heart label's outline)
# The heart's base: the ventricles and their fat end at this height (a fraction of the
# pericardial half-height above the centre).  Above it lie the aortic root and the
# coronary origins, which a heart label (SegTHOR's contouring) does not include.
BASE_ELEVATION = 0.8
# Coronary ostia sit on the aortic root this far above the base (mm, uniform): the left
# main and the proximal RCA run over the base, above the top of the heart label.
OSTIUM_ABOVE_BASE_MM = (3.0, 10.0)
OSTIUM_POINTS = 12  # polyline points of the segment from an ostium to the artery's first waypoint


@dataclass(frozen=True)
class Blob:
    """A calcified blob: plateau of ``peak_hu`` for normalised distance <= 0.5,
    falling linearly to the surrounding tissue at distance 1."""

    label: int  # 1..4 coronary artery, 0 = non-coronary (aortic) calcium
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    peak_hu: float


@dataclass(frozen=True)
class Motion:
    """Non-gated cardiac motion of one plaque: displacement, ghost and blur."""

    shift: tuple[float, float, float]
    ghost_shift: tuple[float, float, float]
    ghost_gain: float


@dataclass
class Patient:
    """One synthetic patient's anatomy (mm, LPS)."""

    pid: int
    body_axes: tuple[float, float]
    heart_center: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    heart_angle: float  # radians, rotation of the heart's long axis in the axial plane
    aorta_asc: tuple[float, float, float]  # x, y, radius
    aorta_desc: tuple[float, float, float]
    spine: tuple[float, float]  # x, y of the vertebral body centre
    arteries: dict[int, np.ndarray] = field(default_factory=dict)  # label -> (n, 3) polyline
    plaques: list[Blob] = field(default_factory=list)
    aortic_calcium: list[Blob] = field(default_factory=list)

    @property
    def z_arch(self) -> float:
        return self.heart_center[2] + self.heart_axes[2] + 28.0

    @property
    def z_base(self) -> float:
        """Top of the heart label: the ventricles' base (see BASE_ELEVATION)."""
        return self.heart_center[2] + BASE_ELEVATION * PERICARDIUM_SCALE * self.heart_axes[2]

    @property
    def z_diaphragm(self) -> float:
        return self.heart_center[2] - self.heart_axes[2] - 6.0

    def surface_point(self, az_deg: float, el_deg: float) -> np.ndarray:
        a, b, c = self.heart_axes
        az, el = np.deg2rad(az_deg), np.deg2rad(el_deg)
        lu = EPICARDIAL_OFFSET * a * np.cos(el) * np.cos(az)
        lv = EPICARDIAL_OFFSET * b * np.cos(el) * np.sin(az)
        lz = EPICARDIAL_OFFSET * c * np.sin(el)
        ct, st = np.cos(self.heart_angle), np.sin(self.heart_angle)
        hx, hy, hz = self.heart_center
        return np.array([hx + ct * lu - st * lv, hy + st * lu + ct * lv, hz + lz])


def make_patient(pid: int, rng: np.random.Generator, z_center: float) -> Patient:
    """Random but plausible anatomy; ``z_center`` places the heart on the table."""
    s = rng.uniform(0.9, 1.1)
    hz = z_center
    p = Patient(
        pid=pid,
        body_axes=(150.0 * s, 105.0 * s * rng.uniform(0.92, 1.05)),
        heart_center=(22.0 * s + rng.uniform(-5, 5), -18.0 * s + rng.uniform(-5, 5), hz),
        heart_axes=(58.0 * s, 46.0 * s, 50.0 * s),
        heart_angle=np.deg2rad(rng.uniform(-45, -25)),
        aorta_asc=(-8.0 * s + rng.uniform(-3, 3), 2.0 * s, 14.0 * s),
        aorta_desc=(24.0 * s, 52.0 * s, 11.5 * s),
        spine=(0.0, 68.0 * s),
    )
    for label, waypoints in _PATHS.items():
        az = np.array([w[0] for w in waypoints], float)
        el = np.array([w[1] for w in waypoints], float)
        t = np.linspace(0, len(waypoints) - 1, 48)
        az_i = np.interp(t, np.arange(len(waypoints)), az)
        el_i = np.interp(t, np.arange(len(waypoints)), el)
        p.arteries[label] = np.stack([p.surface_point(a, e) for a, e in zip(az_i, el_i, strict=True)])
    # The left main and the RCA leave the aortic root above the base and run down onto the heart.
    for label in (LM, RCA):
        path = p.arteries[label]
        ostium = _ostium(p, path[0], float(rng.uniform(*OSTIUM_ABOVE_BASE_MM)))
        proximal = ostium + np.linspace(0.0, 1.0, OSTIUM_POINTS, endpoint=False)[:, None] * (path[0] - ostium)
        p.arteries[label] = np.concatenate([proximal, path])
    # Aortic wall calcium: bright, near the heart, never part of the coronary score.
    for _ in range(int(rng.integers(0, 4))):
        use_desc = rng.random() < 0.6
        ax, ay, ar = p.aorta_desc if use_desc else p.aorta_asc
        ang = rng.uniform(0, 2 * np.pi)
        z = rng.uniform(hz - 20, hz + 40) if use_desc else rng.uniform(hz + 0.4 * p.heart_axes[2], p.z_arch)
        r = rng.uniform(1.2, 2.5)
        p.aortic_calcium.append(
            Blob(0, (ax + ar * np.cos(ang), ay + ar * np.sin(ang), z), (r, r, 1.5 * r), rng.uniform(350, 1000))
        )
    return p


def _ostium(p: Patient, first: np.ndarray, above_base_mm: float) -> np.ndarray:
    """Point on the aortic root's wall facing an artery's first waypoint, ``above_base_mm`` over the base.

    Placed just outside the wall (in the periaortic fat), so a plaque at the
    origin is coronary calcium beside the aortic root, not inside its lumen.
    """
    ax, ay, ar = p.aorta_asc
    direction = np.array([first[0] - ax, first[1] - ay])
    direction /= max(float(np.linalg.norm(direction)), 1e-6)
    return np.array([ax + (ar + 2.0) * direction[0], ay + (ar + 2.0) * direction[1], p.z_base + above_base_mm])


def _est_score(radius_130: float, peak_hu: float, weight: int) -> float:
    """Expected Agatston contribution of a blob: volume above 130 HU / 3 mm x weight."""
    volume = 4.0 / 3.0 * np.pi * radius_130**3 * 1.3
    return volume / 3.0 * weight


def _d130(peak: float, base: float = -70.0) -> float:
    """Normalised radius at which the blob profile crosses 130 HU."""
    return 0.5 + 0.5 * (peak - 130.0) / (peak - base)


def plan_plaques(
    patient: Patient,
    targets: dict[int, float],
    rng: np.random.Generator,
    z_limits: tuple[float, float],
    max_per_artery: int = 10,
) -> None:
    """Place plaques along each artery until the expected score reaches its target.

    Expected scores are analytic estimates; the exact reference is computed
    later from the rendered image (so the ground truth never relies on them).
    Plaques keep a gap to each other so that ROIs of different arteries never
    overlap.
    """
    placed: list[Blob] = list(patient.plaques)
    for label, target in sorted(targets.items()):
        path = patient.arteries[label]
        remaining = target
        attempts = 0
        n = 0
        while remaining > 0.3 and n < max_per_artery and attempts < 400:
            attempts += 1
            share = remaining if (remaining < 60 or n == max_per_artery - 1) else rng.uniform(0.35, 0.9) * remaining
            share = min(share, 700.0)
            weights = np.arange(1, 5)
            probs = _BAND_P.copy()
            if share < 4:  # tiny lesions: a heavy weight would overshoot rank II
                probs[2:] = 0
            w = int(rng.choice(weights, p=probs / probs.sum()))
            lo, hi = _BAND_PEAKS[w]
            peak = float(np.exp(rng.uniform(np.log(lo), np.log(hi))) if w == 4 else rng.uniform(lo, hi))
            r130 = float(np.clip((share * 3.0 / w / (4.0 / 3.0 * np.pi * 1.3)) ** (1 / 3), 0.75, 4.2))
            radius = r130 / _d130(peak)
            idx = int(rng.integers(2, len(path) - 2))
            center = path[idx] + rng.normal(0, 0.6, 3)
            rz = max(radius * 1.3, 2.2)  # survives partial volume in a 3 mm slice
            if not (z_limits[0] + rz + 3 < center[2] < z_limits[1] - rz - 3):
                continue
            if any(
                np.linalg.norm(center - np.asarray(b.center)) < radius + max(b.radii[:2]) + 4.0 for b in placed
            ):
                continue
            blob = Blob(label, tuple(float(v) for v in center), (radius, radius * rng.uniform(0.8, 1.2), rz), peak)
            placed.append(blob)
            patient.plaques.append(blob)
            remaining -= _est_score(r130, peak, w)
            n += 1


def make_motion(rng: np.random.Generator) -> Motion:
    ang = rng.uniform(0, 2 * np.pi)
    mag = rng.uniform(1.5, 4.0)
    shift = (mag * np.cos(ang), mag * np.sin(ang), rng.uniform(-1.0, 1.0))
    gmag = rng.uniform(2.5, 6.0)
    ghost = (-gmag * np.cos(ang), -gmag * np.sin(ang), rng.uniform(-1.5, 1.5))
    return Motion(shift, ghost, float(rng.uniform(0.4, 0.75)))


@dataclass(frozen=True)
class Grid:
    """An axis-aligned CT grid: voxel (k, j, i) centre = origin + (i sx, j sy, k sz)."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]  # (nz, ny, nx)

    def axis(self, dim: int) -> np.ndarray:
        n = self.shape[2 - dim]
        return self.origin[dim] + self.spacing[dim] * np.arange(n)


def _ellipse(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2 <= 1.0


def anatomy_slice(p: Patient, X: np.ndarray, Y: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """HU and SegTHOR organ labels (1 oesophagus, 2 heart, 3 trachea, 4 aorta) at height z."""
    hu = np.full(X.shape, -1000.0, dtype=np.float32)
    organ = np.zeros(X.shape, dtype=np.uint8)
    bx, by = p.body_axes
    hx, hy, hz = p.heart_center
    a, b, c = p.heart_axes
    hu[_ellipse(X, Y, 0, 0, bx, by)] = -95.0  # subcutaneous fat
    hu[_ellipse(X, Y, 0, 0, bx - 13, by - 13)] = 38.0  # muscle / mediastinum
    if z > p.z_diaphragm:
        for side in (-1, 1):
            hu[_ellipse(X, Y, side * 0.5 * bx, 4.0, 0.36 * bx, 0.68 * by)] = -850.0
    else:
        hu[_ellipse(X, Y, -0.2 * bx, 0.0, 0.6 * bx, 0.7 * by)] = 58.0  # liver below the diaphragm
    # Heart: rotated ellipsoid inside a shell of epicardial fat.
    ct, st = np.cos(p.heart_angle), np.sin(p.heart_angle)
    u = ct * (X - hx) + st * (Y - hy)
    v = -st * (X - hx) + ct * (Y - hy)
    # The heart label is the pericardial outline (as in RTOG / SegTHOR contouring):
    # it holds the epicardial fat, where the coronary arteries run.
    # It ends at the base: above it only the aortic root and the coronary origins.
    for scale, value in ((PERICARDIUM_SCALE, -75.0), (1.0, 42.0)):
        k = 1.0 - ((z - hz) / (c * scale)) ** 2
        if k > 0 and z <= p.z_base:
            inside = (u / (a * scale)) ** 2 + (v / (b * scale)) ** 2 <= k
            hu[inside] = value
            organ[inside] = 2
    # Aorta: ascending above the heart's base, arch, descending all the way down.
    axc, ayc, ar = p.aorta_asc
    dxc, dyc, dr = p.aorta_desc
    if hz + 0.35 * c < z <= p.z_arch:
        m = _ellipse(X, Y, axc, ayc, ar, ar)
        hu[m], organ[m] = 40.0, 4
    if abs(z - p.z_arch) <= ar:
        t = np.clip(((X - axc) * (dxc - axc) + (Y - ayc) * (dyc - ayc)) / ((dxc - axc) ** 2 + (dyc - ayc) ** 2), 0, 1)
        dist = np.hypot(X - (axc + t * (dxc - axc)), Y - (ayc + t * (dyc - ayc)))
        m = dist <= np.sqrt(max(ar**2 - (z - p.z_arch) ** 2, 0.0))
        hu[m], organ[m] = 40.0, 4
    if z <= p.z_arch:
        m = _ellipse(X, Y, dxc, dyc, dr, dr)
        hu[m], organ[m] = 40.0, 4
    # Spine with intervertebral discs, spinal canal.
    sx, sy = p.spine
    disc = (z % 28.0) < 5.0
    hu[_ellipse(X, Y, sx, sy, 17, 15)] = 85.0 if disc else 270.0
    hu[_ellipse(X, Y, sx, sy + 27, 8, 8)] = 22.0
    hu[_ellipse(X, Y, sx, sy + 27, 12, 12) & ~_ellipse(X, Y, sx, sy + 27, 8, 8)] = 420.0
    # Sternum and ribs: bright bone distractors.
    if z > hz - 45:
        hu[_ellipse(X, Y, 0, -by + 20, 15, 6)] = 430.0
    r_out = ((X / (bx - 15)) ** 2 + (Y / (by - 15)) ** 2)
    ang = np.arctan2(Y, X)
    ribs = (r_out <= 1.0) & (r_out >= 0.88) & (np.sin(9 * ang + z / 11.0) > 0.55)
    hu[ribs] = 560.0
    # Oesophagus (collapsed, small air lumen) and trachea above the carina.
    m = _ellipse(X, Y, sx + 9, sy - 30, 7, 6)
    hu[m], organ[m] = 32.0, 1
    hu[_ellipse(X, Y, sx + 9, sy - 30, 1.8, 1.5)] = -900.0
    if z > p.z_arch - 5:
        m = _ellipse(X, Y, sx, sy - 48, 9.5, 8.5)
        hu[m], organ[m] = -950.0, 3
    return hu, organ


def blob_profile(
    blob: Blob, X: np.ndarray, Y: np.ndarray, z: float, shift: tuple[float, float, float] = (0, 0, 0)
) -> np.ndarray:
    """Fraction (0..1) of the blob's plateau at each (X, Y, z)."""
    cx, cy, cz = (blob.center[i] + shift[i] for i in range(3))
    rx, ry, rz = blob.radii
    d = np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2)
    return np.clip((1.0 - d) / 0.5, 0.0, 1.0)


def _add_blob(
    hu: np.ndarray, xs: np.ndarray, ys: np.ndarray, z: float, blob: Blob, shift=(0.0, 0.0, 0.0), gain: float = 1.0
) -> None:
    """Raise ``hu`` towards the blob's peak where the blob is (in place, local window)."""
    cz = blob.center[2] + shift[2]
    if abs(z - cz) >= blob.radii[2]:
        return
    cx, cy = blob.center[0] + shift[0], blob.center[1] + shift[1]
    i0, i1 = np.searchsorted(xs, [cx - blob.radii[0], cx + blob.radii[0]])
    j0, j1 = np.searchsorted(ys, [cy - blob.radii[1], cy + blob.radii[1]])
    if i0 >= i1 or j0 >= j1:
        return
    X, Y = np.meshgrid(xs[i0:i1], ys[j0:j1])
    f = blob_profile(blob, X, Y, z, shift) * gain
    window = hu[j0:j1, i0:i1]
    hu[j0:j1, i0:i1] = np.maximum(window, window + (blob.peak_hu - window) * f)


def render(
    p: Patient,
    grid: Grid,
    supersample: int,
    rng: np.random.Generator,
    noise_sd: float,
    motions: list[Motion] | None = None,
    blur_mm: float = 0.0,
    with_organs: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render the patient on ``grid`` as int16 HU (z, y, x), with correlated noise.

    Each slice averages ``supersample`` sub-slices across its thickness
    (partial volume).  With ``motions`` (one per plaque) the calcium is drawn
    displaced plus a weaker ghost copy and blurred in-plane: the non-gated case.
    """
    xs, ys, zs = grid.axis(0), grid.axis(1), grid.axis(2)
    X, Y = np.meshgrid(xs, ys)
    sz = grid.spacing[2]
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    out = np.empty(grid.shape, dtype=np.float32)
    organs = np.zeros(grid.shape, dtype=np.uint8) if with_organs else None
    sigma_px = blur_mm / grid.spacing[0]
    for k, zc in enumerate(zs):
        acc = np.zeros(X.shape, dtype=np.float32)
        for off in offsets:
            z = zc + off * sz
            hu, organ = anatomy_slice(p, X, Y, z)
            if organs is not None and off == offsets[len(offsets) // 2]:
                organs[k] = organ
            for blob in p.aortic_calcium:
                _add_blob(hu, xs, ys, z, blob)
            if motions is None:
                for blob in p.plaques:
                    _add_blob(hu, xs, ys, z, blob)
            else:
                for blob, mo in zip(p.plaques, motions, strict=True):
                    _add_blob(hu, xs, ys, z, blob, mo.shift)
                    _add_blob(hu, xs, ys, z, blob, mo.ghost_shift, mo.ghost_gain)
            acc += hu
        out[k] = acc / supersample
        if sigma_px > 0:
            out[k] = ndimage.gaussian_filter(out[k], sigma_px)
    # CT noise is spatially correlated: smooth white noise, rescale to the wanted SD.
    noise = ndimage.gaussian_filter(rng.standard_normal(grid.shape).astype(np.float32), (0, 0.7, 0.7))
    noise *= noise_sd / max(float(noise.std()), 1e-6)
    out += noise
    return np.clip(np.rint(out), -1024, 3071).astype(np.int16), organs
