"""`make gpu-check`: on a CUDA machine, test every CUDA path and measure the GPU numbers, in under 8 minutes.

A GPU is sometimes lent for a few minutes only, so this is one prepared
command that spends them well.  In order:

1. the tests marked ``gpu`` (``pytest -m gpu``; ``tests/test_gpu.py``): bf16
   autocast training steps of SPSS and the ConvNet that learn,
   channels_last_3d, CUDA predictions equal to the CPU's, ``require_gpu``,
   DDP over NCCL with SyncBatchNorm (2 processes when 2 GPUs are visible);
2. benchmarks, each in its own process (a crash or an out-of-memory error
   costs that benchmark only; peak memory is per process):

   * training steps per second and peak GPU memory of the full-size SPSS and
     ConvNet of ``config/coca.yaml`` (merged over ``config/config.yaml`` as
     snakemake does) on its crop grid, the paper's batch 4 (2 gated + 2
     non-gated whole crops) and batch 2 (one GPU's share with 2 GPUs), with
     the config's optimizer and bf16 autocast + channels_last_3d, the real
     training step (:func:`cacs.train._train_step`) on synthetic crops; plus
     the validation forward per scan (:func:`cacs.train.evaluate_bias`);
   * one real localizer epoch (:func:`cacs.localizer.training._train_epoch` and the
     held-out Dice) over as many synthetic SegTHOR-size cases as the
     config's SegTHOR training set;
   * ``cacs infer`` on realistic 512 x 512 x 60 DICOM scans with the
     full-size networks (``bench/bench_infer.py --device cuda``): a cold
     process and warm scans;

3. the projected time of one training epoch over a COCA-size cohort (507
   training scans, the paper's gated : non-gated mix) and of the config's
   epochs, on 1 GPU and (a lower bound, all-reduce excluded) on 2.

Everything goes into one JSON object, printed on stdout and written
atomically to ``results/gpu_check.json`` after every step, so a run cut short
keeps what it measured.  Each step has a time limit and the whole run a
budget (``--budget-s``).  Exit code 0 when every test passed and every
benchmark ran, 1 otherwise.  Without a CUDA device it does nothing: one line
says why, exit code 0.  Networks are untrained: speed does not depend on the
weights.  Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_infer import load_config, train_config
from common import REPO

DEFAULT_OUT = REPO / "results" / "gpu_check.json"
BUDGET_S = 450.0
"""The whole run (make gpu-check must end within 8 minutes, set-up included)."""
TESTS_CAP_S = 240.0
COCA_TRAINING_SCANS = 507
"""The paper's training scans (config/coca.yaml, split): the cohort the epoch time is projected for."""
WARMUP_STEPS = 3  # CUDA/cuDNN set-up and the caching allocator's growth happen here
TIMED_STEPS = 10
VAL_SCANS = 4  # validation forwards timed per benchmark
INFER_PATIENTS = 2  # realistic synthetic scans for the infer benchmark (generated while the tests run)
BENCHMARKS: dict[str, float] = {  # name -> time limit (s), in the order they run
    "train_spss_b4": 90.0,
    "train_convnet_b4": 60.0,
    "localizer_epoch": 90.0,
    "infer": 150.0,
    "train_spss_b2": 60.0,
    "train_convnet_b2": 60.0,
}
MIN_STEP_S = 20.0
"""A step is started only with at least this much of the budget left."""


def no_gpu_reason() -> str:
    """Why this machine cannot run the check ('' when it can)."""
    import torch

    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build; install the CUDA build of the same version "
                "into .venv (docs/gpu.md)")  # fmt: skip
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r})")  # fmt: skip
    return ""


def _quietly(fn) -> Any:
    """``fn()``, or None where this build cannot say (a version query must not end the check)."""
    try:
        return fn()
    except (AttributeError, RuntimeError):
        return None


def environment() -> dict[str, Any]:
    """Versions, GPUs and the commit the numbers belong to."""
    import torch

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
        except OSError:  # no git on the machine (a copied tree): the commit stays unknown
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain")
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                     "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})  # fmt: skip
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "nccl": _quietly(lambda: ".".join(map(str, torch.cuda.nccl.version()))),
        "bf16_supported": _quietly(torch.cuda.is_bf16_supported),
        "gpus": gpus,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "git_commit": commit or None,
        "git_dirty": bool(dirty) if commit else None,
    }


