"""The paper's figures: selection logic, overlay colours, robustness, and that every file is a real picture.

Fixtures are tiny (32x32x8) NIfTI crops with a few calcium blobs, written to
tmp_path, and prediction tables following the prediction contract.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from cacs import SCORE_COLUMNS
from cacs.cvd import cvd_rank
from cacs.figures import (
    FIGURE_STEMS,
    figure1,
    figure4,
    figure5,
    figure6,
    figure7,
    label_rgba,
    load_predictions,
    select_examples,
    write_all_figures,
)
from cacs.figures.data import reference_table
from cacs.figures.fig1_cac_examples import choose_pair, left_main_scan
from cacs.figures.fig4_kappa import kappa_table
from cacs.figures.style import data_source_caption, format_scores
from cacs.figures.volumes import highest_calcium_row, load_scan
from cacs.io.nifti import Geometry, write_volume

SHAPE = (8, 32, 32)  # (z, y, x)
GEOMETRY = Geometry(spacing=(2.5, 2.5, 3.0), origin=(-40.0, -40.0, -12.0))

# case_id -> (patient, cohort, reference total); per-artery scores are split from the total.
CASES: dict[str, tuple[str, str, float]] = {
    "gated-1": ("P1", "gated", 520.0),  # V
    "gated-2": ("P2", "gated", 60.0),  # III
    "gated-3": ("P3", "gated", 0.0),  # I
    "nongated-1": ("P1", "nongated", 500.0),  # V
    "nongated-2": ("P2", "nongated", 50.0),  # III
    "nongated-3": ("P3", "nongated", 0.0),  # I
    "nongated-4": ("P4", "nongated", 150.0),  # IV
    "nongated-5": ("P5", "nongated", 450.0),  # V, lower than nongated-1
}


def _image_and_labels(seed: int, calcified: bool) -> tuple[np.ndarray, np.ndarray]:
    """Soft tissue disc in air, calcium blobs (400 HU) of every artery where ``calcified``."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    image = np.where((y - 16) ** 2 + (x - 16) ** 2 < 14**2, 40.0, -1000.0) + rng.normal(0, 10, SHAPE)
    labels = np.zeros(SHAPE, np.uint8)
    if calcified:
        for label, (cy, cx) in enumerate([(10, 10), (10, 22), (22, 10), (22, 22)], start=1):
            labels[3:5, cy - 1 : cy + 2, cx - 1 : cx + 2] = label
        image[labels > 0] = 400.0
    return image.astype(np.float32), labels


def _scores(total: float, prefix: str) -> dict[str, float]:
    parts = dict(zip(("LM", "LCX", "LAD", "RCA"), (0.1, 0.2, 0.5, 0.2), strict=True))
    out = {f"{prefix}{a}": total * w for a, w in parts.items()}
    out[f"{prefix}total"] = total
    return out


def make_predictions(root: Path, experiments=("convnet", "spss_wo_ssl", "spss")) -> pd.DataFrame:
    """A predictions frame per the contract, with its NIfTI files under ``root``."""
    rows = []
    for k, (case_id, (patient, cohort, total)) in enumerate(CASES.items()):
        image, labels = _image_and_labels(k, total > 0)
        image_path = root / "crops" / f"{case_id}_image.nii.gz"
        write_volume(image_path, image, GEOMETRY)
        ref_path = ""
        if cohort == "gated":
            ref_path = root / "crops" / f"{case_id}_labels.nii.gz"
            write_volume(ref_path, labels, GEOMETRY)
        for e, name in enumerate(experiments):
            model = "convnet" if name == "convnet" else "spss"
            pred_total = total * (1.0 + 0.2 * e) + 5.0 * e
            label_path = ""
            if model == "spss":
                pred = labels.copy()
                if name == "spss_wo_ssl":
                    pred[6, 15:17, 15:17] = 2  # a false positive
                label_path = root / "pred" / name / f"{case_id}.nii.gz"
                write_volume(label_path, pred, GEOMETRY)
            rows.append(
                {
                    "case_id": case_id,
                    "patient_id": patient,
                    "cohort": cohort,
                    "split": "test",
                    "experiment": name,
                    "model": model,
                    **_scores(total, "ref_"),
                    **_scores(pred_total, "pred_"),
                    "ref_rank": cvd_rank(total),
                    "pred_rank": cvd_rank(pred_total),
                    "image": str(image_path),
                    "ref_labels": str(ref_path),
                    "label_map": str(label_path),
                    "fallback": False,
                }
            )
    return pd.DataFrame(rows)


