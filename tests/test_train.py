"""Training: schedule, balanced batches, every experiment learns, resume = uninterrupted."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import cacs.train as train_module
from cacs.agatston import AgatstonParams
from cacs.bundle import crop_meta_path
from cacs.crop import CropParams, crop_all
from cacs.split import split_cases
from cacs.train import TrainConfig, _epoch_batches, learning_rate, train_experiment

TINY_MODELS = {
    "spss": {"channels": [4, 8, 16], "feature_width": 4, "small_dilations": [1, 2], "small_width": 4,
             "large_dilations": [2, 4], "large_width": 4},
    "convnet": {"channels": [4, 8, 16]},
}  # fmt: skip


TINY_CROP = CropParams(model_spacing_mm=(5.0, 5.0, 6.0), model_size=(32, 32, 16), fallback_box_mm=(150.0, 150.0))


@pytest.fixture(scope="module")
def tiny_crops(tiny_ingested, tmp_path_factory) -> str:
    """Crops of the tiny cohort on a 32x32x16 grid (fallback boxes: no localizer needed)."""
    out = tmp_path_factory.mktemp("crops")
    cases = pd.concat([tiny_ingested.tables["gated"], tiny_ingested.tables["nongated"]], ignore_index=True)
    cases.to_csv(out / "cases.csv", index=False)
    split_cases(out / "cases.csv", out / "split.csv", train=0.5, val=0.25, test=0.25, seed=1)
    boxes = pd.DataFrame({"case_id": cases.case_id, "plausible": False, "problem": "no localizer in this test"})
    boxes.to_csv(out / "boxes.csv", index=False)
    crop_all(out / "split.csv", out / "boxes.csv", out / "vol", out / "index.csv", out / "cont.csv", out / "qc.csv",
             TINY_CROP, AgatstonParams())  # fmt: skip
    return str(out / "index.csv")


def test_sgdr_schedule_reads_the_paper():
    cfg = TrainConfig(lr=2e-3, lr_restart=1e-3, lr_min=0.0, cycle_epochs=5)
    lrs = [learning_rate(cfg, e) for e in range(1, 12)]
    assert lrs[0] == pytest.approx(2e-3)
    assert lrs[5] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)  # restarts from the 6th epoch
    assert all(a > b for a, b in zip(lrs[:5], lrs[1:5], strict=False))


def test_batches_mix_cohorts_equally_and_cover_the_longer_list():
    batches = _epoch_batches([0, 1, 2], [3, 4, 5, 6, 7], 2, np.random.default_rng(0))
    assert all(len(b) == 4 and sum(i < 3 for i in b) == 2 for b in batches)
    assert {i for b in batches for i in b} >= {3, 4, 5, 6, 7}


def _cfg(model: str, **kw) -> TrainConfig:
    base = dict(model=model, model_config=TINY_MODELS[model], epochs=4, lr=0.01, lr_restart=0.01, cycle_epochs=50,
                seed=3, device="cpu")  # fmt: skip
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize(
    ("name", "model", "loss"),
    [("spss", "spss", {}), ("spss_wo_ssl", "spss", {"semantic": False}),
     ("spss_ce", "spss", {"negative_sampling": "ce"}), ("convnet", "convnet", {})],
)  # fmt: skip
def test_each_experiment_lowers_its_loss(tiny_crops, tmp_path, name, model, loss):
    metrics = train_experiment(name, tiny_crops, tmp_path, _cfg(model, loss=loss))
    assert len(metrics) == 4
    assert metrics.loss_total.iloc[-1] < metrics.loss_total.iloc[0]
    assert {"val_mae_total", "lr"} <= set(metrics.columns)
    if model == "spss":
        assert {"loss_dice", "loss_f", "loss_ssl", "loss_rsl"} <= set(metrics.columns)
        if loss.get("semantic") is False:
            assert (metrics.loss_ssl == 0).all()
    assert (tmp_path / "model.pt").exists() and (tmp_path / "checkpoint.pt").exists()


def test_interrupt_and_resume_gives_the_same_weights(tiny_crops, tmp_path, monkeypatch):
    train_experiment("a", tiny_crops, tmp_path / "a", _cfg("spss", epochs=3))
    real_lr = train_module.learning_rate

    def killed_in_epoch_3(cfg, epoch):
        if epoch == 3:
            raise RuntimeError("simulated kill")
        return real_lr(cfg, epoch)

    monkeypatch.setattr(train_module, "learning_rate", killed_in_epoch_3)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_experiment("b", tiny_crops, tmp_path / "b", _cfg("spss", epochs=3))
    assert not (tmp_path / "b" / "model.pt").exists()
    before = pd.read_csv(tmp_path / "b" / "metrics.csv")
    monkeypatch.setattr(train_module, "learning_rate", real_lr)
    metrics = train_experiment("b", tiny_crops, tmp_path / "b", _cfg("spss", epochs=3))  # continues after epoch 2
    assert metrics.epoch.tolist() == [1, 2, 3]
    # Epochs 1-2 come from the checkpoint (their timings are the first run's), not from a restart.
    assert metrics.seconds.iloc[:2].tolist() == before.seconds.tolist()
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # More epochs later continue the same run too.
    longer = train_experiment("b", tiny_crops, tmp_path / "b", _cfg("spss", epochs=4))
    assert longer.seconds.iloc[:3].tolist() == metrics.seconds.tolist()


def test_a_rerun_on_other_crops_trains_from_scratch(tiny_crops, tmp_path, caplog):
    """A finished run must not be "resumed" when the crops changed (a new heart box, another guard setting)."""
    first = train_experiment("a", tiny_crops, tmp_path / "a", _cfg("spss", epochs=2))
    index = pd.read_csv(tiny_crops, keep_default_na=False)
    row = index.index[index.split == "train"][0]
    moved = tmp_path / "moved_image.npy"
    image = np.load(index.loc[row, "image_npy"])
    np.save(moved, np.roll(image, 1, axis=2))  # the same scan, cropped one voxel further left
    index.loc[row, "image_npy"] = str(moved)
    index.to_csv(tmp_path / "index.csv", index=False)
    shutil.copy(crop_meta_path(tiny_crops), crop_meta_path(tmp_path / "index.csv"))  # the same crop settings
    with caplog.at_level(logging.WARNING, logger="cacs.train"):
        again = train_experiment("a", tmp_path / "index.csv", tmp_path / "a", _cfg("spss", epochs=2))
    assert "trained on other crops" in caplog.text
    assert again.seconds.tolist() != first.seconds.tolist()  # both epochs ran again
    assert train_experiment("a", tmp_path / "index.csv", tmp_path / "a", _cfg("spss", epochs=2)).seconds.tolist() == (
        again.seconds.tolist()
    )  # the same crops again: resumed (nothing left to run)


def test_config_rejects_unknown_keys_and_odd_batches():
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"model": "spss", "epochz": 3})
    with pytest.raises(ValueError, match="even"):
        TrainConfig(batch_size=3)


def test_onecycle_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(schedule="onecycle", lr=2e-3, lr_min=1e-6, epochs=4, warmup_fraction=0.25)
    lrs = [learning_rate(cfg, e, s, 10) for e in range(1, 5) for s in range(10)]
    peak = int(np.argmax(lrs))
    assert lrs[0] == pytest.approx(2e-3 / 25) and max(lrs) == pytest.approx(2e-3, rel=1e-2)
    assert 8 <= peak <= 11  # a quarter of 40 steps
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))
    assert lrs[-1] == pytest.approx(1e-6)


def _scan(labels: np.ndarray, gated: bool = True) -> train_module.Scan:
    hu = np.where(labels > 0, 400.0, 40.0).astype(np.float32)
    return train_module.Scan(
        case_id="c", gated=gated, x=(hu / 1000)[None], hu=hu, labels=labels.astype(np.int64),
        weight=np.where(labels > 0, 4.0, 0.0).astype(np.float32), voxel_factor=0.5,
        ref=np.zeros(4, np.float32), foreground=np.argwhere(labels > 0).astype(np.int32),
    )  # fmt: skip


def test_patch_target_is_eq1_of_the_reference_inside_the_patch():
    labels = np.zeros((16, 32, 32), np.int64)
    labels[2:4, 2:4, 2:4] = 3  # LAD, 8 voxels inside the patch below
    labels[12:14, 28:30, 28:30] = 4  # RCA, outside it
    patch = train_module.cut_patch(_scan(labels), (0, 0, 0), (8, 16, 16))
    assert patch.x.shape == (1, 8, 16, 16) and patch.labels.shape == (8, 16, 16)
    np.testing.assert_allclose(patch.ref, [0.0, 0.0, 8 * 4.0 * 0.5, 0.0])


def test_foreground_oversampling_centres_patches_on_calcium():
    labels = np.zeros((32, 64, 64), np.int64)
    labels[20, 50, 50] = 2
    scans = [_scan(labels), _scan(np.zeros_like(labels)), _scan(np.zeros_like(labels), gated=False)]
    cfg = TrainConfig(patch_size=(16, 16, 8), foreground_fraction=1.0)
    plan = train_module.plan_epoch(scans, [0, 1], [2], 1, 50, cfg, np.random.default_rng(0))
    for gated_slot, nongated_slot in plan:
        z, y, x = gated_slot.origin
        assert gated_slot.scan == 0 and z <= 20 < z + 8 and y <= 50 < y + 16 and x <= 50 < x + 16
        assert nongated_slot == train_module.Sample(2)  # non-gated: always the whole crop
    uniform = train_module.plan_epoch(scans, [0, 1], [2], 1, 200, TrainConfig(patch_size=(16, 16, 8)),
                                      np.random.default_rng(0))  # fmt: skip
    hits = [s.origin for s, _ in uniform if s.scan == 0 and s.origin[0] <= 20 < s.origin[0] + 8
            and s.origin[1] <= 50 < s.origin[1] + 16 and s.origin[2] <= 50 < s.origin[2] + 16]  # fmt: skip
    assert len(hits) < 40  # without oversampling calcium is rarely in a patch
    with pytest.raises(ValueError, match="larger than the crops"):
        train_module.check_patch_size(TrainConfig(patch_size=(128, 16, 8)), labels.shape)


def test_uniform_patches_reach_the_crop_faces():
    """Bone at a crop's edge must be a negative too: a face voxel lies in about (patch / 2) / crop of the
    uniform patches (33 / 112 here), not in 1 of (crop - patch + 1) = 49 as with uniform corners."""
    rng = np.random.default_rng(0)
    shape, size = (48, 112, 112), (32, 64, 64)
    origins = np.array([train_module._patch_origin(shape, size, rng) for _ in range(4000)])
    assert (origins >= 0).all() and (origins <= np.subtract(shape, size)).all()  # always inside the crop
    for axis in (1, 2):
        low_face = (origins[:, axis] == 0).mean()  # patches holding voxel 0 of this axis
        high_face = (origins[:, axis] == shape[axis] - size[axis]).mean()
        assert low_face == pytest.approx(33 / 112, abs=0.03) and high_face == pytest.approx(32 / 112, abs=0.03)
    centre = ((origins[:, 2] <= 56) & (56 < origins[:, 2] + 64)).mean()
    assert centre == 1.0  # the middle stays in every patch


def test_patch_recipe_learns_and_resumes_bit_identically(tiny_crops, tmp_path, monkeypatch):
    recipe = dict(optimizer="adamw", schedule="onecycle", lr=3e-3, lr_min=1e-5, weight_decay=1e-4,
                  steps_per_epoch=3, patch_size=(16, 16, 12), foreground_fraction=0.67, epochs=3, amp=True)  # fmt: skip
    metrics = train_experiment("a", tiny_crops, tmp_path / "a", _cfg("spss", **recipe))
    assert metrics.loss_total.iloc[-1] < metrics.loss_total.iloc[0]
    assert {"loss_dice", "loss_ls", "loss_f", "loss_ssl", "loss_rsl"} <= set(metrics.columns)
    real_plan = train_module.plan_epoch

    def killed_in_epoch_3(scans, gated, nongated, half, steps, cfg, rng):
        if killed_in_epoch_3.calls == 2:
            raise RuntimeError("simulated kill")
        killed_in_epoch_3.calls += 1
        return real_plan(scans, gated, nongated, half, steps, cfg, rng)

    killed_in_epoch_3.calls = 0
    monkeypatch.setattr(train_module, "plan_epoch", killed_in_epoch_3)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_experiment("b", tiny_crops, tmp_path / "b", _cfg("spss", **recipe))
    monkeypatch.setattr(train_module, "plan_epoch", real_plan)
    train_experiment("b", tiny_crops, tmp_path / "b", _cfg("spss", **recipe))
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_warning_names_grids_that_reach_an_extent_of_two():
    """(16, 16, 8) patches reach z = 2 at the third level of a 3-level SPSS: oneDNN's bf16 is then irreproducible."""
    cfg = _cfg("spss", patch_size=(16, 16, 8), amp=True)
    assert len(train_module.warn_nondeterministic_bf16(cfg, (16, 32, 32), amp=True)) == 1  # the patch, not the crop
    assert train_module.warn_nondeterministic_bf16(cfg, (16, 32, 32), amp=False) == []
    assert train_module.warn_nondeterministic_bf16(cfg, (16, 32, 32), True, device_type="cuda") == []  # auto -> GPU
    assert train_module.warn_nondeterministic_bf16(_cfg("spss", patch_size=(16, 16, 12)), (16, 32, 32), True) == []
    default = _cfg("spss", model_config={"channels": [8, 16, 32, 64]}, patch_size=(64, 64, 32))
    assert train_module.warn_nondeterministic_bf16(default, (48, 112, 112), True) == []  # the default run's grid


