"""`cacs` subcommands of the predict, evaluate, figures and infer stages (registered by cacs.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cacs import SCORE_COLUMNS
from cacs.cli_common import (
    AGATSTON_KEYS,
    add_agatston_options,
    add_config_json,
    add_device_options,
    agatston_option,
    given_agatston,
)
from cacs.settings import add_dataclass_options, settings_from


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from cacs.predict import predict_experiment

    torch.set_num_threads(max(1, args.threads))
    predict_experiment(
        Path(args.model),
        Path(args.index),
        Path(args.labels_dir),
        Path(args.table),
        device=args.device,
        split=args.split,
        require_gpu=args.require_gpu,
        given=given_agatston(args),
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cacs.evaluate import EvaluateParams, run_evaluate

    params = settings_from(args, EvaluateParams, args.config_json, only=EVALUATE_KEYS)
    run_evaluate([Path(p) for p in args.predictions], Path(args.out_dir), n_bootstrap=params.n_bootstrap,
                 seed=params.seed, data_source=args.data_source)  # fmt: skip
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
    from cacs.evaluate import EvaluateParams
    from cacs.figures import write_all_figures

    params = settings_from(args, EvaluateParams, args.config_json, only=FIGURES_KEYS)
    write_all_figures(
        [Path(p) for p in args.predictions],
        Path(args.metrics),
        _curves(args.curves),
        Path(args.out_dir),
        data_source=args.data_source,
        n_examples=params.n_examples,
    )
    return 0


INFER_SETTINGS: dict[str, tuple[str, str]] = {
    **{k: ("crop", f"crop.{k}") for k in ("margin_xy_mm", "margin_z_mm", "model_spacing_mm", "model_size",
                                          "fallback_box_mm", "guard", "guard_shell_mm")},
    "min_heart_ml": ("plausibility", "localizer.min_heart_ml"),
    "max_heart_ml": ("plausibility", "localizer.max_heart_ml"),
    **{k: ("agatston", f"agatston.{k}") for k in AGATSTON_KEYS},
}
"""The infer options that are model properties: option -> (bundle section, pipeline config key).

