"""The localiser's settings and file name: everything that defines a trained localiser.

:class:`LocalizerParams` is stored inside ``model.pt`` (and checked by a
resumed training run), so a model file says how it was trained and how its
input must be prepared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MODEL_NAME = "model.pt"


@dataclass(frozen=True)
class LocalizerParams:
    """Everything that determines a trained localiser (stored inside ``model.pt``).

    Spatial tuples are (x, y, z) like every geometry in this package.  The
    defaults train on the ``small`` synthetic preset to held-out Dice > 0.85
    in about 3 CPU minutes (2 cores, ~4 s/epoch; > 0.85 from epoch ~21 with
    seed 42, ~0.93 at epoch 40); the paper's 200 epochs are a config override.
    The learning rate is constant (Adam, 3e-3), so a run resumed with more
    epochs follows exactly the same path as one started with them.
    """

    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 4.0)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    patch_size: tuple[int, int, int] = (96, 96, 64)  # coarse voxels (x, y, z); 384 x 384 x 256 mm at 4 mm
    epochs: int = 40
    batch_size: int = 2
    lr: float = 3e-3
    val_fraction: float = 0.25
    seed: int = 42
    augment: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        # Coerce lists (from YAML / torch.load) to tuples so the frozen object stays hashable and comparable.
        for name in ("spacing_mm", "hu_window", "channels", "patch_size"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.spacing_mm) != 3 or any(not s > 0 for s in self.spacing_mm):
            raise ValueError(f"localizer.spacing_mm must be three positive mm values (x, y, z), got {self.spacing_mm}")
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"localizer.hu_window must be (low, high) HU with low < high, got {self.hu_window}")
        if len(self.channels) < 2 or any(int(c) != c or c < 1 for c in self.channels):
            raise ValueError(f"localizer.channels needs >= 2 positive integers, got {self.channels}")
        factor = self.downsampling_factor
        if len(self.patch_size) != 3 or any(int(p) != p or p < factor or p % factor for p in self.patch_size):
            raise ValueError(
                f"localizer.patch_size must be three multiples of {factor} (2 ** downsampling steps), "
                f"got {self.patch_size}"
            )
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"localizer.epochs must be an integer >= 1, got {self.epochs}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"localizer.batch_size must be an integer >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"localizer.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"localizer.val_fraction must be in [0, 1), got {self.val_fraction}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"localizer.seed must be an integer >= 0, got {self.seed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"localizer.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    @property
    def downsampling_factor(self) -> int:
        """Each network input side must be a multiple of this (one halving per step)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalizerParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
