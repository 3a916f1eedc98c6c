"""The clinical Agatston score against the test vectors of docs/agatston.md."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cacs import SCORE_COLUMNS
from cacs.agatston import (
    AgatstonParams,
    agatston_scores,
    agatston_weight,
    lesion_table,
    score_files,
    slice_correction_factor,
    voxel_score_factor,
)
from cacs.agatston.lesions import find_lesions
from cacs.cli import main
from cacs.cvd import cvd_rank
from cacs.io.nifti import Geometry, write_volume

LM, LCX, LAD, RCA = 1, 2, 3, 4
UNCORRECTED = AgatstonParams(slice_correction=False)


def _volume(shape: tuple[int, int, int], background: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    return np.full(shape, background, dtype=np.float64), np.zeros(shape, dtype=np.uint8)


# --- test vectors of docs/agatston.md ----------------------------------------------------


def test_single_lesion_peak_400_area_8_slice_3mm_scores_32() -> None:
    hu, lab = _volume((1, 8, 8))
    hu[0, 2:4, 2:6] = 400  # 8 pixels of 1 mm^2
    lab[0, 2:4, 2:6] = LAD
    scores = agatston_scores(hu, lab, (1.0, 1.0, 3.0))
    assert scores["LAD"] == pytest.approx(32.0)
    assert scores["total"] == pytest.approx(32.0)
    assert scores["LM"] == scores["LCX"] == scores["RCA"] == 0.0


def test_weight_comes_from_peak_not_mean() -> None:
    hu, lab = _volume((1, 8, 8))
    hu[0, 2:4, 2:6] = 150
    hu[0, 2, 2] = 400  # one peak pixel lifts the whole lesion to weight 4
    lab[0, 2:4, 2:6] = LAD
    assert agatston_scores(hu, lab, (1.0, 1.0, 3.0))["LAD"] == pytest.approx(32.0)


def test_4x4x2_volume_uncorrected_16_corrected_2667() -> None:
    hu, lab = _volume((2, 4, 4))
    hu[:, :2, :] = 400  # 8 pixels of 0.25 mm^2 per slice: one 2 mm^2 lesion per slice
    lab[:] = LM
    spacing = (0.5, 0.5, 0.5)
    assert agatston_scores(hu, lab, spacing, UNCORRECTED)["total"] == pytest.approx(16.0)
    corrected = agatston_scores(hu, lab, spacing)["total"]
    assert corrected == pytest.approx(16.0 * 0.5 / 3.0)
    assert corrected == pytest.approx(2.667, abs=5e-4)


def _disk(radius_mm: float, pixel_mm: float, n_pixels: int) -> np.ndarray:
    c = (np.arange(n_pixels) + 0.5) * pixel_mm - n_pixels * pixel_mm / 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return yy**2 + xx**2 <= radius_mm**2


@pytest.mark.parametrize("hu_value", [250.0, 450.0])
def test_cylinder_same_score_at_3_1p5_1_mm(hu_value: float) -> None:
    pixel, height = 0.1, 6.0
    disk = _disk(radius_mm=1.5, pixel_mm=pixel, n_pixels=40)
    area = disk.sum() * pixel * pixel
    assert area == pytest.approx(math.pi * 1.5**2, rel=0.02)  # a real disk
    weight = agatston_weight(hu_value)
    expected = area * weight * height / 3.0  # n.A.w.t/3 with n.t = height
    scores = {}
    for t in (3.0, 1.5, 1.0):
        n = round(height / t)
        hu, lab = _volume((n, 40, 40))
        hu[:, disk] = hu_value
        lab[:, disk] = RCA
        scores[t] = agatston_scores(hu, lab, (pixel, pixel, t))["RCA"]
        assert scores[t] == pytest.approx(n * area * weight * t / 3.0, rel=1e-12)
    assert scores[3.0] == pytest.approx(scores[1.5], rel=1e-12)
    assert scores[3.0] == pytest.approx(scores[1.0], rel=1e-12)
    assert scores[1.0] == pytest.approx(expected, rel=1e-12)
    # Without the correction the thin slices would inflate the score 3-fold.
    n = 6
    hu, lab = _volume((n, 40, 40))
    hu[:, disk] = hu_value
    lab[:, disk] = RCA
    assert agatston_scores(hu, lab, (pixel, pixel, 1.0), UNCORRECTED)["RCA"] == pytest.approx(
        3 * expected
    )


@pytest.mark.parametrize(
    ("peak", "weight"),
    [(129, 0), (130, 1), (199, 1), (200, 2), (299, 2), (300, 3), (399, 3), (400, 4)],
)
def test_peak_boundaries(peak: float, weight: int) -> None:
    assert agatston_weight(peak) == weight
    hu, lab = _volume((1, 6, 6))
    hu[0, 1:3, 1:3] = 130  # 4 mm^2 lesion at the threshold ...
    hu[0, 1, 1] = peak  # ... whose peak pixel decides the weight
    lab[0, 1:3, 1:3] = LCX
    # a 129 peak pixel is no candidate: 3 pixels of 130 remain, weight 1
    expected = 3.0 if peak < 130 else 4.0 * weight
    assert agatston_scores(hu, lab, (1.0, 1.0, 3.0))["LCX"] == pytest.approx(expected)


def test_agatston_weight_vectorised_and_fractional() -> None:
    peaks = np.array([-1000.0, 129.99, 130.0, 199.99, 200.0, 399.99, 400.0, 3000.0, np.nan])
    np.testing.assert_array_equal(agatston_weight(peaks), [0, 0, 1, 1, 2, 3, 4, 4, 0])
    assert isinstance(agatston_weight(250.0), int)


def test_single_voxel_under_threshold_is_not_a_lesion() -> None:
    hu, lab = _volume((1, 4, 4))
    hu[0, 1, 1] = 129.9
    lab[0, 1, 1] = LM
    assert agatston_scores(hu, lab, (1.0, 1.0, 3.0), AgatstonParams(min_area_mm2=0))["total"] == 0


def test_diagonal_touch_joins_under_8_not_4_connectivity() -> None:
    hu, lab = _volume((1, 8, 8))
    hu[0, 1:3, 1:3] = 400  # 1 mm^2 at 0.5 mm pixels, weight 4
    hu[0, 3:5, 3:5] = 150  # 1 mm^2, weight 1, touching the first block by one corner
    lab[0, 1:5, 1:5] = LAD
    spacing = (0.5, 0.5, 3.0)
    eight = agatston_scores(hu, lab, spacing, AgatstonParams(connectivity=8))["LAD"]
    four = agatston_scores(hu, lab, spacing, AgatstonParams(connectivity=4))["LAD"]
    assert eight == pytest.approx(2.0 * 4)  # one lesion, peak 400
    assert four == pytest.approx(1.0 * 4 + 1.0 * 1)  # two lesions, own peaks

    # A single diagonal pixel: part of a kept lesion under 8, dropped (0.25 mm^2) under 4.
    hu, lab = _volume((1, 8, 8))
    hu[0, 1:3, 1:3] = 400
    hu[0, 3, 3] = 400
    lab[0, 1:4, 1:4] = LAD
    eight = agatston_scores(hu, lab, spacing, AgatstonParams(connectivity=8))["LAD"]
    four = agatston_scores(hu, lab, spacing, AgatstonParams(connectivity=4))["LAD"]
    assert eight == pytest.approx(1.25 * 4)
    assert four == pytest.approx(1.0 * 4)


@pytest.mark.parametrize(
    ("pixel_mm", "n_pixels"),
    [(0.5, 4), (1 / 3, 9), (1 / 7, 49)],  # 49 * (1/7)^2 = 0.9999999999999999 in floats
)
def test_area_exactly_1mm2_is_kept(pixel_mm: float, n_pixels: int) -> None:
    hu, lab = _volume((1, 60, 60))
    hu[0, 0, :n_pixels] = 400  # a one-pixel-high strip
    lab[0, 0, :n_pixels] = RCA
    scores = agatston_scores(hu, lab, (pixel_mm, pixel_mm, 3.0))
    assert scores["RCA"] == pytest.approx(4.0)


def test_area_just_below_1mm2_is_dropped() -> None:
    hu, lab = _volume((1, 8, 8))
    hu[0, 0, :3] = 400  # 3 x 0.25 mm^2
    lab[0, 0, :3] = RCA
    assert agatston_scores(hu, lab, (0.5, 0.5, 3.0))["RCA"] == 0.0
    hu[0, 0, :4] = 400  # 1 mm^2 but slightly thinner pixels -> 0.9999 mm^2
    lab[0, 0, :4] = RCA
    assert agatston_scores(hu, lab, (0.49995, 0.5, 3.0))["RCA"] == 0.0
    assert agatston_scores(hu, lab, (0.5, 0.5, 3.0))["RCA"] == pytest.approx(4.0)
    assert agatston_scores(hu, lab, (0.49995, 0.5, 3.0), AgatstonParams(min_area_mm2=0.5))[
        "RCA"
    ] == pytest.approx(4.0 * 0.49995 * 0.5 * 4)


@pytest.mark.parametrize(
    ("total", "rank"), [(0, 1), (10, 2), (10.01, 3), (100, 3), (400, 4), (400.01, 5)]
)
def test_cvd_rank_edges(total: float, rank: int) -> None:
    assert cvd_rank(total) == rank


def test_cvd_rank_reexported() -> None:
    from cacs import agatston

    assert agatston.cvd_rank is cvd_rank


# --- arteries, masks, 3D ---------------------------------------------------------------------


def test_touching_lesions_of_two_arteries_stay_separate() -> None:
    hu, lab = _volume((1, 6, 6))
    hu[0, 1:3, 1:3] = 400
    lab[0, 1:3, 1:3] = LM
    hu[0, 1:3, 3:5] = 150  # shares an edge with the LM lesion
    lab[0, 1:3, 3:5] = LCX
    scores = agatston_scores(hu, lab, (1.0, 1.0, 3.0))
    assert scores["LM"] == pytest.approx(4 * 4)
    assert scores["LCX"] == pytest.approx(4 * 1)  # not lifted to weight 4 by LM's peak
    assert scores["total"] == pytest.approx(20)
    for dim in ("2d", "3d"):
        assert agatston_scores(hu, lab, (1.0, 1.0, 3.0), AgatstonParams(lesion_dim=dim)) == scores


@pytest.mark.parametrize("bad", [5, 255, -1, 1.5, np.nan])
def test_invalid_label_values_rejected(bad: float) -> None:
    hu, _ = _volume((1, 4, 4))
    lab = np.zeros(hu.shape, dtype=np.float32)
    lab[0, 1, 1] = bad
    with pytest.raises(ValueError, match="labels must be 0"):
        agatston_scores(hu, lab, (1.0, 1.0, 3.0))


def test_label_5_rejected_in_integer_map() -> None:
    hu, lab = _volume((2, 4, 4))
    lab[1, 3, 3] = 5
    with pytest.raises(ValueError, match=r"\[5\]"):
        agatston_scores(hu, lab, (1.0, 1.0, 3.0))
    with pytest.raises(ValueError, match="boolean"):
        agatston_scores(hu, lab > 0, (1.0, 1.0, 3.0))


def test_only_candidates_inside_the_mask_count() -> None:
    hu, lab = _volume((1, 8, 8))
    hu[0, 2:4, 2:4] = 150
    lab[0, 2:4, 2:4] = LAD
    hu[0, 2:4, 4:6] = 1000  # bright, touching, but outside the mask
    hu[0, 6:8, 6:8] = 1000  # bright, elsewhere, outside the mask
    lab[0, 0, 0:4] = LAD  # mask voxels below 130 HU are no calcium
    scores = agatston_scores(hu, lab, (1.0, 1.0, 3.0))
    assert scores["LAD"] == pytest.approx(4.0)
    assert scores["total"] == pytest.approx(4.0)


def test_no_labels_scores_whole_image_total_only() -> None:
    hu, _ = _volume((1, 8, 8))
    hu[0, 2:4, 2:4] = 150
    hu[0, 6:8, 6:8] = 1000
    scores = agatston_scores(hu, None, (1.0, 1.0, 3.0))
    assert all(math.isnan(scores[a]) for a in ("LM", "LCX", "LAD", "RCA"))
    assert scores["total"] == pytest.approx(4 * 1 + 4 * 4)


def test_3d_weight_from_3d_peak() -> None:
    hu, lab = _volume((2, 6, 6))
    hu[0, 1:3, 1:3] = 150
    hu[1, 1:3, 1:3] = 450
    lab[:, 1:3, 1:3] = RCA
    spacing = (1.0, 1.0, 3.0)
    assert agatston_scores(hu, lab, spacing)["RCA"] == pytest.approx(4 * 1 + 4 * 4)
    three_d = agatston_scores(hu, lab, spacing, AgatstonParams(lesion_dim="3d"))["RCA"]
    assert three_d == pytest.approx(8 * 4)  # one lesion, area summed over slices, peak 450


def test_3d_connectivity_across_slices() -> None:
    hu, lab = _volume((2, 6, 6))
    hu[0, 1:3, 1:3] = 450
    hu[1, 3:5, 3:5] = 150  # touches slice 0's block only by a corner (diagonally in 3D)
    lab[:, 1:5, 1:5] = LAD
    spacing = (1.0, 1.0, 3.0)
    p26 = AgatstonParams(lesion_dim="3d", connectivity=8)
    p6 = AgatstonParams(lesion_dim="3d", connectivity=4)
    assert agatston_scores(hu, lab, spacing, p26)["LAD"] == pytest.approx(8 * 4)
    assert agatston_scores(hu, lab, spacing, p6)["LAD"] == pytest.approx(4 * 4 + 4 * 1)


def test_3d_min_area_applies_to_summed_area() -> None:
    hu, lab = _volume((2, 4, 4))
    hu[:, 1, 1:3] = 400  # 0.5 mm^2 per slice, 1 mm^2 as one 3D lesion
    lab[:, 1, 1:3] = LM
    spacing = (0.5, 0.5, 3.0)
    assert agatston_scores(hu, lab, spacing)["LM"] == 0.0
    assert agatston_scores(hu, lab, spacing, AgatstonParams(lesion_dim="3d"))["LM"] == (
        pytest.approx(4.0)
    )


def test_slice_correction_and_voxel_factor() -> None:
    assert slice_correction_factor((0.5, 0.5, 1.5)) == pytest.approx(0.5)
    assert slice_correction_factor((0.5, 0.5, 1.5), UNCORRECTED) == 1.0
    assert voxel_score_factor((0.5, 0.4, 1.5)) == pytest.approx(0.2 * 0.5)
    assert voxel_score_factor((0.5, 0.4, 1.5), UNCORRECTED) == pytest.approx(0.2)


def test_shape_and_spacing_validation() -> None:
    hu, lab = _volume((2, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        agatston_scores(hu, lab[:1], (1.0, 1.0, 3.0))
    with pytest.raises(ValueError, match="spacing"):
        agatston_scores(hu, lab, (1.0, 0.0, 3.0))
    with pytest.raises(ValueError, match="3D"):
        agatston_scores(hu[0], lab[0], (1.0, 1.0, 3.0))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("threshold_hu", math.nan),
        ("connectivity", 6),
        ("min_area_mm2", -1.0),
        ("lesion_dim", "2.5d"),
        ("slice_correction", "yes"),
        ("reference_thickness_mm", 0.0),
        ("weight_edges", (130.0, 300.0, 200.0, 400.0)),
        ("weight_edges", (130.0, 200.0, 300.0)),
    ],
)
def test_params_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        AgatstonParams(**{field: value})


def test_empty_volume_scores_zero() -> None:
    hu, lab = _volume((3, 5, 5), background=-1000)
    assert agatston_scores(hu, lab, (1.0, 1.0, 3.0)) == dict.fromkeys(SCORE_COLUMNS, 0.0)
    assert len(lesion_table(hu, lab, (1.0, 1.0, 3.0))) == 0


# --- fast path equivalences and the lesion table ---------------------------------------------


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hu = rng.normal(150, 150, (6, 24, 24))
    lab = np.where(rng.random(hu.shape) < 0.5, rng.integers(1, 5, hu.shape), 0).astype(np.int16)
    return hu, lab


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("connectivity", [4, 8])
def test_dense_and_sparse_labelling_agree(dim: str, connectivity: int) -> None:
    hu, lab = _random_case(1)
    params = AgatstonParams(lesion_dim=dim, connectivity=connectivity)
    dense = find_lesions(hu, lab, params, method="dense")
    sparse = find_lesions(hu, lab, params, method="sparse")
    assert len(dense.n_voxels) > 20

    def key(lesions):  # component numbering differs; compare as sorted records
        return sorted(
            zip(lesions.label, lesions.z_index, lesions.n_voxels, lesions.peak_hu, strict=True)
        )

    assert key(dense) == key(sparse)


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_matches_brute_force_per_artery_labelling(dim: str) -> None:
    from scipy import ndimage

    hu, lab = _random_case(2)
    spacing = (0.6, 0.6, 1.5)
    params = AgatstonParams(lesion_dim=dim)
    expected = {}
    for k, name in enumerate(("LM", "LCX", "LAD", "RCA"), start=1):
        total = 0.0
        mask = (hu >= 130) & (lab == k)
        slabs = [mask] if dim == "3d" else [mask[i : i + 1] for i in range(mask.shape[0])]
        structure = np.ones((3, 3, 3), bool)
        if dim == "2d":
            structure[0] = structure[2] = False
        for slab, offset in zip(slabs, range(len(slabs)), strict=True):
            comp, n = ndimage.label(slab, structure=structure)
            sub = hu if dim == "3d" else hu[offset : offset + 1]
            for i in range(1, n + 1):
                area = (comp == i).sum() * 0.36
                if area >= 1.0:
                    total += area * agatston_weight(sub[comp == i].max()) * 0.5
        expected[name] = total
    scores = agatston_scores(hu, lab, spacing, params)
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, rel=1e-12)


def test_lesion_table_rows_and_sum() -> None:
    hu, lab = _volume((2, 8, 8))
    hu[0, 1:3, 1:3] = 400  # LM, slice 0, 4 px
    lab[0, 1:3, 1:3] = LM
    hu[1, 5, 5] = 250  # RCA, slice 1, 1 px -> 0.25 mm^2, dropped
    lab[1, 5, 5] = RCA
    hu[1, 1:3, 1:3] = 310  # LM, slice 1
    lab[1, 1:3, 1:3] = LM
    spacing = (0.5, 0.5, 1.5)
    table = lesion_table(hu, lab, spacing)
    assert list(table.columns) == [
        "artery",
        "label",
        "z_index",
        "n_voxels",
        "area_mm2",
        "peak_hu",
        "weight",
        "score",
        "kept",
    ]
    assert table["artery"].tolist() == ["LM", "LM", "RCA"]
    assert table["z_index"].tolist() == [0, 1, 1]
    assert table["weight"].tolist() == [4, 3, 2]
    assert table["kept"].tolist() == [True, True, False]
    assert table["area_mm2"].tolist() == pytest.approx([1.0, 1.0, 0.25])
    assert table["score"].tolist() == pytest.approx([4 * 0.5, 3 * 0.5, 0.0])
    assert table["score"].sum() == pytest.approx(agatston_scores(hu, lab, spacing)["total"])

    table3d = lesion_table(hu, lab, spacing, AgatstonParams(lesion_dim="3d"))
    assert table3d["n_voxels"].tolist() == [8, 1]
    assert table3d["peak_hu"].tolist() == [400.0, 250.0]
    assert table3d["z_index"].tolist() == [0, 1]

    whole = lesion_table(hu, None, spacing)
    assert set(whole["artery"]) == {"all"}
    assert whole["score"].sum() == pytest.approx(agatston_scores(hu, None, spacing)["total"])


# --- files and CLI -------------------------------------------------------------------------


def _write_case(tmp_path, geometry: Geometry, label_geometry: Geometry | None = None):
    hu = np.full((3, 10, 12), -50, dtype=np.int16)
    lab = np.zeros(hu.shape, dtype=np.uint8)
    hu[1, 2:5, 2:5] = 420
    lab[1, 2:5, 2:5] = LAD
    hu[2, 6:8, 6:9] = 180
    lab[2, 6:8, 6:9] = RCA
    img, lbl = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    write_volume(img, hu, geometry)
    write_volume(lbl, lab, label_geometry or geometry)
    return img, lbl, hu, lab


def test_score_files_round_trip(tmp_path) -> None:
    geometry = Geometry(spacing=(0.7, 0.7, 1.5), origin=(-10.0, 5.0, 100.0))
    img, lbl, hu, lab = _write_case(tmp_path, geometry)
    scores = score_files(img, lbl, AgatstonParams())
    assert scores == pytest.approx(agatston_scores(hu, lab, (0.7, 0.7, 1.5)))
    assert scores["LAD"] == pytest.approx(9 * 0.49 * 4 * 0.5)
    assert scores["RCA"] == pytest.approx(6 * 0.49 * 1 * 0.5)


def test_score_files_grid_mismatch_names_both_files(tmp_path) -> None:
    geometry = Geometry(spacing=(0.7, 0.7, 1.5), origin=(0.0, 0.0, 0.0))
    shifted = Geometry(spacing=(0.7, 0.7, 1.5), origin=(0.0, 0.0, 0.01))
    img, lbl, _, _ = _write_case(tmp_path, geometry, shifted)
    with pytest.raises(ValueError, match=r"ct\.nii\.gz.*labels\.nii\.gz.*origin"):
        score_files(img, lbl, AgatstonParams())
    respaced = Geometry(spacing=(0.7, 0.7, 3.0), origin=(0.0, 0.0, 0.0))
    img, lbl, _, _ = _write_case(tmp_path, geometry, respaced)
    with pytest.raises(ValueError, match="spacing"):
        score_files(img, lbl, AgatstonParams())
    # within tolerance: header noise is accepted
    noisy = Geometry(spacing=(0.7, 0.7, 1.5), origin=(0.0, 0.0, 0.0005))
    img, lbl, _, _ = _write_case(tmp_path, geometry, noisy)
    score_files(img, lbl, AgatstonParams())
    # different size
    write_volume(lbl, np.zeros((2, 10, 12), np.uint8), geometry)
    with pytest.raises(ValueError, match=r"ct\.nii\.gz.*labels\.nii\.gz.*size"):
        score_files(img, lbl, AgatstonParams())


def test_cli_score_csv_and_json(tmp_path, capsys) -> None:
    geometry = Geometry(spacing=(0.7, 0.7, 3.0), origin=(0.0, 0.0, 0.0))
    img, lbl, hu, lab = _write_case(tmp_path, geometry)
    expected = agatston_scores(hu, lab, (0.7, 0.7, 3.0))

    assert main(["score", str(img), str(lbl)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "LM,LCX,LAD,RCA,total"
    assert len(lines) == 2
    values = [float(v) for v in lines[1].split(",")]
    assert values == pytest.approx([expected[k] for k in SCORE_COLUMNS], abs=1e-6)

    assert main(["score", str(img), str(lbl), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert list(parsed) == list(SCORE_COLUMNS)
    assert parsed == pytest.approx(expected)

    assert main(["score", str(img), str(lbl), "--json", "--no-slice-correction"]) == 0
    assert json.loads(capsys.readouterr().out)["LAD"] == pytest.approx(9 * 0.49 * 4)
