"""`cacs` subcommands of the predict / evaluate / figures / infer stages (registered by cacs.cli)."""

from __future__ import annotations


def add_parsers(sub) -> None:
    """Register the evaluation subcommands on the `cacs` subparsers."""
