"""`cacs` subcommands of the acquisition stage (registered by cacs.cli).

``download-coca`` takes the *name* of the environment variable holding the
shared-access URL, never the URL: command lines end up in Snakemake's
output, in shell history and in ``ps``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_download_coca(args: argparse.Namespace) -> int:
    from cacs.acquire.coca import download_coca

    download_coca(Path(args.dest), args.sas_env, Path(args.stamp) if args.stamp else None, azcopy=args.azcopy)
    return 0


def _cmd_download_segthor(args: argparse.Namespace) -> int:
    from cacs.acquire.segthor import download_segthor

    download_segthor(args.archive, Path(args.dest), Path(args.stamp) if args.stamp else None, sha256=args.sha256)
    return 0


def _cmd_verify_layout(args: argparse.Namespace) -> int:
    from cacs.acquire.layout import EXPECT_KEYS, Expect, verify_layout

    expect = Expect(**{k: getattr(args, f"expect_{k}") for k in EXPECT_KEYS})
    verify_layout(Path(args.coca_root), Path(args.segthor_root), expect, Path(args.report), fatal=not args.warn_only)
    return 0


def add_parsers(sub) -> None:
    """Register the acquisition subcommands on the `cacs` subparsers."""
    p = sub.add_parser(
        "download-coca",
        help="download COCA with azcopy (shared-access URL read from an environment variable; resumable)",
        description="Download COCA with azcopy into DEST. The shared-access URL is read from the environment "
        "variable named by --sas-env, never from the command line. Re-running continues an interrupted download.",
    )
    p.add_argument("--dest", required=True, help="COCA root to create (data.coca_root)")
    p.add_argument(
        "--sas-env", default="COCA_SAS_URL", help="NAME of the variable holding the URL (default: %(default)s)"
    )
    p.add_argument("--stamp", help="JSON record of the finished download (no secrets)")
    p.add_argument("--azcopy", default="azcopy", help="azcopy executable (default: found on PATH)")
    p.set_defaults(func=_cmd_download_coca)

    p = sub.add_parser(
        "download-segthor",
        help="fetch or copy the SegTHOR archive(s), check SHA-256, extract safely",
        description="Put SegTHOR into DEST from archive(s) (zip or tar; local paths or http(s) URLs, fetched "
        "resumably). Entries escaping the folder, links and device files are refused.",
    )
    p.add_argument("--dest", required=True, help="SegTHOR root to create (data.segthor_root)")
    p.add_argument("--archive", nargs="+", required=True, help="archive path(s) or URL(s)")
    p.add_argument("--sha256", nargs="+", default=None, help="expected SHA-256, one per archive")
    p.add_argument("--stamp", help="JSON record of the finished extraction")
    p.set_defaults(func=_cmd_download_segthor)

    p = sub.add_parser(
        "verify-layout",
        help="check the COCA and SegTHOR trees before ingest; list what is missing or broken by name",
    )
    p.add_argument("--coca-root", required=True)
    p.add_argument("--segthor-root", required=True)
    p.add_argument("--report", required=True, help="report file: .json, anything else is text")
    for key, what in (
        ("gated", "gated patient folders"),
        ("gated-xml", "calcium XML files"),
        ("nongated", "non-gated patient folders"),
        ("segthor-train", "SegTHOR training cases"),
        ("segthor-test", "SegTHOR test CTs"),
    ):
        p.add_argument(f"--expect-{key}", type=int, default=None, metavar="N", help=f"at least N {what}")
    p.add_argument("--warn-only", action="store_true", help="report problems but exit 0")
    p.set_defaults(func=_cmd_verify_layout)
