"""Where a job computes: the GPU(s) the scheduler gave it, or the CPU; and the torchrun process group.

GPU placement is decided outside this package: SLURM (or whoever starts the
job) sets ``CUDA_VISIBLE_DEVICES`` to the GPUs the job was granted, and torch
numbers the visible ones from 0.  So a single-process job always uses
``cuda:0`` and the ``torchrun`` rank with ``LOCAL_RANK`` = k uses ``cuda:k``;
nothing here picks physical GPU ids, which would fight the scheduler.

A job that silently falls back to the CPU can run for days instead of hours,
so the fallback is logged as a WARNING, and ``require_gpu`` (config keys
``train.require_gpu`` / ``localizer.require_gpu``) turns it into an error
that says what the job saw.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")
# Measured on this project's 2-core CPU machine (docs/benchmarks.md): what a CPU fallback costs.
CPU_COST_HINT = (
    "expect it to be one to two orders of magnitude slower than on a GPU "
    "(README benchmarks: one full-size SPSS training step of batch 4 takes ~68 s on 2 CPU cores)"
)


class GPUUnavailableError(RuntimeError, ValueError):
    """The job needs a GPU it was not given.

    A RuntimeError (the environment, not the input, is wrong) that is also a
    ValueError, so the ``cacs`` CLI reports it as one line (exit code 2)
    instead of a traceback.
    """


def visible_devices() -> str:
    """``CUDA_VISIBLE_DEVICES`` as the job sees it (``<unset>`` when the scheduler did not set it)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "<unset>" if value is None else repr(value)


def _cuda_count() -> int:
    """Number of CUDA devices torch can use (0 on a CPU build or when none is visible)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _torch_build() -> str:
    return f"torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no (CPU-only wheel)'}"


def resolve_device(
    requested: str = "auto",
    require_gpu: bool = False,
    local_rank: int | None = None,
    *,
    section: str | None = None,
) -> torch.device:
    """The torch device of this process.

    Args:
        requested: ``auto`` (CUDA when visible, else the CPU with a WARNING),
            ``cuda`` (a missing GPU is an error) or ``cpu``.
        require_gpu: make a missing GPU an error for ``auto`` too (config key
            ``<section>.require_gpu``); contradicts ``cpu``.
        local_rank: the ``torchrun`` rank on this node; selects ``cuda:local_rank``
            among the visible GPUs (``cuda:0`` when None).
        section: config section named in error messages (``train``, ``localizer``).

    Raises:
        ValueError: unknown ``requested`` or ``cpu`` together with ``require_gpu``.
        GPUUnavailableError: a GPU is required but none is visible, or ``local_rank``
            has no GPU of its own; the message names ``CUDA_VISIBLE_DEVICES``.
    """
    device_key = f"{section}.device" if section else "device"
    require_key = f"{section}.require_gpu" if section else "require_gpu (train.require_gpu / localizer.require_gpu)"
    if requested not in DEVICE_CHOICES:
        raise ValueError(f"{device_key} must be one of {', '.join(DEVICE_CHOICES)}, got {requested!r}")
    if requested == "cpu":
        if require_gpu:
            raise ValueError(f"{device_key} is 'cpu' but {require_key} is true: set one of them differently")
        return torch.device("cpu")
    count = _cuda_count()
    if count == 0:
        seen = f"torch sees no CUDA device (CUDA_VISIBLE_DEVICES={visible_devices()}; {_torch_build()})"
        if require_gpu:
            raise GPUUnavailableError(
                f"{require_key} is true but {seen}; request a GPU from the scheduler (the rule's gpu resource; "
                f"SLURM: --gpus=N or --gres=gpu:N), install the CUDA build of torch, or set {require_key} to false"
            )
        if requested == "cuda":
            raise GPUUnavailableError(
                f"{device_key} is 'cuda' but {seen}; request a GPU, install the CUDA build of torch, "
                f"or set {device_key} to 'auto' or 'cpu'"
            )
        log.warning("no GPU visible to this job (CUDA_VISIBLE_DEVICES=%s): it runs on the CPU; %s",
                    visible_devices(), CPU_COST_HINT)  # fmt: skip
        return torch.device("cpu")
    index = 0 if local_rank is None else int(local_rank)
    if not 0 <= index < count:
        raise GPUUnavailableError(
            f"LOCAL_RANK {index} needs a GPU of its own but only {count} is/are visible "
            f"(CUDA_VISIBLE_DEVICES={visible_devices()}): start as many processes as GPUs granted "
            f"(torchrun --nproc_per_node = {section + '.gpus' if section else 'the gpus config key'})"
        )
    names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(count))
    log.info("visible GPU(s) (CUDA_VISIBLE_DEVICES=%s): %s; using cuda:%d", visible_devices(), names, index)
    return torch.device("cuda", index)


# --------------------------------------------------------------------------- torchrun / DDP


@dataclass(frozen=True)
class DistributedEnv:
    """This process's place in a ``torchrun`` job (a plain run is rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        """More than one process: gradients must be averaged across them."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and logs per-epoch results."""
        return self.rank == 0


def distributed_env(environ: Mapping[str, str] | None = None) -> DistributedEnv:
    """Read ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` (set by ``torchrun``)."""
    env = os.environ if environ is None else environ

    def number(name: str, default: int) -> int:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None

    world = number("WORLD_SIZE", 1)
    if world < 1:
        raise ValueError(f"environment variable WORLD_SIZE={world} must be >= 1")
    if world > 1 and "RANK" not in env:
        raise ValueError(f"WORLD_SIZE={world} but RANK is not set: start multi-process training with torchrun")
    rank = number("RANK", 0)
    local_rank = number("LOCAL_RANK", rank)
    local_world = number("LOCAL_WORLD_SIZE", world)
    if not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise ValueError(
            f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
            f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world}"
        )
    return DistributedEnv(rank, local_rank, world, local_world)


@contextlib.contextmanager
def process_group(env: DistributedEnv, device: torch.device) -> Iterator[None]:
    """Initialise the default process group for a multi-process run; destroy it on exit.

    NCCL on CUDA, gloo on the CPU.  Does nothing for a single process, and
    leaves alone a group the caller already initialised (the caller owns it).
    On a normal exit all ranks meet at a barrier first, so no rank tears the
    group down while rank 0 is still writing the model.  One group per
    process, as ``cacs train`` does: a second one after the first was
    destroyed sometimes hangs in torchrun's rendezvous store (seen in tests).
    """
    import torch.distributed as dist

    if not env.enabled or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    log.info("process group: rank %d of %d (local rank %d), backend %s, device %s",
             env.rank, env.world_size, env.local_rank, dist.get_backend(), device)  # fmt: skip
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
