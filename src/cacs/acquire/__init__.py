"""Real-data acquisition: COCA (azcopy), SegTHOR (archive), layout verification.

Three steps, each a ``cacs`` subcommand and a Snakemake rule:

* :func:`cacs.acquire.coca.download_coca` runs ``azcopy`` with the shared-access
  URL read from an environment variable (never from the command line, so
  Snakemake never prints it) and filters everything azcopy says through
  :func:`cacs.acquire.redact.redact`;
* :func:`cacs.acquire.segthor.download_segthor` fetches (resumable) or copies
  the SegTHOR archive(s), checks SHA-256 and extracts them with
  :func:`cacs.acquire.archive.safe_extract`, which refuses entries that could
  write outside the target folder;
* :func:`cacs.acquire.layout.verify_layout` checks both trees against the
  layout ingest expects (docs/data-formats.md), naming every missing or broken
  file, before any ingest runs.

Both downloads work in a hidden staging folder next to the destination and
rename the finished tree into place, so the destination is either absent or
complete.
"""

from __future__ import annotations


class AcquireError(ValueError):
    """A user-facing acquisition failure; the CLI prints it as one line (exit code 2).

    A ``ValueError`` so that :func:`cacs.cli.main` reports it without a
    traceback.  Messages never contain a shared-access signature.
    """


AIMI_COCA_PAGE = "https://stanfordaimi.azurewebsites.net/datasets/e8ca74dc-8dd4-4340-815a-60b41f6cb2aa"
SEGTHOR_PAGE = "https://competitions.codalab.org/competitions/21145"
AZCOPY_INSTALL = "https://learn.microsoft.com/azure/storage/common/storage-use-azcopy-v10"
