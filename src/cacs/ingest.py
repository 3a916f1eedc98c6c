"""Ingest COCA (gated + non-gated) and SegTHOR into NIfTI volumes and case tables.

One code path for real and synthetic data: everything here reads only the
on-disk formats (docs/data-formats.md).  Per case the work runs in a worker
process; each returns its table row (or nothing, when the case is excluded)
and its QC rows, so no problem is ever dropped silently.

Outputs per cohort: ``<out_dir>/<case_id>.nii.gz`` (HU, geometry kept),
``<case_id>_labels.nii.gz`` (gated: 0 bg, 1 LM, 2 LCX, 3 LAD, 4 RCA) or
``<case_id>_heart.nii.gz`` (SegTHOR), a table and a QC table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cacs import ARTERIES
from cacs.agatston import AgatstonParams, agatston_scores
from cacs.cvd import cvd_rank
from cacs.io.atomic import write_csv
from cacs.io.calcium_xml import XmlRoi, parse_calcium_xml, rasterise_roi
from cacs.io.dicom_series import Volume, assemble, group_series, read_slices, slice_positions
from cacs.io.nifti import read_volume, write_volume
from cacs.io.score_sheet import read_score_sheet
from cacs.parallel import run_cases
from cacs.qc import QC_COLUMNS, CaseExcluded, QCIssue, QCLog, Severity, enforce_strict, issues_frame

log = logging.getLogger(__name__)

GATED_DIR = "Gated_release_final"
NONGATED_DIR = "deidentified_nongated"
ROI_Z_TOL_MM = 0.01

CASE_COLUMNS: tuple[str, ...] = (
    "case_id", "patient_id", "cohort", "source_id", "image", "labels",
    "spacing_x", "spacing_y", "spacing_z", "size_x", "size_y", "size_z",
    *ARTERIES, "total", "cvd_rank", "series", "n_rois", "n_empty_rois", "sheet_total",
)  # fmt: skip
SEGTHOR_COLUMNS: tuple[str, ...] = (
    "case_id", "split", "image", "heart", "spacing_x", "spacing_y", "spacing_z",
    "size_x", "size_y", "size_z", "heart_voxels",
)  # fmt: skip


@dataclass(frozen=True)
class IngestOptions:
    workers: int = 1
    strict: bool = False
    paired_ids: bool = False  # gated and non-gated folder <id> are one patient
    agatston: AgatstonParams = field(default_factory=AgatstonParams)


def id_sort_key(pid: str) -> tuple[int, str]:
    return (int(pid), pid) if pid.isdigit() else (1 << 62, pid)


def patient_id(pid: str, cohort: str, paired: bool) -> str:
    """Patient identity used by the split: shared across cohorts only when paired."""
    if paired:
        return f"P{pid}"
    return ("G" if cohort == "gated" else "N") + pid


def _geometry_columns(volume_shape: tuple[int, ...], spacing: tuple[float, float, float]) -> dict:
    nz, ny, nx = volume_shape
    spacing = tuple(round(float(v), 6) for v in spacing)  # NIfTI stores float32
    return {
        "spacing_x": spacing[0], "spacing_y": spacing[1], "spacing_z": spacing[2],
        "size_x": nx, "size_y": ny, "size_z": nz,
    }  # fmt: skip


# ---------------------------------------------------------------- gated -----


def choose_series(
    groups: dict[str, list], rois: list[XmlRoi], qc: QCLog
) -> tuple[str, list]:
    """The series to use: most slices (then folder name), preferring one the ROIs map onto.

    COCA has patients with two series at identical z, with an extra series
    offset in z, and one whose annotations belong to a replaced series: the
    annotations decide.  When they fit no series, the largest is used and
    the ROI matching reports (and excludes) the case.
    """
    ordered = sorted(groups, key=lambda k: (-len({round(z, 3) for z in slice_positions(groups[k])}), k))
    wanted = [r.z_mm for r in rois if r.z_mm is not None and not r.is_placeholder]
    chosen = next(
        (k for k in ordered if all(np.min(np.abs(slice_positions(groups[k]) - z)) <= ROI_Z_TOL_MM for z in wanted)),
        ordered[0],
    )
    for key in ordered:
        if key == chosen:
            continue
        other = slice_positions(groups[key])
        same = np.array_equal(np.unique(np.round(other, 3)), np.unique(np.round(slice_positions(groups[chosen]), 3)))
        qc.add(
            f"{len(groups)} series in the patient folder; {key} ({len(other)} slices) "
            + ("has identical z positions" if same else "has other z positions"),
            f"using {chosen}",
            file=str(groups[key][0].path.parent),
            severity=Severity.INFO,
        )
    return chosen, groups[chosen]


def _labels_from_rois(rois: list[XmlRoi], volume: Volume, xml: Path, qc: QCLog) -> np.ndarray:
    """Rasterise ROIs onto the volume, matching slices by z (ImageIndex as fallback)."""
    nz, ny, nx = volume.hu.shape
    labels = np.zeros((nz, ny, nx), dtype=np.uint8)
    for roi in rois:
        if roi.is_placeholder:
            continue
        where = f"ROI {roi.name!r} at ImageIndex {roi.image_index}"
        if roi.label is None:
            qc.add(f"unknown ROI name {roi.name!r} (ImageIndex {roi.image_index})", "ROI ignored", file=xml)
            continue
        if len(roi.points_px) < 3:
            qc.add(f"{where} has {len(roi.points_px)} point(s); a polygon needs 3", "ROI ignored", file=xml)
            continue
        if roi.z_mm is not None:
            k = int(np.argmin(np.abs(volume.positions - roi.z_mm)))
            if abs(volume.positions[k] - roi.z_mm) > ROI_Z_TOL_MM:
                raise CaseExcluded(f"{where}: z={roi.z_mm:.3f} matches no slice", str(xml))
            if roi.image_index is not None and roi.image_index != k:
                qc.add(
                    f"{where}: ImageIndex disagrees with its z ({roi.z_mm:.3f} is slice {k} in ascending z)",
                    "matched by z",
                    file=xml,
                )
        elif roi.image_index is not None and 0 <= roi.image_index < nz:
            k = roi.image_index  # ascending-z rank (= N - InstanceNumber)
        else:
            raise CaseExcluded(f"{where}: no usable z and ImageIndex out of range (0..{nz - 1})", str(xml))
        rr, cc = rasterise_roi(roi, (ny, nx))
        clash = labels[k, rr, cc]
        if np.any((clash > 0) & (clash != roi.label)):
            qc.add(f"{where} overlaps an ROI of another artery on slice {k}", "later ROI wins", file=xml)
        labels[k, rr, cc] = roi.label
    return labels


def ingest_gated_case(pid: str, root: Path, out_dir: Path, opts: IngestOptions) -> tuple[dict | None, list[QCIssue]]:
    case_id = f"gated-{pid}"
    qc = QCLog(case_id, "gated")
    folder = root / GATED_DIR / "patient" / pid
    xml = root / GATED_DIR / "calcium_xml" / f"{pid}.xml"
    try:
        files = dicom_files(folder)
        if not files:
            raise CaseExcluded("no DICOM files in the patient folder", str(folder))
        rois: list[XmlRoi] = []
        if xml.exists():
            try:
                rois = parse_calcium_xml(xml)
            except ValueError as exc:
                raise CaseExcluded(str(exc), str(xml)) from exc
        slices = read_slices(files, qc)
        if not slices:
            raise CaseExcluded("no readable DICOM slices", str(folder))
        series, chosen = choose_series(group_series(slices), rois, qc)
        volume = assemble(chosen, qc)
        labels = _labels_from_rois(rois, volume, xml, qc)
        scores = agatston_scores(volume.hu, labels, volume.geometry.spacing, opts.agatston)
        image_path = out_dir / f"{case_id}.nii.gz"
        labels_path = out_dir / f"{case_id}_labels.nii.gz"
        write_volume(image_path, volume.hu, volume.geometry)
        write_volume(labels_path, labels, volume.geometry)
    except CaseExcluded as exc:
        qc.exclude(exc.problem, exc.file or str(folder))
        return None, qc.issues
    real = [r for r in rois if not r.is_placeholder]
    row = {
        "case_id": case_id,
        "patient_id": patient_id(pid, "gated", opts.paired_ids),
        "cohort": "gated",
        "source_id": pid,
        "image": str(image_path),
        "labels": str(labels_path),
        **_geometry_columns(volume.hu.shape, volume.geometry.spacing),
        **{a: scores[a] for a in ARTERIES},
        "total": scores["total"],
        "cvd_rank": cvd_rank(scores["total"]),
        "series": series,
        "n_rois": len(real),
        "n_empty_rois": len(rois) - len(real),
    }
    return row, qc.issues


def dicom_files(folder: Path) -> list[Path]:
    """A COCA patient folder's DICOM files: in its series sub-folders or (some releases) directly in it."""
    return sorted(folder.glob("*/*.dcm")) + sorted(folder.glob("*.dcm"))