def test_augmentation_changes_only_the_network_input_and_is_reproducible():
    labels = np.zeros((16, 32, 32), np.int64)
    labels[8, 10:12, 10:12] = 1
    scan = _scan(labels)
    a = train_module.augment(scan, 30.0, 7, 1.0)
    b = train_module.augment(scan, 30.0, 7, 1.0)
    np.testing.assert_array_equal(a.x, b.x)  # same seed, same input: resume replays it
    assert a.x.dtype == np.float32 and a.x.shape == scan.x.shape
    noise = (a.x - train_module.augment(scan, 0.0, 7, 1.0).x) * train_module.HU_SCALE
    assert 25 < noise.std() < 35
    blurred = train_module.augment(scan, 0.0, 0, 1.0).x[0]
    assert blurred[8, 10, 10] < scan.x[0, 8, 10, 10] and blurred[7, 10, 10] > scan.x[0, 7, 10, 10]  # z only
    np.testing.assert_array_equal(blurred[:, 20, 20], scan.x[0, :, 20, 20])  # flat columns are unchanged
    for field in ("hu", "labels", "weight", "ref"):
        np.testing.assert_array_equal(getattr(a, field), getattr(scan, field))
    assert train_module.augment(scan, 0.0, 0, 0.0) is scan


def test_confuser_cells_group_bright_non_calcium_voxels_by_cube():
    """Every voxel >= the threshold that is not calcium is in exactly one cube's list; calcium in none."""
    hu = np.full((16, 48, 48), 40.0, np.float32)
    labels = np.zeros(hu.shape, np.int64)
    hu[:, 30:46, 20:28] = 300.0  # a big bright block (the spine)
    hu[2, 2, 2] = 560.0  # a rib's cross-section in a corner of the crop
    hu[8, 10, 40] = labels[8, 10, 40] = 500.0  # calcium
    labels[8, 10, 40] = 3
    cells = train_module.confuser_cells(hu, labels, 130.0, cell=16)
    together = np.concatenate(cells)
    assert len(together) == int(((hu >= 130) & (labels == 0)).sum()) == len({tuple(v) for v in together})
    assert not any((cell == [8, 10, 40]).all(1).any() for cell in cells)
    corner = [cell for cell in cells if (cell == [2, 2, 2]).all(1).any()]
    assert len(corner) == 1 and len(corner[0]) == 1  # the rib has a cube of its own, the spine's fill others
    assert train_module.confuser_cells(np.zeros((4, 4, 4), np.float32), np.zeros((4, 4, 4), np.int64), 130) == []


