"""COCA's non-gated ``scores.xlsx``, quirks included, written reproducibly.

Columns ``'filename '`` (trailing space), ``LCA`` (= left main), ``LAD``,
``LCX``, ``RCA``, ``total`` (rounded); rows keyed ``<pid>A``.  An .xlsx is a
zip whose members carry timestamps and whose core properties carry creation
times: both are pinned so the same seed gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from pathlib import Path

from openpyxl import Workbook

from cacs.io.atomic import write_bytes

SHEET_COLUMNS = ("filename ", "LCA", "LAD", "LCX", "RCA", "total")
_EPOCH = dt.datetime(2020, 1, 1)
_MODIFIED = re.compile(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)")


def _normalised_zip(data: bytes) -> bytes:
    """Re-pack a zip with fixed member timestamps (byte-identical output)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            payload = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                # openpyxl stamps "modified" with the wall clock at save time.
                payload = _MODIFIED.sub(
                    rb"\g<1>" + _EPOCH.strftime("%Y-%m-%dT%H:%M:%SZ").encode() + rb"\g<2>", payload
                )
            dst.writestr(fixed, payload)
    return out.getvalue()


def write_score_sheet(path: Path, rows: list[tuple]) -> None:
    """``rows``: tuples in :data:`SHEET_COLUMNS` order."""
    wb = Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(list(SHEET_COLUMNS))
    for row in rows:
        ws.append(list(row))
    wb.properties.created = _EPOCH
    wb.properties.modified = _EPOCH
    wb.properties.creator = "cacs-synthetic"
    buf = io.BytesIO()
    wb.save(buf)
    write_bytes(path, _normalised_zip(buf.getvalue()))