# --------------------------------------------------------------------------- benchmarks (one per process)


def _synthetic_scan(shape: tuple[int, int, int], gated: bool, seed: int):
    """A crop in HU with calcium blobs of every artery and a bone-like distractor (what a training step reads)."""
    import numpy as np

    from cacs.agatston import lesion_weight_map
    from cacs.train import HU_CLIP, HU_SCALE, Scan

    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 20, shape).astype(np.float32)
    labels = np.zeros(shape, np.int64)
    for artery in range(1, 5):
        z, y, x = (int(rng.integers(4, s - 4)) for s in shape)
        hu[z - 1 : z + 2, y - 2 : y + 2, x - 2 : x + 2] = 500
        labels[z - 1 : z + 2, y - 2 : y + 2, x - 2 : x + 2] = artery
    hu[:, -12:-4, 30:40] = 600
    return Scan(case_id=f"s{seed}", gated=gated, x=(np.clip(hu, *HU_CLIP) / HU_SCALE)[None], hu=hu,
                labels=labels if gated else np.zeros_like(labels), weight=lesion_weight_map(hu), voxel_factor=2.5,
                ref=np.full(4, 50.0, np.float32), foreground=np.argwhere(labels > 0),
                spacing=(1.5, 1.5, 3.0))  # fmt: skip


def bench_train(experiment: str, batch: int) -> dict[str, Any]:
    """Steps per second and peak GPU memory of one experiment of ``config/coca.yaml``, whole crops of its grid."""
    import torch

    from cacs.losses import LossConfig
    from cacs.models import build_model, count_parameters
    from cacs.train import _train_step, evaluate_bias, make_optimizer, use_amp

    cfg = load_config("coca")
    tcfg = train_config(cfg, experiment)
    device = torch.device("cuda", 0)
    amp = use_amp(tcfg, device)
    shape = tuple(int(v) for v in cfg["crop"]["model_size"][::-1])  # (z, y, x)
    half = batch // 2
    torch.manual_seed(tcfg.seed)
    model = build_model(tcfg.model, dict(tcfg.model_config)).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = make_optimizer(tcfg, model.parameters())
    generator = torch.Generator(device=device).manual_seed(tcfg.seed)
    loss_cfg = LossConfig(**tcfg.loss) if tcfg.model == "spss" else None
    # cacs.train's layout of a whole-crop step (patch_size null, the paper): one group, gated then non-gated.
    groups = [[_synthetic_scan(shape, True, i) for i in range(half)] + [_synthetic_scan(shape, False, 10 + i)
                                                                        for i in range(half)]]  # fmt: skip
    torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for _ in range(WARMUP_STEPS + TIMED_STEPS):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        parts = _train_step(model, tcfg, loss_cfg, groups, device, amp, generator, optimizer)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        losses.append(parts["total"])
    timed = times[WARMUP_STEPS:]
    peak = torch.cuda.max_memory_allocated(device)
    reserved = torch.cuda.max_memory_reserved(device)
    val = [_synthetic_scan(shape, i % 2 == 0, 20 + i) for i in range(VAL_SCANS + 1)]
    evaluate_bias(model, tcfg, val[:1], device, amp)  # warm-up of the eval shapes
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    evaluate_bias(model, tcfg, val[1:], device, amp)
    torch.cuda.synchronize(device)
    val_s = (time.perf_counter() - t0) / VAL_SCANS
    step = statistics.median(timed)
    return {
        "experiment": experiment,
        "model": tcfg.model,
        "model_config": dict(tcfg.model_config),
        "parameters": count_parameters(model),
        "crop_zyx": list(shape),
        "batch": f"{half} gated + {half} non-gated whole crops",
        "optimizer": tcfg.optimizer,
        "amp_bf16_channels_last": amp,
        "warmup_steps": WARMUP_STEPS,
        "timed_steps": TIMED_STEPS,
        "first_step_s": round(times[0], 3),
        "seconds_per_step_median": round(step, 4),
        "seconds_per_step_max": round(max(timed), 4),
        "steps_per_s": round(1.0 / step, 3),
        "peak_gpu_allocated_mib": round(peak / 2**20, 1),
        "peak_gpu_reserved_mib": round(reserved / 2**20, 1),
        "losses_finite": all(math.isfinite(v) for v in losses),
        "validation_s_per_scan": round(val_s, 4),
    }


