"""Atomic file writers.

A crashed or killed step must never leave a half-written file that a later
step (or a rerun) mistakes for a finished one.  Every writer here writes to a
temporary file in the destination folder and renames it into place; the
rename is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask (only readable by setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` on success.

    ``suffix`` defaults to the destination's full suffix (``.nii.gz`` stays
    ``.nii.gz``) so that libraries choosing a format by extension still work.
    On any exception the temporary file is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(dest.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; give it the permissions a plain open()
        # would (0666 minus the umask) so colleagues and the report can read it.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(dest: str | os.PathLike[str], frame: Any) -> None:
    """Write a pandas DataFrame as CSV (no index), atomically."""
    with atomic_path(dest) as tmp:
        frame.to_csv(tmp, index=False)


def write_torch(dest: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` atomically: a checkpoint is either the old one or the new one, never half."""
    import torch  # lazy: most stages never need torch

    with atomic_path(dest) as tmp:
        torch.save(obj, tmp)