def write_csvs(frame: pd.DataFrame, root: Path) -> list[Path]:
    paths = []
    for name, group in frame.groupby("experiment", sort=False):
        path = root / "predictions" / name / "predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        group.to_csv(path, index=False)
        paths.append(path)
    return paths


def make_curves(root: Path) -> dict[str, Path]:
    curves = {}
    for label, decay in (("spss", 0.5), ("L_ssl w/ L_ce", 0.9)):  # an experiment name and a legend label
        epochs = np.arange(1, 11)
        frame = pd.DataFrame(
            {"epoch": epochs, "lr": 0.01, "loss_total": 2.0 * decay**epochs, "val_mae_total": 800.0 * decay**epochs}
        )
        path = root / "models" / label.replace(" ", "_").replace("/", "") / "metrics.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        curves[label] = path
    return curves


def make_metrics(with_null: bool = True) -> dict:
    def cohort(value, ci):
        return {
            "n_scans": 4,
            "n_patients": 4,
            "kappa": {"unweighted": {"value": value, "ci95": ci}, "linear": {"value": value, "ci95": ci}},
        }

    return {
        "data_source": "synthetic",
        "n_bootstrap": 100,
        "seed": 42,
        "experiments": {
            "convnet": {
                "method": "ConvNet",
                "model": "convnet",
                "cohorts": {"gated": cohort(0.5, [0.3, 0.7]), "nongated": cohort(0.4, None)},
            },
            "spss_wo_ssl": {
                "method": "SPSS w/o SSL",
                "model": "spss",
                "cohorts": {"gated": cohort(None if with_null else 0.6, None), "nongated": cohort(-0.1, [-0.4, 0.2])},
            },
            "spss": {
                "method": "SPSS",
                "model": "spss",
                "cohorts": {"gated": cohort(0.9, [0.8, 1.0]), "nongated": cohort(0.8, [0.6, 0.95])},
            },
        },
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, list[Path], float]:
    """All figures written once from the fixture inputs (drawing is the slow part)."""
    import time

    root = tmp_path_factory.mktemp("figures")
    csvs = write_csvs(make_predictions(root), root)
    metrics = root / "metrics.json"
    metrics.write_text(json.dumps(make_metrics()))
    started = time.perf_counter()
    written = write_all_figures(csvs, metrics, make_curves(root), root / "out", "synthetic", n_examples=4)
    return root / "out", written, time.perf_counter() - started


# ---------------------------------------------------------------- pure helpers


def test_label_rgba_colours():
    rgba = label_rgba(np.array([0, 1, 2, 3, 4]))
    assert rgba.shape == (5, 4)
    assert rgba[0, 3] == 0.0  # background transparent
    assert np.all(rgba[1:, 3] == 1.0)
    r, g, b = rgba[1, :3], rgba[2, :3], rgba[3, :3]
    assert r[0] > 0.9 and r[1] < 0.2 and r[2] < 0.2  # LM red
    assert g[1] > 0.7 and g[0] < 0.2 and g[2] < 0.2  # LCX green
    assert b[2] > 0.9 and b[0] < 0.3 and b[2] > b[1]  # LAD blue
    y = rgba[4, :3]
    assert y[0] > 0.9 and y[1] > 0.8 and y[2] < 0.2  # RCA yellow
    assert label_rgba(np.zeros((3, 4), np.uint8)).shape == (3, 4, 4)
    with pytest.raises(ValueError, match="0..4"):
        label_rgba(np.array([5]))


def test_format_scores_is_compact():
    row = {"ref_LM": 0.0, "ref_LCX": 12.14, "ref_LAD": 90.0, "ref_RCA": 21.3, "ref_total": 123.44}
    assert format_scores(row, "ref_") == "total 123.4 | LM 0 LCX 12.1 LAD 90 RCA 21.3"


