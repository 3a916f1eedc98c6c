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

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from cacs.agatston import AgatstonParams, agatston_scores
from cacs.bundle import boxes_meta_path, crop_meta_path, plain, read_json
from cacs.crop_guard import GUARD_MODES, MAX_GROW_MM, GuardResult, grown_text, guard_box
from cacs.io.atomic import atomic_path, write_csv, write_json
from cacs.io.nifti import (
    Geometry,
    box_corners,
    index_box_extent_mm,
    index_to_physical,
    physical_to_index,
    read_volume,
    write_volume,
)
from cacs.parallel import run_cases
from cacs.qc import QCLog, issues_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropParams:
    margin_xy_mm: float = 16.0  # the paper's axial extension
    margin_z_mm: float = 10.0  # not in the paper: the coronary origins lie above the heart label (docs/crops.md)
    model_spacing_mm: tuple[float, float, float] = (1.5, 1.5, 3.0)  # x, y, z
    model_size: tuple[int, int, int] = (128, 128, 48)  # x, y, z
    fallback_box_mm: tuple[float, float] = (160.0, 160.0)  # x, y around the image centre; all of z
    guard: str = "grow"  # calcium-like voxels just outside the box: grow the box | flag the scan | off
    guard_shell_mm: float = 10.0  # how far outside the box the guard looks (cacs.crop_guard)

    def __post_init__(self) -> None:
        if self.guard not in GUARD_MODES:
            raise ValueError(f"crop.guard must be one of {', '.join(GUARD_MODES)}; got {self.guard!r}")
        if self.guard_shell_mm <= 0:
            raise ValueError("crop.guard_shell_mm must be > 0 mm")
        if self.margin_xy_mm < 0 or self.margin_z_mm < 0:
            raise ValueError("crop margins must be >= 0 mm")
        if any(s <= 0 for s in self.model_spacing_mm) or any(n < 1 for n in self.model_size):
            raise ValueError("crop.model_spacing_mm must be > 0 and crop.model_size >= 1")
        if len(self.fallback_box_mm) != 2 or any(v <= 0 for v in self.fallback_box_mm):
            raise ValueError("crop.fallback_box_mm must be two sizes > 0 mm (x, y)")

    def holds(self, size_xyz: list[int], spacing_mm: list[float]) -> bool:
        """Whether a crop of ``size_xyz`` voxels at ``spacing_mm`` (both x, y, z) lies on this model grid.

        Spacings match within float32 precision: NIfTI stores them as float32,
        so a 1.2 mm grid reads back as 1.2000000477 mm.
        """
        return list(size_xyz) == list(self.model_size) and bool(np.allclose(spacing_mm, self.model_spacing_mm))


