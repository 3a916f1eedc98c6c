# Shared constants and helpers: paths, CLI flag strings, config checks.
# Functions live here only (snakemake --lint wants rules and functions apart).

import importlib.util
import json
import math
import os
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

# Rules run `{params.cacs} <subcommand>` (params.cacs = cacs_command below, i.e. CACS):
# workflow/bin/cacs, a launcher that puts this
# checkout's src/ first on its own import path, started by an explicit interpreter.
# With --use-conda / --sdm conda that is the `python` of the rule's activated
# environment (envs/*.yaml: pinned third-party packages only); without conda it is
# the interpreter running snakemake (the project's venv, which `make run` starts
# without activating it). Nothing here touches the environment: the command line
# names everything a job needs, so remote executors (SLURM) need no variables
# handed over, and `python -m cacs` / PYTHONPATH (which snakemake drops inside
# conda environments) are not involved.
_LAUNCHER = Path(workflow.basedir) / "workflow" / "bin" / "cacs"  # basedir: the main Snakefile's folder
_CONDA = DeploymentMethod.CONDA in getattr(workflow.deployment_settings, "deployment_method", ())
PYTHON = "python" if _CONDA else sys.executable
CACS = f"{shlex.quote(PYTHON)} {shlex.quote(str(_LAUNCHER))}"


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
PREDICTIONS = "results/predictions"
PAPER = "results/paper"


def _figure_names():
    """The figure files, from their one home (src/cacs/figure_names.py, which imports nothing).

    Loaded from this checkout's file rather than imported, so that neither sys.path nor the
    environment changes and snakemake need not run where cacs is installed.
    """
    path = Path(workflow.basedir) / "src" / "cacs" / "figure_names.py"
    spec = importlib.util.spec_from_file_location("cacs_figure_names", path)
    names = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(names)
    return tuple(names.FIGURE_STEMS), tuple(names.FIGURE_EXTENSIONS)


FIGURES, FIGURE_EXTENSIONS = _figure_names()
# Figure 3 compares the local-sampled loss (spss) with plain cross-entropy
# (spss_ce); with other experiment names, every SPSS-type one is drawn.
CONVERGENCE_EXPERIMENTS = [e for e in ("spss", "spss_ce") if e in EXPERIMENTS] or [
    e for e in EXPERIMENTS if config["experiments"][e]["model"] == "spss"
]
LOGS = "results/logs"
BENCH = "results/benchmarks"
# Conda environment per group of rules (conda: directives; paths relative to this
# folder, as snakemake resolves them). Each holds only the pinned third-party packages
# its group imports; the cacs code itself comes from this checkout through workflow/bin/cacs.
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
        f"--data-source {cfg['data']['source']}",
    ]
    if not loc["augment"]:
        flags.append("--no-augment")
    if loc.get("require_gpu", False):
        flags.append("--require-gpu")
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
            f"--guard {c['guard']}",
            f"--guard-shell-mm {c['guard_shell_mm']}",
        ]
    )


def experiment_json(cfg, name):
    """`cacs train --config-json`: the experiment's model and loss plus the train section.

    Job settings are not part of the model's configuration: gpus (train_launcher),
    threads (--threads) and require_gpu (require_gpu_flag) travel separately.
    """
    exp = cfg["experiments"][name]
    train = {k: v for k, v in cfg["train"].items() if k not in ("gpus", "threads", "require_gpu")}
    payload = {**train, "model": exp["model"], "model_config": cfg["models"][exp["model"]], "loss": exp.get("loss", {})}
    return json.dumps(payload, sort_keys=True)


def figure_curves(cfg):
    """`cacs figures --curves`: NAME=metrics.csv of the experiments Figure 3 compares."""
    return " ".join(f"{e}={MODELS}/{e}/metrics.csv" for e in CONVERGENCE_EXPERIMENTS)


def paper_outputs():
    """Every file of results/paper/ that the report shows."""
    tables = [f"{PAPER}/{t}{ext}" for t in ("table1", "comparison", "kappa") for ext in (".csv", ".md", ".tex")]
    figures = [f"{PAPER}/{f}{ext}" for f in FIGURES for ext in FIGURE_EXTENSIONS]
    return [f"{PAPER}/metrics.json", *tables, *figures]


def write_report(cfg):
    """After a successful run: `snakemake --report` into evaluate.report, if the paper outputs exist.

    The report needs the run's metadata, so it can only be made after the
    jobs finished (hence onsuccess). The nested call gets this run's
    effective config as a file, so --config overrides carry over; --nolock
    because this run still holds the working directory's lock.
    """
    import subprocess

    target = cfg["evaluate"]["report"]
    if not target or not all(os.path.exists(p) for p in paper_outputs()):
        return
    frozen = Path(".snakemake") / "report-config.yaml"
    frozen.parent.mkdir(exist_ok=True)
    frozen.write_text(json.dumps(cfg))  # JSON is YAML
    cmd = [sys.executable, "-m", "snakemake", "-s", workflow.main_snakefile, "--configfile", str(frozen),
           "--report", target, "--nolock", "--quiet", "all"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"snakemake --report {target} failed:\n{done.stderr[-3000:]}")
    print(f"report: {target}", file=sys.stderr)


def cacs_command(wildcards, input):
    """params.cacs of every rule: CACS, the command that runs this checkout's `cacs`.

    A params function (snakemake --lint wants no global variables in shell
    commands) that takes `input`, so snakemake counts it as derived from the
    input files and leaves it out of the params rerun trigger: the interpreter
    and the checkout's path say where the code runs, not what it computes.
    """
    return CACS


def train_command(wildcards, input):
    """params.launcher of train_model: train_launcher(config), left out of the rerun trigger like cacs_command.

    train.gpus is a job setting, not part of the model's configuration (experiment_json).
    """
    return train_launcher(config)


def require_gpu_flag(section):
    """`--require-gpu` when the config section (train, localizer) sets require_gpu."""
    return "--require-gpu" if section.get("require_gpu", False) else ""


def train_launcher(cfg):
    """The train_model command's launcher: CACS for 0-1 GPU, torchrun (one DDP process per GPU) for more.

    torchrun is `python -m torch.distributed.run` of the same interpreter, and it
    starts the launcher script in every process (workflow/bin/cacs finds src/ itself).
    --standalone gives every job its own rendezvous on a free port, so several
    training jobs on one node do not collide.
    """
    gpus, batch = int(cfg["train"]["gpus"]), int(cfg["train"]["batch_size"])
    if gpus > 1 and batch % (2 * gpus):
        # Fail at planning time, not after the job waited for its GPUs (cacs train checks it too).
        raise ValueError(
            f"config key 'train': batch_size {batch} cannot be shared by {gpus} GPUs; every GPU needs as many "
            f"gated as non-gated scans, so batch_size must be a multiple of 2 x gpus = {2 * gpus}"
        )
    if gpus > 1:
        return (
            f"{shlex.quote(PYTHON)} -m torch.distributed.run --standalone --nproc_per_node {gpus} "
            f"{shlex.quote(str(_LAUNCHER))}"
        )
    return CACS
