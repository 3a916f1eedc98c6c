"""Crop arithmetic in millimetres, the model grid, containment and the fallback policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cacs.agatston import AgatstonParams, agatston_scores
from cacs.crop import (
    CropParams,
    box_to_index_range,
    crop_all,
    crop_array,
    extend_box,
    fallback_box,
    image_extent_mm,
    index_to_physical,
    model_grid,
    physical_to_index,
    resample_onto,
)
from cacs.heart_boxes import Plausibility, judge_box
from cacs.io.nifti import Geometry, read_volume, write_volume

SPACING = (0.7, 0.5, 3.0)
ORIGIN = (-100.3, 50.2, -200.0)
SHAPE = (20, 120, 100)  # z, y, x


def test_index_physical_round_trip_with_flipped_direction():
    geo = Geometry(SPACING, ORIGIN, (1, 0, 0, 0, -1, 0, 0, 0, -1))
    idx = np.array([[3.0, 7.0, 2.0], [0.0, 0.0, 0.0]])
    pts = index_to_physical(geo, idx)
    np.testing.assert_allclose(pts[0], [ORIGIN[0] + 3 * 0.7, ORIGIN[1] - 7 * 0.5, ORIGIN[2] - 2 * 3.0])
    np.testing.assert_allclose(physical_to_index(geo, pts), idx)


def test_box_lands_exactly_where_expected():
    geo = Geometry(SPACING, ORIGIN)
    # Box edges chosen between voxel centres: x centres at -100.3 + 0.7 i.
    lo = np.array([ORIGIN[0] + 10 * 0.7 - 0.2, ORIGIN[1] + 20 * 0.5 - 0.1, ORIGIN[2] + 3 * 3.0 - 1.0])
    hi = np.array([ORIGIN[0] + 30 * 0.7 + 0.2, ORIGIN[1] + 60 * 0.5 + 0.1, ORIGIN[2] + 8 * 3.0 + 1.0])
    start, stop = box_to_index_range(lo, hi, geo, SHAPE)
    assert start.tolist() == [10, 20, 3] and stop.tolist() == [31, 61, 9]
    # A box edge exactly on a voxel centre includes that voxel.
    start2, stop2 = box_to_index_range(index_to_physical(geo, [10, 20, 3])[0], index_to_physical(geo, [30, 60, 8])[0],
                                       geo, SHAPE)  # fmt: skip
    assert start2.tolist() == [10, 20, 3] and stop2.tolist() == [31, 61, 9]
    # Clipped to the image; a box outside the image is an error naming the box.
    start3, stop3 = box_to_index_range(lo - 1000, hi + 1000, geo, SHAPE)
    assert start3.tolist() == [0, 0, 0] and stop3.tolist() == [100, 120, 20]
    with pytest.raises(ValueError, match="does not overlap"):
        box_to_index_range(lo + 5000, hi + 5000, geo, SHAPE)


def test_crop_keeps_physical_positions_of_a_phantom():
    geo = Geometry(SPACING, ORIGIN)
    vol = np.zeros(SHAPE, np.int16)
    vol[5, 40, 25] = 999  # (x, y, z) index (25, 40, 5)
    where = index_to_physical(geo, [25, 40, 5])[0]
    start, stop = box_to_index_range(where - [5, 5, 4], where + [5, 5, 4], geo, SHAPE)
    cropped, cgeo = crop_array(vol, geo, start, stop)
    k, j, i = np.argwhere(cropped == 999)[0]
    np.testing.assert_allclose(index_to_physical(cgeo, [i, j, k])[0], where)
    assert cgeo.spacing == geo.spacing and cgeo.direction == geo.direction


def test_margins_are_16_mm_axial_and_10_mm_in_z_by_default():
    lo, hi = extend_box(np.zeros(3), np.ones(3), CropParams())
    np.testing.assert_allclose(lo, [-16, -16, -10])
    np.testing.assert_allclose(hi, [17, 17, 11])


def test_model_grid_keeps_calcium_where_it_was():
    geo = Geometry(SPACING, ORIGIN)
    vol = np.full(SHAPE, -50, np.int16)
    vol[8:11, 50:60, 40:50] = 600
    blob_mm = index_to_physical(geo, np.argwhere(vol == 600)[:, ::-1]).mean(axis=0)
    params = CropParams(model_spacing_mm=(1.0, 1.0, 3.0), model_size=(64, 64, 16))
    grid = model_grid(blob_mm + [3.0, -2.0, 0.0], params, geo.direction)
    out = resample_onto(vol, geo, grid, params.model_size, is_label=False)
    assert out.shape == (16, 64, 64)
    got = index_to_physical(grid, np.argwhere(out > 300)[:, ::-1]).mean(axis=0)
    np.testing.assert_allclose(got, blob_mm, atol=0.6)
    assert out.min() == -1024 or out.min() == -50  # outside the scan is air


def test_fallback_box_is_centred_and_clipped():
    geo = Geometry(SPACING, ORIGIN)
    lo, hi = fallback_box(geo, SHAPE, CropParams(fallback_box_mm=(40.0, 1000.0)))
    img_lo, img_hi = image_extent_mm(geo, SHAPE)
    np.testing.assert_allclose((lo + hi)[:2] / 2, ((img_lo + img_hi) / 2)[:2])
    assert hi[0] - lo[0] == pytest.approx(40.0)
    assert lo[1] == pytest.approx(img_lo[1]) and hi[1] == pytest.approx(img_hi[1])  # clipped to the image
    assert lo[2] == pytest.approx(img_lo[2]) and hi[2] == pytest.approx(img_hi[2])  # all of z


@pytest.mark.parametrize(
    ("ml", "lo", "hi", "expect"),
    [
        (0.0, None, None, "empty"),
        (50.0, [0, 0, 0], [10, 10, 10], "outside"),
        (600.0, [-50, 0, 0], [10, 10, 10], "touches the image edge in x"),
        (600.0, [0, 0, -60], [10, 10, 60], ""),  # touching in z is normal for gated scans
    ],
)
def test_plausibility_verdicts(ml, lo, hi, expect):
    extent = (np.array([-50.0, -50.0, -60.0]), np.array([50.0, 50.0, 60.0]))
    lo = None if lo is None else np.array(lo, float)
    hi = None if hi is None else np.array(hi, float)
    verdict = judge_box(ml, lo, hi, extent, Plausibility())
    assert (expect in verdict) if expect else verdict == ""


def _scan(tmp_path, name: str, lesion_x: int):
    geo = Geometry(SPACING, ORIGIN)
    hu = np.full(SHAPE, 40, np.int16)
    labels = np.zeros(SHAPE, np.uint8)
    hu[10, 60:63, 40:43] = 450
    labels[10, 59:64, 39:44] = 3  # LAD, inside any heart box near the centre
    hu[4, 30:33, lesion_x : lesion_x + 3] = 250
    labels[4, 29:34, lesion_x - 1 : lesion_x + 4] = 4  # RCA, placed by the caller
    write_volume(tmp_path / f"{name}.nii.gz", hu, geo)
    write_volume(tmp_path / f"{name}_labels.nii.gz", labels, geo)
    ref = agatston_scores(hu, labels, SPACING)
    image, lab = tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_labels.nii.gz"
    return {"case_id": name, "patient_id": name, "cohort": "gated", "split": "train",
            "image": str(image), "labels": str(lab), **ref}  # fmt: skip


def test_crop_all_containment_and_fallback(tmp_path):
    geo = Geometry(SPACING, ORIGIN)
    inside = _scan(tmp_path, "gated-in", 45)
    outside = _scan(tmp_path, "gated-out", 90)  # RCA lesion far right, outside the box
    failed = _scan(tmp_path, "gated-fail", 45)
    box_lo = index_to_physical(geo, [30, 20, 0])[0]
    box_hi = index_to_physical(geo, [60, 80, 19])[0]
    boxes = []
    for case, plausible in ((inside, True), (outside, True), (failed, False)):
        problem = "" if plausible else "empty heart prediction"
        row = {"case_id": case["case_id"], "plausible": plausible, "problem": problem}
        row.update({f"box_lo_{a}": v for a, v in zip("xyz", box_lo, strict=True)})
        row.update({f"box_hi_{a}": v for a, v in zip("xyz", box_hi, strict=True)})
        boxes.append(row)
    pd.DataFrame([inside, outside, failed]).to_csv(tmp_path / "cases.csv", index=False)
    pd.DataFrame(boxes).to_csv(tmp_path / "boxes.csv", index=False)
    params = CropParams(margin_xy_mm=2.0, model_spacing_mm=(1.0, 1.0, 3.0), model_size=(64, 64, 24))
    index = crop_all(tmp_path / "cases.csv", tmp_path / "boxes.csv", tmp_path / "crops", tmp_path / "index.csv",
                     tmp_path / "containment.csv", tmp_path / "qc.csv", params, AgatstonParams())  # fmt: skip
    index = index.set_index("case_id")
    assert index.loc["gated-in", "score_in_crop"] == 1.0
    assert index.loc["gated-in", "calcium_voxels_in_crop"] == 1.0
    assert index.loc["gated-out", "score_in_crop"] < 1.0
    assert bool(index.loc["gated-fail", "fallback"]) and not bool(index.loc["gated-in", "fallback"])
    qc = pd.read_csv(tmp_path / "qc.csv")
    assert set(qc.case_id) == {"gated-out", "gated-fail"}
    assert qc[qc.case_id == "gated-fail"].action.str.contains("fallback box").all()
    img = np.load(index.loc["gated-in", "image_npy"])
    lab = np.load(index.loc["gated-in", "labels_npy"])
    assert img.shape == lab.shape == (24, 64, 64) and img.dtype == np.int16 and lab.dtype == np.uint8
    assert set(np.unique(lab)) >= {0, 3, 4}
    nii, ngeo = read_volume(index.loc["gated-in", "image_nii"])
    np.testing.assert_array_equal(nii, img)
    assert ngeo.spacing == pytest.approx((1.0, 1.0, 3.0))
    containment = pd.read_csv(tmp_path / "containment.csv")
    assert containment.case_id.tolist()[-1] == "ALL"
    assert 0 < containment.score_in_crop.iloc[-1] < 1
