"""Score a cohort: ``cacs infer-batch INPUT --model ... --localizer ... --out-dir OUT``.

INPUT is a folder of scans (each sub-folder is one scan: a DICOM series or
study folder, or a DICOMDIR folder; each NIfTI / NRRD / MHA file directly in
it is one scan) or a CSV with a ``scan`` column (paths absolute or relative
to the CSV) and optional ``scan_id`` and ``series`` (a SeriesInstanceUID)
columns.

Why this shape: a researcher starts a cohort and walks away.  So

* the networks are loaded once (:class:`cacs.infer.Scorer`; the GPU when
  there is one), and a progress bar shows the pace;
* every scan's outputs go to ``OUT/scans/<scan_id>/``, and its
  ``scores.json`` is written last (atomically): a rerun skips every scan that
  has one for the same input and the same model file (by its SHA-256), so a
  killed batch resumes where it stopped, and a new model rescores everything;
* one bad scan never stops the others: any failure becomes an error row in
  the table naming the file and the cause (``error_file``, ``error``), and
  an ``error.json`` in its folder; failed scans are retried on a rerun
  (after the input was fixed);
* the table ``OUT/scores.csv`` is rewritten (atomically) after every scan,
  so even a crash of the machine leaves the rows done so far;
* ``OUT/summary.json`` has the counts and the throughput in scans per
  minute (the scans scored in this run over its wall time, model loading
  included).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from cacs import SCORE_COLUMNS
from cacs.infer import InferOptions, InputError, Scorer, scan_name
from cacs.io.atomic import write_csv, write_json

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
BATCH_COLUMNS: tuple[str, ...] = (
    "scan_id", "scan", "status", "error_file", "error", *SCORE_COLUMNS, "cvd_rank", "cvd_rank_name", "series",
    "series_uid", "labels", "seg", "qc_page", "heart_ml", "fallback_box", "cut_candidates", "box_grown", "kvp",
    "threshold_hu", "experiment", "model", "device", "seconds", "from_earlier_run", "out_dir",
)  # fmt: skip
"""Columns of ``scores.csv``: ``status`` is ``ok`` or ``error``; scores are empty on error rows."""


@dataclass(frozen=True)
class BatchScan:
    scan_id: str
    path: Path
    series: str | None = None


def _unique_ids(paths: list[Path], ids: list[str | None]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for path, given in zip(paths, ids, strict=True):
        base = scan_name(Path(given)) if given else scan_name(path)
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return out


def list_scans(source: Path) -> list[BatchScan]:
    """The scans of a folder or CSV (see the module docstring), in a stable order."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or CSV")
    if source.is_file():
        try:
            table = pd.read_csv(source, dtype=str, keep_default_na=False)
        except Exception as exc:  # pandas raises many types for a non-CSV
            raise ValueError(f"{source}: not a readable CSV ({type(exc).__name__}: {exc})") from exc
        if "scan" not in table.columns:
            raise ValueError(f"{source}: no 'scan' column (columns: {', '.join(table.columns)})")
        paths = [Path(p) if Path(p).is_absolute() else source.parent / p for p in table["scan"]]
        ids = list(table["scan_id"]) if "scan_id" in table.columns else [None] * len(paths)
        series = list(table["series"]) if "series" in table.columns else [""] * len(paths)
        return [
            BatchScan(i, p, s or None) for i, p, s in zip(_unique_ids(paths, ids), paths, series, strict=True)
        ]
    paths = sorted(
        p
        for p in source.iterdir()
        if not p.name.startswith(".") and (p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES))
    )
    if not paths:
        raise ValueError(f"{source}: no scans (sub-folders or NIfTI/NRRD/MHA files) in the folder")
    return [BatchScan(i, p) for i, p in zip(_unique_ids(paths, [None] * len(paths)), paths, strict=True)]


def _finished(out: Path, scan: BatchScan, model_sha256: str) -> dict | None:
    """The record of an earlier run of the same input with the same model file, or None."""
    path = out / "scores.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = record.get("scan") == str(scan.path) and record.get("model_sha256") == model_sha256
    return record if same else None


def _ok_row(scan: BatchScan, record: dict, out: Path, earlier: bool) -> dict:
    row = {k: record.get(k, "") for k in BATCH_COLUMNS}
    row.update(scan_id=scan.scan_id, scan=str(scan.path), status="ok", error_file="", error="",
               from_earlier_run=earlier, out_dir=str(out))  # fmt: skip
    return row


