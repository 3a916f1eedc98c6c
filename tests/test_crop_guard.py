"""The crop guard: calcium just outside a heart box is found and the box grown or the scan flagged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cacs.agatston import AgatstonParams
from cacs.crop import CropParams, crop_case
from cacs.crop_guard import MAX_GROW_MM, guard_box, noise_floor
from cacs.io.nifti import Geometry, index_to_physical, read_volume, write_volume

SPACING = (0.7, 0.7, 3.0)  # x, y, z mm
SHAPE = (40, 160, 160)  # z, y, x
START, STOP = np.array([40, 40, 10]), np.array([120, 120, 25])  # x, y, z; the box of these tests


def _soft_tissue(noise_sd: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (40.0 + noise_sd * rng.standard_normal(SHAPE)).astype(np.float32)


def _lesion(hu: np.ndarray, centre_zyx: tuple[int, int, int], radius_vox: int = 3, value: float = 400.0) -> None:
    z, y, x = centre_zyx
    yy, xx = np.mgrid[-radius_vox : radius_vox + 1, -radius_vox : radius_vox + 1]
    disc = yy**2 + xx**2 <= radius_vox**2
    for dz in (-1, 0, 1):
        hu[z + dz, y - radius_vox : y + radius_vox + 1, x - radius_vox : x + radius_vox + 1][disc] = value


def _guard(hu: np.ndarray, grow: bool, start=START, stop=STOP):
    return guard_box(hu, SPACING, start, stop, 130.0, 1.0, shell_mm=10.0, grow=grow)


def test_a_lesion_just_above_the_box_is_flagged_or_grown_into_it():
    hu = _soft_tissue()
    _lesion(hu, (STOP[2] + 1, 80, 80))  # its slices 25..27: just above the top face (z stop 25)
    flagged = _guard(hu, grow=False)
    assert flagged.faces == ("z+",) and flagged.candidates_outside == flagged.candidates_after > 0
    np.testing.assert_array_equal(flagged.stop, STOP)
    grown = _guard(hu, grow=True)
    assert grown.candidates_after == 0 and grown.stop[2] >= STOP[2] + 3
    assert set(grown.grown_mm) == {"z+"} and grown.grown_mm["z+"] == pytest.approx((grown.stop[2] - STOP[2]) * 3.0)
    np.testing.assert_array_equal(grown.start, START)


def test_a_chain_of_lesions_is_followed_up_to_the_growth_limit():
    hu = _soft_tissue()
    for z in (27, 31, 35):  # a calcified artery running up from the box: lesions 12 mm apart
        _lesion(hu, (z, 80, 80))
    grown = _guard(hu, grow=True)
    assert grown.stop[2] >= 37 and grown.candidates_after == 0  # all three, one pass each
    assert grown.grown_mm["z+"] <= MAX_GROW_MM
    tall = np.full((90, *SHAPE[1:]), 40.0, np.float32)
    for z in range(27, 88, 4):  # ... one running on out of reach: growth stops at the limit, and says so
        _lesion(tall, (z, 80, 80))
    capped = guard_box(tall, SPACING, START, STOP, 130.0, 1.0, shell_mm=10.0, grow=True)
    assert MAX_GROW_MM - 3.0 <= capped.grown_mm["z+"] <= MAX_GROW_MM and capped.candidates_after > 0


def test_bone_noise_and_far_calcium_are_not_calcium_like():
    hu = _soft_tissue(noise_sd=35.0)  # chest-CT noise: many single voxels >= 130 HU
    hu[:, 125:132, :] = 560.0  # a rib-like bar along x and z, crossing the shell: runs on beyond it
    _lesion(hu, (18, 80, 150))  # a lesion 30 voxels (21 mm) right of the box: beyond the 10 mm shell
    result = _guard(hu, grow=True)
    assert result.candidates_outside == 0 and not result.grown_mm
    np.testing.assert_array_equal(result.stop, STOP)


def test_correlated_chest_ct_noise_is_not_calcium_but_a_lesion_in_it_is():
    """Chest-CT noise (28 HU SD, spatially correlated, as in the synthetic non-gated scans) passes
    130 HU in many small clusters that a median filter keeps; the noise floor rejects them."""
    rng = np.random.default_rng(3)
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE), (0, 0.7, 0.7))
    hu = (40.0 + noise * (28.0 / noise.std())).astype(np.float32)
    assert (hu >= 130).sum() > 100  # the threshold alone would see plenty
    assert noise_floor(hu) > 130
    assert _guard(hu, grow=True).candidates_outside == 0
    _lesion(hu, (STOP[2] + 1, 80, 80), value=450.0)
    assert _guard(hu, grow=True).faces == ("z+",)


def test_a_lesion_inside_the_box_is_left_alone():
    hu = _soft_tissue(noise_sd=10.0)
    _lesion(hu, (17, 80, 80))
    assert _guard(hu, grow=True).candidates_outside == 0


def _case(tmp_path, hu: np.ndarray, labels: np.ndarray) -> dict:
    geo = Geometry(SPACING, (-56.0, -56.0, -100.0))
    write_volume(tmp_path / "scan.nii.gz", hu.astype(np.int16), geo)
    write_volume(tmp_path / "labels.nii.gz", labels.astype(np.uint8), geo)
    return {"case_id": "gated-1", "cohort": "gated", "image": str(tmp_path / "scan.nii.gz"),
            "labels": str(tmp_path / "labels.nii.gz")}  # fmt: skip


def _box(geo: Geometry, lo_idx, hi_idx) -> dict:
    lo = index_to_physical(geo, np.asarray(lo_idx))[0]
    hi = index_to_physical(geo, np.asarray(hi_idx))[0]
    return {"plausible": True, **{f"box_lo_{a}": v for a, v in zip("xyz", lo, strict=True)},
            **{f"box_hi_{a}": v for a, v in zip("xyz", hi, strict=True)}}  # fmt: skip


@pytest.mark.parametrize("mode", ["grow", "flag"])
def test_a_box_shifted_down_by_20_mm_is_grown_or_flagged_never_silent(tmp_path, mode):
    """The issue's case: a heart box set 20 mm too low cuts the upper lesions; the crop must say so."""
    hu = _soft_tissue(noise_sd=15.0, seed=1)
    labels = np.zeros(SHAPE, np.uint8)
    for z, artery in ((14, 3), (22, 1)):  # a LAD lesion mid-box, a left-main lesion near the top
        _lesion(hu, (z, 80, 80), value=450.0)
        labels[z - 1 : z + 2][hu[z - 1 : z + 2] >= 130] = artery
    case = _case(tmp_path, hu, labels)
    _, geo = read_volume(case["image"])
    # The right box spans slices 5..27; shifted down by 20 mm (6.7 slices) it ends at slice 20,
    # just below the left-main lesion (slices 21..23).
    box = _box(geo, (40, 40, 5), (120, 120, 27))
    box["box_lo_z"] -= 20.0
    box["box_hi_z"] -= 20.0
    # No margins: the guard alone must catch the cut (the default 10 mm z margin would hide half of the shift).
    params = CropParams(margin_xy_mm=0.0, margin_z_mm=0.0, model_spacing_mm=(1.0, 1.0, 3.0), model_size=(64, 64, 40),
                        guard=mode)  # fmt: skip
    off, _ = crop_case(case, box, tmp_path / "off", CropParams(**{**params.__dict__, "guard": "off"}), AgatstonParams())
    row, issues = crop_case(case, box, tmp_path / mode, params, AgatstonParams())
    assert off["score_in_crop"] < 1.0  # the shifted box really cuts calcium
    assert row["cut_candidates"] > 0
    guard_rows = [i for i in issues if "just outside the heart box" in i.problem]
    assert len(guard_rows) == 1 and "z+" in guard_rows[0].problem
    if mode == "grow":
        assert row["score_in_crop"] == 1.0 and row["cut_candidates_after"] == 0 and row["box_grown"].startswith("z+")
        assert "box grown" in guard_rows[0].action
    else:
        assert row["score_in_crop"] == off["score_in_crop"] and row["box_grown"] == ""
        assert "flagged" in guard_rows[0].action
    assert pd.isna(off["cut_candidates"])
