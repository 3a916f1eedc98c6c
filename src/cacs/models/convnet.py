"""ConvNet baseline: direct regression of the four per-artery scores (after de Vos et al. 2019).

The SPSS paper compares against "ConvNet (Bob et al. [3])", i.e. de Vos et al.,
*Direct automatic coronary calcium scoring in cardiac and chest CT*, IEEE TMI 2019,
trained from scratch on the same crops.  Like that method it regresses the score
straight from the image, with no segmentation and no mask supervision, so it trains
on gated and non-gated scans alike (reference scores only).  Our adaptation, sized
for the 48 x 128 x 128 model-grid crop rather than reproducing their exact layers:

* a stack of 3D conv stages (``convs_per_stage`` x [3x3x3 conv + norm + activation])
  with 2x max pooling between stages: max pooling, not striding or averaging, so
  that a one-voxel calcification survives downsampling;
* global average pooling (the score is a sum over lesions, and with a fixed crop
  size a spatial mean is a sum up to a constant), then a small MLP -> 4 outputs
  (LM, LCX, LAD, RCA).  The MLP runs in float32 even under autocast.

Target transform: the network predicts ``log1p(score)`` per artery (natural log),
because scores span 0 to thousands and are 0 for many patients: on the raw scale
a loss is dominated by a few high-calcium cases, and the CVD ranks (0, 1-10, 11-100,
101-400, >400) are themselves roughly logarithmic.  :meth:`ConvNetRegressor.scores`
inverts it: ``expm1(clamp(output, min=0))``, so a score is never negative.

Loss (implemented in :mod:`cacs.losses`, not here): squared error on the log1p
targets, ``mean_k (log1p(y_k) - output_k)^2`` over the four arteries.  L1 (the
paper's eq. 5 in log space) was tried first and collapsed to predicting the
per-artery median, 0, for every scan (:func:`cacs.losses.convnet_loss`).  Regress
``output`` (pre-clamp) against ``log1p(y)``: the clamp is for reporting only and would
kill the gradient of negative outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from monai.networks.blocks import Convolution
from torch import nn

from cacs.models.spss import (
    ACTS,
    N_ARTERIES,
    NORMS,
    _check_choice,
    _check_dropout,
    _check_int,
    act_spec,
    fp32,
    norm_spec,
)

__all__ = ["ConvNetConfig", "ConvNetRegressor"]


@dataclass(frozen=True)
class ConvNetConfig:
    """Architecture of :class:`ConvNetRegressor`; lists are accepted and stored as tuples."""

    in_channels: int = 1
    input_pool: tuple[int, int, int] = (1, 1, 1)
    # Max pooling of the input before the first stage, (x, y, z) factors.  (2, 2, 1) takes the
    # default run's 1.5 x 1.5 x 3 mm crop to 3 x 3 x 3 mm, as de Vos et al. regress from
    # downsampled volumes; max pooling keeps a one-voxel calcification at its peak HU.  On a
    # 2-core CPU it made a training step 3.7x faster, with the same (lack of) learning.
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    # Widths per stage, 2x max pooling between stages: 4 poolings take 48 x 128 x 128
    # to 3 x 8 x 8 before the global pooling, so the last stage sees the whole heart.
    # Doubling widths (16 at full resolution) is the usual 3D classifier shape; ~3.5 M
    # parameters, the same order as SPSS, so the comparison is not one of capacity.
    convs_per_stage: int = 2
    # Two 3x3x3 convs per stage (VGG / U-Net encoder style).
    hidden: int = 128
    # Width of the MLP's hidden layer.
    norm: str = "batch"
    # Batch norm, not instance norm: instance norm rescales every channel of every
    # scan to zero mean / unit variance, removing exactly the per-scan amount of
    # bright signal that a global-average-pooling regressor has to read.  (With the
    # paper's 2 images per GPU, SyncBatchNorm in the training code is advisable.)
    act: str = "leakyrelu"
    # Same activation as SPSS.
    dropout: float = 0.0
    # Dropout before the last linear layer; the paper lists no regulariser beyond
    # weight decay for either model, so none by default (same as SPSS).

    def __post_init__(self) -> None:
        for name in ("channels", "input_pool"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_int("in_channels", self.in_channels)
        if not isinstance(self.input_pool, tuple) or len(self.input_pool) != 3:
            raise ValueError(f"input_pool must be three factors (x, y, z), got {self.input_pool!r}")
        for f in self.input_pool:
            _check_int("input_pool", f)
        if not isinstance(self.channels, tuple) or not self.channels:
            raise ValueError(f"channels must be a non-empty list of positive ints, got {self.channels!r}")
        for c in self.channels:
            _check_int("channels", c)
        _check_int("convs_per_stage", self.convs_per_stage)
        _check_int("hidden", self.hidden)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("act", self.act, ACTS)
        _check_dropout(self.dropout)

    @property
    def min_size_zyx(self) -> tuple[int, int, int]:
        """Smallest spatial size (z, y, x) that survives the poolings."""
        return tuple(f * 2 ** (len(self.channels) - 1) for f in self.input_pool[::-1])

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


class ConvNetRegressor(nn.Module):
    """[B, 1, Z, Y, X] crop -> [B, 4] predicted ``log1p`` per-artery scores (LM, LCX, LAD, RCA).

    Any spatial size of at least ``config.min_size_zyx`` works (global pooling); both
    cohorts go through the same weights.
    """

    def __init__(self, config: ConvNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ConvNetConfig()
        layers: list[nn.Module] = []
        if cfg.input_pool != (1, 1, 1):
            layers.append(nn.MaxPool3d(kernel_size=cfg.input_pool[::-1]))
        in_ch = cfg.in_channels
        for i, width in enumerate(cfg.channels):
            if i > 0:
                layers.append(nn.MaxPool3d(kernel_size=2))
            for _ in range(cfg.convs_per_stage):
                layers.append(
                    Convolution(
                        spatial_dims=3,
                        in_channels=in_ch,
                        out_channels=width,
                        kernel_size=3,
                        norm=norm_spec(cfg.norm),
                        act=act_spec(cfg.act),
                    )
                )
                in_ch = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch, cfg.hidden),
            nn.LeakyReLU(0.01) if cfg.act == "leakyrelu" else (nn.ReLU() if cfg.act == "relu" else nn.PReLU()),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, N_ARTERIES),
        )

    def check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"ConvNetRegressor expects a [B, {cfg.in_channels}, Z, Y, X] tensor, got shape {tuple(x.shape)}"
            )
        if any(s < m for s, m in zip(x.shape[2:], cfg.min_size_zyx, strict=True)):
            raise ValueError(
                f"ConvNetRegressor input spatial size (Z, Y, X) = {tuple(x.shape[2:])} must be at least "
                f"{cfg.min_size_zyx} ({len(cfg.channels) - 1} 2x poolings after an input pooling of "
                f"{cfg.input_pool[::-1]})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 4] float32 ``log1p(score)`` estimates (not clamped: regress these)."""
        self.check_input(x)
        return fp32(self.head, self.pool(self.features(x)))

    @staticmethod
    def scores(output: torch.Tensor) -> torch.Tensor:
        """Scores from :meth:`forward`'s output: ``expm1(clamp(output, min=0))``, [B, 4] float32+."""
        out = output.float() if output.dtype in (torch.float16, torch.bfloat16) else output
        return torch.expm1(out.clamp(min=0))
