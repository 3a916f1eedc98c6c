"""Check the COCA and SegTHOR trees before any ingest, naming whatever is missing or broken.

Ingest tolerates a bad case (it records a QC row and goes on), which is right
for the data set's known quirks but wrong for a download that stopped
halfway or a root that points at the wrong folder: those would silently
shrink the cohort.  This check runs first (rule verify_layout) and fails
with every problem listed by path, relative to its root, e.g.
``Gated_release_final/patient/123: no DICOM files``.

What is checked (docs/data-formats.md), reusing ingest's own discovery
(``gated_ids``, ``nongated_ids``, ``segthor_cases``, ``read_score_sheet``),
so the check and the ingest can never disagree on the layout:

* COCA: ``Gated_release_final/patient/<pid>/`` and
  ``deidentified_nongated/<pid>/`` each hold DICOM files, none empty and no
  azcopy leftovers (``.azDownload-*``); one header per series folder is read
  (pydicom, ``stop_before_pixels``) and must carry the geometry tags ingest
  needs; ``calcium_xml/`` exists and every XML parses; ``scores.xlsx`` reads.
* SegTHOR: ``train/<case>/`` holds ``<case>.nii.gz`` and ``GT.nii.gz`` (any
  case), ``test/`` holds ``<case>.nii.gz``; every NIfTI header reads
  (SimpleITK ``ReadImageInformation``, no voxels) and is 3D.
* Counts, when configured (``download.expect``): at least that many.

Known quirks of the real data are warnings, not errors: an XML without a
patient folder, a score row without a folder (the ``790A`` typo), a folder
without a score row.  When a count falls short, the error names them too,
since they are the likely missing folders.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from cacs.acquire import AcquireError
from cacs.acquire.coca import PARTIAL_PREFIX
from cacs.ingest import (
    GATED_DIR,
    NONGATED_DIR,
    dicom_files,
    find_file,
    gated_ids,
    id_sort_key,
    nongated_ids,
    segthor_cases,
)
from cacs.io.atomic import write_json, write_text
from cacs.io.calcium_xml import parse_calcium_xml
from cacs.io.dicom_series import REQUIRED
from cacs.io.score_sheet import read_score_sheet
from cacs.qc import QCLog

log = logging.getLogger(__name__)

EXPECT_KEYS = ("gated", "gated_xml", "nongated", "segthor_train", "segthor_test")
_NII = r"\.nii(\.gz)?"  # as ingest_segthor_case matches them
_MAX_PER_FOLDER = 3  # empty files named per folder before summarising


@dataclass(frozen=True)
class Expect:
    """Minimum counts (``download.expect``); ``None`` = not checked."""

    gated: int | None = None  # Gated_release_final/patient/<pid> folders
    gated_xml: int | None = None  # Gated_release_final/calcium_xml/*.xml
    nongated: int | None = None  # deidentified_nongated/<pid> folders
    segthor_train: int | None = None  # train/<case> folders
    segthor_test: int | None = None  # test/<case>.nii.gz files


@dataclass(frozen=True)
class Problem:
    dataset: str  # "COCA" | "SegTHOR"
    path: str  # relative to the dataset's root
    problem: str

    def __str__(self) -> str:
        return f"[{self.dataset}] {self.path}: {self.problem}"


@dataclass
class LayoutReport:
    coca_root: str
    segthor_root: str
    expected: dict[str, int | None]
    counts: dict[str, int] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, dataset: str, path: str | Path, problem: str) -> None:
        self.errors.append(Problem(dataset, str(path), problem))

    def warn(self, dataset: str, path: str | Path, problem: str) -> None:
        self.warnings.append(Problem(dataset, str(path), problem))

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "coca_root": self.coca_root,
            "segthor_root": self.segthor_root,
            "counts": self.counts,
            "expected": self.expected,
            "checked": dict(self.checked),
            "errors": [asdict(p) for p in self.errors],
            "warnings": [asdict(p) for p in self.warnings],
        }

    def to_text(self) -> str:
        lines = [
            f"layout check: {'OK' if self.ok else 'FAILED'}",
            f"COCA root: {self.coca_root}",
            f"SegTHOR root: {self.segthor_root}",
            "counts: " + ", ".join(f"{k}={v}" for k, v in self.counts.items()),
            "expected (at least): " + ", ".join(f"{k}={v}" for k, v in self.expected.items() if v is not None),
            "headers read: " + ", ".join(f"{k}={v}" for k, v in self.checked.items()),
            f"errors ({len(self.errors)}):",
            *[f"  {p}" for p in self.errors],
            f"warnings ({len(self.warnings)}):",
            *[f"  {p}" for p in self.warnings],
        ]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ COCA ----


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def dicom_header_problem(path: Path) -> str | None:
    """Why the file's DICOM header is unusable for ingest, or ``None``; reads no pixels."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as exc:
        return f"unreadable DICOM header ({type(exc).__name__}: {exc})"
    missing = [tag for tag in REQUIRED if tag not in ds]
    return f"DICOM header lacks {', '.join(missing)}" if missing else None


