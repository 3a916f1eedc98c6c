"""Benchmark: `cacs infer` latency and throughput per realistic scan, cold process and warm.

These are the numbers a user without a GPU plans with: how long one chest CT
takes from its DICOM series (or NIfTI volume) to scores and label map.

* scans: gated scans of the ``realistic`` synthetic preset (512 x 512 x 60
  slices of 3 mm, the COCA matrix), written by the project's generator as a
  DICOM series (60 files) and as NIfTI (``bench/common.py``, cached);
* networks: built from the config files (``config/config.yaml``: the default
  run's scaled-down SPSS and crop grid; ``config/coca.yaml`` merged over it, as
  snakemake does: the full-size SPSS on the 192 x 192 x 64 grid) and saved the
  way ``cacs train`` / ``cacs train-localizer`` save trained ones, but
  untrained.  Latency does not depend on the weights, with two caveats that
  the JSON states: an untrained localizer finds no plausible heart, so every
  scan takes the fallback crop box (cropping onto the fixed model grid costs
  the same), and native scoring's time follows the number of calcium
  candidates.  ``--model``/``--localizer`` time trained files instead;
* cold: one ``python -m cacs infer`` process per scan (interpreter start,
  imports, model loading included), what a script calling the CLI per scan
  pays;
* warm: ``cacs infer`` (:func:`cacs.cli.main`) called for several scans in one
  process with the two model loaders memoised, so each model is loaded once,
  as a service would; the first scan is reported apart (first-call costs).
  The time of each stage of :func:`cacs.infer.infer_scan` is measured by
  wrapping the functions it calls, so the stages are the real code.

Throughput is one stream: 60 s divided by the median seconds per scan.
``--device cuda`` runs the same on a GPU (``bench/gpu_check.py`` does).
Prints one JSON object; numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from common import REPO, realistic_cohort

CONFIGS: dict[str, tuple[str, ...]] = {
    # name -> config files, merged left to right (snakemake merges config/config.yaml first)
    "default": ("config/config.yaml",),
    "coca": ("config/config.yaml", "config/coca.yaml"),
}
STAGES: tuple[str, ...] = (
    "cacs.infer:load_localizer", "cacs.infer:load_trained", "cacs.infer:read_dicom_scan", "cacs.infer:dicom_to_nifti",
    "cacs.infer:read_volume", "cacs.infer:heart_box", "cacs.infer:crop_case", "cacs.infer:predict_native",
    "cacs.infer:write_volume", "cacs.io.dicom_seg:write_dicom_seg", "cacs.qc_page:write_qc_page",
)  # fmt: skip
"""``module:function`` that ``cacs infer`` calls, each timed in the warm runs where it exists (the two model
loaders are also memoised).  The names are looked up where the caller finds them, so the real code runs."""
PARTS: tuple[str, ...] = ("cacs.predict:_forward", "cacs.predict:class_probabilities", "cacs.predict:to_native",
                          "cacs.predict:score_native")  # fmt: skip
"""Parts of ``predict_native`` (network, probabilities, back to the native grid, clinical scorer), timed apart."""
LOADERS: tuple[str, ...] = ("load_localizer", "load_trained")
UNTRAINED_NOTE = (
    "untrained networks built from the config and saved as the pipeline saves trained ones; latency does not "
    "depend on the weights, except that an untrained localizer finds no plausible heart (every scan takes the "
    "fallback crop box, which costs the same to crop) and native scoring's time grows with the calcium candidates"
)


def merge(base: dict, over: dict) -> dict:
    """``over`` merged key by key into ``base`` (nested mappings too), as snakemake merges config files."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(name: str) -> dict:
    """The effective pipeline config of ``CONFIGS[name]`` (the files merged in order)."""
    cfg: dict = {}
    for rel in CONFIGS[name]:
        cfg = merge(cfg, yaml.safe_load((REPO / rel).read_text()) or {})
    return cfg


def train_config(cfg: dict, experiment: str):
    """The experiment's :class:`cacs.train.TrainConfig`, built as ``workflow/rules/common.smk`` (experiment_json) does.

    Job settings (gpus, threads, require_gpu) are not part of the model's configuration.
    """
    from cacs.train import TrainConfig

    exp = cfg["experiments"][experiment]
    train = {k: v for k, v in cfg["train"].items() if k not in ("gpus", "threads", "require_gpu")}
    return TrainConfig.from_dict(
        {**train, "model": exp["model"], "model_config": cfg["models"][exp["model"]], "loss": exp.get("loss", {})}
    )


