"""Score one new scan end to end: ``cacs infer SCAN --model ... --localizer ...``.

A user with a chest CT (a DICOM series folder or a NIfTI volume in HU) and a
trained pipeline gets the per-artery Agatston scores, the total, the CVD rank
and the predicted label map *on the scan's own geometry*, so that it opens
over the scan in 3D Slicer / ITK-SNAP.

Every step is the pipeline's own code, in the pipeline's order, so a scan
scored here gets exactly the scores ``cacs predict`` gives it in a run:
DICOM series -> NIfTI (the ingest reader; from a study folder or DICOMDIR
the series of :mod:`cacs.series_select`), heart box
(:func:`cacs.heart_boxes.heart_box`), crop and model grid
(:func:`cacs.crop.crop_case`), network on the crop, its class probabilities
back onto the scan's native grid and the clinical scorer on the native HU
(:func:`cacs.predict.predict_native`, see :mod:`cacs.native_scoring`).

Beside the NIfTI label map it writes a DICOM SEG over the source series (DICOM
input; :mod:`cacs.io.dicom_seg`) and a one-page QC report (:mod:`cacs.qc_page`).
:class:`Scorer` loads the networks once, so a batch (:mod:`cacs.batch_infer`)
pays for that once.  Outputs and rules: docs/infer.md.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from cacs import SCORE_COLUMNS, __version__
from cacs.agatston import AgatstonParams
from cacs.bundle import Given, file_sha256, given_from, weights_sha256
from cacs.bundle_settings import experiment_settings
from cacs.crop import CropParams, crop_case
from cacs.cvd import cvd_rank, rank_name
from cacs.heart_boxes import Plausibility, heart_box
from cacs.io.atomic import write_csv, write_json
from cacs.io.dicom_series import SkippedFile, Volume, assemble, group_series, read_slices
from cacs.io.nifti import Geometry, read_volume, write_volume
from cacs.kvp_thresholds import params_for_kvp
from cacs.localizer import load_localizer, resolve_device
from cacs.predict import load_trained, predict_native
from cacs.qc import CaseExcluded, QCLog
from cacs.series_select import SeriesInfo, SeriesSelectionError, dicom_inputs, select_series, series_frame

log = logging.getLogger(__name__)

# A CT in HU has air (about -1000) and soft tissue / bone (> 0).  A volume
# without both is an MR, a mask, a PNG stack or an image stored without its
# rescale intercept (0..4095): scoring it would give meaningless numbers.
MIN_AIR_HU = -500.0
MIN_MAX_HU = 100.0


OUTPUT_NAMES: tuple[str, ...] = (
    "scores.json", "scores.csv", "labels.nii.gz", "seg.dcm", "qc.png", "qc.pdf", "series.csv", "image.nii.gz",
)  # fmt: skip
"""What :meth:`Scorer.score` writes in a scan's folder (besides ``crop/``); removed before it scores again."""

VERSION_PACKAGES = ("torch", "numpy", "pydicom", "SimpleITK", "highdicom", "pylibjpeg")
"""Packages whose versions each record (and QC page) names, besides cacs itself."""


@dataclass(frozen=True)
class InferOptions:
    """How to score.  The crop grid, Agatston convention and plausibility range are the model's (its bundle,
    :mod:`cacs.bundle`): ``crop`` / ``agatston`` / ``plausibility`` and ``given`` (options and ``--config``
    values, each naming its source) are checked against it, and a contradiction is refused."""

    crop: CropParams | None = None  # None: the model's
    agatston: AgatstonParams | None = None  # None: the model's
    plausibility: Plausibility | None = None  # None: the model's (the built-in range if it recorded none)
    given: tuple[Given, ...] = ()
    device: str = "auto"
    series: str | None = None  # SeriesInstanceUID (or listed name) to score; None = the rules of cacs.series_select
    write_seg: bool = True  # DICOM SEG beside the NIfTI label map (DICOM input, SPSS-type models)
    qc_page: bool = True  # qc.png + qc.pdf
    kvp_thresholds: tuple[tuple[float, float], ...] = ()  # (kVp, HU) pairs: opt-in, see cacs.kvp_thresholds


class InputError(ValueError):
    """A scan that cannot be scored: ``file`` is the file (or folder) at fault, ``problem`` the cause.

    ``str()`` is ``'<file>: <problem>'``, the one-line form the CLI prints and
    a batch stores in its error row.
    """

    def __init__(self, file: str | Path, problem: str) -> None:
        super().__init__(f"{file}: {problem}")
        self.file = str(file)
        self.problem = problem


@dataclass
class DicomScan:
    """The series chosen from a DICOM input, assembled, with what was skipped on the way."""

    volume: Volume
    series: str
    series_uid: str
    report: list[SeriesInfo]  # every series found, with its decision and reason
    notes: list[str] = field(default_factory=list)
    kvp: float | None = None  # KVP (0018,0060) of the series' first slice


