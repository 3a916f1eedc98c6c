"""Prediction: native label maps, clinical scores from them on the native scan, the table contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import cacs.predict as predict_module
from cacs import ARTERIES, SCORE_COLUMNS
from cacs.agatston import AgatstonParams, agatston_scores
from cacs.bundle import experiment_bundle
from cacs.crop import CropParams
from cacs.cvd import cvd_rank
from cacs.heart_boxes import Plausibility
from cacs.io.nifti import Geometry, read_volume
from cacs.models import build_model
from cacs.models.spss import SPSSNet, SPSSOutput
from cacs.native_scoring import roundtrip_labels
from cacs.predict import PREDICTION_COLUMNS, TrainedModel, load_trained, predict_experiment, predict_native
from cacs.train import HU_SCALE
from tests.test_train import TINY_CROP, TINY_MODELS, tiny_crops  # noqa: F401  (fixture)


def tiny_bundle(kind: str, crop: CropParams = TINY_CROP) -> dict:
    """The bundle ``cacs train`` writes into a model file (cacs.bundle), for a tiny network on ``crop``."""
    cfg = {"model": kind, "model_config": TINY_MODELS[kind], "amp": True}
    return experiment_bundle(cfg, crop, AgatstonParams(), Plausibility(), None, {"index": "test"}, "synthetic")


def _save_model(path: Path, kind: str, experiment: str, crop: CropParams = TINY_CROP, bundle: bool = True) -> Path:
    """An untrained tiny model file as ``cacs train`` writes it (``bundle=False``: as it did before bundles)."""
    torch.manual_seed(0)
    net = build_model(kind, TINY_MODELS[kind])
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state_dict": net.state_dict(), "experiment": experiment,
               "config": {"model": kind, "model_config": TINY_MODELS[kind], "amp": True}}  # fmt: skip
    if bundle:
        payload["bundle"] = tiny_bundle(kind, crop)
    torch.save(payload, path)
    return path


class ThresholdOracle(nn.Module):
    """Calls every voxel >= 130 HU calcium of one artery: a model whose answer we can compute."""

    def __init__(self, artery_label: int) -> None:
        super().__init__()
        self.artery = artery_label
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> SPSSOutput:
        calcium = (x[:, 0] * HU_SCALE >= 130).float()
        cac = torch.stack([1 - calcium, calcium], dim=1) * 10
        art = torch.zeros(x.shape[0], 4, *x.shape[2:])
        art[:, self.artery - 1] = 10
        return SPSSOutput(cac, art)

    predict_labels = staticmethod(SPSSNet.predict_labels)


def _oracle(label: int, crop: CropParams = TINY_CROP) -> TrainedModel:
    net = ThresholdOracle(label).eval()
    return TrainedModel("oracle", "spss", net, torch.device("cpu"), amp=False, bundle=tiny_bundle("spss", crop))


def test_label_map_becomes_clinical_scores_per_artery():
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 20, (6, 24, 24)).astype(np.float32)
    hu[2, 5:8, 5:8] = 400  # one lesion, 9 voxels of 1 mm^2 -> weight 4
    hu[4, 10:12, 10:13] = 180  # another, 6 voxels -> weight 1
    grid = Geometry((1.0, 1.0, 3.0), (0.0, 0.0, 0.0))  # the crop is its own native scan
    pred = predict_native(_oracle(3), hu, grid, hu, grid, AgatstonParams())
    scores, labels = pred.scores, pred.labels
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 3}
    assert scores["LAD"] == pytest.approx(9 * 4 + 6 * 1)
    assert scores["total"] == scores["LAD"] and scores["LM"] == scores["LCX"] == scores["RCA"] == 0


def test_predict_experiment_writes_the_contract(tiny_crops, tmp_path):  # noqa: F811
    model = _save_model(tmp_path / "spss" / "model.pt", "spss", "spss")
    table = predict_experiment(model, Path(tiny_crops), tmp_path / "labels", tmp_path / "pred.csv", AgatstonParams(),
                               device="cpu")  # fmt: skip
    index = pd.read_csv(tiny_crops, keep_default_na=False).set_index("case_id")
    assert list(pd.read_csv(tmp_path / "pred.csv").columns) == list(PREDICTION_COLUMNS)
    assert sorted(table.case_id) == sorted(index[index.split == "test"].index)
    assert set(table.cohort) == {"gated", "nongated"}
    for row in table.itertuples():
        crop = index.loc[row.case_id]
        assert row.image == crop.source_image and row.ref_labels == crop.source_labels  # the native scan
        hu, geo = read_volume(row.image)
        labels, lgeo = read_volume(row.label_map)
        crop_hu, crop_geo = read_volume(crop.image_nii)
        assert labels.shape == hu.shape and lgeo == geo  # the label map lies on the native scan's grid
        assert hu.shape != crop_hu.shape  # ... which is not the model grid
        rescored = agatston_scores(hu, labels, geo.spacing, AgatstonParams())
        assert [getattr(row, f"pred_{k}") for k in SCORE_COLUMNS] == pytest.approx([rescored[k] for k in SCORE_COLUMNS])
        assert row.pred_rank == cvd_rank(row.pred_total) and row.ref_rank == cvd_rank(row.ref_total)
        assert row.ref_total == pytest.approx(crop.total)
        assert (row.ref_labels != "") == (row.cohort == "gated")
        if row.cohort == "gated":
            ref_labels, ref_geo = read_volume(row.ref_labels)
            assert ref_geo == geo  # reference, prediction and scan overlay
            # The reference mask on the model grid, scored there ...
            grid_labels, _ = read_volume(crop.labels_nii)
            grid = agatston_scores(crop_hu, grid_labels, crop_geo.spacing)
            assert row.ref_grid_total == pytest.approx(grid["total"])
            # ... and taken there and back, scored on the native scan.
            back = roundtrip_labels(ref_labels, geo, crop_geo, crop_hu.shape)
            assert row.ref_roundtrip_total == pytest.approx(agatston_scores(hu, back, geo.spacing)["total"])
        else:
            assert np.isnan(row.ref_grid_total) and np.isnan(row.ref_roundtrip_total)
    assert table[table.cohort == "gated"].ref_total.sum() > 0  # the oracle columns were computed on calcium


def test_oracle_predictions_are_scored_on_the_native_scan(tiny_crops, tmp_path, monkeypatch):  # noqa: F811
    """A model that calls every model-grid voxel >= 130 HU RCA calcium: all native calcium it covers is RCA."""
    monkeypatch.setattr(predict_module, "load_trained", lambda *a, **k: _oracle(4))
    table = predict_experiment(Path("unused"), Path(tiny_crops), tmp_path / "l", tmp_path / "p.csv", AgatstonParams())
    assert (table.pred_total > 0).any()
    for row in table.itertuples():
        hu, geo = read_volume(row.image)
        labels, _ = read_volume(row.label_map)
        assert set(np.unique(labels)) <= {0, 4}
        assert row.pred_RCA == pytest.approx(row.pred_total) and row.pred_LM == row.pred_LCX == row.pred_LAD == 0
        # Labelling the whole scan RCA is an upper bound (the score only grows with the mask) ...
        assert row.pred_total <= agatston_scores(hu, np.full(hu.shape, 4, np.uint8), geo.spacing)["total"] + 1e-9
        # ... and the native voxels >= 130 HU inside the predicted mask are all there is to score.
        calcium = (labels == 4) & (hu >= 130)
        assert row.pred_total == pytest.approx(agatston_scores(hu, calcium.astype(np.uint8) * 4, geo.spacing)["total"])
        if row.ref_total > 0 and row.cohort == "gated":
            assert row.pred_total > 0


def test_convnet_scores_directly_without_a_map(tiny_crops, tmp_path):  # noqa: F811
    model = _save_model(tmp_path / "convnet" / "model.pt", "convnet", "convnet")
    table = predict_experiment(model, Path(tiny_crops), tmp_path / "labels", tmp_path / "pred.csv", AgatstonParams(),
                               device="cpu")  # fmt: skip
    assert (table.label_map == "").all() and (table.model == "convnet").all()
    per_artery = table[[f"pred_{a}" for a in ARTERIES]].sum(axis=1)
    assert np.allclose(per_artery, table.pred_total) and (table.pred_total >= 0).all()


def test_bad_model_files_are_named(tmp_path, tiny_crops):  # noqa: F811
    with pytest.raises(FileNotFoundError, match="no such model"):
        load_trained(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt"):
        load_trained(junk)
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "epoch": 3}, ckpt)
    with pytest.raises(ValueError, match="checkpoint"):
        load_trained(ckpt)
    model = _save_model(tmp_path / "m.pt", "spss", "spss")
    with pytest.raises(ValueError, match="no scans in split 'holdout'"):
        predict_experiment(model, Path(tiny_crops), tmp_path / "l", tmp_path / "p.csv", AgatstonParams(),
                           split="holdout")  # fmt: skip
