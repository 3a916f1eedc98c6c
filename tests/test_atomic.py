"""Atomic writers: all or nothing, and files readable like any other."""

from __future__ import annotations

import os
import stat

import pytest

from cacs.io.atomic import atomic_path, write_text


def test_written_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    write_text(tmp_path / "keep.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "keep.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