def _check_dicom_folder(folder: Path, root: Path, report: LayoutReport) -> None:
    """A patient folder: DICOM files present, none empty or partial, one readable header per series."""
    rel = _rel(folder, root)
    files = dicom_files(folder)
    partial = [p for p in folder.rglob(f"{PARTIAL_PREFIX}*")]
    for p in partial[:_MAX_PER_FOLDER]:
        report.error("COCA", _rel(p, root), "partial azcopy download left over (re-run the download)")
    if len(partial) > _MAX_PER_FOLDER:
        report.error("COCA", rel, f"{len(partial)} partial azcopy files in all")
    files = [p for p in files if not p.name.startswith(PARTIAL_PREFIX)]
    if not files:
        report.error("COCA", rel, "no DICOM files")
        return
    series: dict[Path, list[Path]] = defaultdict(list)
    empty = []
    for p in files:
        if p.stat().st_size == 0:
            empty.append(p)
        else:
            series[p.parent].append(p)
    for p in empty[:_MAX_PER_FOLDER]:
        report.error("COCA", _rel(p, root), "empty file (0 bytes)")
    if len(empty) > _MAX_PER_FOLDER:
        report.error("COCA", rel, f"{len(empty)} empty DICOM files in all")
    for members in series.values():
        first = members[0]
        report.checked["dicom_headers"] += 1
        problem = dicom_header_problem(first)
        if problem:
            report.error("COCA", _rel(first, root), problem)


def _check_gated(root: Path, report: LayoutReport) -> tuple[list[str], list[str]]:
    """Patient folders and XML files of the gated cohort; returns (pids, XML stems without a folder)."""
    qc = QCLog("", "gated")
    try:
        pids = gated_ids(root, qc)
    except FileNotFoundError:
        report.error("COCA", f"{GATED_DIR}/patient", "folder missing")
        pids = []
    for pid in pids:
        _check_dicom_folder(root / GATED_DIR / "patient" / pid, root, report)
    orphans = []
    for issue in qc.issues:  # "annotation file without images": a known COCA quirk
        orphans.append(Path(issue.file).stem)
        report.warn("COCA", _rel(Path(issue.file), root), f"{issue.problem} (ingest ignores it)")
    xml_dir = root / GATED_DIR / "calcium_xml"
    xmls = sorted(xml_dir.glob("*.xml")) if xml_dir.is_dir() else []
    if not xml_dir.is_dir():
        report.error("COCA", f"{GATED_DIR}/calcium_xml", "folder missing")
    for xml in xmls:
        report.checked["xml"] += 1
        if xml.stat().st_size == 0:
            report.error("COCA", _rel(xml, root), "empty file (0 bytes)")
            continue
        try:
            parse_calcium_xml(xml)
        except ValueError as exc:
            report.error("COCA", _rel(xml, root), str(exc).replace(f"{xml}: ", ""))
    report.counts["gated"] = len(pids)
    report.counts["gated_xml"] = len(xmls)
    return pids, orphans


def _check_nongated(root: Path, report: LayoutReport) -> list[str]:
    """Patient folders and score sheet of the non-gated cohort; returns score rows without a folder."""
    try:
        pids = nongated_ids(root)
    except FileNotFoundError:
        report.error("COCA", NONGATED_DIR, "folder missing")
        report.counts["nongated"] = 0
        return []
    for pid in pids:
        _check_dicom_folder(root / NONGATED_DIR / pid, root, report)
    report.counts["nongated"] = len(pids)
    sheet_path = root / NONGATED_DIR / "scores.xlsx"
    qc = QCLog("", "nongated")
    try:
        sheet = read_score_sheet(sheet_path, qc)
    except FileNotFoundError:
        report.error("COCA", _rel(sheet_path, root), "score sheet missing")
        return []
    except ValueError as exc:
        report.error("COCA", _rel(sheet_path, root), str(exc).replace(f"{sheet_path}: ", ""))
        return []
    report.counts["score_rows"] = len(sheet)
    for issue in qc.issues:
        report.warn("COCA", _rel(sheet_path, root), f"{issue.problem} ({issue.action} by ingest)")
    rows_without = sorted(set(sheet) - set(pids), key=id_sort_key)
    for pid in rows_without:
        report.warn("COCA", f"{NONGATED_DIR}/{pid}", f"score row {pid}A has no image folder")
    for pid in sorted(set(pids) - set(sheet), key=id_sort_key):
        report.warn("COCA", f"{NONGATED_DIR}/{pid}", "image folder without a score row (ingest excludes it)")
    return rows_without


