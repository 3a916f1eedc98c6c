"""`cacs` subcommands of the acquisition stage (registered by cacs.cli)."""

from __future__ import annotations


def add_parsers(sub) -> None:
    """Register the acquisition subcommands on the `cacs` subparsers."""
