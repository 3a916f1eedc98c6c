"""The one epoch loop both trainers run: checkpoint, resume, epoch seeding, metrics table.

The heart localiser (:func:`cacs.localizer.train_localizer`) and the scoring
models (:func:`cacs.train.train_experiment`) differ in their data, step and
validation, not in what makes a run resumable.  That part lives here once, as
in nnU-Net's trainer: each loop supplies its hooks (``train_epoch``,
``validate``, ``on_epoch_end``) and :class:`EpochLoop` does the rest:

* **seeding**: before epoch ``e`` the torch RNG is reseeded with
  :func:`epoch_seed` ``(seed, e)``, and the hooks receive that seed for their
  own generators (data order, augmentation, sampling).  The randomness of an
  epoch then depends on ``(seed, epoch)`` only, so a run killed after epoch k
  and resumed replays epochs k+1.. exactly (same device, same threads);
* **checkpoint**: after every epoch ``checkpoint.pt`` is written atomically
  (rank 0 only) with the weights, optimizer state, epoch, metrics rows, the
  global RNG states and the loop's ``identity`` (its configuration and data
  fingerprint, under the loop's own keys);
* **resume**: a checkpoint is continued only when the loop's ``compatible``
  check accepts it and it is not beyond the requested epochs; otherwise the
  run starts from scratch with a warning naming why (continuing would mix two
  configurations or two data sets);
* **metrics table**: ``metrics.csv`` (one row per epoch, ``seconds`` last) is
  rewritten atomically with every checkpoint;
* **several processes**: every rank reads the checkpoint and runs the hooks,
  only the main rank writes; :func:`mean_over_ranks` averages a dict of sums.

The checkpoint keys (``model``, ``optimizer``, ``epoch``, ``metrics``, ``rng``
and the identity keys) are those both loops wrote before this module existed,
so their older checkpoints are still continued.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cacs.io.atomic import write_csv, write_torch

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.csv"

Row = dict[str, Any]


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (seed, epoch): the sole source of randomness of an epoch, so resuming replays it exactly."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def seed_epoch(seed: int, epoch: int) -> int:
    """Reseed torch's global RNG for ``epoch`` (idempotent); returns :func:`epoch_seed` for the loop's generators."""
    value = epoch_seed(seed, epoch)
    torch.manual_seed(value)
    return value


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's legacy global and torch's RNGs (third-party code draws from them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - legacy global RNG used by third-party code
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """The global RNG states (torch, CUDA, numpy legacy, Python), as data ``torch.load(weights_only=True)`` reads."""
    np_state = np.random.get_state()  # noqa: NPY002 - snapshot of the legacy global RNG others use
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured (CUDA states only where CUDA is present).

    A checkpoint written where more (or fewer) GPUs were visible restores the
    devices both have: training reseeds every device at each epoch start, so
    the others need no saved state.
    """
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        for index, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)
    kind, key, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))  # noqa: NPY002
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def changed_keys(old: dict[str, Any], new: dict[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """Sorted keys whose values differ between two settings dicts (``ignore`` left out)."""
    keys = (set(old) | set(new)) - set(ignore)
    return sorted(k for k in keys if old.get(k) != new.get(k))


def mean_over_ranks(sums: dict[str, float], device: torch.device, world_size: int) -> dict[str, float]:
    """Per-rank sums averaged over the ranks (all-reduce); the sums themselves for one process.

    Every rank must pass the same keys in the same order (the same loss terms).
    """
    if world_size <= 1:
        return sums
    import torch.distributed as dist

    keys = list(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v / world_size for k, v in zip(keys, t.tolist(), strict=True)}


class EpochLoop:
    """Epochs ``start+1 .. epochs`` of one training run, resumable from ``out_dir/checkpoint.pt``.

    ``model`` is the bare network (not a DistributedDataParallel wrapper):
    what the checkpoint holds.  ``identity`` is stored in every checkpoint
    (configuration, data fingerprint, ...); ``compatible(saved)`` returns why a
    saved checkpoint cannot be continued ('' when it can).  ``columns`` fixes
    the metrics table's columns (None: those of the rows).  ``log`` is the
    caller's logger, so its messages keep their origin.  Usage::

        loop = EpochLoop(name, log, out_dir, model, optimizer, seed, epochs, identity, compatible)
        loop.resume()
        loop.run(train_epoch, validate)  # train_epoch(epoch, seed) -> row values; validate(epoch) -> row values
    """

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        out_dir: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        seed: int,
        epochs: int,
        identity: dict[str, Any],
        compatible: Callable[[dict[str, Any]], str],
        *,
        columns: Sequence[str] | None = None,
        main: bool = True,
        progress: str | None = None,
    ) -> None:
        self.name, self.log, self.out_dir = name, log, Path(out_dir)
        self.model, self.optimizer = model, optimizer
        self.seed, self.epochs = int(seed), int(epochs)
        self.identity, self.compatible = dict(identity), compatible
        self.columns = list(columns) if columns is not None else None
        self.main, self.progress = main, progress
        self.metrics: list[Row] = []
        self.start = 0

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def frame(self) -> pd.DataFrame:
        """The metrics table so far (one row per finished epoch)."""
        return pd.DataFrame(self.metrics, columns=self.columns)

    def write_metrics(self) -> None:
        write_csv(self.out_dir / METRICS_NAME, self.frame())

    def why_not(self, saved: dict[str, Any]) -> str:
        """Why ``saved`` cannot be continued by this run ('' when it can)."""
        reason = self.compatible(saved)
        if not reason and int(saved["epoch"]) > self.epochs:
            reason = f"it is at epoch {saved['epoch']}, beyond the requested {self.epochs}"
        return reason

    def resume(self) -> dict[str, Any] | None:
        """Continue from the checkpoint if there is a compatible one; returns it (None: from scratch).

        Every rank reads it: the main rank writes again only after an epoch all ranks take part in.
        """
        path = self.checkpoint_path
        if not path.exists():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        reason = self.why_not(saved)
        if reason:
            self.log.warning("%s: ignoring %s because %s; training from scratch", self.name, path, reason)
            return None
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.metrics = [dict(m) for m in saved["metrics"]]
        self.start = int(saved["epoch"])
        if saved.get("rng"):
            set_rng_states(saved["rng"])
        if self.main:
            self.log.info("%s: resuming from %s after epoch %d", self.name, path, self.start)
        return saved

    def save_checkpoint(self, epoch: int) -> None:
        """``checkpoint.pt`` and ``metrics.csv`` after ``epoch`` (main rank only, atomically)."""
        if not self.main:
            return
        write_torch(
            self.checkpoint_path,
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "epoch": epoch,
                "metrics": self.metrics,
                "rng": rng_states(),
                **self.identity,
            },
        )
        self.write_metrics()

    def run(
        self,
        train_epoch: Callable[[int, int], Row],
        validate: Callable[[int], Row],
        on_epoch_end: Callable[[int, Row], None] | None = None,
    ) -> list[Row]:
        """Run the remaining epochs; returns every epoch's metrics row (resumed ones included).

        Per epoch: reseed (:func:`seed_epoch`), ``train_epoch(epoch, seed)`` and
        ``validate(epoch)`` give the row's values (``epoch`` first, ``seconds``
        last are added here), ``on_epoch_end(epoch, row)`` runs on every rank
        (e.g. a check that the ranks agree), then the checkpoint is written.
        """
        if self.main and (self.metrics or self.columns):
            self.write_metrics()
        epochs = range(self.start + 1, self.epochs + 1)
        bar = tqdm(epochs, desc=self.progress, unit="epoch", initial=self.start, total=self.epochs,
                   disable=not (self.progress and self.main))  # fmt: skip
        for epoch in bar:
            t0 = time.perf_counter()
            seed = seed_epoch(self.seed, epoch)
            row: Row = {"epoch": epoch, **train_epoch(epoch, seed)}
            row.update(validate(epoch))
            row["seconds"] = time.perf_counter() - t0
            self.metrics.append(row)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
            self.save_checkpoint(epoch)
            shown = {k: round(v, 4) for k, v in row.items() if isinstance(v, float) and k != "seconds"}
            bar.set_postfix(shown)
            if self.main:
                self.log.info("%s epoch %d: %s (%.1f s)", self.name, epoch, shown, row["seconds"])
        return self.metrics
