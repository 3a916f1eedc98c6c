"""Option helpers shared by :mod:`cacs.cli` and :mod:`cacs.cli_evaluate` (so neither imports the other)."""

from __future__ import annotations

import argparse

AGATSTON_KEYS = ("threshold_hu", "connectivity", "min_area_mm2", "lesion_dim", "slice_correction")
AGATSTON_OPTIONS = {k: "--" + k.replace("_", "-") for k in AGATSTON_KEYS} | {
    "slice_correction": "--no-slice-correction"
}


def add_agatston_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Options mirroring :class:`cacs.agatston.AgatstonParams` (see docs/agatston.md).

    ``defaults=False``: where the convention is a trained model's (or the crops'), an option left out is ``None``
    and takes the recorded value; one given must equal it (:func:`given_agatston`).
    """
    d = (lambda v: v) if defaults else (lambda v: None)
    recorded = "" if defaults else "; default: the model's (or the crops') recorded convention"
    p.add_argument("--threshold-hu", type=float, default=d(130.0), help=f"candidate threshold (>=){recorded}")
    p.add_argument("--connectivity", type=int, choices=(4, 8), default=d(8))
    p.add_argument("--min-area-mm2", type=float, default=d(1.0), help="drop smaller lesions")
    p.add_argument("--lesion-dim", choices=("2d", "3d"), default=d("2d"))
    p.add_argument(
        "--no-slice-correction",
        dest="slice_correction",
        action="store_const",
        const=False,
        default=d(True),
        help="do not multiply by slice increment / 3 mm",
    )


def agatston_params(args: argparse.Namespace):
    from cacs.agatston import AgatstonParams

    return AgatstonParams(**{k: getattr(args, k) for k in AGATSTON_KEYS})


def given_agatston(args: argparse.Namespace) -> list:
    """The Agatston options given on the command line (added with ``defaults=False``) as :class:`cacs.bundle.Given`."""
    from cacs.bundle import Given

    return [Given("agatston", k, getattr(args, k), AGATSTON_OPTIONS[k]) for k in AGATSTON_KEYS
            if getattr(args, k, None) is not None]  # fmt: skip


def add_device_options(p: argparse.ArgumentParser, section: str, note: str) -> None:
    """--device and --require-gpu, mirroring config keys <section>.device and <section>.require_gpu."""
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help=f"auto: the GPU the scheduler made visible (CUDA_VISIBLE_DEVICES), else the CPU with a warning ({note})",
    )
    p.add_argument(
        "--require-gpu",
        action="store_true",
        help=f"fail when no GPU is visible instead of running on the CPU (config {section}.require_gpu)",
    )