def _selection_frame() -> pd.DataFrame:
    rows = []
    for case_id, (patient, cohort, total) in CASES.items():
        rows.append(
            {
                "case_id": case_id,
                "patient_id": patient,
                "cohort": cohort,
                "experiment": "spss",
                "ref_rank": cvd_rank(total),
                "image": "",
                "ref_labels": "",
                **{f"ref_{c}": total for c in SCORE_COLUMNS},
            }
        )
    return pd.DataFrame(rows)


def test_select_examples_spans_ranks_prefers_nongated():
    frame = _selection_frame()
    # Non-gated with calcium, cycling V, IV, III, (II empty), then V again for the second rank-V scan.
    assert select_examples(frame, 4) == ["nongated-1", "nongated-4", "nongated-2", "nongated-5"]
    assert select_examples(frame, 3) == ["nongated-1", "nongated-4", "nongated-2"]
    # Too few calcified non-gated scans: gated ones with calcium fill in (V before III).
    assert select_examples(frame, 6) == [*select_examples(frame, 4), "gated-1", "gated-2"]
    # Then calcium-free scans, non-gated first; never more than the test set holds.
    assert select_examples(frame, 20)[6:] == ["nongated-3", "gated-3"]
    with pytest.raises(ValueError):
        select_examples(frame, 0)


def test_choose_pair_prefers_same_patient_then_highest_totals(tmp_path):
    ref = reference_table(make_predictions(tmp_path, experiments=("spss",)))
    gated, nongated, same = choose_pair(ref)
    assert (gated["case_id"], nongated["case_id"], same) == ("gated-1", "nongated-1", True)
    unpaired = ref.assign(patient_id=ref["case_id"])  # real COCA: no pairing known
    gated, nongated, same = choose_pair(unpaired)
    assert (gated["case_id"], nongated["case_id"], same) == ("gated-1", "nongated-1", False)


def test_kappa_table_marks_null_and_reported_only():
    rows = {(r["experiment"], r["cohort"]): r for r in kappa_table(make_metrics())}
    assert rows[("spss_wo_ssl", "gated")]["value"] is None
    assert rows[("spss", "nongated")]["paper"] == pytest.approx(0.852)
    assert not rows[("se_resnext", "nongated")]["measured"]  # reported only, drawn as the paper's marker
    order = list(dict.fromkeys(e for e, _ in rows))
    assert order == ["convnet", "se_resnext", "spss_wo_ssl", "spss"]


# ---------------------------------------------------------------- rendered files


def test_every_figure_is_written_and_not_blank(rendered):
    out, written, seconds = rendered
    expected = [out / f"{stem}.{ext}" for stem in FIGURE_STEMS for ext in ("png", "pdf")]
    assert sorted(written) == sorted(expected)
    for path in expected:
        assert path.is_file(), path
    for stem in FIGURE_STEMS:
        assert (out / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
        pixels = mpimg.imread(out / f"{stem}.png")[..., :3]
        assert pixels.std() > 0.05, stem
        packed = (pixels[::3, ::3] * 255).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
        assert len(np.unique(packed)) > 10, stem  # more than a flat fill or a two-colour drawing
    assert not list(out.glob(".*")), "temporary files left behind"
    logging.getLogger(__name__).info("all figures in %.1f s", seconds)


def test_figure1_overlay_shows_artery_colours(rendered):
    """The gated panel's reference mask is drawn: pure LM red appears outside the legend too."""
    out, _, _ = rendered
    pixels = mpimg.imread(out / "figure1_cac_examples.png")[..., :3]
    red = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.1) & (pixels[..., 2] < 0.1)
    rows = np.nonzero(red.any(axis=1))[0]
    assert red.sum() > 1500  # more than the legend patch alone
    assert rows.min() < 0.8 * pixels.shape[0]  # some red above the legend row


# ---------------------------------------------------------------- robustness


def test_missing_experiments_are_skipped_with_a_warning(tmp_path, caplog):
    frame = make_predictions(tmp_path, experiments=("spss",))
    with caplog.at_level(logging.WARNING):
        files = figure5(frame, tmp_path / "f5", "local", n_examples=2)
        files += figure6(frame, tmp_path / "f6", "local")
        files += figure7(frame, tmp_path / "f7", "local")
    assert all(p.is_file() for p in files) and len(files) == 6
    assert "spss_wo_ssl" in caplog.text and "convnet" in caplog.text