def gated_ids(root: Path, cohort_qc: QCLog) -> list[str]:
    base = root / GATED_DIR
    if not (base / "patient").is_dir():
        raise FileNotFoundError(f"{base / 'patient'}: gated patient folder not found (is coca_root right?)")
    pids = sorted((p.name for p in (base / "patient").iterdir() if p.is_dir()), key=id_sort_key)
    xml_dir = base / "calcium_xml"
    for xml in sorted(xml_dir.glob("*.xml")) if xml_dir.is_dir() else []:
        if xml.stem not in pids:
            cohort_qc.add(
                "annotation file without images", "file ignored", file=xml, case_id=f"gated-{xml.stem}"
            )
    return pids


# ------------------------------------------------------------- non-gated ----


def ingest_nongated_case(
    pid: str, root: Path, out_dir: Path, opts: IngestOptions, sheet_row
) -> tuple[dict | None, list[QCIssue]]:
    case_id = f"nongated-{pid}"
    qc = QCLog(case_id, "nongated")
    folder = root / NONGATED_DIR / pid
    try:
        if sheet_row is None:
            raise CaseExcluded("no reference score row ('<id>A') in scores.xlsx", str(folder))
        files = dicom_files(folder)
        if not files:
            raise CaseExcluded("no DICOM files in the patient folder", str(folder))
        slices = read_slices(files, qc)
        if not slices:
            raise CaseExcluded("no readable DICOM slices", str(folder))
        series, chosen = choose_series(group_series(slices), [], qc)
        volume = assemble(chosen, qc)
        image_path = out_dir / f"{case_id}.nii.gz"
        write_volume(image_path, volume.hu, volume.geometry)
    except CaseExcluded as exc:
        qc.exclude(exc.problem, exc.file or str(folder))
        return None, qc.issues
    scores = sheet_row.scores
    total = float(sum(scores[a] for a in ARTERIES))
    if sheet_row.sheet_total is None or abs(sheet_row.sheet_total - total) > 0.5 + 1e-6:
        qc.add(
            f"sheet total {sheet_row.sheet_total} differs from the artery sum {total:.3f} (row {sheet_row.row})",
            "using the artery sum",
            file=str(root / NONGATED_DIR / "scores.xlsx"),
            severity=Severity.INFO,
        )
    row = {
        "case_id": case_id,
        "patient_id": patient_id(pid, "nongated", opts.paired_ids),
        "cohort": "nongated",
        "source_id": pid,
        "image": str(image_path),
        "labels": "",
        **_geometry_columns(volume.hu.shape, volume.geometry.spacing),
        **{a: scores[a] for a in ARTERIES},
        "total": total,
        "cvd_rank": cvd_rank(total),
        "series": series,
        "sheet_total": sheet_row.sheet_total,
    }
    return row, qc.issues


