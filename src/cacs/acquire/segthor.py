"""Put SegTHOR on disk from the archive(s) the user downloaded or can fetch.

SegTHOR needs a registration on the challenge site, so nothing here logs
in: the config names one or more archives (``download.segthor_archive``),
each a local path or an http(s) URL, with optional SHA-256s
(``download.segthor_sha256``).  URLs are fetched resumably into the staging
folder; every archive is checked and extracted with :func:`safe_extract`
into one scratch folder; the folder holding ``train/`` is renamed to
``data.segthor_root``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cacs.acquire import SEGTHOR_PAGE, AcquireError
from cacs.acquire.archive import fetch_url, safe_extract, verify_sha256
from cacs.acquire.redact import public_part
from cacs.acquire.staging import (
    is_complete,
    locate_root,
    promote,
    read_marker,
    refuse_foreign,
    remove_staging,
    staging_dir,
    write_stamp,
)

log = logging.getLogger(__name__)


def _is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def _archive_name(source: str, index: int) -> str:
    name = Path(unquote(urlsplit(source).path)).name
    return f"{index:02d}-{name or 'segthor-archive'}"


def _pair_checksums(sources: Sequence[str], sha256: Sequence[str | None] | None) -> list[str | None]:
    if not sha256:
        return [None] * len(sources)
    if len(sha256) != len(sources):
        raise AcquireError(
            f"download.segthor_sha256 has {len(sha256)} checksum(s) for {len(sources)} archive(s) in "
            f"download.segthor_archive: give one per archive (or none)"
        )
    return [s or None for s in sha256]


def download_segthor(
    sources: Sequence[str],
    dest: Path,
    stamp: Path | None = None,
    sha256: Sequence[str | None] | None = None,
) -> dict:
    """Fetch/copy, verify and safely extract the SegTHOR archive(s) into ``dest``; return the stamp record."""
    dest = Path(dest)
    if not sources:
        raise AcquireError(
            f"download.segthor_archive is empty: name the SegTHOR archive(s) you downloaded after registering "
            f"at {SEGTHOR_PAGE} (local paths or https URLs)"
        )
    if is_complete(dest):
        record = read_marker(dest) | {"status": "already complete"}
        log.info("%s: SegTHOR already extracted; nothing to do", dest)
        write_stamp(stamp, record)
        return record
    refuse_foreign(dest, "data.segthor_root")
    checksums = _pair_checksums(sources, sha256)
    work = staging_dir(dest)
    archives: list[Path] = []
    digests: list[str] = []
    for i, source in enumerate(sources):
        if _is_url(source):
            archive = fetch_url(source, work / "archives" / _archive_name(source, i))
        else:
            archive = Path(source).expanduser()
            if not archive.is_file():
                raise FileNotFoundError(
                    f"{archive}: SegTHOR archive not found (download.segthor_archive); download it from "
                    f"{SEGTHOR_PAGE} after registering"
                )
        digests.append(verify_sha256(archive, checksums[i]))
        archives.append(archive)
    scratch = work / "extract"
    shutil.rmtree(scratch, ignore_errors=True)  # a refused or interrupted extraction starts over
    for archive in archives:
        n = safe_extract(archive, scratch)
        log.info("%s: %d file(s) extracted", archive, n)
    root = locate_root(scratch, ("train",))
    record = promote(
        root,
        dest,
        {
            "dataset": "SegTHOR",
            "source": [public_part(s) if _is_url(s) else str(Path(s).expanduser().resolve()) for s in sources],
            "sha256": digests,
            "sha256_checked": [c is not None for c in checksums],
        },
    )
    remove_staging(work)
    write_stamp(stamp, record)
    log.info("SegTHOR: %d files -> %s", record["files"], dest)
    return record