def _error_row(scan: BatchScan, exc: Exception, out: Path, seconds: float) -> dict:
    """An error row: the file at fault (the scan itself when the error does not name one) and the cause."""
    if isinstance(exc, InputError):
        file, cause = exc.file, exc.problem
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
        file, cause = str(scan.path), text
        for prefix in (str(scan.path), str(getattr(exc, "filename", "") or "")):
            if prefix and text.startswith(prefix + ":"):
                file, cause = text.split(":", 1)[0], text.split(":", 1)[1].strip()
                break
        if not isinstance(exc, ValueError | FileNotFoundError):
            cause = f"{type(exc).__name__}: {cause}"
    row = dict.fromkeys(BATCH_COLUMNS, "")
    row.update(scan_id=scan.scan_id, scan=str(scan.path), status="error", error_file=file, error=cause,
               seconds=round(seconds, 3), from_earlier_run=False, out_dir=str(out))  # fmt: skip
    return row


def run_batch(
    source: Path,
    model_path: Path,
    localizer_path: Path,
    out_dir: Path,
    opts: InferOptions | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Score every scan of ``source`` into ``out_dir``; return the table (also ``out_dir/scores.csv``)."""
    opts = opts or InferOptions()
    scans = list_scans(Path(source))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    scorer = Scorer(model_path, localizer_path, opts)
    scorer.load()  # once, before the loop: a bad model file stops the batch here, not as N error rows
    rows: list[dict] = []
    n_new = n_err = 0
    bar = tqdm(scans, desc="infer-batch", unit="scan", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for scan in bar:
        scan_out = out_dir / "scans" / scan.scan_id
        earlier = _finished(scan_out, scan, scorer.provenance["model_sha256"])
        if earlier is not None:
            rows.append(_ok_row(scan, earlier, scan_out, earlier=True))
        else:
            t0 = time.perf_counter()
            scorer.opts = opts if scan.series is None else _with_series(opts, scan.series)
            try:
                (scan_out / "error.json").unlink(missing_ok=True)
                record = scorer.score(scan.path, scan_out, scan.scan_id)
                rows.append(_ok_row(scan, record, scan_out, earlier=False))
            except Exception as exc:  # one bad scan must never stop the cohort (KeyboardInterrupt still does)
                n_err += 1
                row = _error_row(scan, exc, scan_out, time.perf_counter() - t0)
                rows.append(row)
                scan_out.mkdir(parents=True, exist_ok=True)
                write_json(scan_out / "error.json", {**row, "traceback": traceback.format_exc()})
                log.warning("%s: %s: %s", scan.scan_id, row["error_file"], row["error"])
            n_new += 1
        bar.set_postfix(ok=sum(r["status"] == "ok" for r in rows), errors=n_err)
        write_csv(out_dir / "scores.csv", pd.DataFrame(rows, columns=list(BATCH_COLUMNS)))
    bar.close()
    minutes = (time.perf_counter() - started) / 60.0
    table = pd.DataFrame(rows, columns=list(BATCH_COLUMNS))
    write_csv(out_dir / "scores.csv", table)
    summary = {
        "source": str(source),
        "n_scans": len(scans),
        "n_ok": int((table.status == "ok").sum()),
        "n_error": int((table.status == "error").sum()),
        "n_from_earlier_run": len(scans) - n_new,
        "n_scored_this_run": n_new,
        "minutes": round(minutes, 4),
        "scans_per_minute": round(n_new / minutes, 3) if n_new and minutes > 0 else None,
        **scorer.provenance,
    }
    write_json(out_dir / "summary.json", summary)
    rate = f"{summary['scans_per_minute']:.2f} scans/min" if summary["scans_per_minute"] else "nothing new to score"
    log.info(
        "infer-batch: %d scan(s): %d ok, %d error(s), %d from an earlier run; %s on %s -> %s",
        len(scans), summary["n_ok"], summary["n_error"], summary["n_from_earlier_run"], rate,
        scorer.provenance.get("device", "?"), out_dir / "scores.csv",
    )  # fmt: skip
    return table


def _with_series(opts: InferOptions, series: str) -> InferOptions:
    from dataclasses import replace

    return replace(opts, series=series)