def write_untrained_models(cfg: dict, folder: Path, experiment: str = "spss") -> tuple[Path, Path]:
    """``model.pt`` and ``localizer.pt`` as ``cacs train`` and ``cacs train-localizer`` write them, untrained.

    Seeded with the config's seeds, so every run times the same weights.
    """
    import torch

    from cacs.agatston import AgatstonParams
    from cacs.bundle import experiment_bundle, localizer_bundle
    from cacs.crop import CropParams
    from cacs.heart_boxes import Plausibility
    from cacs.io.atomic import write_torch
    from cacs.localizer import LocalizerParams, build_unet
    from cacs.models import build_model

    tcfg = train_config(cfg, experiment)
    torch.manual_seed(tcfg.seed)
    network = build_model(tcfg.model, dict(tcfg.model_config))
    model_path = folder / f"{experiment}_model.pt"
    weights = {k: v.cpu() for k, v in network.state_dict().items()}
    # The model file's settings (cacs.bundle) are the config's, as cacs train records them from the crops.
    crop = CropParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["crop"].items() if k != "workers"})
    plausibility = Plausibility(cfg["localizer"]["min_heart_ml"], cfg["localizer"]["max_heart_ml"])
    bundle = experiment_bundle(asdict(tcfg), crop, AgatstonParams(**cfg["agatston"]), plausibility, None,
                               {"index": "none: untrained (bench)"}, "untrained")  # fmt: skip
    write_torch(model_path, {"state_dict": weights, "experiment": experiment, "config": asdict(tcfg), "bundle": bundle})
    params = LocalizerParams.from_dict(cfg["localizer"])
    torch.manual_seed(params.seed)
    localizer_path = folder / "localizer.pt"
    write_torch(
        localizer_path,
        {"state_dict": build_unet(params).state_dict(), "params": params.to_dict(), "fit_ids": [], "heldout_ids": [],
         "epochs": 0, "bundle": localizer_bundle(params, {"table": "none: untrained (bench)"}, "untrained")},
    )  # fmt: skip
    return model_path, localizer_path


def realistic_scans(n_patients: int) -> list[dict[str, Any]]:
    """Every gated scan of the cached ``realistic`` cohort: its DICOM series folder, its NIfTI and its shape.

    The first series folder of each patient (the generator adds a duplicate
    reconstruction to one patient, a COCA trap, which ingest and infer skip).
    """
    from cacs.io.nifti import read_volume

    root = realistic_cohort(n_patients)
    scans = []
    for patient in sorted((root / "coca" / "Gated_release_final" / "patient").iterdir(), key=lambda p: int(p.name)):
        series = sorted(p for p in patient.iterdir() if p.is_dir())[0]
        nifti = root / "truth" / "gated" / f"{patient.name}_image.nii.gz"
        hu, geometry = read_volume(nifti)
        scans.append({"dicom": series, "nifti": nifti, "shape_zyx": list(hu.shape),
                      "n_files": len(list(series.iterdir())),
                      "spacing_xyz_mm": [round(s, 3) for s in geometry.spacing]})  # fmt: skip
    return scans


def infer_args(
    scan: Path, model: Path, localizer: Path, out: Path, config: str, device: str, threads: int
) -> list[str]:
    """The ``cacs infer`` command line (without the program); ``config`` is the file whose crop grid was trained."""
    return ["infer", str(scan), "--model", str(model), "--localizer", str(localizer), "--out-dir", str(out),
            "--config", str(REPO / config), "--device", device, "--threads", str(threads), "--json"]  # fmt: skip


