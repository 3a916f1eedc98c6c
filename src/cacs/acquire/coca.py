"""Download COCA with azcopy from a shared-access URL held in an environment variable.

COCA is distributed by Stanford AIMI through a time-limited azcopy
shared-access (SAS) URL (docs/data-formats.md): ``azcopy copy <URL> <dir>
--recursive`` puts the container under ``<dir>/<container>/`` with
``Gated_release_final/`` and ``deidentified_nongated/`` inside.

Resumable: azcopy runs into the staging folder with
``--overwrite=ifSourceNewer``, so a re-run skips every file already there
(azcopy downloads each file to a temporary ``.azDownload-*`` name and renames
it when complete, so a file under its real name is a whole file).  azcopy's
logs and job plans go to the staging folder too (``AZCOPY_LOG_LOCATION``,
``AZCOPY_JOB_PLAN_LOCATION``), not to ``~/.azcopy``; after each run the plans
are deleted and the logs redacted, since they may carry the URL.

The URL never appears on a command line Snakemake prints: the rule passes
the variable's *name*; only the azcopy child process gets the URL as an
argument, and all of its output is relayed through :func:`redact`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

from cacs.acquire import AIMI_COCA_PAGE, AZCOPY_INSTALL, AcquireError
from cacs.acquire.redact import check_not_expired, public_part, read_sas_url, redact, url_secrets
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
from cacs.ingest import GATED_DIR, NONGATED_DIR

log = logging.getLogger(__name__)

PARTIAL_PREFIX = ".azDownload-"  # azcopy's temporary name of a file being downloaded
_AUTH_FAILURE = re.compile(
    r"(?i)(?:RESPONSE|Status(?:Code)?|HTTP)\W{0,3}403|403\W+(?:Forbidden|Server failed|This request)|"
    r"AuthenticationFailed|AuthorizationFailure|AuthorizationPermissionMismatch|Server failed to authenticate|"
    r"Signature (?:not valid|did not match)|Signed expiry|expired"
)
_FINAL_STATUS = re.compile(r"Final Job Status:\s*(\w+)")
_TAIL = 12  # azcopy lines quoted in an error message


def find_azcopy(azcopy: str = "azcopy") -> str:
    """Path of the azcopy executable, or a message saying how to install it."""
    found = shutil.which(azcopy)
    if found is None:
        raise AcquireError(
            f"azcopy not found ({azcopy!r} is not an executable on PATH). Install AzCopy v10: download the "
            f"Linux archive linked from {AZCOPY_INSTALL} (e.g. https://aka.ms/downloadazcopy-v10-linux), "
            f"extract it and put the azcopy binary on PATH, or set download.azcopy to its full path"
        )
    return found


def _scrub_logs(folder: Path, secrets: list[str]) -> None:
    """Redact azcopy's own log files in place: they may quote the URL."""
    for path in folder.rglob("*"):
        if path.is_file():
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            clean = redact(text, secrets)
            if clean != text:
                path.write_text(clean)


def _remove_partials(folder: Path) -> int:
    """Delete azcopy's temporary files left by a killed run (ingest would glob them as DICOM)."""
    partials = [p for p in folder.rglob(f"{PARTIAL_PREFIX}*") if p.is_file()]
    for p in partials:
        p.unlink()
    return len(partials)


def run_azcopy(azcopy: str, url: str, target: Path, work: Path) -> None:
    """``azcopy copy URL target --recursive``, resumable, every output line redacted."""
    secrets = url_secrets(url)
    logs, plans = work / "azcopy-logs", work / "azcopy-plans"
    logs.mkdir(parents=True, exist_ok=True)
    plans.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AZCOPY_LOG_LOCATION": str(logs), "AZCOPY_JOB_PLAN_LOCATION": str(plans)}
    cmd = [
        azcopy, "copy", url, str(target),
        "--recursive", "--overwrite=ifSourceNewer", "--log-level=ERROR", "--output-level=essential",
    ]  # fmt: skip
    log.info("azcopy copy %s %s --recursive --overwrite=ifSourceNewer", public_part(url) + "?<redacted>", target)
    tail: list[str] = []
    auth_failure = False
    status = ""
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, text=True,
            errors="replace",
        )  # fmt: skip
    except OSError as exc:
        raise AcquireError(f"cannot run azcopy ({azcopy}): {redact(str(exc), secrets)}") from None
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = redact(raw.rstrip("\r\n"), secrets)
            if not line.strip():
                continue
            log.info("azcopy: %s", line)
            tail = (tail + [line])[-_TAIL:]
            auth_failure = auth_failure or bool(_AUTH_FAILURE.search(line))
            m = _FINAL_STATUS.search(line)
            status = m.group(1) if m else status
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(plans, ignore_errors=True)  # job plans hold the URL; a re-run re-lists the source instead
        _scrub_logs(logs, secrets)
    if code == 0 and status not in ("CompletedWithErrors", "Failed", "Cancelled"):
        return
    quoted = "\n  ".join(tail)
    if auth_failure:
        raise AcquireError(
            f"azcopy was refused access (HTTP 403 / authentication failed): the shared-access URL has probably "
            f"expired or been revoked. Get a fresh one from {AIMI_COCA_PAGE}, export it again and re-run: the "
            f"download resumes. azcopy said:\n  {quoted}"
        )
    raise AcquireError(
        f"azcopy failed (exit code {code}{', job status ' + status if status else ''}); re-run to resume. "
        f"azcopy said:\n  {quoted}"
    )


def download_coca(
    dest: Path,
    sas_env: str,
    stamp: Path | None = None,
    azcopy: str = "azcopy",
    now: datetime | None = None,
) -> dict:
    """Download COCA into ``dest`` (= data.coca_root); return the stamp record.

    Order of checks, so that each failure costs nothing: an already complete
    ``dest`` returns at once (no credentials needed); a foreign ``dest`` is
    refused; then the variable, the URL's form and expiry, and azcopy's
    presence are checked before any network use.
    """
    dest = Path(dest)
    if is_complete(dest):
        record = read_marker(dest) | {"status": "already complete"}
        log.info("%s: COCA download already complete; nothing to do", dest)
        write_stamp(stamp, record)
        return record
    refuse_foreign(dest, "data.coca_root")
    url = read_sas_url(sas_env)
    expiry = check_not_expired(url, sas_env, now)
    exe = find_azcopy(azcopy)
    work = staging_dir(dest)
    target = work / "data"
    log.info("downloading COCA from %s into %s (staging %s)", public_part(url), dest, work)
    run_azcopy(exe, url, target, work)
    n_partial = _remove_partials(target)
    if n_partial:
        log.warning("removed %d partial file(s) left by an interrupted azcopy run", n_partial)
    root = locate_root(target, (GATED_DIR, NONGATED_DIR))
    record = promote(
        root,
        dest,
        {
            "dataset": "COCA",
            "source": public_part(url),
            "sas_expiry_utc": expiry.strftime("%Y-%m-%dT%H:%M:%SZ") if expiry else None,
            "method": "azcopy copy --recursive --overwrite=ifSourceNewer",
        },
    )
    remove_staging(work)
    write_stamp(stamp, record)
    log.info("COCA: %d files, %.1f GB -> %s", record["files"], record["bytes"] / 1e9, dest)
    return record