def check_coca(root: Path, report: LayoutReport) -> None:
    root = Path(root)
    if not root.is_dir():
        report.error("COCA", str(root), "COCA root folder not found (data.coca_root)")
        return
    pids, xml_orphans = _check_gated(root, report)
    rows_without = _check_nongated(root, report)
    hints = {
        "gated": [f"{GATED_DIR}/patient/{pid}" for pid in xml_orphans],
        "nongated": [f"{NONGATED_DIR}/{pid}" for pid in rows_without],
    }
    _check_counts(report, "COCA", {"gated": f"{GATED_DIR}/patient", "gated_xml": f"{GATED_DIR}/calcium_xml",
                                   "nongated": NONGATED_DIR}, hints)  # fmt: skip


# --------------------------------------------------------------- SegTHOR ----


def nifti_header_problem(path: Path) -> str | None:
    """Why the NIfTI header is unusable, or ``None``; reads no voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        return f"unreadable image header ({detail})"
    if reader.GetDimension() != 3:
        return f"expected a 3D image, header says {reader.GetDimension()}D"
    return None


def _check_nifti(path: Path, root: Path, report: LayoutReport) -> None:
    report.checked["nifti_headers"] += 1
    problem = nifti_header_problem(path)
    if problem:
        report.error("SegTHOR", _rel(path, root), problem)


def check_segthor(root: Path, report: LayoutReport) -> None:
    root = Path(root)
    if not root.is_dir():
        report.error("SegTHOR", str(root), "SegTHOR root folder not found (data.segthor_root)")
        return
    try:
        cases = segthor_cases(root)
    except FileNotFoundError:
        report.error("SegTHOR", "train", "folder missing")
        cases = []
    if not (root / "test").is_dir():
        report.warn("SegTHOR", "test", "folder missing (SegTHOR's unlabelled test CTs; training does not need them)")
    n_train = n_test = 0
    for name, split in cases:
        if split == "train":
            n_train += 1
            folder = root / "train" / name
            image = find_file(folder, re.compile(re.escape(name) + _NII, re.IGNORECASE))
            gt = find_file(folder, re.compile("gt" + _NII, re.IGNORECASE))
            if image is None:
                report.error("SegTHOR", f"train/{name}", f"no {name}.nii.gz")
            else:
                _check_nifti(image, root, report)
            if gt is None:
                report.error("SegTHOR", f"train/{name}", "no GT.nii.gz")
            else:
                _check_nifti(gt, root, report)
        else:
            n_test += 1
            image = find_file(root / "test", re.compile(re.escape(name) + _NII, re.IGNORECASE))
            if image is not None:
                _check_nifti(image, root, report)
    report.counts["segthor_train"] = n_train
    report.counts["segthor_test"] = n_test
    _check_counts(report, "SegTHOR", {"segthor_train": "train", "segthor_test": "test"}, {})


# ---------------------------------------------------------------- driver ----


def _check_counts(report: LayoutReport, dataset: str, where: dict[str, str], hints: dict[str, list[str]]) -> None:
    for key, path in where.items():
        want = report.expected.get(key)
        have = report.counts.get(key, 0)
        if want is not None and have < want:
            hint = hints.get(key) or []
            extra = f"; likely missing: {', '.join(hint)}" if hint else ""
            report.error(dataset, path, f"{have} found, expected at least {want} (download.expect.{key}){extra}")


def verify_layout(
    coca_root: Path,
    segthor_root: Path,
    expect: Expect | None = None,
    report_path: Path | None = None,
    fatal: bool = True,
) -> LayoutReport:
    """Check both trees; write the report (``.json``, else text); raise listing every error when ``fatal``."""
    expect = expect or Expect()
    report = LayoutReport(str(coca_root), str(segthor_root), {k: getattr(expect, k) for k in EXPECT_KEYS})
    check_coca(Path(coca_root), report)
    check_segthor(Path(segthor_root), report)
    for p in report.warnings:
        log.warning("%s", p)
    for p in report.errors:
        log.error("%s", p)
    log.info(
        "layout: %s; counts %s; %d error(s), %d warning(s)",
        "OK" if report.ok else "FAILED", report.counts, len(report.errors), len(report.warnings),
    )  # fmt: skip
    if report_path is not None:
        if Path(report_path).suffix == ".json":
            write_json(report_path, report.to_dict())
        else:
            write_text(report_path, report.to_text())
    if report.errors and fatal:
        shown = "\n  ".join(str(p) for p in report.errors[:50])
        more = f"\n  ... and {len(report.errors) - 50} more (see the log)" if len(report.errors) > 50 else ""
        raise AcquireError(
            f"the data trees do not have the expected layout ({len(report.errors)} problem(s)); fix them or "
            f"re-run the download, then run again:\n  {shown}{more}"
        )
    return report


def load_report(path: Path) -> dict:
    """A JSON report written by :func:`verify_layout`."""
    return json.loads(Path(path).read_text())
