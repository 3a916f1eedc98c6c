"""`cacs infer-batch`: one table for a cohort, exactly one error row per bad scan, resumable, throughput.

The networks are saved untrained (tiny SPSS and localizer): the batch
machinery, not the accuracy, is under test.  Scans are 64 x 64 x 6 phantoms.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cacs.batch_infer as batch_module
from cacs.batch_infer import BATCH_COLUMNS, list_scans, run_batch
from cacs.bundle import localizer_bundle
from cacs.cli import main
from cacs.crop import CropParams
from cacs.infer import InferOptions
from cacs.io.nifti import Geometry, write_volume
from cacs.localizer import LocalizerParams, build_unet
from tests.test_dicom_study import phantom_hu, write_series
from tests.test_predict import _save_model

SMALL = ["--model-size", "32", "32", "16", "--model-spacing-mm", "1.5", "1.5", "3", "--device", "cpu"]


SMALL_CROP = CropParams(model_spacing_mm=(1.5, 1.5, 3.0), model_size=(32, 32, 16), fallback_box_mm=(60.0, 60.0))
"""The crop grid of the test networks' model file (its bundle): what infer uses on the 64 x 64 x 6 phantoms."""


def small_options(**kw) -> InferOptions:
    return InferOptions(device="cpu", **({"qc_page": False} | kw))  # the grid: the model file's


@pytest.fixture(scope="module")
def networks(tmp_path_factory) -> tuple[Path, Path]:
    """A saved untrained tiny SPSS (model.pt as cacs train writes it) and localizer (as cacs localizer writes it)."""
    out = tmp_path_factory.mktemp("networks")
    model = _save_model(out / "spss" / "model.pt", "spss", "spss", crop=SMALL_CROP)
    return model, save_localizer(out / "localizer.pt")


def save_localizer(path: Path) -> Path:
    """An untrained tiny localizer file as ``cacs train-localizer`` writes it (with its bundle)."""
    params = LocalizerParams(channels=(4, 8, 16), patch_size=(32, 32, 16))
    torch.manual_seed(0)
    torch.save({"state_dict": build_unet(params).state_dict(), "params": params.to_dict(),
                "bundle": localizer_bundle(params, {"table": "test"})}, path)  # fmt: skip
    return path


def make_cohort(root: Path, n_nifti: int, n_dicom: int) -> Path | None:
    """``n_nifti`` NIfTI scans and ``n_dicom`` DICOM series folders; the last DICOM one has a truncated slice."""
    root.mkdir(parents=True)
    for i in range(n_nifti):
        write_volume(root / f"nifti{i:02d}.nii.gz", phantom_hu(seed=i), Geometry((1.0, 1.0, 3.0), (-32.0, -32.0, 0.0)))
    victim = None
    for i in range(n_dicom):
        files = write_series(root / f"dicom{i:02d}", phantom_hu(seed=100 + i), study=f"s{i}",
                             spacing=(1.0, 1.0, 3.0), origin=(-32.0, -32.0, 0.0))  # fmt: skip
        if i == n_dicom - 1:
            victim = files[3]
            victim.write_bytes(victim.read_bytes()[:-900])
    return victim