def test_confuser_patches_show_the_rare_bright_structures():
    """confuser_fraction: patches of the scheduled scan centred on a cube of bright non-calcium voxels, so that
    a rib end in a corner is in about as many patches as the spine, whose voxels outnumber its 800 to 1."""
    labels = np.zeros((32, 96, 96), np.int64)
    scan = _scan(labels)
    scan.hu[:, 60:90, 40:60] = 300.0  # spine
    scan.hu[1, 1, 1] = 560.0  # rib end
    scan.confusers = train_module.confuser_cells(scan.hu, labels, 130.0)
    cfg = TrainConfig(patch_size=(16, 16, 8), confuser_fraction=1.0)
    plan = train_module.plan_epoch([scan, _scan(labels, gated=False)], [0], [1], 1, 300, cfg,
                                   np.random.default_rng(0))  # fmt: skip

    def holding_the_rib(batches):
        return sum(s.origin[0] <= 1 < s.origin[0] + 8 and s.origin[1] <= 1 < s.origin[1] + 16
                   and s.origin[2] <= 1 < s.origin[2] + 16 for s, _ in batches)  # fmt: skip

    rib = holding_the_rib(plan)
    assert rib > 300 / (2 * len(scan.confusers))  # about a cube's share, not the rib's 1 / 19,000 of the voxels
    uniform = train_module.plan_epoch([scan, _scan(labels, gated=False)], [0], [1], 1, 300,
                                      TrainConfig(patch_size=(16, 16, 8)), np.random.default_rng(0))  # fmt: skip
    assert rib > 3 * holding_the_rib(uniform)
    with pytest.raises(ValueError, match="confuser_fraction"):
        TrainConfig(foreground_fraction=0.8, confuser_fraction=0.3)


