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
from cacs.cli_common import add_agatston_options, add_device_options, agatston_params, given_agatston

log = logging.getLogger("cacs")

DATA_SOURCE_HELP = "recorded in the model file: synthetic | local | download (config data.source)"


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

    opts = SynthOptions(
        preset=args.preset,
        seed=args.seed,
        n_patients=args.n_patients,
        n_segthor_train=args.n_segthor_train,
        n_segthor_test=args.n_segthor_test,
        traps=not args.no_traps,
        workers=args.workers,
    )
    generate_cohort(opts, Path(args.coca_root), Path(args.segthor_root), Path(args.truth_dir))
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from cacs.ingest import IngestOptions, run_ingest

    opts = IngestOptions(
        workers=args.workers,
        strict=args.strict,
        paired_ids=args.paired_ids,
        agatston=agatston_params(args),
    )
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
    from cacs.split import split_cases

    split_cases(
        Path(args.cases),
        Path(args.out),
        train=args.train,
        val=args.val,
        test=args.test,
        seed=args.seed,
    )
    return 0


def _cmd_train_localizer(args: argparse.Namespace) -> int:
    from cacs.localizer import LocalizerParams, train_localizer

    params = LocalizerParams(
        spacing_mm=tuple(args.spacing_mm),
        hu_window=tuple(args.hu_window),
        channels=tuple(args.channels),
        patch_size=tuple(args.patch_size),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        augment=args.augment,
        device=args.device,
    )
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
        Plausibility(args.min_heart_ml, args.max_heart_ml),
        device=args.device,
        require_gpu=args.require_gpu,
    )
    return 0


def _cmd_crop(args: argparse.Namespace) -> int:
    from cacs.crop import CropParams, crop_all

    params = CropParams(
        margin_xy_mm=args.margin_xy_mm,
        margin_z_mm=args.margin_z_mm,
        model_spacing_mm=tuple(args.model_spacing_mm),
        model_size=tuple(args.model_size),
        fallback_box_mm=tuple(args.fallback_box_mm),
        guard=args.guard,
        guard_shell_mm=args.guard_shell_mm,
    )
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


def _add_localize_parsers(sub) -> None:
    p = sub.add_parser("train-localizer", help="train the 3D UNet heart localizer on SegTHOR (resumable)")
    p.add_argument("--segthor-table", required=True, help="segthor.csv from ingest")
    p.add_argument("--out-dir", required=True, help="model.pt, checkpoint.pt, metrics.csv, dice.csv go here")
    p.add_argument("--spacing-mm", type=float, nargs=3, default=(4.0, 4.0, 4.0), metavar=("X", "Y", "Z"))
    p.add_argument("--hu-window", type=float, nargs=2, default=(-1000.0, 1000.0), metavar=("LOW", "HIGH"))
    p.add_argument("--channels", type=int, nargs="+", default=(16, 32, 64, 128, 256))
    p.add_argument("--patch-size", type=int, nargs=3, default=(96, 96, 64), metavar=("X", "Y", "Z"))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--val-fraction", type=float, default=0.25, help="held-out share of SegTHOR training cases")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--data-source", help=DATA_SOURCE_HELP)
    add_device_options(p, "localizer", "single GPU: the localizer does not use several")
    p.set_defaults(func=_cmd_train_localizer)

    p = sub.add_parser("predict-heart", help="heart mask and bounding box (mm) for every COCA scan")
    p.add_argument("--cases", required=True, help="cases.csv (split or not)")
    p.add_argument("--model", required=True, help="model.pt from train-localizer")
    p.add_argument("--out-dir", required=True, help="one <case_id>.json per scan")
    p.add_argument("--table", required=True, help="all boxes as CSV")
    p.add_argument("--min-heart-ml", type=float, default=150.0, help="smaller predictions are implausible")
    p.add_argument("--max-heart-ml", type=float, default=1500.0, help="larger predictions are implausible")
    add_device_options(p, "localizer", "single GPU")
    p.set_defaults(func=_cmd_predict_heart)

    p = sub.add_parser("crop", help="crop scans to heart box + margin and resample to the model grid")
    p.add_argument("--cases", required=True, help="cases.csv with split")
    p.add_argument("--boxes", required=True, help="boxes.csv from predict-heart")
    p.add_argument("--out-dir", required=True, help="<case_id>_{image,labels}.{npy,nii.gz}")
    p.add_argument("--index", required=True, help="crop table (index of the cached crops)")
    p.add_argument("--containment", required=True, help="reference calcium kept per gated scan")
    p.add_argument("--qc", required=True, help="fallbacks and calcium losses")
    p.add_argument("--margin-xy-mm", type=float, default=16.0)
    p.add_argument("--margin-z-mm", type=float, default=10.0)
    p.add_argument("--model-spacing-mm", type=float, nargs=3, default=(1.5, 1.5, 3.0), metavar=("X", "Y", "Z"))
    p.add_argument("--model-size", type=int, nargs=3, default=(128, 128, 48), metavar=("X", "Y", "Z"))
    p.add_argument("--fallback-box-mm", type=float, nargs=2, default=(160.0, 160.0), metavar=("X", "Y"))
    p.add_argument("--guard", choices=("grow", "flag", "off"), default="grow",
                   help="calcium-like voxels just outside the heart box: grow the box, flag the scan, or off")
    p.add_argument("--guard-shell-mm", type=float, default=10.0, help="how far outside the box the guard looks")
    p.add_argument("--workers", type=int, default=1)
    add_agatston_options(p)
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
    add_agatston_options(p, defaults=False)  # the crops' convention (index.json); given ones must equal it
    p.set_defaults(func=_cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cacs", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cacs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", help="clinical per-artery Agatston score of IMAGE (HU) + LABELS")
    p.add_argument("image", help="CT volume in HU (NIfTI or anything SimpleITK reads)")
    p.add_argument("labels", help="label map on the same grid (0 bg, 1 LM, 2 LCX, 3 LAD, 4 RCA)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a CSV row")
    add_agatston_options(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("synth", help="generate the synthetic COCA/SegTHOR cohort in real formats")
    p.add_argument("--preset", choices=("tiny", "small", "realistic"), default="small")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--n-patients", type=int, default=None, help="override the preset")
    p.add_argument("--n-segthor-train", type=int, default=None, help="override the preset")
    p.add_argument("--n-segthor-test", type=int, default=None, help="override the preset")
    p.add_argument("--no-traps", action="store_true", help="omit COCA's layout traps")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--coca-root", required=True)
    p.add_argument("--segthor-root", required=True)
    p.add_argument("--truth-dir", required=True, help="generator ground truth (outside COCA tree)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("ingest", help="convert one cohort's raw files into NIfTI + a case table")
    p.add_argument("cohort", choices=("gated", "nongated", "segthor"))
    p.add_argument("--root", required=True, help="COCA root (gated/nongated) or SegTHOR root")
    p.add_argument("--out-dir", required=True, help="folder for the NIfTI volumes")
    p.add_argument("--table", required=True, help="CSV of ingested cases")
    p.add_argument("--qc", required=True, help="CSV of problems found (case, file, problem, action)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--strict", action="store_true", help="any warning or error is fatal")
    p.add_argument(
        "--paired-ids",
        action="store_true",
        help="gated and non-gated folders with the same id are the same patient",
    )
    add_agatston_options(p)
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
    p.add_argument("--train", type=float, required=True)
    p.add_argument("--val", type=float, required=True)
    p.add_argument("--test", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
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