def test_cohort_of_21_with_one_corrupt_scan_then_a_resumed_rerun(networks, tmp_path):
    model, localizer = networks
    victim = make_cohort(tmp_path / "cohort", n_nifti=18, n_dicom=3)
    out = tmp_path / "out"
    table = run_batch(tmp_path / "cohort", model, localizer, out, small_options(), progress=False)
    on_disk = pd.read_csv(out / "scores.csv", keep_default_na=False)
    assert list(on_disk.columns) == list(BATCH_COLUMNS) and len(on_disk) == len(table) == 21
    errors = on_disk[on_disk.status == "error"]
    assert len(errors) == 1
    assert errors.scan_id.iloc[0] == "dicom02" and errors.error_file.iloc[0] == str(victim)
    assert errors.error.iloc[0].startswith("truncated file: pixel data has")
    assert (out / "scans" / "dicom02" / "error.json").is_file()
    ok = on_disk[on_disk.status == "ok"]
    assert len(ok) == 20 and np.all(ok.total.astype(float) >= 0)
    assert set(ok.cvd_rank_name) <= {"I", "II", "III", "IV", "V"}
    assert all(Path(p).is_file() for p in ok.labels)
    assert all(Path(p).is_file() for p in ok[ok.scan_id.str.startswith("dicom")].seg)  # DICOM input: a SEG
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == 20 and summary["n_error"] == 1 and summary["n_scored_this_run"] == 21
    assert summary["scans_per_minute"] > 0 and summary["device"] == "cpu"
    print(f"throughput: {summary['scans_per_minute']:.1f} scans/min on {summary['device']}")

    rerun = run_batch(tmp_path / "cohort", model, localizer, out, small_options(), progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_from_earlier_run"] == 20 and summary["n_scored_this_run"] == 1  # only the failed scan again
    assert rerun.from_earlier_run.sum() == 20 and (rerun.status == "error").sum() == 1
    pd.testing.assert_frame_equal(
        rerun[rerun.status == "ok"].drop(columns="from_earlier_run").reset_index(drop=True),
        table[table.status == "ok"].drop(columns="from_earlier_run").reset_index(drop=True),
        check_dtype=False,
    )


def test_an_interrupted_batch_keeps_its_rows_and_resumes(networks, tmp_path, monkeypatch):
    model, localizer = networks
    make_cohort(tmp_path / "cohort", n_nifti=4, n_dicom=0)
    real_score = batch_module.Scorer.score
    calls = []

    def dying(self, scan, out_dir, scan_id=None):
        calls.append(scan_id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user's Ctrl-C, or the job's time limit
        return real_score(self, scan, out_dir, scan_id)

    monkeypatch.setattr(batch_module.Scorer, "score", dying)
    with pytest.raises(KeyboardInterrupt):
        run_batch(tmp_path / "cohort", model, localizer, tmp_path / "out", small_options(), progress=False)
    kept = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert list(kept.scan_id) == ["nifti00", "nifti01"] and (kept.status == "ok").all()
    monkeypatch.setattr(batch_module.Scorer, "score", real_score)
    table = run_batch(tmp_path / "cohort", model, localizer, tmp_path / "out", small_options(), progress=False)
    assert list(table.from_earlier_run) == [True, True, False, False] and (table.status == "ok").all()


def test_csv_input_and_cli(networks, tmp_path, capsys):
    model, localizer = networks
    make_cohort(tmp_path / "c", n_nifti=2, n_dicom=0)
    (tmp_path / "c" / "list.csv").write_text("scan,scan_id\nnifti00.nii.gz,first\nmissing.nii.gz,gone\n")
    scans = list_scans(tmp_path / "c" / "list.csv")
    assert [s.scan_id for s in scans] == ["first", "gone"] and scans[0].path == tmp_path / "c" / "nifti00.nii.gz"
    args = ["infer-batch", str(tmp_path / "c" / "list.csv"), "--model", str(model), "--localizer", str(localizer),
            "--out-dir", str(tmp_path / "out"), "--no-progress", "--no-qc-page", *SMALL]  # fmt: skip
    assert main(args) == 0
    assert "2 scan(s): 1 ok, 1 error(s), 0 from an earlier run;" in capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "out" / "scores.csv", keep_default_na=False).set_index("scan_id")
    assert rows.loc["gone", "error_file"] == str(tmp_path / "c" / "missing.nii.gz")
    assert rows.loc["gone", "error"] == "no such file or folder"
    assert main([*args, "--fail-on-error"]) == 1
    with pytest.raises(ValueError, match="no 'scan' column"):
        (tmp_path / "bad.csv").write_text("path\nx\n")
        list_scans(tmp_path / "bad.csv")


def test_another_model_rescores_finished_scans(networks, tmp_path):
    model, localizer = networks
    make_cohort(tmp_path / "cohort", n_nifti=2, n_dicom=0)
    run_batch(tmp_path / "cohort", model, localizer, tmp_path / "out", small_options(), progress=False)
    other = _save_model(tmp_path / "convnet" / "model.pt", "convnet", "convnet", crop=SMALL_CROP)
    table = run_batch(tmp_path / "cohort", other, localizer, tmp_path / "out", small_options(), progress=False)
    assert not table.from_earlier_run.any() and set(table.experiment) == {"convnet"} and set(table.labels) == {""}