def cold_run(args: list[str], timeout_s: float = 600) -> tuple[float, dict]:
    """Seconds of one fresh ``python -m cacs`` process, and the JSON record it printed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "cacs", *args], capture_output=True, text=True, timeout=timeout_s,
                         env=env, cwd=REPO)  # fmt: skip
    seconds = time.perf_counter() - t0
    if run.returncode:
        raise RuntimeError(f"cacs infer failed ({run.returncode}): {run.stderr.strip()[-2000:]}")
    return seconds, json.loads(run.stdout)


@contextlib.contextmanager
def instrumented(stages: dict[str, float]) -> Iterator[None]:
    """Time each function of :data:`STAGES` that exists (seconds added to ``stages``); memoise the model loaders."""
    import importlib

    saved: list[tuple[Any, str, Callable]] = []

    def timed(name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    try:
        for spec in (*STAGES, *PARTS):
            module_name, name = spec.split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError:
                continue
            fn = getattr(module, name, None)
            if fn is None:
                continue
            saved.append((module, name, fn))
            setattr(module, name, timed(name, functools.cache(fn) if name in LOADERS else fn))
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def warm_runs(arg_lists: list[list[str]]) -> list[dict[str, Any]]:
    """``cacs infer`` for each command line in this process (models loaded once); seconds and stages per scan."""
    import torch

    from cacs.cli import main

    cuda = torch.cuda.is_available()
    stages: dict[str, float] = {}
    out = []
    # Before cacs.cli.main's own basicConfig (INFO): stderr would get every library's INFO line per scan.
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("cacs").setLevel(logging.ERROR)  # the CPU-fallback and fallback-box warnings, per scan
    with instrumented(stages):
        for args in arg_lists:
            stages.clear()
            printed = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(printed):
                code = main(args)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            if code:
                raise RuntimeError(f"cacs infer {' '.join(args)} exited with {code}")
            record = json.loads(printed.getvalue())
            out.append({"seconds": seconds, "stages": dict(stages), "total": record["total"],
                        "fallback_box": record["fallback_box"]})  # fmt: skip
    return out


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def bench_config(
    name: str, scans: list[dict], device: str, threads: int, n_cold: int, n_warm: int, kinds: tuple[str, ...],
    model: Path | None = None, localizer: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Cold and warm ``cacs infer`` timings of one config, per input kind (``dicom``, ``nifti``)."""
    cfg = load_config(name)
    config_file = CONFIGS[name][-1]
    result: dict[str, Any] = {
        "config": "+".join(CONFIGS[name]),
        "crop_grid_xyz": cfg["crop"]["model_size"],
        "crop_spacing_xyz_mm": cfg["crop"]["model_spacing_mm"],
        "spss": cfg["models"]["spss"],
        "localizer_channels": cfg["localizer"]["channels"],
        "weights": "trained files given on the command line" if model else UNTRAINED_NOTE,
    }
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp_name:
        tmp = Path(tmp_name)
        if model is None or localizer is None:
            model, localizer = write_untrained_models(cfg, tmp)
        for kind in kinds:
            cold = []
            for i in range(n_cold):
                scan = scans[i % len(scans)][kind]
                seconds, _ = cold_run(infer_args(scan, model, localizer, tmp / f"cold-{kind}-{i}", config_file,
                                                 device, threads))  # fmt: skip
                cold.append(seconds)
            # One more scan than timed: the first call of a process pays one-off costs (allocator, oneDNN/cuDNN set-up).
            args = [infer_args(scans[i % len(scans)][kind], model, localizer, tmp / f"warm-{kind}-{i}", config_file,
                               device, threads) for i in range(n_warm + 1)]  # fmt: skip
            warm = warm_runs(args)
            timed = warm[1:]
            stage_median, part_median = ({
                stage: _median([w["stages"].get(stage, 0.0) for w in timed])
                for stage in (spec.split(":")[1] for spec in specs) if any(stage in w["stages"] for w in timed)
            } for specs in (STAGES, PARTS))  # fmt: skip
            warm_median = _median([w["seconds"] for w in timed])
            result[kind] = {
                "cold_s": [round(s, 3) for s in cold],
                "cold_s_median": _median(cold),
                "warm_first_scan_s": round(warm[0]["seconds"], 3),
                "warm_s": [round(w["seconds"], 3) for w in timed],
                "warm_s_median": warm_median,
                "warm_stage_s_median": stage_median,
                "warm_other_s_median": round(warm_median - sum(stage_median.values()), 3),
                "warm_predict_native_parts_s_median": part_median,
                "throughput_scans_per_min_warm": round(60.0 / warm_median, 2),
                "throughput_scans_per_min_cold": round(60.0 / statistics.median(cold), 2),
                "fallback_box": sorted({w["fallback_box"] for w in warm}),
            }
    return result


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    cpuinfo = ""
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    model = names[0] if names else platform.processor()
    flags = set(cpuinfo.split())
    return {
        "cpu": model,
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_avx512_bf16": "avx512_bf16" in flags,
        "cpu_amx": "amx_bf16" in flags,
        "torch": torch.__version__,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["default", "coca"])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="cacs infer --threads (torch threads)")
    parser.add_argument("--patients", type=int, default=5, help="realistic synthetic patients (one gated scan each)")
    parser.add_argument("--cold", type=int, default=1, help="cold processes per config and input kind")
    parser.add_argument("--warm", type=int, default=3, help="timed warm scans per config and input kind")
    parser.add_argument("--kinds", nargs="+", choices=("dicom", "nifti"), default=["dicom", "nifti"])
    parser.add_argument("--model", type=Path, help="a trained model.pt (with --localizer; one config only)")
    parser.add_argument("--localizer", type=Path, help="a trained localizer model.pt")
    parser.add_argument("--prepare", action="store_true", help="only generate (and cache) the realistic scans")
    args = parser.parse_args()
    if (args.model is None) != (args.localizer is None) or (args.model and len(args.configs) != 1):
        parser.error("--model and --localizer go together, with exactly one of --configs")
    scans = realistic_scans(args.patients)
    if args.prepare:
        print(json.dumps({"prepared": [str(s["dicom"]) for s in scans]}))
        return
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "infer",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "device": args.device,
        "threads": args.threads,
        "scans": {
            "source": "gated scans of the realistic synthetic preset (bench/common.py), as a DICOM series and as NIfTI",
            "n": len(scans),
            "shape_zyx": sorted({tuple(s["shape_zyx"]) for s in scans}),
            "dicom_files_per_scan": sorted({s["n_files"] for s in scans}),
        },
        "configs": {},
    }
    failed = False
    for name in args.configs:
        try:
            result["configs"][name] = bench_config(name, scans, args.device, args.threads, args.cold, args.warm,
                                                   tuple(args.kinds), args.model, args.localizer)  # fmt: skip
        except (RuntimeError, OSError, ValueError) as exc:  # keep the other configs' numbers
            result["configs"][name] = {"error": f"{type(exc).__name__}: {exc}"[-3000:]}
            failed = True
    result["bench_s"] = round(time.perf_counter() - t0, 1)
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]  # other jobs slow it down
    print(json.dumps(result, indent=2))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
