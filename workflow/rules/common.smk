# Shared constants and helpers: paths, CLI flag strings, config checks.
# Functions live here only (snakemake --lint wants rules and functions apart).

import json
import math
import os
import shutil
import sys
from pathlib import Path

# Rules call the `cacs` CLI. `make run` starts .venv/bin/snakemake without
# activating the venv, so its bin folder (where `cacs` is) may be missing from
# PATH: append it. Appended, not prepended, so that an activated environment
# (or a conda env snakemake activates per rule) still wins. Declared as an
# envvar so that remote executors receive the amended PATH too.
envvars:
    "PATH",


if shutil.which("cacs") is None:
    os.environ["PATH"] = os.pathsep.join(p for p in (os.environ.get("PATH", ""), str(Path(sys.executable).parent)) if p)

SYNTHETIC = config["data"]["source"] == "synthetic"
COCA_ROOT = config["data"]["coca_root"]
SEGTHOR_ROOT = config["data"]["segthor_root"]
TRUTH_DIR = config["synthetic"]["truth_dir"]

INGEST = "results/ingest"
SPLIT = "results/split"
LOCALIZER = "results/localizer"
CROPS = "results/crops"
MODELS = "results/models"
EXPERIMENTS = sorted(config["experiments"])
LOGS = "results/logs"
BENCH = "results/benchmarks"
# Conda environment per group of rules (conda: directives; paths relative to this
# folder, as snakemake resolves them). Each installs the cacs package without
# dependencies plus only what its group imports.
DATA_ENV = "../../envs/data.yaml"  # acquire, ingest, split: DICOM/XML/NIfTI, no torch
TORCH_ENV = "../../envs/torch.yaml"  # localize, crop, train, predict
PLOT_ENV = "../../envs/plot.yaml"  # statistics, tables, figures

SPLIT_FRACTIONS = ("train", "val", "test")


def check_config(cfg):
    """What the JSON schema cannot say: split fractions must sum to 1."""
    split = cfg["split"]
    total = sum(split[k] for k in SPLIT_FRACTIONS)
    if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=1e-6):
        shown = ", ".join(f"{k}={split[k]}" for k in SPLIT_FRACTIONS)
        raise ValueError(f"config key 'split': fractions {shown} must sum to 1 (they sum to {total:g})")


def synth_flags(cfg):
    """Optional `cacs synth` overrides: only what the config sets."""
    syn = cfg["synthetic"]
    flags = []
    for key in ("n_patients", "n_segthor_train", "n_segthor_test"):
        if syn[key] is not None:
            flags.append(f"--{key.replace('_', '-')} {int(syn[key])}")
    if not syn["traps"]:
        flags.append("--no-traps")
    return " ".join(flags)


def agatston_flags(cfg):
    """`cacs` Agatston options mirroring config key agatston."""
    a = cfg["agatston"]
    flags = [
        f"--threshold-hu {a['threshold_hu']}",
        f"--connectivity {a['connectivity']}",
        f"--min-area-mm2 {a['min_area_mm2']}",
        f"--lesion-dim {a['lesion_dim']}",
    ]
    if not a["slice_correction"]:
        flags.append("--no-slice-correction")
    return " ".join(flags)


def ingest_flags(cfg, cohort):
    """`cacs ingest` switches: --strict (all cohorts), --paired-ids (COCA only)."""
    flags = []
    if cfg["strict"]:
        flags.append("--strict")
    if cohort in ("gated", "nongated") and cfg["data"]["paired_ids"]:
        flags.append("--paired-ids")
    return " ".join(flags)


def _joined(values):
    return " ".join(str(v) for v in values)


def localizer_flags(cfg):
    """`cacs train-localizer` options mirroring config key localizer."""
    loc = cfg["localizer"]
    flags = [
        f"--spacing-mm {_joined(loc['spacing_mm'])}",
        f"--hu-window {_joined(loc['hu_window'])}",
        f"--channels {_joined(loc['channels'])}",
        f"--patch-size {_joined(loc['patch_size'])}",
        f"--epochs {loc['epochs']}",
        f"--batch-size {loc['batch_size']}",
        f"--lr {loc['lr']}",
        f"--val-fraction {loc['val_fraction']}",
        f"--seed {loc['seed']}",
        f"--device {loc['device']}",
    ]
    if not loc["augment"]:
        flags.append("--no-augment")
    return " ".join(flags)


def crop_flags(cfg):
    """`cacs crop` options mirroring config key crop."""
    c = cfg["crop"]
    return " ".join(
        [
            f"--margin-xy-mm {c['margin_xy_mm']}",
            f"--margin-z-mm {c['margin_z_mm']}",
            f"--model-spacing-mm {_joined(c['model_spacing_mm'])}",
            f"--model-size {_joined(c['model_size'])}",
            f"--fallback-box-mm {_joined(c['fallback_box_mm'])}",
        ]
    )


def experiment_json(cfg, name):
    """`cacs train --config-json`: the experiment's model and loss plus the train section."""
    exp = cfg["experiments"][name]
    train = {k: v for k, v in cfg["train"].items() if k not in ("gpus", "threads")}
    payload = {**train, "model": exp["model"], "model_config": cfg["models"][exp["model"]], "loss": exp.get("loss", {})}
    return json.dumps(payload, sort_keys=True)