def test_figures_survive_tiny_and_empty_inputs(tmp_path):
    frame = make_predictions(tmp_path)
    one = frame[frame["case_id"].isin(["nongated-1", "gated-1"])]
    assert len(figure6(one, tmp_path / "f6", "synthetic")) == 2  # one scan per method: "not enough scans"
    assert len(figure7(frame[frame["cohort"] == "gated"], tmp_path / "f7", "synthetic")) == 2  # no non-gated
    no_calcium = frame[frame["ref_total"] == 0]
    assert len(figure1(no_calcium, tmp_path / "f1", "synthetic")) == 2
    assert len(figure5(no_calcium, tmp_path / "f5", "synthetic")) == 2
    assert len(figure4({"experiments": {}}, tmp_path / "f4", "synthetic")) == 2  # the paper's markers only


def test_missing_predictions_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "predictions.csv"
    with pytest.raises(FileNotFoundError, match="nope/predictions.csv"):
        load_predictions([missing])
    with pytest.raises(FileNotFoundError, match="nope/predictions.csv"):
        write_all_figures([missing], tmp_path / "m.json", {}, tmp_path / "out", "synthetic", 2)


def test_predictions_missing_columns_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"case_id": ["a"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="bad.csv.*lack columns"):
        load_predictions([path])


def test_label_map_on_another_grid_names_both_files(tmp_path):
    image, labels = _image_and_labels(0, True)
    write_volume(tmp_path / "img.nii.gz", image, GEOMETRY)
    shifted = Geometry(spacing=GEOMETRY.spacing, origin=(0.0, 0.0, 0.0))
    write_volume(tmp_path / "lab.nii.gz", labels, shifted)
    with pytest.raises(ValueError, match=r"lab\.nii\.gz.*img\.nii\.gz"):
        load_scan(tmp_path / "img.nii.gz", [tmp_path / "lab.nii.gz"])


def test_volumes_are_shown_in_lps_whatever_their_direction(tmp_path):
    """A volume stored with flipped x/y axes is reoriented so column 0 is the patient's right."""
    array = np.zeros(SHAPE, np.float32)
    array[:, 0, 0] = 1000.0  # index (x=0, y=0): with direction diag(-1,-1,1) the most left and posterior voxel
    flipped = Geometry(spacing=(1.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    write_volume(tmp_path / "flip.nii.gz", array, flipped)
    image, _ = load_scan(tmp_path / "flip.nii.gz")
    assert image.array[0, -1, -1] == 1000.0 and image.array[0, 0, 0] == 0.0
    assert image.spacing == (1.0, 2.0, 3.0)


def test_bad_data_source_and_cohort(tmp_path):
    frame = make_predictions(tmp_path, experiments=("spss",))
    with pytest.raises(ValueError, match="data_source"):
        figure6(frame, tmp_path / "f6", "coca")
    assert data_source_caption("download") == data_source_caption("local") == "real COCA data"
    assert "synthetic" in data_source_caption("synthetic")
    with pytest.raises(ValueError, match="cohort"):
        figure7(frame, tmp_path / "f7", "local", cohort="both")


def test_coronal_panel_shows_the_scan_with_most_left_main_calcium_at_its_top(tmp_path):
    """Figure 1 (c): the gated scan with most LM calcium, in the coronal row of its most superior calcium."""
    ref = reference_table(make_predictions(tmp_path, experiments=("spss",)))
    chosen = left_main_scan(ref)
    gated = ref[(ref.cohort == "gated") & (ref.ref_labels != "")]
    assert chosen is not None and chosen["ref_LM"] == gated["ref_LM"].max()
    mask = np.zeros((6, 8, 8), np.uint8)
    mask[1, 2, 3] = 3  # a lower lesion in row 2 ...
    mask[4, 5, 1:3] = 1  # ... and the most superior one, in row 5
    assert highest_calcium_row(mask) == 5
    assert highest_calcium_row(np.zeros_like(mask)) is None
    assert left_main_scan(ref[ref.cohort == "nongated"]) is None
