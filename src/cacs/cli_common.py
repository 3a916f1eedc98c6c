"""Option helpers shared by :mod:`cacs.cli` and :mod:`cacs.cli_evaluate` (so neither imports the other)."""

from __future__ import annotations

import argparse

from cacs.settings import LazyParser, add_dataclass_options, given_options, option_name, read_json, settings_from

AGATSTON_KEYS = ("threshold_hu", "connectivity", "min_area_mm2", "lesion_dim", "slice_correction")
"""The ``AgatstonParams`` fields that are settings (config section ``agatston``); the rest are fixed conventions."""

AGATSTON_JSON = "--agatston-json"
AGATSTON_HELPS = {
    "threshold_hu": "candidate threshold (>=)",
    "connectivity": "in-plane neighbourhood of a lesion",
    "min_area_mm2": "drop smaller lesions",
    "lesion_dim": "lesions per axial slice (2d, clinical) or in 3d",
    "slice_correction": "multiply by slice increment / 3 mm",
}
DEVICES = ("auto", "cpu", "cuda")
DATA_SOURCE_HELP = "recorded in the model file: synthetic | local | download (config data.source)"


def _agatston_class():
    from cacs.agatston.params import AgatstonParams

    return AgatstonParams


def add_agatston_options(p: argparse.ArgumentParser, defaults: bool = True, json_option: bool = True) -> None:
    """Options mirroring :class:`cacs.agatston.AgatstonParams` (see docs/agatston.md), and ``--agatston-json``.

    ``defaults=False``: where the convention is a trained model's (or the crops'), an option left out takes the
    recorded value; one given (on the command line or in ``--agatston-json``) must equal it (:func:`given_agatston`).
    """
    note = None if defaults else "default: the model's (or the crops') recorded convention"
    add_dataclass_options(p, _agatston_class(), only=AGATSTON_KEYS, helps=AGATSTON_HELPS,
                          choices={"connectivity": (4, 8)}, default_note=note,
                          title="Agatston convention (config section agatston; docs/agatston.md)")  # fmt: skip
    if json_option:
        p.add_argument(
            AGATSTON_JSON,
            metavar="JSON",
            help="config section agatston as JSON (what the pipeline passes); options win",
        )


def agatston_params(args: argparse.Namespace):
    """``AgatstonParams``: defaults < ``--agatston-json`` < the Agatston options."""
    return settings_from(args, _agatston_class(), getattr(args, "agatston_json", None), option=AGATSTON_JSON,
                         only=AGATSTON_KEYS)  # fmt: skip


def given_agatston(args: argparse.Namespace) -> list:
    """The Agatston settings given (``--agatston-json`` keys, then options) as :class:`cacs.bundle.Given`.

    For commands whose convention is recorded (added with ``defaults=False``): an option wins over the same key of
    the JSON, and every value given must equal the recorded one.
    """
    from cacs.bundle import Given
    from cacs.settings import check_keys

    section = read_json(getattr(args, "agatston_json", None), AGATSTON_JSON)
    check_keys(section, AGATSTON_KEYS, AGATSTON_JSON)
    options = given_options(args, _agatston_class(), AGATSTON_KEYS)
    given = [Given("agatston", k, v, f"{AGATSTON_JSON} agatston.{k}") for k, v in section.items() if k not in options]
    return given + [Given("agatston", k, v, agatston_option(k, v)) for k, v in options.items()]


def agatston_option(key: str, value) -> str:
    """The option that sets ``key`` to ``value`` (``--no-slice-correction`` for slice_correction false)."""
    if key == "slice_correction" and value is False:
        return "--no-slice-correction"
    return option_name(key)


def add_config_json(p: argparse.ArgumentParser, section: str) -> None:
    """``--config-json``: the command's config section as JSON, as the pipeline's rule passes it."""
    p.add_argument("--config-json", metavar="JSON",
                   help=f"config section {section} as JSON (what the pipeline passes; config/README.md); "
                        "keys left out keep their defaults, options given win")  # fmt: skip


def add_device_options(p: argparse.ArgumentParser, section: str, note: str, device: bool = True) -> None:
    """--device and --require-gpu, mirroring config keys <section>.device and <section>.require_gpu."""
    if device:
        p.add_argument(
            "--device",
            choices=DEVICES,
            default="auto",
            help=f"auto: the GPU the scheduler made visible (CUDA_VISIBLE_DEVICES), else the CPU with a warning "
            f"({note}); default: auto",
        )
    p.add_argument(
        "--require-gpu",
        action="store_true",
        help=f"fail when no GPU is visible instead of running on the CPU (config {section}.require_gpu)",
    )


__all__ = [
    "AGATSTON_KEYS",
    "DATA_SOURCE_HELP",
    "DEVICES",
    "LazyParser",
    "add_agatston_options",
    "add_config_json",
    "add_device_options",
    "agatston_params",
    "given_agatston",
]
