"""Benchmark: training steps per second and peak memory of SPSS and the ConvNet, fp32 vs bf16.

Each configuration runs in its own process (peak RSS is per process): a few
optimizer steps of the real training step (:func:`cacs.train._train_step`:
the loss of eqs. 2-6 with local sampling, eq. 1, gradient accumulation over
the groups of a step) on a synthetic crop with calcium blobs and a bone-like
distractor.  Configurations:

* ``*_default_run``: the default run's recipe, read from ``config/config.yaml``
  (SPSS: gated patches + whole non-gated crops; ConvNet: whole crops; its
  scaled-down networks and crop grid);
* ``*_full``: the full default networks on the 128x128x48 grid of
  ``config/coca.yaml`` (meant for a GPU; skipped on the CPU unless
  ``--full``).

``--side-by-side`` instead measures one 2-thread SPSS training step against
two 1-thread ones running at once (what ``train.threads: 1`` buys a 2-core
machine, where snakemake can then run two training jobs together).

Every configuration runs in three precisions/layouts: ``fp32`` (float32, the
default contiguous layout), ``fp32_cl`` (float32 in channels_last_3d, what
``cacs train`` does where bf16 is not native) and ``amp`` (bfloat16 autocast +
channels_last_3d), on CUDA when present, else on the CPU (where ``amp`` helps
only with native bf16: the JSON says whether this CPU has it).  The SPSS step
of the default run is the one with a calcified non-gated scan (a whole crop);
a calcium-free one is a patch (``train.nongated_zero_patches``), cheaper.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

_DEFAULT = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
_CROP = tuple(_DEFAULT["crop"]["model_size"][::-1])  # (z, y, x)
_PATCH = tuple(_DEFAULT["train"]["patch_size"][::-1])
_HALF = _DEFAULT["train"]["batch_size"] // 2
_PATCHES = _HALF * _DEFAULT["train"]["patches_per_scan"]
CASES = {
    # name: (kind, model config, whole crop (z, y, x), gated patch (z, y, x) or None, gated items, non-gated crops)
    "spss_default_run": ("spss", _DEFAULT["models"]["spss"], _CROP, _PATCH, _PATCHES, _HALF),
    "convnet_default_run": ("convnet", _DEFAULT["models"]["convnet"], _CROP, None, _HALF, _HALF),
    "spss_full": ("spss", {}, (48, 128, 128), None, 2, 2),
    "convnet_full": ("convnet", {}, (48, 128, 128), None, 2, 2),
}


MODES = ("fp32", "fp32_cl", "amp")


def _one(name: str, mode: str, steps: int, threads: int = 2) -> dict:
    import resource
    import time

    import numpy as np
    import torch

    from cacs.agatston import lesion_weight_map
    from cacs.losses import LossConfig
    from cacs.models import build_model
    from cacs.train import HU_SCALE, Scan, TrainConfig, _train_step, cut_patch

    amp, channels_last = mode == "amp", mode in ("fp32_cl", "amp")
    kind, model_cfg, shape, patch, n_gated, n_nongated = CASES[name]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 20, shape).astype(np.float32)
    labels = np.zeros(shape, np.int64)
    for k in range(1, 5):
        z, y, x = (rng.integers(4, s - 4) for s in shape)
        hu[z - 1 : z + 2, y - 2 : y + 2, x - 2 : x + 2] = 500
        labels[z - 1 : z + 2, y - 2 : y + 2, x - 2 : x + 2] = k
    hu[:, -12:-4, 30:40] = 600  # a bone-like distractor

    def scan(gated: bool) -> Scan:
        return Scan(case_id="b", gated=gated, x=(hu / HU_SCALE)[None], hu=hu, labels=labels if gated else 0 * labels,
                    weight=lesion_weight_map(hu), voxel_factor=2.5, ref=np.full(4, 50.0, np.float32),
                    foreground=np.argwhere(labels > 0))  # fmt: skip

    if patch is None:
        groups = [[scan(True)] * n_gated + [scan(False)] * n_nongated]
    else:
        groups = [[cut_patch(scan(True), (0, 0, 0), patch)] * n_gated, [scan(False)] * n_nongated]
    cfg = TrainConfig(model=kind, model_config=model_cfg, amp=amp, channels_last=channels_last, optimizer="adamw")
    model = build_model(kind, model_cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(0)
    loss_cfg = LossConfig() if kind == "spss" else None
    times = []
    for _ in range(steps + 1):  # the first step is warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _train_step(model, cfg, loss_cfg, groups, device, amp, gen, opt)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = float(np.median(times[1:]))
    out = {
        "config": name,
        "device": device.type,
        "mode": mode,
        "cpu_native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "step": f"{n_gated} gated patches {patch} + {n_nongated} whole crops {shape}" if patch
        else f"{n_gated + n_nongated} whole crops {shape}",
        "threads": threads,
        "seconds_per_step": round(step, 3),
        "steps_per_s": round(1 / step, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _child(name: str, mode: str, steps: int, threads: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, name, mode, str(steps), str(threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _result(child: subprocess.Popen) -> dict:
    out, err = child.communicate()
    if child.returncode:
        return {"error": err.strip().splitlines()[-1:]}
    return json.loads(out.strip().splitlines()[-1])


def side_by_side(steps: int = 6) -> dict:
    """One 2-thread SPSS training step against two 1-thread ones running at the same time (2 cores).

    What ``train.threads: 1`` buys a 2-core machine: snakemake then runs two
    training jobs side by side (a CPU-only machine holds no GPU resource).
    """
    mode = "amp" if _native_bf16() else "fp32_cl"  # what cacs train runs on this CPU
    alone = _result(_child("spss_default_run", mode, steps, 2))
    pair = [_child("spss_default_run", mode, steps, 1) for _ in range(2)]
    both = [_result(child) for child in pair]
    out = {"benchmark": "training_side_by_side", "one_job_2_threads": alone, "two_jobs_1_thread": both}
    if "seconds_per_step" in alone and all("seconds_per_step" in r for r in both):
        together = sum(1 / r["seconds_per_step"] for r in both)
        out["steps_per_s"] = {"one_job_2_threads": round(1 / alone["seconds_per_step"], 3),
                              "two_jobs_1_thread": round(together, 3)}  # fmt: skip
        out["throughput_ratio"] = round(together * alone["seconds_per_step"], 2)
    return out


def _native_bf16() -> bool:
    """Whether cacs train would use bf16 here (CUDA, or a CPU with native bf16)."""
    import torch

    from cacs.train import TrainConfig, use_amp

    return use_amp(TrainConfig(amp=True), torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def main() -> None:
    if len(sys.argv) in (4, 5):
        threads = int(sys.argv[4]) if len(sys.argv) == 5 else 2
        print(json.dumps(_one(sys.argv[1], sys.argv[2], int(sys.argv[3]), threads)))
        return
    if "--side-by-side" in sys.argv:
        print(json.dumps(side_by_side(), indent=2))
        return
    import torch

    full = "--full" in sys.argv or torch.cuda.is_available()
    results = []
    for name in CASES:
        if "full" in name and not full:
            continue
        for mode in MODES:
            if mode == "amp" and not _native_bf16():
                results.append({"config": name, "mode": mode, "skipped": "this CPU has no native bf16: emulated, "
                                "about 20x slower than fp32 (measured on an AVX2 CPU), so cacs train does not use it"})
                continue
            run = subprocess.run([sys.executable, __file__, name, mode, "3"], capture_output=True, text=True)
            if run.returncode:
                results.append({"config": name, "mode": mode, "error": run.stderr.strip().splitlines()[-1:]})
            else:
                results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    speedups: dict[str, dict[str, float]] = {}
    for name in CASES:
        step = {r.get("mode"): r.get("seconds_per_step") for r in results if r.get("config") == name}
        if step.get("fp32"):
            speedups[name] = {m: round(step["fp32"] / step[m], 2) for m in MODES[1:] if step.get(m)}
    print(json.dumps({"benchmark": "training_throughput", "results": results, "speedup_over_fp32": speedups},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
