"""Heart localiser: geometry helpers, a short training run, resume, inference."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from cacs.io.nifti import Geometry, read_volume
from cacs.localizer import (
    LocalizerParams,
    build_unet,
    dice,
    largest_component,
    load_localizer,
    mask_bounding_box_mm,
    mask_volume_ml,
    network,
    predict_heart,
    prepare_input,
    resample_to_spacing,
    train_localizer,
)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
FLIP_XZ = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
ROT_Z90 = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)

# Small and coarse enough that an epoch on the tiny cohort takes well under a second.
FAST = LocalizerParams(
    spacing_mm=(8.0, 8.0, 8.0),
    channels=(4, 8, 16, 32, 64),
    patch_size=(48, 48, 32),
    epochs=6,
    lr=3e-3,
    device="cpu",
)


def _physical(geometry: Geometry, index_xyz: np.ndarray) -> np.ndarray:
    """Reference index -> mm mapping through SimpleITK itself."""
    image = geometry.apply(sitk.Image(4, 4, 4, sitk.sitkUInt8))
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in p]) for p in index_xyz])


def _centroid_mm(weights: np.ndarray, geometry: Geometry) -> np.ndarray:
    kji = np.argwhere(weights > 0)
    w = weights[tuple(kji.T)].astype(float)
    return (_physical(geometry, kji[:, ::-1]) * w[:, None]).sum(axis=0) / w.sum()


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    "bad",
    [
        {"spacing_mm": (4.0, 0.0, 4.0)},
        {"hu_window": (100.0, -100.0)},
        {"channels": (16,)},
        {"patch_size": (96, 96, 40)},
        {"epochs": 0},
        {"batch_size": 0},
        {"lr": 0.0},
        {"val_fraction": 1.0},
        {"device": "tpu"},
    ],
)
def test_params_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="localizer"):
        LocalizerParams(**bad)


def test_params_round_trip_through_dict():
    params = LocalizerParams(channels=[4, 8, 16], patch_size=[32, 32, 16])
    assert params.channels == (4, 8, 16)
    assert LocalizerParams.from_dict(params.to_dict()) == params
    assert LocalizerParams().downsampling_factor == 16  # the paper's four downsampling steps


def test_build_unet_has_four_downsampling_steps():
    net = build_unet(LocalizerParams(channels=(2, 4, 8, 16, 32)))
    out = net(torch.zeros(1, 1, 16, 32, 16))
    assert out.shape == (1, 2, 16, 32, 16)


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("direction", [IDENTITY, FLIP_XZ])
def test_resampling_keeps_physical_placement(direction):
    geometry = Geometry(spacing=(0.8, 1.2, 2.5), origin=(-120.0, 35.0, -410.0), direction=direction)
    hu = np.full((40, 60, 90), -1000.0, dtype=np.float32)  # (z, y, x)
    label = np.zeros(hu.shape, dtype=np.uint8)
    block = (slice(12, 18), slice(20, 32), slice(50, 70))  # 15 x 14.4 x 16 mm
    hu[block] = 1000.0
    label[block] = 1
    expected = _centroid_mm(label.astype(float), geometry)

    coarse, cg = resample_to_spacing(hu, geometry, (4.0, 4.0, 4.0), is_label=False)
    assert cg.spacing == (4.0, 4.0, 4.0)
    assert cg.origin == geometry.origin and cg.direction == geometry.direction
    assert coarse.shape == (25, 18, 18)  # ceil(extent / 4 mm), (z, y, x)
    assert coarse.dtype == np.float32
    np.testing.assert_allclose(_centroid_mm(np.clip(coarse + 1000.0, 0, None), cg), expected, atol=0.5)

    coarse_label, lg = resample_to_spacing(label, geometry, (4.0, 4.0, 4.0), is_label=True)
    assert lg == cg and coarse_label.dtype == np.uint8 and set(np.unique(coarse_label)) == {0, 1}
    np.testing.assert_allclose(_centroid_mm(coarse_label.astype(float), lg), expected, atol=2.0)


def test_prepare_input_clips_and_scales_to_unit_range():
    geometry = Geometry(spacing=(4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0))
    hu = np.full((8, 8, 8), -3024, dtype=np.int16)
    hu[:, :, 4:] = 3000
    hu[:, 4:, :] = 0
    x, cg = prepare_input(hu, geometry, LocalizerParams())
    assert x.dtype == np.float32 and x.shape == (8, 8, 8) and cg == geometry
    assert x.min() == -1.0 and x.max() == 1.0
    assert x[0, 6, 0] == pytest.approx(0.0, abs=1e-6)


def _box_phantom():
    mask = np.zeros((10, 20, 30), dtype=np.uint8)  # (z, y, x)
    mask[1:4, 2:5, 5:10] = 1  # x 5..9, y 2..4, z 1..3
    return mask


def test_bounding_box_anisotropic_non_zero_origin():
    geometry = Geometry(spacing=(0.5, 2.0, 3.0), origin=(10.0, -20.0, 100.0))
    lo, hi = mask_bounding_box_mm(_box_phantom(), geometry)
    np.testing.assert_allclose(lo, [10 + 4.5 * 0.5, -20 + 1.5 * 2.0, 100 + 0.5 * 3.0])
    np.testing.assert_allclose(hi, [10 + 9.5 * 0.5, -20 + 4.5 * 2.0, 100 + 3.5 * 3.0])
    assert mask_volume_ml(_box_phantom(), geometry) == pytest.approx(45 * 0.5 * 2.0 * 3.0 / 1000)


def test_bounding_box_flipped_direction():
    geometry = Geometry(spacing=(0.5, 2.0, 3.0), origin=(10.0, -20.0, 100.0), direction=FLIP_XZ)
    lo, hi = mask_bounding_box_mm(_box_phantom(), geometry)
    np.testing.assert_allclose(lo, [10 - 9.5 * 0.5, -20 + 1.5 * 2.0, 100 - 3.5 * 3.0])
    np.testing.assert_allclose(hi, [10 - 4.5 * 0.5, -20 + 4.5 * 2.0, 100 - 0.5 * 3.0])


def test_bounding_box_rotated_direction_matches_simpleitk():
    geometry = Geometry(spacing=(0.5, 2.0, 3.0), origin=(10.0, -20.0, 100.0), direction=ROT_Z90)
    lo, hi = mask_bounding_box_mm(_box_phantom(), geometry)
    corners = _physical(geometry, np.array([[x, y, z] for x in (4.5, 9.5) for y in (1.5, 4.5) for z in (0.5, 3.5)]))
    np.testing.assert_allclose(lo, corners.min(axis=0))
    np.testing.assert_allclose(hi, corners.max(axis=0))
    np.testing.assert_allclose(lo, [10 - 4.5 * 2.0, -20 + 4.5 * 0.5, 100 + 0.5 * 3.0])  # x <- -y, y <- x


def test_bounding_box_empty_mask_raises():
    with pytest.raises(ValueError, match="empty"):
        mask_bounding_box_mm(np.zeros((3, 3, 3), np.uint8), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))


def test_dice():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    assert dice(a, b) == 1.0
    a[0, 0, :2] = True
    assert dice(a, b) == 0.0
    b[0, 0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        dice(a, b[:2])


def test_largest_component_drops_smaller_blobs():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:10, 2:10, 2:10] = 1
    mask[14:17, 14:17, 14:17] = 1
    kept = largest_component(mask)
    assert kept.dtype == np.uint8 and kept.sum() == 8**3 and kept[15, 15, 15] == 0
    assert largest_component(np.zeros((3, 3, 3))).sum() == 0


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def segthor_csv(tiny_ingested, tmp_path_factory) -> Path:
    table = tiny_ingested.tables["segthor"].copy()
    for col in ("image", "heart"):
        table[col] = [str(Path(p).resolve()) if isinstance(p, str) and p else p for p in table[col]]
    dest = tmp_path_factory.mktemp("localizer") / "segthor.csv"
    table.to_csv(dest, index=False)
    return dest


@pytest.fixture(scope="module")
def trained(segthor_csv, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("trained")
    return out, train_localizer(segthor_csv, out, FAST, progress=False)


def test_training_loss_falls_and_writes_outputs(trained, segthor_csv):
    out, metrics = trained
    assert list(metrics["epoch"]) == list(range(1, FAST.epochs + 1))
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    for name in ("metrics.csv", "checkpoint.pt", "model.pt", "dice.csv"):
        assert (out / name).is_file(), name
    on_disk = pd.read_csv(out / "metrics.csv")
    assert list(on_disk.columns) == ["epoch", "train_loss", "val_dice", "lr", "seconds"]
    pd.testing.assert_frame_equal(on_disk[["epoch", "train_loss"]], metrics[["epoch", "train_loss"]], check_dtype=False)
    assert on_disk["val_dice"].between(0, 1).all()

    table = pd.read_csv(segthor_csv)
    train_ids = set(table.loc[table["split"] == "train", "case_id"])
    dice_table = pd.read_csv(out / "dice.csv")
    assert len(dice_table) == 1  # 25 % of 4 training cases, held out
    assert set(dice_table["case_id"]) <= train_ids
    assert dice_table["dice"].between(0, 1).all()

    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["heldout_ids"] == list(dice_table["case_id"])
    assert not set(payload["heldout_ids"]) & set(payload["fit_ids"])
    assert LocalizerParams.from_dict(payload["params"]) == FAST


def test_resume_gives_the_same_weights(segthor_csv, tmp_path, caplog):
    params = replace(FAST, epochs=4)
    straight = train_localizer(segthor_csv, tmp_path / "straight", params, progress=False)
    train_localizer(segthor_csv, tmp_path / "resumed", replace(params, epochs=2), progress=False)
    with caplog.at_level(logging.INFO, logger="cacs.localizer"):
        resumed = train_localizer(segthor_csv, tmp_path / "resumed", params, progress=False)
    assert "resuming" in caplog.text

    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    on_disk = pd.read_csv(tmp_path / "resumed" / "metrics.csv")
    assert list(on_disk["epoch"]) == [1, 2, 3, 4]
    cols = ["epoch", "train_loss", "val_dice"]
    pd.testing.assert_frame_equal(resumed[cols], straight[cols])
    pd.testing.assert_frame_equal(on_disk[cols], straight[cols], check_dtype=False)


def test_changed_params_discard_the_checkpoint(segthor_csv, tmp_path, caplog):
    train_localizer(segthor_csv, tmp_path, replace(FAST, epochs=1), progress=False)
    with caplog.at_level(logging.WARNING, logger="cacs.localizer"):
        metrics = train_localizer(segthor_csv, tmp_path, replace(FAST, epochs=1, lr=1e-3), progress=False)
    assert "ignoring" in caplog.text and "lr" in caplog.text
    assert list(metrics["epoch"]) == [1]


def test_predict_heart_on_coarse_grid(trained, segthor_csv, tiny_ingested):
    out, _ = trained
    model, params = load_localizer(out / "model.pt", device="cpu")
    assert params == FAST and not model.training
    row = tiny_ingested.tables["segthor"].query("split == 'test'").iloc[0]
    hu, geometry = read_volume(row["image"])
    mask, cg = predict_heart(model, params, hu, geometry, "cpu")
    x, expected_geometry = prepare_input(hu, geometry, params)
    assert cg == expected_geometry and cg.spacing == params.spacing_mm
    assert mask.shape == x.shape and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    assert np.array_equal(mask, largest_component(mask))


def test_predict_heart_keeps_only_the_largest_component(trained, monkeypatch):
    out, _ = trained
    model, params = load_localizer(out / "model.pt", device="cpu")
    hu = np.full((30, 40, 40), -1000, dtype=np.int16)
    geometry = Geometry(spacing=(8.0, 8.0, 8.0), origin=(-50.0, 20.0, 300.0))

    def fake_argmax(model, params, x, device):
        pred = np.zeros(x.shape, np.uint8)
        pred[5:15, 5:15, 5:15] = 1  # the heart
        pred[20:23, 30:33, 30:33] = 1  # a stray blob that would stretch the box
        return pred

    monkeypatch.setattr(network, "_coarse_argmax", fake_argmax)
    mask, cg = predict_heart(model, params, hu, geometry)
    assert mask.sum() == 1000 and mask[21, 31, 31] == 0
    lo, hi = mask_bounding_box_mm(mask, cg)
    np.testing.assert_allclose(lo, [-50 + 4.5 * 8, 20 + 4.5 * 8, 300 + 4.5 * 8])
    np.testing.assert_allclose(hi, [-50 + 14.5 * 8, 20 + 14.5 * 8, 300 + 14.5 * 8])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_raises(segthor_csv, tmp_path):
    with pytest.raises(RuntimeError, match="CUDA"):
        train_localizer(segthor_csv, tmp_path, replace(FAST, device="cuda"), progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_cardiac_fov_augmentation_masks_outside_a_disk_around_the_heart():
    """Gated scans show a ~200 mm disk around the heart: the augmentation mimics that."""
    from cacs.localizer import RandCardiacFOVd

    image = torch.zeros((1, 4, 60, 60))
    label = torch.zeros((1, 4, 60, 60))
    label[:, :, 25:35, 30:40] = 1
    fov = RandCardiacFOVd(("image", "label"), (4.0, 4.0), prob=1.0, diameter_mm=(100.0, 100.0), jitter_mm=0.0)
    fov.set_random_state(seed=0)
    out = fov({"image": image, "label": label})
    assert out["image"][0, 0, 0, 0] == -1.0  # corner: outside the 100 mm disk
    assert out["image"][0, 0, 30, 35] == 0.0  # heart centre: inside
    assert out["label"].sum() == label.sum()  # the heart fits in the disk
    assert image.max() == 0.0  # the input is not modified in place
    skip = RandCardiacFOVd(("image", "label"), (4.0, 4.0), prob=0.0)
    assert torch.equal(skip({"image": image, "label": label})["image"], image)