def _segthor_case(case_id: str, shape_zyx: tuple[int, int, int], params, seed: int):
    """A coarse SegTHOR-size training case (normalised image, heart ellipsoid), padded as the localizer pads."""
    import numpy as np

    from cacs.localizer.training import _Case

    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    centre = [s / 2 + rng.uniform(-4, 4) for s in shape_zyx]
    radii = (shape_zyx[0] / 4, shape_zyx[1] / 6, shape_zyx[2] / 5)
    heart = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2
    label = (heart <= 1).astype(np.uint8)
    image = np.clip(rng.normal(-0.6, 0.2, shape_zyx) + 0.6 * label, -1, 1).astype(np.float32)
    need = [max(0, p - s) for p, s in zip(params.patch_size[::-1], shape_zyx, strict=True)]
    pad = [(n // 2, n - n // 2) for n in need]
    return _Case(case_id, np.pad(image, pad, constant_values=-1.0), np.pad(label, pad), shape_zyx)


def bench_localizer() -> dict[str, Any]:
    """One real localizer epoch (training + held-out Dice) over the config's number of SegTHOR training cases."""
    import torch
    from monai.losses import DiceCELoss

    from cacs.localizer import LocalizerParams, build_unet
    from cacs.localizer.training import _split_cases, _train_epoch, _validate
    from cacs.synth.presets import get_preset

    cfg = load_config("coca")
    params = LocalizerParams.from_dict({**cfg["localizer"], "device": "cuda"})
    n_cases = int(cfg["download"]["expect"]["segthor_train"])
    fit_ids, held_ids = _split_cases([f"c{i:02d}" for i in range(n_cases)], params)
    grid = get_preset("realistic").segthor  # SegTHOR-like: 512 x 512 at ~0.8 mm, 2.5 mm slices
    shape = tuple(math.ceil(v / s) for v, s in zip((grid.extent_mm, grid.fov_mm, grid.fov_mm),
                                                   params.spacing_mm[::-1], strict=True))  # fmt: skip
    cases = {cid: _segthor_case(cid, shape, params, i) for i, cid in enumerate(fit_ids + held_ids)}
    device = torch.device("cuda", 0)
    torch.manual_seed(params.seed)
    model = build_unet(params).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    _train_epoch(model, optimizer, loss_fn, [cases[c] for c in fit_ids[: params.batch_size]], params, 1, device)
    warmup = time.perf_counter() - t0
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    loss = _train_epoch(model, optimizer, loss_fn, [cases[c] for c in fit_ids], params, 2, device)
    torch.cuda.synchronize(device)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _validate(model, [cases[c] for c in held_ids], params, device)
    val_s = time.perf_counter() - t0
    return {
        "params": params.to_dict(),
        "coarse_case_zyx": list(shape),
        "fit_cases": len(fit_ids),
        "held_out_cases": len(held_ids),
        "warmup_epoch_s": round(warmup, 2),
        "train_s": round(train_s, 2),
        "held_out_dice_s": round(val_s, 2),
        "epoch_s": round(train_s + val_s, 2),
        "loss_finite": math.isfinite(loss),
        "peak_gpu_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
        "config_epochs": params.epochs,
        "projected_training_min": round(params.epochs * (train_s + val_s) / 60, 1),
    }


def bench_infer(timeout_s: float) -> dict[str, Any]:
    """``bench/bench_infer.py`` on CUDA with the full-size networks: DICOM input, 1 cold process, 3 warm scans."""
    threads = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    cmd = [sys.executable, str(REPO / "bench" / "bench_infer.py"), "--configs", "coca", "--device", "cuda",
           "--patients", str(INFER_PATIENTS), "--cold", "1", "--warm", "3", "--kinds", "dicom",
           "--threads", str(threads)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO / "bench")
    if run.returncode:
        raise RuntimeError(run.stderr.strip()[-3000:])
    return json.loads(run.stdout)


def run_one(name: str, timeout_s: float) -> dict[str, Any]:
    """The benchmark ``name`` in this process."""
    if name.startswith("train_"):
        experiment, batch = name[len("train_") :].rsplit("_b", 1)
        return bench_train(experiment, int(batch))
    if name == "localizer_epoch":
        return bench_localizer()
    if name == "infer":
        return bench_infer(timeout_s)
    raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")


# --------------------------------------------------------------------------- the run


def _run_process(cmd: list[str], timeout_s: float, cwd: Path) -> tuple[int | None, str, str, float]:
    """Run ``cmd`` in its own process group; on timeout kill the group (torchrun workers too).  rc None = timeout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout_s))
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = None
    return rc, out, err, time.perf_counter() - t0


def _junit_cases(path: Path) -> list[dict[str, Any]]:
    """Per test: outcome, seconds, message and the properties it recorded (JSON values decoded)."""
    if not path.exists():
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or node.text or "")[:1500]
                break
        props = {}
        for prop in case.iter("property"):
            try:
                props[prop.get("name")] = json.loads(prop.get("value", ""))
            except json.JSONDecodeError:
                props[prop.get("name")] = prop.get("value")
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": round(float(case.get("time") or 0.0), 2), "message": message,
                      "measured": props})  # fmt: skip
    return cases


def run_tests(timeout_s: float) -> dict[str, Any]:
    """``pytest -m gpu tests``; the outcome of every test from its JUnit XML report."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}", "-o", "junit_family=xunit1"]  # fmt: skip
        rc, out, err, seconds = _run_process(cmd, timeout_s, REPO)
        cases = _junit_cases(xml)
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    result = {"command": "pytest -m gpu tests", "returncode": rc, "timed_out": rc is None, "seconds": round(seconds, 1),
              **counts, "cases": cases}  # fmt: skip
    if rc not in (0, None) and not cases:  # collection failed: nothing else tells why
        result["output_tail"] = (out + err)[-3000:]
    return result


def run_benchmark(name: str, timeout_s: float) -> dict[str, Any]:
    rc, out, err, seconds = _run_process([sys.executable, __file__, "--one", name, "--timeout-s", str(timeout_s)],
                                         timeout_s, REPO / "bench")  # fmt: skip
    if rc is None:
        return {"error": f"timed out after {timeout_s:.0f} s", "stderr_tail": err[-1500:]}
    if rc:
        return {"error": f"exit code {rc}", "stderr_tail": err[-3000:]}
    result = json.loads(out.strip().splitlines()[-1])
    result["wall_s"] = round(seconds, 1)
    return result


def projection(benchmarks: dict[str, dict]) -> dict[str, Any]:
    """Epoch and training time over a COCA-size cohort from the measured step and validation times.

    Steps per epoch as ``cacs.train`` counts them with ``steps_per_epoch: null``:
    one pass over the larger cohort, ``batch_size / 2`` of its scans per step.
    """
    cfg = load_config("coca")
    expect = cfg["download"]["expect"]
    gated_share = expect["gated"] / (expect["gated"] + expect["nongated"])
    n_gated = round(COCA_TRAINING_SCANS * gated_share)
    n_nongated = COCA_TRAINING_SCANS - n_gated
    n_patients = expect["gated"] + expect["nongated"]
    n_val = round(n_patients * cfg["split"]["val"])
    batch = int(cfg["train"]["batch_size"])
    steps = math.ceil(max(n_gated, n_nongated) / (batch // 2))
    epochs = int(cfg["train"]["epochs"])
    out: dict[str, Any] = {
        "cohort": {"training_scans": COCA_TRAINING_SCANS, "gated": n_gated, "nongated": n_nongated,
                   "validation_scans": n_val, "batch_size": batch, "steps_per_epoch": steps, "epochs": epochs,
                   "gated_share_from": "config/coca.yaml download.expect (gated : nongated patients)"},
    }  # fmt: skip
    for kind in ("spss", "convnet"):
        one, share = benchmarks.get(f"train_{kind}_b{batch}", {}), benchmarks.get(f"train_{kind}_b{batch // 2}", {})
        if "seconds_per_step_median" not in one:
            continue
        epoch_1 = steps * one["seconds_per_step_median"] + n_val * one["validation_s_per_scan"]
        row = {"epoch_s_1_gpu": round(epoch_1, 1), "training_h_1_gpu": round(epochs * epoch_1 / 3600, 2)}
        if "seconds_per_step_median" in share:
            epoch_2 = steps * share["seconds_per_step_median"] + n_val / 2 * share["validation_s_per_scan"]
            row |= {"epoch_s_2_gpus_lower_bound": round(epoch_2, 1),
                    "training_h_2_gpus_lower_bound": round(epochs * epoch_2 / 3600, 2)}  # fmt: skip
        out[kind] = row
    out["note"] = ("measured steps on synthetic whole crops of the coca.yaml grid times the steps of one epoch, plus "
                   "the validation forwards; data loading is not included (crops are cached in memory by cacs train); "
                   "2 GPUs: one GPU's share of each batch, all-reduce excluded")  # fmt: skip
    return out


@contextlib.contextmanager
def background(cmd: list[str], cwd: Path) -> Iterator[subprocess.Popen]:
    """``cmd`` running while the block runs; ended (with its worker processes) when the block ends, however."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # a half-written cohort stays in a temporary folder
            proc.wait()


def check(args: argparse.Namespace) -> int:
    """The tests, then the benchmarks, within ``args.budget_s``; the JSON saved after every step."""
    from cacs.io.atomic import write_json

    start = time.perf_counter()
    deadline = start + args.budget_s
    result: dict[str, Any] = {
        "check": "gpu",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "budget_s": args.budget_s,
        "environment": environment(),
        "tests": None,
        "benchmarks": {},
        "projection": None,
    }

    def save(status: str) -> None:
        result["status"] = status
        result["elapsed_s"] = round(time.perf_counter() - start, 1)
        write_json(args.out, result)

    def left() -> float:
        return deadline - time.perf_counter()

    save("running")
    # The realistic scans of the infer benchmark are generated on the CPU while the tests use the GPU.
    prepare_cmd = [sys.executable, "bench_infer.py", "--prepare", "--patients", str(INFER_PATIENTS)]
    with background(prepare_cmd if "infer" in args.benchmarks else ["true"], REPO / "bench") as prepare:
        if not args.skip_tests:
            print("gpu-check: pytest -m gpu ...", file=sys.stderr)
            result["tests"] = run_tests(min(TESTS_CAP_S, left()))
            save("running")
        for name in args.benchmarks:
            if name == "infer":
                with contextlib.suppress(subprocess.TimeoutExpired):
                    prepare.wait(timeout=max(1.0, min(BENCHMARKS[name], left()) / 2))
                if prepare.poll() is None:  # bench_infer generates what is missing itself; two writers would collide
                    os.killpg(prepare.pid, signal.SIGKILL)
                    prepare.wait()
            cap = min(BENCHMARKS[name], left())
            if cap < MIN_STEP_S:
                result["benchmarks"][name] = {"error": "not run: the time budget was spent"}
                continue
            print(f"gpu-check: {name} (at most {cap:.0f} s) ...", file=sys.stderr)
            result["benchmarks"][name] = run_benchmark(name, cap)
            save("running")
    result["projection"] = projection(result["benchmarks"])
    tests = result["tests"] or {}
    tests_ok = args.skip_tests or (tests["returncode"] == 0 and tests["passed"] > 0
                                   and not tests["failed"] and not tests["error"])  # fmt: skip
    broken = [n for n, b in result["benchmarks"].items() if "error" in b]
    ok = tests_ok and not broken
    save("ok" if ok else "failures")
    print(json.dumps(result, indent=2))
    print(f"gpu-check: {result['status']}; tests {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, "
          f"{tests.get('error', 0)} errors, {tests.get('skipped', 0)} skipped; benchmarks failed: {broken or 'none'}; "
          f"{result['elapsed_s']} s; {args.out}", file=sys.stderr)  # fmt: skip
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file (also printed)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="time for the whole run")
    parser.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    parser.add_argument("--benchmarks", nargs="*", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--one", choices=list(BENCHMARKS), help=argparse.SUPPRESS)  # a benchmark's own process
    parser.add_argument("--timeout-s", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.timeout_s)))
        return 0
    reason = no_gpu_reason()
    if reason:
        print(f"gpu-check SKIPPED, nothing was tested or measured: {reason}")
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
