"""Staging folders, completion markers and stamps shared by both downloads.

Why a staging folder: a download that stops halfway must neither look like
data (ingest would read a partial tree) nor be lost (a re-run continues it).
So each download works in ``<parent>/.<name>.cacs-download/`` beside the
destination (same file system, so the final rename is atomic) and only a
finished tree is renamed to the destination.  The finished tree gets a
completion marker, so a re-run (say after ``results/`` was deleted) knows it
has nothing to do and needs no credentials; the rule's output is a stamp in
``results/acquire/`` that records what was fetched, without secrets.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from cacs import __version__
from cacs.acquire import AcquireError
from cacs.io.atomic import write_json

COMPLETE_MARKER = ".cacs-download-complete.json"


def staging_dir(dest: Path) -> Path:
    """The private working folder of a download into ``dest`` (created, mode 0700)."""
    dest = Path(dest)
    folder = dest.parent / f".{dest.name}.cacs-download"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # may hold azcopy job plans and partial files
    return folder


def is_complete(dest: Path) -> bool:
    return (Path(dest) / COMPLETE_MARKER).is_file()


def refuse_foreign(dest: Path, key: str) -> None:
    """Never write into (or over) a folder that a download of ours did not finish."""
    dest = Path(dest)
    if dest.exists() and not is_complete(dest):
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()  # an empty folder (e.g. made by hand) is no data to protect
            return
        raise AcquireError(
            f"{dest} ({key}) exists but was not made by a completed download (no {COMPLETE_MARKER} in it). "
            f"If it already holds the data set, set data.source: local; otherwise move it away and run again"
        )


def locate_root(folder: Path, markers: Iterable[str], max_depth: int = 4) -> Path:
    """The shallowest folder under ``folder`` that contains every name in ``markers``.

    azcopy puts a container under ``<dest>/<container>/`` and archives often
    wrap their content in a top folder: the tree's root is found, not assumed.
    """
    markers = tuple(markers)
    level = [Path(folder)]
    for _ in range(max_depth + 1):
        hits = [d for d in level if all((d / m).exists() for m in markers)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise AcquireError(
                f"{folder}: several folders hold {', '.join(markers)}: {', '.join(str(h) for h in hits)}"
            )
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    top = sorted(p.name for p in Path(folder).iterdir()) if Path(folder).is_dir() else []
    raise AcquireError(
        f"{folder}: no folder holding {' and '.join(markers)} within {max_depth} levels; top level holds {top[:20]}"
    )


def tree_size(folder: Path) -> tuple[int, int]:
    """Number of files and bytes under ``folder`` (for the stamp)."""
    n = size = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            n += 1
            size += (Path(dirpath) / name).stat().st_size
    return n, size


def promote(found: Path, dest: Path, info: dict) -> dict:
    """Mark the finished tree ``found`` complete and rename it to ``dest``."""
    n_files, n_bytes = tree_size(found)
    record = {
        **info,
        "destination": str(Path(dest).resolve()),
        "files": n_files,
        "bytes": n_bytes,
        "finished_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cacs_version": __version__,
    }
    write_json(Path(found) / COMPLETE_MARKER, record)
    os.replace(found, dest)
    return record


def read_marker(dest: Path) -> dict:
    """The record a completed download left in ``dest`` (empty if unreadable)."""
    try:
        return json.loads((Path(dest) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return {}


def write_stamp(stamp: Path | None, record: dict) -> None:
    if stamp is not None:
        write_json(stamp, record)


def remove_staging(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
