"""Score one new scan end to end: ``cacs infer SCAN --model ... --localizer ...``.

A user with a chest CT (a DICOM series folder or a NIfTI volume in HU) and a
trained pipeline gets the per-artery Agatston scores, the total, the CVD rank
and the predicted label map *on the scan's own geometry*, so that it opens
over the scan in 3D Slicer / ITK-SNAP.

Every step is the pipeline's own code, in the pipeline's order, so a scan
scored here gets exactly the scores ``cacs predict`` gives it in a run:
DICOM series -> NIfTI (the ingest reader and series choice), heart box
(:func:`cacs.heart_boxes.heart_box`), crop and model grid
(:func:`cacs.crop.crop_case`), network on the crop, its class probabilities
back onto the scan's native grid and the clinical scorer on the native HU
(:func:`cacs.predict.predict_native`, see :mod:`cacs.native_scoring`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cacs import SCORE_COLUMNS
from cacs.agatston import AgatstonParams
from cacs.crop import CropParams, crop_case
from cacs.cvd import cvd_rank, rank_name
from cacs.heart_boxes import Plausibility, heart_box
from cacs.ingest import choose_series
from cacs.io.atomic import write_csv, write_json
from cacs.io.dicom_series import assemble, group_series, read_slices
from cacs.io.nifti import read_volume, write_volume
from cacs.localizer import load_localizer, resolve_device
from cacs.predict import load_trained, predict_native
from cacs.qc import CaseExcluded, QCLog

log = logging.getLogger(__name__)

# A CT in HU has air (about -1000) and soft tissue / bone (> 0).  A volume
# without both is an MR, a mask, a PNG stack or an image stored without its
# rescale intercept (0..4095): scoring it would give meaningless numbers.
MIN_AIR_HU = -500.0
MIN_MAX_HU = 100.0


@dataclass(frozen=True)
class InferOptions:
    crop: CropParams = CropParams()
    agatston: AgatstonParams = AgatstonParams()
    plausibility: Plausibility = Plausibility()
    device: str = "auto"


def scan_name(path: Path) -> str:
    """A file-name-safe id for the scan (its folder or file name without NIfTI suffixes)."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "scan"


def dicom_to_nifti(folder: Path, dest: Path) -> list[str]:
    """Assemble the CT series of ``folder`` (searched recursively) into ``dest``; returns QC notes.

    The series choice is the ingest stage's (most distinct slices), so a scan
    read here equals the one the pipeline ingested.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{folder}: empty folder (expected a DICOM series)")
    qc = QCLog(folder.name, "infer")
    slices = read_slices(files, qc)
    if not slices:
        reasons = sorted({i.problem for i in qc.issues})
        raise ValueError(f"{folder}: no readable CT DICOM file among {len(files)} file(s): {'; '.join(reasons[:3])}")
    try:
        _, chosen = choose_series(group_series(slices), [], qc)
        volume = assemble(chosen, qc)
    except CaseExcluded as exc:
        raise ValueError(f"{exc.file or folder}: {exc.problem}") from exc
    write_volume(dest, volume.hu, volume.geometry)
    return [f"{i.file}: {i.problem} ({i.action})" for i in qc.issues]


def check_hounsfield(hu: np.ndarray, path: Path) -> None:
    """Refuse volumes that are not a CT in Hounsfield units (see MIN_AIR_HU)."""
    lo, hi = float(hu.min()), float(hu.max())
    if lo > MIN_AIR_HU or hi < MIN_MAX_HU:
        raise ValueError(
            f"{path}: does not look like a CT in Hounsfield units (values {lo:g}..{hi:g}; a chest CT has air "
            f"near -1000 HU and bone above {MIN_MAX_HU:g} HU). Is it another modality, or stored without its "
            "rescale intercept?"
        )


def infer_scan(
    scan: Path,
    model_path: Path,
    localizer_path: Path,
    out_dir: Path,
    opts: InferOptions = InferOptions(),
) -> dict:
    """Score ``scan`` (DICOM folder or volume file); write results to ``out_dir``; return the JSON record.

    Writes ``scores.json``, ``scores.csv`` (one row), ``labels.nii.gz`` (the
    predicted label map on the scan's own grid, which the scores were computed
    from with the scan's HU; SPSS-type models only), ``image.nii.gz`` (the scan
    as NIfTI, for DICOM input) and the model-grid crop under ``crop/`` (what the
    network saw, with its model-grid argmax label map).
    """
    scan = Path(scan)
    if not scan.exists():
        raise FileNotFoundError(f"{scan}: no such file or folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = scan_name(scan)
    notes: list[str] = []
    if scan.is_dir():
        image_path = out_dir / "image.nii.gz"
        notes += dicom_to_nifti(scan, image_path)
    else:
        image_path = scan
    hu, geometry = read_volume(image_path)
    check_hounsfield(hu, image_path)

    device = resolve_device(opts.device)
    localizer, loc_params = load_localizer(localizer_path, device)
    box = heart_box(localizer, loc_params, hu, geometry, device, opts.plausibility)
    if not box["plausible"]:
        notes.append(f"heart localisation implausible ({box['problem']}): fallback box used")
        log.warning("%s: %s; using the fallback box", scan, box["problem"])
    crop_dir = out_dir / "crop"
    crop_dir.mkdir(exist_ok=True)
    case = {"case_id": name, "cohort": "infer", "image": str(image_path)}
    row, issues = crop_case(case, box, crop_dir, opts.crop, opts.agatston)
    notes += [f"{i.problem} ({i.action})" for i in issues]

    model = load_trained(model_path, opts.device)
    crop_hu, grid = read_volume(row["image_nii"])
    pred = predict_native(model, crop_hu, grid, hu, geometry, opts.agatston)
    scores = pred.scores
    labels_path = ""
    if pred.labels is not None:
        write_volume(crop_dir / f"{name}_predicted_labels.nii.gz", pred.grid_labels, grid)
        labels_path = str(out_dir / "labels.nii.gz")
        write_volume(labels_path, pred.labels, geometry)
    else:
        notes.append(f"model {model.experiment!r} is a {model.kind} (direct regression): no label map")
    rank = cvd_rank(scores["total"])
    record = {
        "scan": str(scan),
        "image": str(image_path),
        "experiment": model.experiment,
        "model": model.kind,
        **{k: round(float(scores[k]), 6) for k in SCORE_COLUMNS},
        "cvd_rank": rank,
        "cvd_rank_name": rank_name(rank),
        "labels": labels_path,
        "heart_ml": box["heart_ml"],
        "fallback_box": bool(row["fallback"]),
        "notes": notes,
    }
    write_json(out_dir / "scores.json", record)
    flat = {k: v for k, v in record.items() if k != "notes"}
    write_csv(out_dir / "scores.csv", pd.DataFrame([flat]))
    log.info(
        "%s: total %.1f (%s), LM %.1f, LCX %.1f, LAD %.1f, RCA %.1f -> %s",
        scan, scores["total"], rank_name(rank), scores["LM"], scores["LCX"], scores["LAD"], scores["RCA"], out_dir,
    )  # fmt: skip
    return record