def test_calcium_free_nongated_scans_become_patches_calcified_ones_stay_whole():
    """nongated_zero_patches: eq. 5 with target 0 is exact on any part of a calcium-free scan; a calcified
    non-gated scan's reference is a whole-scan score, so it stays a whole crop."""
    labels = np.zeros((32, 64, 64), np.int64)
    free, calcified = _scan(labels, gated=False), _scan(labels, gated=False)
    calcified.ref = np.array([0.0, 0.0, 30.0, 0.0], np.float32)
    free.hu[5, 5, 5] = 560.0
    free.confusers = train_module.confuser_cells(free.hu, labels, 130.0)
    cfg = TrainConfig(patch_size=(16, 16, 8), nongated_zero_patches=True, foreground_fraction=0.5,
                      confuser_fraction=0.5)  # fmt: skip
    plan = train_module.plan_epoch([_scan(labels), free, calcified], [0], [1, 2], 1, 40, cfg,
                                   np.random.default_rng(0))  # fmt: skip
    nongated = [batch[-1] for batch in plan]
    assert {s.scan for s in nongated} == {1, 2}
    assert all(s.origin is None for s in nongated if s.scan == 2)
    patches = [s for s in nongated if s.scan == 1]
    assert patches and all(s.origin is not None and s.noise_sd_hu == 0 and s.blur_z_vox == 0 for s in patches)
    assert all(s.origin[0] <= 5 < s.origin[0] + 8 for s in patches)  # confuser_fraction / (1 - fg) = 1
    groups = train_module._groups(plan[0], [_scan(labels), free, calcified], cfg)
    assert sum(len(g) for g in groups) == len(plan[0])
    off = train_module.plan_epoch([_scan(labels), free, calcified], [0], [1, 2], 1, 10,
                                  TrainConfig(patch_size=(16, 16, 8)), np.random.default_rng(0))  # fmt: skip
    assert all(batch[-1].origin is None for batch in off)  # the paper's way: whole crops


