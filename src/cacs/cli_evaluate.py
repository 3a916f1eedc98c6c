"""`cacs` subcommands of the predict, evaluate, figures and infer stages (registered by cacs.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cacs import SCORE_COLUMNS


def _agatston(args: argparse.Namespace):
    from cacs.cli import _agatston_params

    return _agatston_params(args)


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from cacs.predict import predict_experiment

    torch.set_num_threads(max(1, args.threads))
    predict_experiment(
        Path(args.model),
        Path(args.index),
        Path(args.labels_dir),
        Path(args.table),
        _agatston(args),
        device=args.device,
        split=args.split,
        require_gpu=args.require_gpu,
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cacs.evaluate import run_evaluate

    run_evaluate(
        [Path(p) for p in args.predictions],
        Path(args.out_dir),
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        data_source=args.data_source,
    )
    return 0


def _curves(pairs: list[str]) -> dict[str, Path]:
    curves = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--curves expects NAME=PATH, got {pair!r}")
        curves[name] = Path(path)
    return curves


def _cmd_figures(args: argparse.Namespace) -> int:
    from cacs.figures import write_all_figures

    write_all_figures(
        [Path(p) for p in args.predictions],
        Path(args.metrics),
        _curves(args.curves),
        Path(args.out_dir),
        data_source=args.data_source,
        n_examples=args.n_examples,
    )
    return 0


INFER_DEFAULTS: dict[str, object] = {
    "margin_xy_mm": 16.0,
    "margin_z_mm": 10.0,
    "model_spacing_mm": (1.5, 1.5, 3.0),
    "model_size": (128, 128, 48),
    "fallback_box_mm": (160.0, 160.0),
    "guard": "grow",
    "guard_shell_mm": 10.0,
    "min_heart_ml": 150.0,
    "max_heart_ml": 1500.0,
}
"""Built-in values of the infer options (the schema's defaults); a --config file overrides them."""

_CONFIG_KEYS = {
    "crop": ("margin_xy_mm", "margin_z_mm", "model_spacing_mm", "model_size", "fallback_box_mm", "guard",
             "guard_shell_mm"),
    "localizer": ("min_heart_ml", "max_heart_ml"),
    "agatston": ("threshold_hu", "connectivity", "min_area_mm2", "lesion_dim", "slice_correction"),
}


def infer_settings(args: argparse.Namespace) -> dict[str, object]:
    """Option values in order of precedence: command line > --config file > built-in default.

    The crop grid and the Agatston convention must be the ones the model was
    trained with, so the pipeline config is the natural source; options left
    at ``None`` by argparse were not given on the command line.
    """
    values: dict[str, object] = dict(INFER_DEFAULTS)
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such config file")
        cfg = yaml.safe_load(path.read_text()) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: not a cacs config (expected a mapping)")
        for section, keys in _CONFIG_KEYS.items():
            block = cfg.get(section) or {}
            values.update({k: block[k] for k in keys if k in block})
    for key in (*INFER_DEFAULTS, *_CONFIG_KEYS["agatston"]):
        given = getattr(args, key, None)
        if given is not None:
            values[key] = given
    return values


def infer_options(args: argparse.Namespace):
    """The :class:`cacs.infer.InferOptions` of an ``infer`` / ``infer-batch`` command line."""
    from cacs.agatston import AgatstonParams
    from cacs.crop import CropParams
    from cacs.heart_boxes import Plausibility
    from cacs.infer import InferOptions
    from cacs.kvp_thresholds import parse_kvp_thresholds

    v = infer_settings(args)
    agatston = AgatstonParams(**{k: v[k] for k in _CONFIG_KEYS["agatston"] if k in v})
    return InferOptions(
        crop=CropParams(
            margin_xy_mm=float(v["margin_xy_mm"]),
            margin_z_mm=float(v["margin_z_mm"]),
            model_spacing_mm=tuple(float(x) for x in v["model_spacing_mm"]),
            model_size=tuple(int(x) for x in v["model_size"]),
            fallback_box_mm=tuple(float(x) for x in v["fallback_box_mm"]),
            guard=str(v["guard"]),
            guard_shell_mm=float(v["guard_shell_mm"]),
        ),
        agatston=agatston,
        plausibility=Plausibility(float(v["min_heart_ml"]), float(v["max_heart_ml"])),
        device=args.device,
        series=getattr(args, "series", None),
        write_seg=args.seg,
        qc_page=args.qc_page,
        kvp_thresholds=parse_kvp_thresholds(args.kvp_thresholds) if args.kvp_thresholds else (),
    )


def _list_series(scan: Path) -> int:
    from cacs.infer import read_dicom_scan
    from cacs.series_select import series_frame

    if not scan.exists():
        raise FileNotFoundError(f"{scan}: no such file or folder")
    frame = series_frame(read_dicom_scan(scan).report)
    print(frame.to_csv(index=False), end="")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    if args.list_series:
        return _list_series(Path(args.scan))
    missing = [opt for opt in ("model", "localizer", "out_dir") if not getattr(args, opt)]
    if missing:
        given = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise ValueError(f"infer: {given} required (only --list-series runs without them)")
    import torch

    from cacs.infer import infer_scan

    torch.set_num_threads(max(1, args.threads))
    opts = infer_options(args)
    record = infer_scan(Path(args.scan), Path(args.model), Path(args.localizer), Path(args.out_dir), opts)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(",".join([*SCORE_COLUMNS, "cvd_rank"]))
        print(",".join([*(f"{record[k]:.6f}" for k in SCORE_COLUMNS), record["cvd_rank_name"]]))
    return 0


def _cmd_infer_batch(args: argparse.Namespace) -> int:
    import torch

    from cacs.batch_infer import run_batch

    torch.set_num_threads(max(1, args.threads))
    table = run_batch(Path(args.input), Path(args.model), Path(args.localizer), Path(args.out_dir),
                      infer_options(args), progress=not args.no_progress)  # fmt: skip
    summary = json.loads((Path(args.out_dir) / "summary.json").read_text())
    rate = summary["scans_per_minute"]
    print(
        f"{summary['n_scans']} scan(s): {summary['n_ok']} ok, {summary['n_error']} error(s), "
        f"{summary['n_from_earlier_run']} from an earlier run; "
        + (f"{rate:.2f} scans/min" if rate else "nothing new scored")
        + f" -> {Path(args.out_dir) / 'scores.csv'}"
    )
    return 0 if not (table.status == "error").any() or not args.fail_on_error else 1


def _add_infer_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``infer`` and ``infer-batch``: config, device, outputs, crop and Agatston overrides."""
    p.add_argument("--config", help="pipeline config (YAML): crop, agatston and localizer keys become defaults")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: the GPU when present")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-seg", dest="seg", action="store_false", help="do not write the DICOM SEG (seg.dcm)")
    p.add_argument("--no-qc-page", dest="qc_page", action="store_false", help="do not write qc.png / qc.pdf")
    p.add_argument("--margin-xy-mm", type=float, help="default: config crop.margin_xy_mm, else 16")
    p.add_argument("--margin-z-mm", type=float, help="default: config, else 10")
    p.add_argument(
        "--model-spacing-mm", type=float, nargs=3, metavar=("X", "Y", "Z"), help="default: config, else 1.5 1.5 3"
    )
    p.add_argument("--model-size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="default: config, else 128 128 48")
    p.add_argument("--fallback-box-mm", type=float, nargs=2, metavar=("X", "Y"), help="default: config, else 160 160")
    p.add_argument("--guard", choices=("grow", "flag", "off"),
                   help="calcium-like voxels just outside the heart box: grow the box, flag the scan, or off; "
                        "default: config crop.guard, else grow")  # fmt: skip
    p.add_argument("--guard-shell-mm", type=float, help="how far outside the box the guard looks; default: config, 10")
    p.add_argument("--min-heart-ml", type=float, help="default: config localizer.min_heart_ml, else 150")
    p.add_argument("--max-heart-ml", type=float, help="default: config localizer.max_heart_ml, else 1500")
    p.add_argument("--threshold-hu", type=float, help="default: config agatston.threshold_hu, else 130")
    p.add_argument("--connectivity", type=int, choices=(4, 8))
    p.add_argument("--min-area-mm2", type=float)
    p.add_argument("--lesion-dim", choices=("2d", "3d"))
    p.add_argument("--no-slice-correction", dest="slice_correction", action="store_const", const=False)
    p.add_argument(
        "--kvp-thresholds",
        metavar="KVP=HU,...",
        help="opt-in kVp-dependent threshold, e.g. 80=167,100=147,120=130: the scan's KVP tag picks it and the "
        "weight edges scale with it; a scan of another kVp (or without one) is refused. No default table",
    )


def add_parsers(sub) -> None:
    """Register predict / evaluate / figures / infer on the `cacs` subparsers."""
    from cacs.cli import _add_agatston_options, add_device_options

    p = sub.add_parser("predict", help="predict the test scans with one trained experiment; clinical scores")
    p.add_argument("--model", required=True, help="results/models/<experiment>/model.pt")
    p.add_argument("--index", required=True, help="results/crops/index.csv")
    p.add_argument("--labels-dir", required=True, help="predicted label maps (NIfTI, native scan geometry) go here")
    p.add_argument("--table", required=True, help="prediction table (CSV)")
    p.add_argument("--split", default="test", help="which split to predict")
    add_device_options(p, "train", "prediction uses one GPU")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    _add_agatston_options(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="statistics of the predictions: metrics.json, Table 1, kappas")
    p.add_argument("--predictions", nargs="+", required=True, help="prediction tables of the experiments")
    p.add_argument("--out-dir", required=True, help="results/paper")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="resamples for 95%% CIs (0 = none)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-source", default="synthetic", help="synthetic | local | download (for captions)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("figures", help="the paper's Figures 1, 3-7 (PNG + PDF)")
    p.add_argument("--predictions", nargs="+", required=True, help="prediction tables of the experiments")
    p.add_argument("--metrics", required=True, help="metrics.json from cacs evaluate")
    p.add_argument("--curves", nargs="*", default=[], help="NAME=metrics.csv training curves (Figure 3)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--n-examples", type=int, default=4, help="scans in Figure 5")
    p.add_argument("--data-source", default="synthetic")
    p.set_defaults(func=_cmd_figures)

    p = sub.add_parser(
        "infer",
        help="score one new scan (DICOM series/study folder, DICOMDIR or NIfTI): scores, CVD rank, label map, "
        "DICOM SEG, QC page",
        description="Localize the heart, crop, run a trained SPSS and score a scan. Pass the pipeline's config "
        "(--config) so that the crop grid and Agatston convention equal the ones the model was trained with. "
        "A study folder's series is chosen by documented rules (docs/infer.md); --list-series shows them.",
    )
    p.add_argument("scan", help="DICOM series or study folder, a DICOMDIR, or a CT volume in HU (NIfTI, NRRD, MHA)")
    p.add_argument("--model", help="results/models/<experiment>/model.pt")
    p.add_argument("--localizer", help="results/localizer/model.pt")
    p.add_argument("--out-dir", help="scores.json, scores.csv, labels.nii.gz, seg.dcm, qc.png/pdf go here")
    p.add_argument("--series", help="SeriesInstanceUID (or listed name) of the series to score in a study folder")
    p.add_argument("--list-series", action="store_true",
                   help="list the study's series with the decision and reason of each (CSV), score nothing")
    p.add_argument("--json", action="store_true", help="print the JSON record instead of a CSV row")
    _add_infer_options(p)
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser(
        "infer-batch",
        help="score a cohort (folder of scans or CSV) into one table; resumable, one error row per bad scan",
        description="Score every scan of INPUT with one loaded model: a folder (each sub-folder or NIfTI file is "
        "a scan) or a CSV with a 'scan' column (optional 'scan_id', 'series'). Writes OUT/scores.csv, "
        "OUT/summary.json (throughput) and OUT/scans/<scan_id>/; a rerun skips finished scans.",
    )
    p.add_argument("input", help="folder of scans or CSV with a 'scan' column")
    p.add_argument("--model", required=True, help="results/models/<experiment>/model.pt")
    p.add_argument("--localizer", required=True, help="results/localizer/model.pt")
    p.add_argument("--out-dir", required=True, help="scores.csv, summary.json and scans/<scan_id>/ go here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--fail-on-error", action="store_true", help="exit status 1 when any scan has an error row")
    _add_infer_options(p)
    p.set_defaults(func=_cmd_infer_batch)
