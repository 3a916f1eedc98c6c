"""The ``cacs`` command line: one subcommand per pipeline stage.

Snakemake rules call these subcommands and nothing else, so every stage can
also be run (and debugged) by hand.  Heavy imports happen inside the handlers
so that ``cacs --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cacs import SCORE_COLUMNS, __version__
from cacs.cli_common import (
    DATA_SOURCE_HELP,
    DEVICES,
    LazyParser,
    add_agatston_options,
    add_config_json,
    add_device_options,
    agatston_params,
    given_agatston,
)
from cacs.settings import add_dataclass_options, settings_from

log = logging.getLogger("cacs")


def _cmd_score(args: argparse.Namespace) -> int:
    from cacs.agatston import score_files

    scores = score_files(Path(args.image), Path(args.labels), agatston_params(args))
    if args.json:
        print(json.dumps({k: scores[k] for k in SCORE_COLUMNS}))
    else:
        print(",".join(SCORE_COLUMNS))
        print(",".join(f"{scores[k]:.6f}" for k in SCORE_COLUMNS))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from cacs.synth.cohort import SynthOptions, generate_cohort

    opts = settings_from(args, SynthOptions, args.config_json)
    generate_cohort(opts, Path(args.coca_root), Path(args.segthor_root), Path(args.truth_dir))
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from cacs.ingest import IngestOptions, run_ingest

    opts = settings_from(args, IngestOptions, args.config_json, agatston=agatston_params(args))
    run_ingest(args.cohort, Path(args.root), Path(args.out_dir), Path(args.table), Path(args.qc), opts)
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from cacs.ingest import collect_tables

    collect_tables(
        [Path(p) for p in args.tables],
        [Path(p) for p in args.qc],
        Path(args.cases),
        Path(args.qc_out),
    )
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cacs.split import SplitParams, split_cases

    split_cases(Path(args.cases), Path(args.out), **asdict(settings_from(args, SplitParams, args.config_json)))
    return 0


def _cmd_train_localizer(args: argparse.Namespace) -> int:
    from cacs.localizer import LocalizerParams, train_localizer

    params = settings_from(args, LocalizerParams, args.config_json)
    train_localizer(Path(args.segthor_table), Path(args.out_dir), params, require_gpu=args.require_gpu,
                    data_source=args.data_source)  # fmt: skip
    return 0


def _cmd_predict_heart(args: argparse.Namespace) -> int:
    from cacs.heart_boxes import Plausibility, predict_boxes

    predict_boxes(
        Path(args.cases),
        Path(args.model),
        Path(args.out_dir),
        Path(args.table),
        settings_from(args, Plausibility, args.config_json),
        device=args.device,
        require_gpu=args.require_gpu,
    )
    return 0


def _cmd_crop(args: argparse.Namespace) -> int:
    from cacs.crop import CropParams, crop_all

    params = settings_from(args, CropParams, args.config_json)
    crop_all(
        Path(args.cases),
        Path(args.boxes),
        Path(args.out_dir),
        Path(args.index),
        Path(args.containment),
        Path(args.qc),
        params,
        agatston_params(args),
        workers=args.workers,
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from cacs.devices import distributed_env
    from cacs.train import TrainConfig, train_experiment

    env = distributed_env()
    # --threads is the job's CPU budget (the rule's threads); torchrun's processes on this node share it.
    torch.set_num_threads(max(1, args.threads // env.local_world_size))
    if not env.is_main:  # one log, one progress bar: rank 0's (the others only warn)
        logging.getLogger("cacs").setLevel(logging.WARNING)
    try:
        raw = json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config-json is not valid JSON: {exc}") from exc
    train_experiment(args.experiment, Path(args.index), Path(args.out_dir), TrainConfig.from_dict(raw),
                     require_gpu=args.require_gpu, given=given_agatston(args),
                     data_source=args.data_source)  # fmt: skip
    return 0


def _class(path: str):
    """``"cacs.crop:CropParams"`` -> the class, imported when its command is parsed (``cacs --help`` stays fast)."""
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _settings(p: LazyParser, path: str, section: str, choices_from: dict[str, str] | None = None, **options) -> None:
    """``--config-json`` (config section ``section``) and one option per field of the dataclass at ``path``.

    ``choices_from``: field -> ``"module:NAME"`` of the allowed values, imported with the class.
    """
    add_config_json(p, section)

    def register(q: argparse.ArgumentParser) -> None:
        choices = {k: tuple(_class(v)) for k, v in (choices_from or {}).items()} | options.pop("choices", {})
        add_dataclass_options(q, _class(path), title=f"config section {section} ({path})", choices=choices, **options)

    p.defer(register)


def _agatston(p: LazyParser, defaults: bool = True) -> None:
    p.defer(lambda q: add_agatston_options(q, defaults=defaults))


LOCALIZER_HELPS = {
    "spacing_mm": "coarse grid the localizer works on",
    "hu_window": "clip, then scale to [-1, 1]",
    "channels": "UNet widths; len - 1 downsampling steps",
    "patch_size": "training patch / inference window in coarse voxels",
    "val_fraction": "held-out share of SegTHOR training cases",
    "augment": "cardiac field of view, small rotations and scaling, intensity jitter and noise (no flips)",
    "device": "auto: the GPU the scheduler made visible, else the CPU with a warning (single GPU)",
}
CROP_HELPS = {
    "margin_xy_mm": "axial extension of the heart box",
    "margin_z_mm": "extension of the heart box along z",
    "model_spacing_mm": "model grid",
    "model_size": "model grid voxels",
    "fallback_box_mm": "box around the image centre (all of z) when the heart prediction fails",
    "guard": "calcium-like voxels just outside the heart box: grow the box, flag the scan, or off",
    "guard_shell_mm": "how far outside the box the guard looks",
}


def _add_localize_parsers(sub) -> None:
    p = sub.add_parser("train-localizer", help="train the 3D UNet heart localizer on SegTHOR (resumable)")
    p.add_argument("--segthor-table", required=True, help="segthor.csv from ingest")
    p.add_argument("--out-dir", required=True, help="model.pt, checkpoint.pt, metrics.csv, dice.csv go here")
    p.add_argument("--data-source", help=DATA_SOURCE_HELP)
    add_device_options(p, "localizer", "single GPU: the localizer does not use several", device=False)
    _settings(p, "cacs.localizer:LocalizerParams", "localizer", helps=LOCALIZER_HELPS, choices={"device": DEVICES})
    p.set_defaults(func=_cmd_train_localizer)

    p = sub.add_parser("predict-heart", help="heart mask and bounding box (mm) for every COCA scan")
    p.add_argument("--cases", required=True, help="cases.csv (split or not)")
    p.add_argument("--model", required=True, help="model.pt from train-localizer")
    p.add_argument("--out-dir", required=True, help="one <case_id>.json per scan")
    p.add_argument("--table", required=True, help="all boxes as CSV")
    add_device_options(p, "localizer", "single GPU")
    _settings(p, "cacs.heart_boxes:Plausibility", "localizer (min_heart_ml, max_heart_ml)",
              helps={"min_heart_ml": "smaller predictions are implausible",
                     "max_heart_ml": "larger predictions are implausible"})  # fmt: skip
    p.set_defaults(func=_cmd_predict_heart)

    p = sub.add_parser("crop", help="crop scans to heart box + margin and resample to the model grid")
    p.add_argument("--cases", required=True, help="cases.csv with split")
    p.add_argument("--boxes", required=True, help="boxes.csv from predict-heart")
    p.add_argument("--out-dir", required=True, help="<case_id>_{image,labels}.{npy,nii.gz}")
    p.add_argument("--index", required=True, help="crop table (index of the cached crops)")
    p.add_argument("--containment", required=True, help="reference calcium kept per gated scan")
    p.add_argument("--qc", required=True, help="fallbacks and calcium losses")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (config crop.workers); default: 1")
    guard = {"guard": "cacs.crop_guard:GUARD_MODES"}
    _settings(p, "cacs.crop:CropParams", "crop", choices_from=guard, helps=CROP_HELPS)
    _agatston(p)
    p.set_defaults(func=_cmd_crop)

    p = sub.add_parser("train", help="train one experiment (SPSS, an ablation or the ConvNet) on the crops")
    p.add_argument("--experiment", required=True, help="experiment name (for logs and the model file)")
    p.add_argument("--index", required=True, help="results/crops/index.csv")
    p.add_argument("--out-dir", required=True, help="model.pt, checkpoint.pt, metrics.csv go here")
    p.add_argument("--config-json", required=True, help="experiment + train settings as JSON (see config/README.md)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (shared by torchrun's processes)")
    p.add_argument(
        "--require-gpu",
        action="store_true",
        help="fail when no GPU is visible instead of training on the CPU (config train.require_gpu); the device "
        "is --config-json's 'device'; several GPUs: start this command with torchrun --nproc_per_node N -m cacs",
    )
    p.add_argument("--data-source", help=DATA_SOURCE_HELP)
    _agatston(p, defaults=False)  # the crops' convention (index.json); given ones must equal it
    p.set_defaults(func=_cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = LazyParser(prog="cacs", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cacs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", help="clinical per-artery Agatston score of IMAGE (HU) + LABELS")
    p.add_argument("image", help="CT volume in HU (NIfTI or anything SimpleITK reads)")
    p.add_argument("labels", help="label map on the same grid (0 bg, 1 LM, 2 LCX, 3 LAD, 4 RCA)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a CSV row")
    _agatston(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("synth", help="generate the synthetic COCA/SegTHOR cohort in real formats")
    p.add_argument("--coca-root", required=True)
    p.add_argument("--segthor-root", required=True)
    p.add_argument("--truth-dir", required=True, help="generator ground truth (outside COCA tree)")
    _settings(p, "cacs.synth.cohort:SynthOptions", "synthetic",
              helps={"n_patients": "none: the preset's", "n_segthor_train": "none: the preset's",
                     "n_segthor_test": "none: the preset's", "traps": "reproduce COCA's layout traps",
                     "workers": "parallel processes"},
              choices={"preset": ("tiny", "small", "realistic")})  # fmt: skip
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("ingest", help="convert one cohort's raw files into NIfTI + a case table")
    p.add_argument("cohort", choices=("gated", "nongated", "segthor"))
    p.add_argument("--root", required=True, help="COCA root (gated/nongated) or SegTHOR root")
    p.add_argument("--out-dir", required=True, help="folder for the NIfTI volumes")
    p.add_argument("--table", required=True, help="CSV of ingested cases")
    p.add_argument("--qc", required=True, help="CSV of problems found (case, file, problem, action)")
    _settings(p, "cacs.ingest:IngestOptions", "strict, data.paired_ids, ingest.workers",
              helps={"strict": "any warning or error is fatal (config strict)",
                     "paired_ids": "gated and non-gated folders with the same id are the same patient "
                                   "(config data.paired_ids)",
                     "workers": "parallel processes"})  # fmt: skip
    _agatston(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("collect", help="merge per-cohort tables into cases.csv and qc.csv")
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--qc", nargs="+", required=True)
    p.add_argument("--cases", required=True, help="output cases.csv")
    p.add_argument("--qc-out", required=True, help="output qc.csv")
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser("split", help="patient-level seeded train/val/test split")
    p.add_argument("--cases", required=True, help="cases.csv from ingest")
    p.add_argument("--out", required=True, help="cases.csv with a split column")
    _settings(p, "cacs.split:SplitParams", "split", helps={"train": "patient share", "val": "patient share",
                                                          "test": "patient share"})  # fmt: skip
    p.set_defaults(func=_cmd_split)

    _add_localize_parsers(sub)

    from cacs.acquire.cli import add_parsers as add_acquire_parsers
    from cacs.cli_evaluate import add_parsers as add_evaluate_parsers

    add_acquire_parsers(sub)
    add_evaluate_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from cacs.qc import StrictModeError

    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, StrictModeError) as exc:
        # Expected, user-facing failures: one clear line, no traceback.
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