def image_extent_mm(geometry: Geometry, shape_zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounds of an image, voxel edges included."""
    return index_box_extent_mm(geometry, np.full(3, -0.5), np.array(shape_zyx[::-1]) - 0.5)


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
    idx = physical_to_index(geometry, box_corners(lo_mm, hi_mm))
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



# ------------------------------------------------------------------ driver --

CONTAINMENT_COLUMNS: tuple[str, ...] = ("calcium_voxels_in_crop", "score_in_crop", "calcium_voxels_in_model_grid")
CROP_COLUMNS: tuple[str, ...] = (
    "case_id", "patient_id", "cohort", "split", "image_npy", "labels_npy", "image_nii", "labels_nii",
    "fallback", "crop_lo_x", "crop_lo_y", "crop_lo_z", "crop_hi_x", "crop_hi_y", "crop_hi_z",
    "calcium_voxels_in_crop", "score_in_crop", "calcium_voxels_in_model_grid",
    "spacing_x", "spacing_y", "spacing_z", "LM", "LCX", "LAD", "RCA", "total", "source_image", "source_labels",
    "cut_candidates", "cut_candidates_after", "box_grown",
)  # fmt: skip
"""One row per scan.  ``source_image`` / ``source_labels``: the native scan and (gated) reference label
map the crop was cut from, where prediction scores natively (cacs.predict); ``source_labels`` empty without.
``cut_candidates``: calcium-like voxels just outside the heart box + margin (cacs.crop_guard), for every
scan, masks or not; ``cut_candidates_after``: those outside the final crop; ``box_grown``: faces the guard
moved out, e.g. ``z+ 9 mm`` (empty: none)."""


def containment(
    hu: np.ndarray,
    labels: np.ndarray,
    geometry: Geometry,
    start: np.ndarray,
    stop: np.ndarray,
    model_geometry: Geometry,
    model_shape_zyx: tuple[int, int, int],
    agatston: AgatstonParams,
) -> dict[str, float]:
    """Share of the reference calcium kept: voxels (>= threshold inside the mask) and Agatston score.

    Measured on the native crop and, for voxels, on the model grid too
    (whose fixed size could cut a crop larger than it).  1.0 when the scan
    has no reference calcium.
    """
    calcium = (labels > 0) & (hu >= agatston.threshold_hu)
    n_total = int(calcium.sum())
    if n_total == 0:
        return dict.fromkeys(CONTAINMENT_COLUMNS, 1.0)
    region = (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))
    full = agatston_scores(hu, labels, geometry.spacing, agatston)["total"]
    kept = agatston_scores(hu[region], labels[region], geometry.spacing, agatston)["total"]
    in_grid = points_inside(voxel_centres_mm(calcium, geometry), model_geometry, model_shape_zyx)
    return {
        "calcium_voxels_in_crop": int(calcium[region].sum()) / n_total,
        "score_in_crop": kept / full if full > 0 else 1.0,
        "calcium_voxels_in_model_grid": float(in_grid.mean()),
    }


def crop_case(case: dict, box: dict, out_dir: Path, params: CropParams, agatston: AgatstonParams):
    """Crop one scan; return its crop-table row and QC issues."""
    qc = QCLog(case["case_id"], case["cohort"])
    hu, geometry = read_volume(case["image"])
    labels = None
    if case.get("labels"):
        labels, _ = read_volume(case["labels"])
    fallback = not bool(box.get("plausible", False))
    if fallback:
        lo, hi = fallback_box(geometry, hu.shape, params)
        qc.add(
            box.get("problem") or "no heart prediction",
            f"fallback box {params.fallback_box_mm[0]:g} x {params.fallback_box_mm[1]:g} mm around the image centre",
            file=case["image"],
        )
    else:
        lo, hi = extend_box(
            np.array([box[f"box_lo_{a}"] for a in "xyz"], float),
            np.array([box[f"box_hi_{a}"] for a in "xyz"], float),
            params,
        )
    start, stop = box_to_index_range(lo, hi, geometry, hu.shape)
    guard = None
    if params.guard != "off":
        guard = guard_box(hu, geometry.spacing, start, stop, agatston.threshold_hu, agatston.min_area_mm2,
                          params.guard_shell_mm, grow=params.guard == "grow")  # fmt: skip
        start, stop = guard.start, guard.stop
        _report_guard(qc, guard, case["image"])
    hu_crop, crop_geo = crop_array(hu, geometry, start, stop)
    crop_lo, crop_hi = image_extent_mm(crop_geo, hu_crop.shape)
    grid = model_grid((crop_lo + crop_hi) / 2, params, geometry.direction)
    size = tuple(int(v) for v in params.model_size)
    shape_zyx = size[::-1]
    image_m = resample_onto(hu_crop, crop_geo, grid, size, is_label=False)
    cid = case["case_id"]
    paths = {k: out_dir / f"{cid}_{k}" for k in ("image.npy", "labels.npy", "image.nii.gz", "labels.nii.gz")}
    _save_npy(paths["image.npy"], image_m.astype(np.int16))
    write_volume(paths["image.nii.gz"], image_m.astype(np.int16), grid)
    row = {
        "case_id": cid,
        "patient_id": case.get("patient_id", ""),
        "cohort": case["cohort"],
        "split": case.get("split", ""),
        "image_npy": str(paths["image.npy"]),
        "image_nii": str(paths["image.nii.gz"]),
        "labels_npy": "",
        "labels_nii": "",
        "fallback": fallback,
        **{f"spacing_{a}": float(v) for a, v in zip("xyz", grid.spacing, strict=True)},
        **{f"crop_lo_{a}": round(float(v), 4) for a, v in zip("xyz", crop_lo, strict=True)},
        **{f"crop_hi_{a}": round(float(v), 4) for a, v in zip("xyz", crop_hi, strict=True)},
        **{k: case.get(k, np.nan) for k in ("LM", "LCX", "LAD", "RCA", "total")},
        "calcium_voxels_in_crop": np.nan,
        "score_in_crop": np.nan,
        "calcium_voxels_in_model_grid": np.nan,
        "source_image": str(case["image"]),
        "source_labels": str(case["labels"]) if labels is not None else "",
        "cut_candidates": guard.candidates_outside if guard else np.nan,
        "cut_candidates_after": guard.candidates_after if guard else np.nan,
        "box_grown": grown_text(guard.grown_mm) if guard else "",
    }
    if labels is not None:
        crop_labels, _ = crop_array(labels, geometry, start, stop)
        labels_m = resample_onto(crop_labels, crop_geo, grid, size, is_label=True).astype(np.uint8)
        _save_npy(paths["labels.npy"], labels_m)
        write_volume(paths["labels.nii.gz"], labels_m, grid)
        row.update(labels_npy=str(paths["labels.npy"]), labels_nii=str(paths["labels.nii.gz"]))
        kept = containment(hu, labels, geometry, start, stop, grid, shape_zyx, agatston)
        row.update(kept)
        if min(kept.values()) < 1.0:
            qc.add(
                "crop loses reference calcium: "
                + ", ".join(f"{k}={v:.4f}" for k, v in kept.items()),
                "kept (scores of this scan are biased low)",
                file=case["image"],
            )
    return row, qc.issues


def _report_guard(qc: QCLog, guard: GuardResult, image: str) -> None:
    """A QC row whenever calcium-like voxels lay outside the box: what was done, and what is left."""
    if not guard.candidates_outside:
        return
    if guard.grown_mm and not guard.candidates_after:
        action = f"box grown ({grown_text(guard.grown_mm)}); all of them now inside the crop"
    elif guard.grown_mm:
        action = (f"box grown ({grown_text(guard.grown_mm)}, at most {MAX_GROW_MM:g} mm a face); "
                  f"{guard.candidates_after} still outside: scores of this scan may be biased low")  # fmt: skip
    else:
        action = "flagged, box kept (crop.guard: flag): scores of this scan may be biased low"
    qc.add(guard.describe(), action, file=image)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def crop_metadata(params: CropParams, agatston: AgatstonParams, boxes_csv: Path) -> dict:
    """What ``index.json`` beside the crop index records: the settings the crops were made with.

    ``cacs train`` reads it (so a model file carries the crop grid it was
    trained on, see :mod:`cacs.bundle`); the plausibility range and localizer
    come from the box table's own record (``boxes.json``, ``None`` without).
    """
    boxes = read_json(boxes_meta_path(boxes_csv)) or {}
    return {
        "crop": plain(params),
        "agatston": plain(agatston),
        "plausibility": boxes.get("plausibility"),
        "localizer": boxes.get("localizer"),
        "boxes": str(boxes_csv),
    }


def crop_all(
    cases_csv: Path,
    boxes_csv: Path,
    out_dir: Path,
    index_csv: Path,
    containment_csv: Path,
    qc_csv: Path,
    params: CropParams,
    agatston: AgatstonParams,
    workers: int = 1,
) -> pd.DataFrame:
    """Crop every scan of ``cases_csv`` with its box from ``boxes_csv``."""
    cases = pd.read_csv(cases_csv, dtype={"source_id": str, "labels": str}, keep_default_na=False)
    boxes = pd.read_csv(boxes_csv).set_index("case_id")
    missing = sorted(set(cases.case_id) - set(boxes.index))
    if missing:
        raise ValueError(f"{boxes_csv}: no heart box for {len(missing)} scan(s), e.g. {missing[:3]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(c, boxes.loc[c["case_id"]].to_dict(), out_dir, params, agatston) for c in cases.to_dict("records")]
    results = run_cases(crop_case, jobs, workers, "crop")
    index = pd.DataFrame([r for r, _ in results], columns=list(CROP_COLUMNS))
    issues = [i for _, case_issues in results for i in case_issues]
    write_csv(index_csv, index)
    write_json(crop_meta_path(index_csv), crop_metadata(params, agatston, boxes_csv))
    write_csv(qc_csv, issues_frame(issues))
    gated = index[index.cohort == "gated"][["case_id", *CONTAINMENT_COLUMNS, "total", "fallback"]].copy()
    overall = _overall_containment(gated)
    write_csv(containment_csv, pd.concat([gated, pd.DataFrame([overall])], ignore_index=True))
    log.info(
        "crops: %d scans, %d fallback; overall calcium voxels kept %.4f, score kept %.4f; "
        "%d box(es) with calcium-like voxels outside, %d grown, %d still cut",
        len(index), int(index.fallback.sum()), overall["calcium_voxels_in_crop"], overall["score_in_crop"],
        int((index.cut_candidates > 0).sum()), int((index.box_grown != "").sum()),
        int((index.cut_candidates_after > 0).sum()),
    )  # fmt: skip
    return index


def _overall_containment(gated: pd.DataFrame) -> dict:
    """Pooled over gated scans: score-weighted share of the reference score kept."""
    if gated.empty or gated.total.sum() == 0:
        return {"case_id": "ALL", **dict.fromkeys(CONTAINMENT_COLUMNS, 1.0), "total": float(gated.total.sum()),
                "fallback": bool(gated.fallback.any())}  # fmt: skip
    w = gated.total / gated.total.sum()
    pooled = {c: round(float((gated[c] * w).sum()), 12) for c in CONTAINMENT_COLUMNS}  # 12 places: no 0.99999...
    return {
        "case_id": "ALL",
        **pooled,
        "total": float(gated.total.sum()),
        "fallback": bool(gated.fallback.any()),
    }
