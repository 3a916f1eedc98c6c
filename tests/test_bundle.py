"""Model files carry what using them needs (cacs.bundle): infer needs nothing else, contradictions are refused.

One tiny chain, as the pipeline runs it: a localizer trained for one epoch,
its heart boxes (with their record, boxes.json), crops (index.json), an SPSS
trained for one step; then ``cacs infer`` with only ``--model`` and
``--localizer``, and ``cacs predict``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cacs.agatston import AgatstonParams
from cacs.bundle import boxes_meta_path, crop_meta_path, weights_sha256
from cacs.cli import main
from cacs.crop import CropParams, crop_all
from cacs.heart_boxes import Plausibility, predict_boxes
from cacs.infer import scan_name
from cacs.io.nifti import read_volume
from cacs.localizer import load_localizer, train_localizer
from cacs.predict import check_crop_grid, load_trained, predict_experiment
from cacs.split import split_cases
from cacs.train import TrainConfig, train_experiment
from tests.test_localizer import FAST
from tests.test_predict import _save_model
from tests.test_train import TINY_MODELS

GRID = CropParams(margin_xy_mm=12.0, model_spacing_mm=(5.0, 5.0, 6.0), model_size=(32, 32, 16),
                  fallback_box_mm=(150.0, 150.0))  # fmt: skip
LIMITS = Plausibility(100.0, 2000.0)  # not the built-in range: it must come from the model file


@pytest.fixture(scope="module")
def chain(tiny_ingested, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bundle_chain")
    segthor = tiny_ingested.tables["segthor"].copy()
    for col in ("image", "heart"):
        segthor[col] = [str(Path(p).resolve()) if isinstance(p, str) and p else p for p in segthor[col]]
    segthor.to_csv(out / "segthor.csv", index=False)
    train_localizer(out / "segthor.csv", out / "localizer", replace(FAST, epochs=1), progress=False,
                    data_source="synthetic")  # fmt: skip
    localizer = out / "localizer" / "model.pt"
    cases = pd.concat([tiny_ingested.tables["gated"], tiny_ingested.tables["nongated"]], ignore_index=True)
    cases.to_csv(out / "cases.csv", index=False)
    split_cases(out / "cases.csv", out / "split.csv", train=0.5, val=0.25, test=0.25, seed=1)
    predict_boxes(out / "split.csv", localizer, out / "boxes", out / "boxes.csv", LIMITS, device="cpu")
    crop_all(out / "split.csv", out / "boxes.csv", out / "vol", out / "index.csv", out / "cont.csv", out / "qc.csv",
             GRID, AgatstonParams())  # fmt: skip
    cfg = TrainConfig(model="spss", model_config=TINY_MODELS["spss"], epochs=1, steps_per_epoch=1, device="cpu")
    train_experiment("spss", out / "index.csv", out / "spss", cfg, data_source="synthetic")
    return {"out": out, "model": out / "spss" / "model.pt", "localizer": localizer, "index": out / "index.csv"}


def test_the_model_file_carries_its_settings_and_provenance(chain):
    bundle = torch.load(chain["model"], weights_only=True)["bundle"]
    assert bundle["kind"] == "experiment" and bundle["network"]["model_config"] == TINY_MODELS["spss"]
    assert bundle["crop"]["model_spacing_mm"] == [5.0, 5.0, 6.0] and bundle["crop"]["margin_xy_mm"] == 12.0
    assert bundle["agatston"]["threshold_hu"] == 130.0 and bundle["input"]["hu_scale"] == 1000.0
    assert bundle["plausibility"] == {"min_heart_ml": 100.0, "max_heart_ml": 2000.0}  # boxes.json -> index.json
    saved = torch.load(chain["localizer"], map_location="cpu", weights_only=True)["state_dict"]
    assert bundle["localizer"]["weights_sha256"] == weights_sha256(saved)
    prov = bundle["provenance"]
    assert prov["data_source"] == "synthetic" and prov["data"]["index"] == str(chain["index"])
    assert len(prov["config_sha256"]) == 64 and {"cacs", "torch", "python"} <= set(prov["versions"])
    assert isinstance(prov["git_commit"], str)  # '' without git: never a failure
    loc = torch.load(chain["localizer"], weights_only=True)["bundle"]
    assert loc["kind"] == "localizer" and loc["grid"]["spacing_mm"] == list(FAST.spacing_mm)
    assert loc["input"]["hu_window"] == list(FAST.hu_window) and loc["network"]["channels"] == list(FAST.channels)
    assert json.loads(crop_meta_path(chain["index"]).read_text())["crop"]["model_size"] == [32, 32, 16]
    assert json.loads(boxes_meta_path(chain["out"] / "boxes.csv").read_text())["plausibility"]["min_heart_ml"] == 100


def _config(path: Path) -> Path:
    """The run's config, as far as infer reads it."""
    crop = {k: list(v) if isinstance(v, tuple) else v for k, v in GRID.__dict__.items()}
    path.write_text(yaml.safe_dump({"crop": crop, "agatston": {"threshold_hu": 130, "connectivity": 8},
                                    "localizer": {"min_heart_ml": 100, "max_heart_ml": 2000}}))  # fmt: skip
    return path


