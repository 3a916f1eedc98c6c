"""Training: schedule, balanced batches, every experiment learns, resume = uninterrupted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import cacs.train as train_module
from cacs.agatston import AgatstonParams
from cacs.crop import CropParams, crop_all
from cacs.split import split_cases
from cacs.train import TrainConfig, _epoch_batches, learning_rate, train_experiment

TINY_MODELS = {
    "spss": {"channels": [4, 8, 16], "feature_width": 4, "small_dilations": [1, 2], "small_width": 4,
             "large_dilations": [2, 4], "large_width": 4},
    "convnet": {"channels": [4, 8, 16]},
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_crops(tiny_ingested, tmp_path_factory) -> str:
    """Crops of the tiny cohort on a 32x32x16 grid (fallback boxes: no localizer needed)."""
    out = tmp_path_factory.mktemp("crops")
    cases = pd.concat([tiny_ingested.tables["gated"], tiny_ingested.tables["nongated"]], ignore_index=True)
    cases.to_csv(out / "cases.csv", index=False)
    split_cases(out / "cases.csv", out / "split.csv", train=0.5, val=0.25, test=0.25, seed=1)
    boxes = pd.DataFrame({"case_id": cases.case_id, "plausible": False, "problem": "no localizer in this test"})
    boxes.to_csv(out / "boxes.csv", index=False)
    params = CropParams(model_spacing_mm=(5.0, 5.0, 6.0), model_size=(32, 32, 16), fallback_box_mm=(150.0, 150.0))
    crop_all(out / "split.csv", out / "boxes.csv", out / "vol", out / "index.csv", out / "cont.csv", out / "qc.csv",
             params, AgatstonParams())  # fmt: skip
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


def test_config_rejects_unknown_keys_and_odd_batches():
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"model": "spss", "epochz": 3})
    with pytest.raises(ValueError, match="even"):
        TrainConfig(batch_size=3)
