"""Benchmark: training throughput (scans/s) and peak memory of SPSS and the ConvNet.

Each configuration runs in its own process (peak RSS is per process): a few
SGD steps on batches of 4 (2 gated + 2 non-gated) of a synthetic crop with
calcium blobs, through the real loss (eq. 2-6, local sampling) and eq. 1.
Two sizes: the default run's scaled-down models on its 80x80x48 grid
(config/config.yaml) and the full default models on the 128x128x48 grid
(the schema defaults, meant for a GPU). On CUDA the same with and without
mixed precision, and peak GPU memory.
"""

from __future__ import annotations

import json
import subprocess
import sys

CASES = {
    "spss_default_run_80x80x48": ("spss", {"channels": [8, 16, 32, 64], "feature_width": 8, "small_width": 8,
                                            "large_width": 16}, (48, 80, 80)),
    "convnet_default_run_80x80x48": ("convnet", {"channels": [8, 16, 32, 64, 128]}, (48, 80, 80)),
    "spss_full_128x128x48": ("spss", {}, (48, 128, 128)),
    "convnet_full_128x128x48": ("convnet", {}, (48, 128, 128)),
}  # fmt: skip


def _one(name: str, amp: bool, steps: int) -> dict:
    import resource
    import time

    import numpy as np
    import torch

    from cacs.agatston import lesion_weight_map
    from cacs.losses import LossConfig
    from cacs.models import build_model
    from cacs.train import HU_SCALE, TrainConfig, _forward

    kind, model_cfg, shape = CASES[name]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 20, shape).astype(np.float32)
    labels = np.zeros(shape, np.int64)
    for k in range(1, 5):
        z, y, x = (rng.integers(4, s - 4) for s in shape)
        hu[z - 1 : z + 2, y - 2 : y + 2, x - 2 : x + 2] = 500
        labels[z - 1 : z + 2, y - 2 : y + 2, x - 2 : x + 2] = k
    hu[:, -12:-4, 30:40] = 600  # a bone-like distractor
    w = torch.from_numpy(np.stack([lesion_weight_map(hu)] * 4)).to(device)
    batch = {
        "x": torch.from_numpy(np.stack([hu / HU_SCALE] * 4)[:, None]).to(device),
        "hu": torch.from_numpy(np.stack([hu] * 4)).to(device),
        "labels": torch.from_numpy(np.stack([labels, labels, 0 * labels, 0 * labels])).to(device),
        "weight": w,
        "voxel_factor": torch.full((4,), 2.5, device=device),
        "ref_scores": torch.full((4, 4), 50.0, device=device),
        "is_gated": torch.tensor([True, True, False, False], device=device),
    }
    cfg = TrainConfig(model=kind, model_config=model_cfg, amp=amp)
    model = build_model(kind, model_cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
        batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.8)
    gen = torch.Generator(device=device).manual_seed(0)
    loss_cfg = LossConfig() if kind == "spss" else None
    times = []
    for _ in range(steps + 1):  # the first step is warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, _, _ = _forward(model, cfg, loss_cfg, batch, gen, amp and device.type == "cuda")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = float(np.median(times[1:]))
    out = {
        "config": name,
        "device": device.type,
        "amp": amp and device.type == "cuda",
        "batch": 4,
        "seconds_per_step": round(step, 3),
        "scans_per_s": round(4 / step, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    if len(sys.argv) == 4:
        print(json.dumps(_one(sys.argv[1], sys.argv[2] == "amp", int(sys.argv[3]))))
        return
    import torch

    amps = ("fp32", "amp") if torch.cuda.is_available() else ("fp32",)
    results = []
    for name in CASES:
        steps = 2 if "full" in name else 3
        for amp in amps:
            run = subprocess.run([sys.executable, __file__, name, amp, str(steps)], capture_output=True, text=True)
            if run.returncode:
                results.append({"config": name, "error": run.stderr.strip().splitlines()[-1:]})
            else:
                results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "training_throughput", "results": results}, indent=2))


if __name__ == "__main__":
    main()