def test_infer_needs_only_the_model_files(chain, tiny_ingested, tmp_path, capsys):
    index = pd.read_csv(chain["index"], keep_default_na=False)
    case = index[(index.split == "test") & (index.cohort == "gated")].iloc[0]
    base = ["infer", case.source_image, "--model", str(chain["model"]), "--localizer", str(chain["localizer"]),
            "--device", "cpu", "--no-qc-page", "--json"]  # fmt: skip
    assert main([*base, "--out-dir", str(tmp_path / "bare")]) == 0
    bare = json.loads(capsys.readouterr().out)
    assert main([*base, "--out-dir", str(tmp_path / "cfg"), "--config", str(_config(tmp_path / "run.yaml")),
                 "--model-size", "32", "32", "16", "--threshold-hu", "130"]) == 0  # equal values are fine
    with_config = json.loads(capsys.readouterr().out)
    for key in ("LM", "LCX", "LAD", "RCA", "total", "heart_ml", "fallback_box"):
        assert bare[key] == with_config[key], key
    a, _ = read_volume(bare["labels"])
    b, _ = read_volume(with_config["labels"])
    assert np.array_equal(a, b)
    crop, grid = read_volume(tmp_path / "bare" / "crop" / f"{scan_name(Path(case.source_image))}_image.nii.gz")
    assert crop.shape == (16, 32, 32) and grid.spacing == (5.0, 5.0, 6.0)  # the model's grid, not the built-in one
    assert not any("plausibility" in n or "localizer is not" in n for n in bare["notes"])
    assert bare["model_config_sha256"] == torch.load(chain["model"], weights_only=True)["bundle"]["provenance"][
        "config_sha256"]  # fmt: skip
    # The pipeline's prediction of the same scan (the same heart box, crop and network): the same scores.
    table = predict_experiment(chain["model"], chain["index"], tmp_path / "l", tmp_path / "p.csv", device="cpu")
    row = table.set_index("case_id").loc[case.case_id]
    for key in ("LM", "LCX", "LAD", "RCA", "total"):
        assert bare[key] == pytest.approx(row[f"pred_{key}"], abs=1e-4)


def test_a_contradicting_option_or_config_is_refused_naming_both(chain, tmp_path, caplog):
    scan = pd.read_csv(chain["index"], keep_default_na=False).source_image.iloc[0]
    base = ["infer", scan, "--model", str(chain["model"]), "--localizer", str(chain["localizer"]),
            "--out-dir", str(tmp_path / "o"), "--device", "cpu", "--no-qc-page"]  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="cacs"):
        assert main([*base, "--model-spacing-mm", "1.5", "1.5", "3"]) == 2
    assert f"--model-spacing-mm 1.5 1.5 3 contradicts the model's crop grid 5 5 6 ({chain['model']})" in caplog.text
    caplog.clear()
    cfg = tmp_path / "other.yaml"
    cfg.write_text("agatston: {threshold_hu: 120}\n")
    with caplog.at_level(logging.ERROR, logger="cacs"):
        assert main([*base, "--config", str(cfg)]) == 2
    assert f"{cfg}: agatston.threshold_hu 120 contradicts the model's agatston.threshold_hu 130" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="cacs"):
        assert main([*base, "--max-heart-ml", "1500"]) == 2
    assert "--max-heart-ml 1500 contradicts the model's plausibility.max_heart_ml 2000" in caplog.text
    caplog.clear()  # predict: the same rule for its Agatston options
    with caplog.at_level(logging.ERROR, logger="cacs"):
        assert main(["predict", "--model", str(chain["model"]), "--index", str(chain["index"]), "--labels-dir",
                     str(tmp_path / "l"), "--table", str(tmp_path / "p.csv"), "--device", "cpu",
                     "--lesion-dim", "3d"]) == 2  # fmt: skip
    assert "--lesion-dim 3d contradicts the model's agatston.lesion_dim 2d" in caplog.text