def test_validate_every_leaves_nan_between_validations(tiny_crops, tmp_path):
    metrics = train_experiment("v", tiny_crops, tmp_path, _cfg("spss", epochs=5, validate_every=2))
    validated = metrics.val_mae_total.notna().tolist()
    assert validated == [False, True, False, True, True]  # every 2nd epoch and the last
    assert set(train_module.VALIDATION_COLUMNS) <= set(metrics.columns)


def test_channels_last_is_used_without_bf16_unless_switched_off():
    assert train_module.use_channels_last(TrainConfig(), amp=False)
    assert not train_module.use_channels_last(TrainConfig(channels_last=False), amp=False)
    assert train_module.use_channels_last(TrainConfig(channels_last=False), amp=True)  # bf16 always uses it


class _FixedMaps(torch.nn.Module):
    """Stand-in SPSS model: p(CAC) = ``p_in`` inside ``box`` (artery LAD there), ``p_out`` elsewhere."""

    def __init__(self, shape, box, p_in: float, p_out: float):
        super().__init__()
        logit = np.full(shape, np.log(p_out / (1 - p_out)), np.float32)
        logit[box] = np.log(p_in / (1 - p_in))
        self.cac = torch.stack([torch.zeros(shape), torch.from_numpy(logit)])[None]
        art = torch.zeros((1, 4, *shape))
        art[0, 2] = 5.0  # LAD everywhere
        self.art = art

    def forward(self, x):
        from cacs.models.spss import SPSSOutput

        return SPSSOutput(self.cac, self.art)