Their values come from the model file (:mod:`cacs.bundle`); given on the command line or in ``--config``, they
must equal the model's, else infer refuses naming both.  No built-in defaults: a default-run model's crop grid
is not the built-in one, which is how a model could once be used on another grid without a word."""


def infer_settings(args: argparse.Namespace) -> list:
    """The model-property settings given on the command line and in ``--config``, as :class:`cacs.bundle.Given`.

    All of them are checked against the model's bundle when it is loaded
    (:func:`cacs.infer.resolve_settings`); options left at ``None`` by
    argparse were not given.  The command line comes last, so where the
    model recorded no plausibility range it wins over the config file.
    """
    from cacs.bundle import Given

    given: list[Given] = []
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such config file")
        cfg = yaml.safe_load(path.read_text()) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: not a cacs config (expected a mapping)")
        for key, (section, config_key) in INFER_SETTINGS.items():
            block, name = config_key.split(".")
            values = cfg.get(block) or {}
            if name in values:
                given.append(Given(section, key, values[name], f"{path}: {config_key}"))
    for key, (section, _) in INFER_SETTINGS.items():
        value = getattr(args, key, None)
        if value is not None:
            given.append(Given(section, key, value, agatston_option(key, value)))
    return given


def infer_options(args: argparse.Namespace):
    """The :class:`cacs.infer.InferOptions` of an ``infer`` / ``infer-batch`` command line."""
    from cacs.infer import InferOptions
    from cacs.kvp_thresholds import parse_kvp_thresholds

    return InferOptions(
        given=tuple(infer_settings(args)),
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
    """Options shared by ``infer`` and ``infer-batch``: config, device, outputs, crop and Agatston checks."""
    p.add_argument("--config", help="pipeline config (YAML): its crop, agatston and localizer heart-volume keys "
                                    "must equal the model's (checked, never needed)")  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: the GPU when present")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-seg", dest="seg", action="store_false", help="do not write the DICOM SEG (seg.dcm)")
    p.add_argument("--no-qc-page", dest="qc_page", action="store_false", help="do not write qc.png / qc.pdf")
    model = "default and only allowed value: the model's"

    def register(q: argparse.ArgumentParser) -> None:
        from cacs.crop import CropParams
        from cacs.heart_boxes import Plausibility

        add_dataclass_options(q, CropParams, default_note=model, title="crop grid (the model's; checked)")
        add_dataclass_options(q, Plausibility, default_note=f"{model}, else the built-in default",
                              title="heart-volume range (the model's; checked)")  # fmt: skip
        add_agatston_options(q, defaults=False, json_option=False)

    p.defer(register)
    p.add_argument(
        "--kvp-thresholds",
        metavar="KVP=HU,...",
        help="opt-in kVp-dependent threshold, e.g. 80=167,100=147,120=130: the scan's KVP tag picks it and the "
        "weight edges scale with it; a scan of another kVp (or without one) is refused. No default table",
    )


EVALUATE_KEYS = ("n_bootstrap", "seed")
FIGURES_KEYS = ("n_examples",)
"""The fields of :class:`cacs.evaluate.EvaluateParams` (config section evaluate) each command reads."""


def _evaluate_settings(p, keys: tuple[str, ...], helps: dict[str, str]) -> None:
    add_config_json(p, f"evaluate ({', '.join(keys)})")

    def register(q: argparse.ArgumentParser) -> None:
        from cacs.evaluate import EvaluateParams

        add_dataclass_options(q, EvaluateParams, only=keys, helps=helps, title="config section evaluate")

    p.defer(register)


def add_parsers(sub) -> None:
    """Register predict / evaluate / figures / infer on the `cacs` subparsers."""
    p = sub.add_parser("predict", help="predict the test scans with one trained experiment; clinical scores")
    p.add_argument("--model", required=True, help="results/models/<experiment>/model.pt")
    p.add_argument("--index", required=True, help="results/crops/index.csv")
    p.add_argument("--labels-dir", required=True, help="predicted label maps (NIfTI, native scan geometry) go here")
    p.add_argument("--table", required=True, help="prediction table (CSV)")
    p.add_argument("--split", default="test", help="which split to predict")
    add_device_options(p, "train", "prediction uses one GPU")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.defer(lambda q: add_agatston_options(q, defaults=False))  # the model's convention; given ones must equal it
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="statistics of the predictions: metrics.json, Table 1, kappas")
    p.add_argument("--predictions", nargs="+", required=True, help="prediction tables of the experiments")
    p.add_argument("--out-dir", required=True, help="results/paper")
    p.add_argument("--data-source", default="synthetic", help="synthetic | local | download (for captions)")
    _evaluate_settings(p, EVALUATE_KEYS, {"n_bootstrap": "resamples for 95%% CIs (0 = none)",
                                          "seed": "bootstrap seed"})  # fmt: skip
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("figures", help="the paper's Figures 1, 3-7 (PNG + PDF)")
    p.add_argument("--predictions", nargs="+", required=True, help="prediction tables of the experiments")
    p.add_argument("--metrics", required=True, help="metrics.json from cacs evaluate")
    p.add_argument("--curves", nargs="*", default=[], help="NAME=metrics.csv training curves (Figure 3)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--data-source", default="synthetic")
    _evaluate_settings(p, FIGURES_KEYS, {"n_examples": "scans in Figure 5"})
    p.set_defaults(func=_cmd_figures)

    p = sub.add_parser(
        "infer",
        help="score one new scan (DICOM series/study folder, DICOMDIR or NIfTI): scores, CVD rank, label map, "
        "DICOM SEG, QC page",
        description="Localize the heart, crop, run a trained SPSS and score a scan. The crop grid, Agatston "
        "convention and heart-volume range are the model file's own (the ones it was trained with); an option or "
        "--config value that contradicts them is refused. "
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