def test_predict_refuses_crops_on_another_grid(chain, tmp_path):
    other = _save_model(tmp_path / "other" / "model.pt", "spss", "other",
                        crop=replace(GRID, model_spacing_mm=(2.5, 2.5, 3.0)))  # fmt: skip
    with pytest.raises(ValueError, match=r"index.json: crops made with crop grid 5 5 6, the model's is 2.5 2.5 3"):
        predict_experiment(other, chain["index"], tmp_path / "l", tmp_path / "p.csv", device="cpu")
    # Without the crops' record, each crop's own grid is compared.
    index = pd.read_csv(chain["index"], keep_default_na=False)
    index.to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(ValueError, match=r"crop grid 32 32 16 voxels at 5 5 6 mm, the model's crop grid is 32 32 16 "
                                         r"voxels at 2.5 2.5 3 mm"):  # fmt: skip
        predict_experiment(other, tmp_path / "index.csv", tmp_path / "l", tmp_path / "p.csv", device="cpu")


def test_crop_grid_check_reads_spacings_as_nifti_stores_them():
    """NIfTI keeps spacings as float32: a 1.2 x 0.8 mm grid reads back as 1.2000000477 x 0.80000001 mm."""
    crop = replace(GRID, model_spacing_mm=(1.2, 0.8, 3.0))
    shape_zyx = tuple(crop.model_size[::-1])
    stored = tuple(float(np.float32(v)) for v in crop.model_spacing_mm)
    check_crop_grid("crop.nii.gz", shape_zyx, stored, crop, Path("model.pt"))
    with pytest.raises(ValueError, match=r"crop.nii.gz: crop grid .* at 1.25 0.8 3 mm"):
        check_crop_grid("crop.nii.gz", shape_zyx, (1.25, *stored[1:]), crop, Path("model.pt"))


def test_training_takes_the_crops_settings_and_refuses_others(chain, tmp_path, caplog):
    cfg = {"model": "spss", "model_config": TINY_MODELS["spss"], "epochs": 1, "steps_per_epoch": 1, "device": "cpu"}
    train = ["train", "--experiment", "x", "--index", str(chain["index"]), "--out-dir", str(tmp_path / "x"),
             "--config-json", json.dumps(cfg), "--data-source", "synthetic"]  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="cacs"):
        assert main([*train, "--threshold-hu", "120"]) == 2
    assert f"--threshold-hu 120 contradicts the crops' agatston.threshold_hu 130 ({chain['out'] / 'index.json'})" in (
        caplog.text
    )
    assert main([*train, "--threshold-hu", "130", "--connectivity", "8"]) == 0  # the rule passes the config's values
    bundle = torch.load(tmp_path / "x" / "model.pt", weights_only=True)["bundle"]
    assert bundle["crop"] == json.loads(crop_meta_path(chain["index"]).read_text())["crop"]
    index = pd.read_csv(chain["index"], keep_default_na=False)
    index.to_csv(tmp_path / "index.csv", index=False)  # no index.json beside it
    with pytest.raises(ValueError, match="no record of the crop settings beside it .index.json.*rerun cacs crop"):
        train_experiment("x", tmp_path / "index.csv", tmp_path / "y", TrainConfig(**cfg))
    # Explicit crop settings (a library call without the record) must match the crops on disk.
    with pytest.raises(ValueError, match=r"crop of 32 32 16 voxels at 5 5 6 mm, not the recorded crop grid 32 32 16 at "
                                         r"2.5 2.5 6 mm"):  # fmt: skip
        train_experiment("x", tmp_path / "index.csv", tmp_path / "y", TrainConfig(**cfg),
                         crop=replace(GRID, model_spacing_mm=(2.5, 2.5, 6.0)))  # fmt: skip


def test_old_model_files_are_refused_with_a_way_out(chain, tmp_path):
    old = _save_model(tmp_path / "old.pt", "spss", "old", bundle=False)
    with pytest.raises(ValueError, match=r"old.pt: model file without its settings .* retrain it with cacs train"):
        load_trained(old)
    payload = torch.load(chain["localizer"], weights_only=True)
    del payload["bundle"]
    torch.save(payload, tmp_path / "old_localizer.pt")
    with pytest.raises(ValueError, match="retrain it with cacs train-localizer"):
        load_localizer(tmp_path / "old_localizer.pt", "cpu")
    with pytest.raises(ValueError, match="a localizer model file, not the experiment model"):
        load_trained(chain["localizer"])


def test_weights_digest_names_the_weights_not_the_file():
    """Two runs that train the same weights write different files (the bundle's time); the digest agrees."""
    net = torch.nn.Conv3d(1, 2, 3)
    a = {k: v.clone() for k, v in net.state_dict().items()}
    assert weights_sha256(a) == weights_sha256({k: v.clone() for k, v in reversed(list(a.items()))})
    b = dict(a, weight=a["weight"].clone().index_put_((torch.tensor([0]),), torch.tensor(1.0), accumulate=True))
    assert weights_sha256(a) != weights_sha256(b)
    assert weights_sha256({"w": torch.zeros(2, dtype=torch.bfloat16)}) != weights_sha256({"w": torch.zeros(2)})