def nongated_ids(root: Path) -> list[str]:
    base = root / NONGATED_DIR
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: non-gated folder not found (is coca_root right?)")
    return sorted((p.name for p in base.iterdir() if p.is_dir()), key=id_sort_key)


# ---------------------------------------------------------------- SegTHOR ---


def find_file(folder: Path, pattern: re.Pattern[str]) -> Path | None:
    hits = sorted(p for p in folder.iterdir() if p.is_file() and pattern.fullmatch(p.name))
    return hits[0] if hits else None


def ingest_segthor_case(
    name: str, split: str, root: Path, out_dir: Path, opts: IngestOptions
) -> tuple[dict | None, list[QCIssue]]:
    case_id = f"segthor-{name}"
    qc = QCLog(case_id, "segthor")
    nii = r"\.nii(\.gz)?"
    try:
        if split == "train":
            folder = root / "train" / name
            image_file = find_file(folder, re.compile(re.escape(name) + nii, re.IGNORECASE))
            gt_file = find_file(folder, re.compile("gt" + nii, re.IGNORECASE))
            if image_file is None:
                raise CaseExcluded(f"no {name}.nii.gz image in the case folder", str(folder))
            if gt_file is None:
                raise CaseExcluded("no GT.nii.gz (any case) in the case folder", str(folder))
        else:
            image_file = find_file(root / "test", re.compile(re.escape(name) + nii, re.IGNORECASE))
            gt_file = None
            if image_file is None:
                raise CaseExcluded("image not found", str(root / "test"))
        try:
            image, geometry = read_volume(image_file)
        except ValueError as exc:
            raise CaseExcluded(str(exc), str(image_file)) from exc
        heart = np.zeros(image.shape, dtype=np.uint8)
        if gt_file is not None:
            try:
                gt, gt_geometry = read_volume(gt_file)
            except ValueError as exc:
                raise CaseExcluded(str(exc), str(gt_file)) from exc
            if gt.shape != image.shape or not (
                np.allclose(gt_geometry.spacing, geometry.spacing, atol=1e-3)
                and np.allclose(gt_geometry.origin, geometry.origin, atol=1e-3)
            ):
                raise CaseExcluded(
                    f"GT grid {gt.shape[::-1]} @ {gt_geometry.spacing} differs from the image grid "
                    f"{image.shape[::-1]} @ {geometry.spacing}",
                    str(gt_file),
                )
            values = set(np.unique(gt).tolist()) - {0, 1, 2, 3, 4}
            if values:
                qc.add(f"unexpected GT label values {sorted(values)}", "treated as not heart", file=gt_file)
            heart = (gt == 2).astype(np.uint8)
            if not heart.any():
                raise CaseExcluded("GT has no heart voxels (label 2)", str(gt_file))
        integral = np.all(image == np.rint(image)) and image.min() >= -32768 and image.max() <= 32767
        image = image.astype(np.int16 if integral else np.float32)
        image_path = out_dir / f"{case_id}.nii.gz"
        write_volume(image_path, image, geometry)
        heart_path = ""
        if gt_file is not None:
            heart_path = str(out_dir / f"{case_id}_heart.nii.gz")
            write_volume(heart_path, heart, geometry)
    except CaseExcluded as exc:
        qc.exclude(exc.problem, exc.file)
        return None, qc.issues
    row = {
        "case_id": case_id,
        "split": split,
        "image": str(image_path),
        "heart": heart_path,
        **_geometry_columns(image.shape, geometry.spacing),
        "heart_voxels": int(heart.sum()),
    }
    return row, qc.issues


