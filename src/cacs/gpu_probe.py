"""Whether this machine shows a GPU to jobs, answered without importing torch.

The Snakemake workflow (``workflow/rules/common.smk`` loads this file by its
path, as it does :mod:`cacs.figure_names`) asks it at most once per parse,
only for a local run, to decide whether a job on device ``auto`` will hold a GPU.  Importing torch there
would add seconds to every ``snakemake`` call, so this looks where the drivers
show themselves instead: ``nvidia-smi -L`` for NVIDIA GPUs, ``/dev/kfd`` for
AMD (ROCm) ones.  The module imports only the standard library.
"""

from __future__ import annotations

import os
import shutil
import subprocess

AMD_KERNEL_DRIVER = "/dev/kfd"


def local_gpu_visible(environ: dict[str, str] | None = None) -> bool:
    """True when a job started here would see a GPU.

    ``CUDA_VISIBLE_DEVICES`` set to ``""`` or ``-1`` hides every GPU, as torch
    sees it; otherwise an AMD kernel driver or an ``nvidia-smi -L`` listing
    with a GPU line counts.  A failing or hanging ``nvidia-smi`` counts as no
    GPU (the job then runs on the CPU anyway).
    """
    env = os.environ if environ is None else environ
    if env.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    if os.path.exists(AMD_KERNEL_DRIVER):
        return True
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if smi is None:
        return False
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "GPU" in listing
