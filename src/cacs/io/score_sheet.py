"""COCA's non-gated reference scores (``deidentified_nongated/scores.xlsx``).

Quirks handled here (docs/data-formats.md): the key column is ``'filename '``
with a trailing space (column names are stripped), ``LCA`` means the left
main, rows are keyed ``<pid>A``, and ``total`` is rounded and sometimes
inconsistent with the artery columns (the reference total is the artery sum;
the sheet's value is kept as ``sheet_total`` and differences are reported).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cacs.qc import QCLog, Severity

SHEET_TO_ARTERY = {"LCA": "LM", "LCX": "LCX", "LAD": "LAD", "RCA": "RCA"}
REQUIRED_COLUMNS = ("filename", *SHEET_TO_ARTERY, "total")
_KEY = re.compile(r"^(\d+)\s*A$", re.IGNORECASE)


@dataclass
class SheetScores:
    pid: str
    scores: dict[str, float]  # LM, LCX, LAD, RCA
    sheet_total: float | None
    row: int  # spreadsheet row number (1 = header), for messages


def read_score_sheet(path: Path, qc: QCLog) -> dict[str, SheetScores | None]:
    """Rows by patient id; every rejected row gets a QC row (case = ``nongated-<pid>``).

    A patient whose row was rejected maps to ``None`` so that the caller can
    tell "excluded here" from "no row at all".
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: score sheet not found")
    try:
        # keep_default_na=False: a cell reading "n/a" or "NA" is a bad value to report, not a blank.
        frame = pd.read_excel(path, sheet_name=0, dtype=object, keep_default_na=False, na_values=[""])
    except Exception as exc:  # openpyxl/zipfile raise many types for a bad workbook
        raise ValueError(f"{path}: cannot read the score sheet ({type(exc).__name__}: {exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    out: dict[str, SheetScores | None] = {}
    for i, rec in enumerate(frame.to_dict("records")):
        row = i + 2
        key = str(rec["filename"]).strip()
        m = _KEY.match(key)
        if not m:
            if key and key.lower() != "nan":
                qc.add(f"unrecognised key {key!r} in row {row} (expected '<id>A')", "row ignored", file=path)
            else:
                qc.add(f"row {row} has no key", "row ignored", file=path)
            continue
        pid = str(int(m.group(1)))
        case = f"nongated-{pid}"
        scores: dict[str, float] = {}
        bad = []
        for col, artery in SHEET_TO_ARTERY.items():
            value = pd.to_numeric(pd.Series([rec[col]]), errors="coerce").iloc[0]
            if pd.isna(value) or value < 0:
                bad.append(f"{col}={rec[col]!r}")
            else:
                scores[artery] = float(value)
        if bad:
            qc.add(
                f"non-numeric or negative score in row {row}: {', '.join(bad)}",
                "case excluded",
                file=path,
                severity=Severity.ERROR,
                case_id=case,
            )
            out.setdefault(pid, None)
            continue
        total = pd.to_numeric(pd.Series([rec["total"]]), errors="coerce").iloc[0]
        if pid in out:
            first = out[pid]
            qc.add(
                f"duplicate key {key!r} (row {row})",
                f"kept row {first.row}" if first else "case excluded",
                file=path,
                case_id=case,
            )
            continue
        out[pid] = SheetScores(pid, scores, None if pd.isna(total) else float(total), row)
    return out
