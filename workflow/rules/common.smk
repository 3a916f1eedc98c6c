# Shared constants and helpers: paths, the config sections rules pass as JSON, config checks.
# Functions live here only (snakemake --lint wants rules and functions apart).

import functools
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


def _checkout_module(name):
    """src/cacs/<name>.py of this checkout, a module that imports only the standard library.

    Loaded from the file rather than imported, so that neither sys.path nor the
    environment changes and snakemake need not run where cacs is installed.
    """
    path = Path(workflow.basedir) / "src" / "cacs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"cacs_{name}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def _figure_names():
    """The figure files, from their one home (src/cacs/figure_names.py)."""
    names = _checkout_module("figure_names")
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
    split = cfg.get("split", {})
    if not all(k in split for k in SPLIT_FRACTIONS):
        return  # the defaults of cacs.split.SplitParams fill in (and cacs split checks the sum)
    total = sum(split[k] for k in SPLIT_FRACTIONS)
    if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=1e-6):
        shown = ", ".join(f"{k}={split[k]}" for k in SPLIT_FRACTIONS)
        raise ValueError(f"config key 'split': fractions {shown} must sum to 1 (they sum to {total:g})")


def section_json(cfg, section, keep=None, drop=()):
    """A rule's `--config-json` (or `--agatston-json`): config section `section` as JSON, for `{params.cfg:q}`.

    Only the keys the config has: the `cacs` command's dataclass (CropParams, LocalizerParams, ...) holds the
    defaults and fills in the rest, and refuses a key it does not know. `keep`: only these keys; `drop`: keys that
    are job settings (workers, gpus, ...) or another command's. A rule's params are a rerun trigger, so each rule
    sends what its command reads and nothing else.
    """
    values = {k: v for k, v in cfg.get(section, {}).items() if (keep is None or k in keep) and k not in drop}
    return json.dumps(values, sort_keys=True)


def ingest_json(cfg, cohort):
    """`cacs ingest --config-json`: top-level strict, and data.paired_ids for the COCA cohorts (IngestOptions)."""
    values = {k: cfg[k] for k in ("strict",) if k in cfg}
    if cohort in ("gated", "nongated") and "paired_ids" in cfg["data"]:
        values["paired_ids"] = cfg["data"]["paired_ids"]
    return json.dumps(values, sort_keys=True)


def experiment_json(cfg, name):
    """`cacs train --config-json`: the experiment's model and loss plus the train section.

    Job settings are not part of the model's configuration: gpus (train_launcher),
    threads (--threads) and require_gpu (require_gpu_flag) travel separately. Keys the config leaves out
    take cacs.train.TrainConfig's defaults.
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


@functools.cache
def _local_gpu():
    """Whether this machine shows a GPU (cacs.gpu_probe), asked once and only when a rule needs to know."""
    return _checkout_module("gpu_probe").local_gpu_visible()


def gpu_resource(section, cap=None):
    """The `gpu` resource of a job of config section `section` (train, localizer): the GPUs it will hold.

    `gpus` (at most `cap`), except for a job that will run on the CPU: device cpu, or device auto
    on a local run where this machine shows no GPU. Such a job holds no GPU, so it must not count
    against profiles/default's cap of one GPU job at a time: on a CPU-only machine that cap ran
    the trainings one by one, with cores idle (two 1-thread trainings side by side train 1.3x
    faster than one 2-thread training after the other on 2 cores; docs/benchmarks.md). On a
    cluster the request stands whatever the submitting node has.
    """
    gpus = int(section["gpus"]) if cap is None else min(int(section["gpus"]), cap)
    device = section.get("device", "auto")
    if device == "cpu" or (device == "auto" and workflow.local_exec and not _local_gpu()):
        return 0
    return gpus


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
    gpus, batch = int(cfg["train"]["gpus"]), cfg["train"].get("batch_size")  # batch_size: TrainConfig's default
    if gpus > 1 and batch is not None and int(batch) % (2 * gpus):
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