def test_validation_bias_scores_label_maps_clinically_not_eq1_soft_sums():
    """Faint calcium probabilities over bone count for eq. 1's soft score, never for the clinical one."""
    shape = (8, 16, 16)
    hu = np.full(shape, 40.0, np.float32)
    bone = (slice(2, 6), slice(2, 8), slice(2, 8))
    hu[bone] = 600.0
    labels = np.zeros(shape, np.int64)
    scan = _scan(labels, gated=True)
    scan = train_module.dataclasses.replace(scan, hu=hu, x=(hu / 1000)[None], spacing=(1.5, 1.5, 3.0))
    cfg = TrainConfig(model="spss", channels_last=False)
    faint = _FixedMaps(shape, bone, p_in=0.2, p_out=0.01)
    assert train_module.evaluate_bias(faint, cfg, [scan], torch.device("cpu"), False)["val_mae_total"] == 0.0
    sure = _FixedMaps(shape, bone, p_in=0.9, p_out=0.01)
    mask = np.zeros(shape, np.int64)
    mask[bone] = 3  # what the decision rule labels: the bone, as LAD
    expected = train_module.agatston_scores(hu, mask, (1.5, 1.5, 3.0), AgatstonParams())
    bias = train_module.evaluate_bias(sure, cfg, [scan], torch.device("cpu"), False)
    assert expected["LAD"] > 0
    assert bias["val_mae_total"] == pytest.approx(expected["total"], rel=1e-6)
    assert bias["val_mae_artery"] == pytest.approx(expected["LAD"] / 4, rel=1e-6)
    with pytest.raises(ValueError, match="no spacing"):
        train_module.evaluate_bias(sure, cfg, [train_module.dataclasses.replace(scan, spacing=None)],
                                   torch.device("cpu"), False)  # fmt: skip