def segthor_cases(root: Path) -> list[tuple[str, str]]:
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"{root / 'train'}: SegTHOR training folder not found (is segthor_root right?)")
    cases = [(p.name, "train") for p in sorted((root / "train").iterdir()) if p.is_dir()]
    if (root / "test").is_dir():
        for p in sorted((root / "test").iterdir()):
            m = re.fullmatch(r"(.+?)\.nii(\.gz)?", p.name, re.IGNORECASE)
            if p.is_file() and m:
                cases.append((m.group(1), "test"))
    return cases


# ---------------------------------------------------------------- driver ----


def run_ingest(cohort: str, root: Path, out_dir: Path, table: Path, qc_path: Path, opts: IngestOptions) -> pd.DataFrame:
    """Ingest one cohort; write its table and QC table atomically."""
    cohort_qc = QCLog("", cohort)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cohort == "gated":
        pids = gated_ids(root, cohort_qc)
        results = run_cases(
            ingest_gated_case, [(pid, root, out_dir, opts) for pid in pids], opts.workers, "ingest gated"
        )
        columns = CASE_COLUMNS
    elif cohort == "nongated":
        pids = nongated_ids(root)
        sheet = read_score_sheet(root / NONGATED_DIR / "scores.xlsx", cohort_qc)
        for pid in sorted(set(sheet) - set(pids), key=id_sort_key):
            cohort_qc.add(
                f"score row {pid}A has no image folder",
                "row ignored",
                file=root / NONGATED_DIR / "scores.xlsx",
                case_id=f"nongated-{pid}",
            )
        # A rejected sheet row (None) already has its exclusion row: do not report it twice.
        jobs = [(pid, root, out_dir, opts, sheet.get(pid)) for pid in pids if pid not in sheet or sheet[pid]]
        results = run_cases(ingest_nongated_case, jobs, opts.workers, "ingest non-gated")
        columns = CASE_COLUMNS
    elif cohort == "segthor":
        jobs = [(name, split, root, out_dir, opts) for name, split in segthor_cases(root)]
        results = run_cases(ingest_segthor_case, jobs, opts.workers, "ingest SegTHOR")
        columns = SEGTHOR_COLUMNS
    else:
        raise ValueError(f"unknown cohort {cohort!r}")
    rows = [r for r, _ in results if r is not None]
    issues = cohort_qc.issues + [i for _, case_issues in results for i in case_issues]
    enforce_strict(issues, opts.strict)
    frame = pd.DataFrame(rows, columns=list(columns))
    write_csv(table, frame)
    write_csv(qc_path, issues_frame(issues))
    n_excluded = sum(1 for r, _ in results if r is None)
    log.info(
        "%s: %d case(s) ingested, %d excluded, %d QC row(s) -> %s, %s",
        cohort, len(rows), n_excluded, len(issues), table, qc_path,
    )  # fmt: skip
    return frame


def collect_tables(tables: Iterable[Path], qc_tables: Iterable[Path], cases_out: Path, qc_out: Path) -> pd.DataFrame:
    """Merge per-cohort tables into ``cases.csv`` and all QC rows into ``qc.csv``."""
    frames = [pd.read_csv(t, dtype={"source_id": str, "labels": str}, keep_default_na=False) for t in tables]
    cases = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(CASE_COLUMNS))
    dup = cases.case_id[cases.case_id.duplicated()].tolist()
    if dup:
        raise ValueError(f"duplicate case ids across tables: {dup[:5]}")
    qc = [pd.read_csv(t, dtype=str, keep_default_na=False) for t in qc_tables]
    qc_frame = pd.concat(qc, ignore_index=True) if qc else pd.DataFrame(columns=list(QC_COLUMNS))
    write_csv(cases_out, cases)
    write_csv(qc_out, qc_frame)
    counts = cases.cohort.value_counts().to_dict() if len(cases) else {}
    log.info("cases: %s; QC rows: %d", counts, len(qc_frame))
    return cases