def resolve_settings(bundle: dict, opts: InferOptions, model_path: Path) -> tuple[CropParams, AgatstonParams,
                                                                                  Plausibility, list[str]]:  # fmt: skip
    """The model's crop grid, Agatston convention and plausibility range; ``opts`` may only repeat them.

    Returns them with notes for the record (a plausibility range the model did not record).
    """
    given = [*opts.given, *given_from("crop", opts.crop, "crop"), *given_from("agatston", opts.agatston, "agatston"),
             *given_from("plausibility", opts.plausibility, "plausibility")]  # fmt: skip
    crop, agatston, plausibility = experiment_settings(bundle, given, model_path)
    notes = []
    if plausibility is None:
        plausibility = Plausibility()
        notes.append(f"the model records no heart-volume plausibility range: the built-in "
                     f"[{plausibility.min_heart_ml:g}, {plausibility.max_heart_ml:g}] mL is used")  # fmt: skip
        log.warning("%s: %s", model_path, notes[-1])
    return crop, agatston, plausibility, notes


def software_versions() -> dict[str, str]:
    """cacs and the packages in :data:`VERSION_PACKAGES` (``'absent'`` when not installed)."""
    versions = {"cacs": __version__}
    for name in VERSION_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def scan_name(path: Path) -> str:
    """A file-name-safe id for the scan (its folder or file name without NIfTI suffixes)."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "scan"


def _blame_skipped(exc: CaseExcluded, skipped: list[SkippedFile], series_uid: str, name: str) -> InputError:
    """The error of a series that failed to assemble, naming a skipped file of that series when one explains it.

    A truncated or corrupt slice is skipped at read time; the series then has
    a gap.  The user needs the file and its cause first, then the gap.
    """
    if "missing slice" in exc.problem:
        own = [s for s in skipped if s.series_uid == series_uid] or [s for s in skipped if s.series_uid is None]
        if own:
            return InputError(own[0].path, f"{own[0].problem}; without this file series {name} has a gap "
                                           f"({exc.problem})")  # fmt: skip
    return InputError(exc.file or name, exc.problem)


def read_dicom_scan(path: Path, series: str | None = None) -> DicomScan:
    """The series to score from a series folder, study folder or DICOMDIR, assembled in HU.

    Raises :class:`InputError` naming the file (or folder) and the cause;
    ``FileNotFoundError`` for an empty folder.
    """
    files = dicom_inputs(path)
    if not files:
        raise FileNotFoundError(f"{path}: empty folder (expected a DICOM series)")
    qc = QCLog(path.name, "infer")
    skipped: list[SkippedFile] = []
    slices = read_slices(files, qc, skipped)
    if not slices:
        first = f"; {skipped[0].path.name}: {skipped[0].problem}" if skipped else ""
        reasons = sorted({s.problem for s in skipped})
        more = f" ({len(reasons)} different problems)" if len(reasons) > 1 else ""
        raise InputError(path, f"no readable CT DICOM file among {len(files)} file(s){first}{more}")
    try:
        name, chosen, report = select_series(group_series(slices), series)
    except SeriesSelectionError as exc:
        raise InputError(path, str(exc)) from exc
    uid = chosen[0].series_uid
    try:
        volume = assemble(chosen, qc)
    except CaseExcluded as exc:
        raise _blame_skipped(exc, skipped, uid, name) from exc
    notes = [f"series {i.series} skipped: {i.reason}" for i in report if i.decision == "skipped"]
    notes += [f"{i.file}: {i.problem} ({i.action})" for i in qc.issues]
    try:
        kvp = float(chosen[0].ds.get("KVP", None))
    except (TypeError, ValueError):
        kvp = None
    return DicomScan(volume, name, uid, report, notes, kvp)


def dicom_to_nifti(folder: Path, dest: Path, series: str | None = None) -> list[str]:
    """Assemble the CT series of ``folder`` (see :func:`read_dicom_scan`) into ``dest``; returns the notes.

    For a single-series folder this is the ingest stage's volume, so a scan
    read here equals the one the pipeline ingested.
    """
    scan = read_dicom_scan(folder, series)
    write_volume(dest, scan.volume.hu, scan.volume.geometry)
    return scan.notes


def check_hounsfield(hu: np.ndarray, path: Path) -> None:
    """Refuse volumes that are not a CT in Hounsfield units (see MIN_AIR_HU)."""
    lo, hi = float(hu.min()), float(hu.max())
    if lo > MIN_AIR_HU or hi < MIN_MAX_HU:
        raise ValueError(
            f"{path}: does not look like a CT in Hounsfield units (values {lo:g}..{hi:g}; a chest CT has air "
            f"near -1000 HU and bone above {MIN_MAX_HU:g} HU). Is it another modality, or stored without its "
            "rescale intercept?"
        )


class Scorer:
    """A trained pipeline (localizer + model) loaded once, scoring scan after scan.

    The networks load on the first :meth:`score` (or an explicit :meth:`load`),
    after the scan was read: a bad scan is reported before a missing model.
    ``device="auto"`` uses the GPU when there is one.
    """

    def __init__(self, model_path: Path, localizer_path: Path, opts: InferOptions = InferOptions()) -> None:
        self.model_path = Path(model_path)
        self.localizer_path = Path(localizer_path)
        self.opts = opts
        self.model = None
        self.localizer = None
        self.loc_params = None
        self.device = None
        self.crop: CropParams | None = None  # the model's settings, resolved by load()
        self.agatston: AgatstonParams | None = None
        self.plausibility: Plausibility | None = None
        self.setting_notes: list[str] = []
        self.provenance: dict = {}
        self._labels: np.ndarray | None = None  # the last scan's native label map (for its SEG)

    def load(self) -> None:
        if self.model is not None:
            return
        self.device = resolve_device(self.opts.device)
        model = load_trained(self.model_path, self.opts.device)
        self.crop, self.agatston, self.plausibility, notes = resolve_settings(model.bundle, self.opts, self.model_path)
        self.localizer, self.loc_params = load_localizer(self.localizer_path, self.device)
        localizer_sha = file_sha256(self.localizer_path) if self.localizer_path.is_file() else ""
        trained_with = (model.bundle.get("localizer") or {}).get("weights_sha256")
        if trained_with and trained_with != weights_sha256(self.localizer.state_dict()):
            notes.append(f"the localizer is not the one whose heart boxes cut the model's training crops "
                         f"({model.bundle['localizer'].get('path')})")  # fmt: skip
            log.warning("%s: %s", self.localizer_path, notes[-1])
        self.setting_notes = notes
        provenance = model.bundle.get("provenance", {})
        self.provenance = {
            "model_path": str(self.model_path),
            "model_sha256": file_sha256(self.model_path) if self.model_path.is_file() else "",
            "model_config_sha256": provenance.get("config_sha256", ""),
            "model_git_commit": provenance.get("git_commit", ""),
            "localizer_path": str(self.localizer_path),
            "localizer_sha256": localizer_sha,
            "device": str(self.device),
            "versions": software_versions(),
        }
        self.model = model

    def score(self, scan: Path, out_dir: Path, scan_id: str | None = None) -> dict:
        """Score ``scan`` (DICOM series/study folder, DICOMDIR or volume file) into ``out_dir``; return the record.

        Writes ``image.nii.gz`` (DICOM input), ``series.csv`` (DICOM input:
        every series found, chosen or skipped with its reason), ``labels.nii.gz``
        (the predicted label map on the scan's own grid, which the scores were
        computed from; SPSS-type models), ``seg.dcm`` (the same as a DICOM SEG
        over the source series; DICOM input), ``qc.png`` / ``qc.pdf``, the
        model-grid crop under ``crop/``, and last ``scores.json`` +
        ``scores.csv``: a folder with ``scores.json`` is a finished scan.
        """
        started = time.perf_counter()
        scan = Path(scan)
        if not scan.exists():
            raise FileNotFoundError(f"{scan}: no such file or folder")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in OUTPUT_NAMES:  # an earlier run's outputs must not pass for this run's (scores.json first)
            if (out_dir / stale).resolve() != scan.resolve():
                (out_dir / stale).unlink(missing_ok=True)
        name = scan_id or scan_name(scan)
        notes: list[str] = []
        dicom: DicomScan | None = None
        if scan.is_dir() or scan.name.upper() == "DICOMDIR":
            dicom = read_dicom_scan(scan, self.opts.series)
            notes += dicom.notes
            image_path = out_dir / "image.nii.gz"
            write_volume(image_path, dicom.volume.hu, dicom.volume.geometry)
            write_csv(out_dir / "series.csv", series_frame(dicom.report))
            hu, geometry = dicom.volume.hu, dicom.volume.geometry
        else:
            image_path = scan
            hu, geometry = read_volume(image_path)
        check_hounsfield(hu, image_path)
        self.load()
        notes += self.setting_notes
        agatston = self.agatston
        kvp = dicom.kvp if dicom is not None else None
        if self.opts.kvp_thresholds:
            try:
                agatston = params_for_kvp(agatston, kvp, self.opts.kvp_thresholds)
            except ValueError as exc:
                raise InputError(scan, str(exc)) from exc
            notes.append(f"kVp-dependent threshold: {agatston.threshold_hu:g} HU at {kvp:g} kVp "
                         f"(weight edges {', '.join(f'{e:g}' for e in agatston.weight_edges)} HU)")  # fmt: skip
        record = self._predict(scan, name, image_path, hu, geometry, out_dir, notes, agatston)
        record["kvp"], record["threshold_hu"] = kvp, agatston.threshold_hu
        if dicom is not None:
            record["series"], record["series_uid"] = dicom.series, dicom.series_uid
        record["seg"] = self._write_seg(dicom, record, out_dir, notes)
        record["qc_page"] = ""
        if self.opts.qc_page:
            from cacs.qc_page import write_qc_page

            record["seconds"] = round(time.perf_counter() - started, 3)
            written = write_qc_page(out_dir / "qc", image_path, record["labels"] or None, record)
            record["qc_page"] = str(written[0])
        record["seconds"] = round(time.perf_counter() - started, 3)
        write_json(out_dir / "scores.json", record)
        flat = {k: v for k, v in record.items() if not isinstance(v, list | dict)}
        write_csv(out_dir / "scores.csv", pd.DataFrame([flat]))
        log.info(
            "%s: total %.1f (%s), LM %.1f, LCX %.1f, LAD %.1f, RCA %.1f -> %s",
            scan, record["total"], record["cvd_rank_name"], record["LM"], record["LCX"], record["LAD"], record["RCA"],
            out_dir,
        )  # fmt: skip
        return record

    def _predict(
        self, scan: Path, name: str, image_path: Path, hu: np.ndarray, geometry: Geometry, out_dir: Path,
        notes: list[str], agatston: AgatstonParams,
    ) -> dict:  # fmt: skip
        """Heart box, crop, network, native scoring: the pipeline's steps; the record without outputs."""
        box = heart_box(self.localizer, self.loc_params, hu, geometry, self.device, self.plausibility)
        if not box["plausible"]:
            notes.append(f"heart localisation implausible ({box['problem']}): fallback box used")
            log.warning("%s: %s; using the fallback box", scan, box["problem"])
        crop_dir = out_dir / "crop"
        crop_dir.mkdir(exist_ok=True)
        case = {"case_id": name, "cohort": "infer", "image": str(image_path)}
        row, issues = crop_case(case, box, crop_dir, self.crop, agatston)
        notes += [f"{i.problem} ({i.action})" for i in issues]
        model = self.model
        crop_hu, grid = read_volume(row["image_nii"])
        pred = predict_native(model, crop_hu, grid, hu, geometry, agatston)
        scores = pred.scores
        labels_path = ""
        self._labels = pred.labels
        if pred.labels is not None:
            write_volume(crop_dir / f"{name}_predicted_labels.nii.gz", pred.grid_labels, grid)
            labels_path = str(out_dir / "labels.nii.gz")
            write_volume(labels_path, pred.labels, geometry)
        else:
            notes.append(f"model {model.experiment!r} is a {model.kind} (direct regression): no label map")
        rank = cvd_rank(scores["total"])
        return {
            "scan_id": name,
            "scan": str(scan),
            "image": str(image_path),
            "series": "",
            "series_uid": "",
            "experiment": model.experiment,
            "model": model.kind,
            **{k: round(float(scores[k]), 6) for k in SCORE_COLUMNS},
            "cvd_rank": rank,
            "cvd_rank_name": rank_name(rank),
            "labels": labels_path,
            "heart_ml": box["heart_ml"],
            "fallback_box": bool(row["fallback"]),
            "cut_candidates": None if pd.isna(row["cut_candidates"]) else int(row["cut_candidates"]),
            "box_grown": row["box_grown"],
            **self.provenance,
            "scored_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "notes": notes,
        }

    def _write_seg(self, dicom: DicomScan | None, record: dict, out_dir: Path, notes: list[str]) -> str:
        """``seg.dcm`` when the input was DICOM and the model gives a label map; else a note why not."""
        if not self.opts.write_seg:
            return ""
        if dicom is None:
            notes.append("volume input (not DICOM): no DICOM SEG written (labels.nii.gz is the label map)")
            return ""
        if self._labels is None:
            return ""
        from cacs.io.dicom_seg import SEG_NAME, write_dicom_seg

        try:
            path = write_dicom_seg(out_dir / SEG_NAME, self._labels, dicom.volume.files,
                                   algorithm_name=f"cacs {record['experiment']}")  # fmt: skip
        except ValueError as exc:
            notes.append(f"no DICOM SEG written: {exc}")
            log.warning("%s: no DICOM SEG written: %s", record["scan"], exc)
            return ""
        return str(path)


def infer_scan(
    scan: Path,
    model_path: Path,
    localizer_path: Path,
    out_dir: Path,
    opts: InferOptions = InferOptions(),
) -> dict:
    """Score one scan (see :meth:`Scorer.score`); the networks are loaded for this scan only."""
    return Scorer(model_path, localizer_path, opts).score(Path(scan), Path(out_dir))
