"""SPSS network (paper section 3.3, Figure 2): one shared encoder-decoder, two atrous heads.

The paper specifies the topology only in words:

* an encoder-decoder backbone, shared by gated and non-gated CT ("siamese": the
  *same* weights see both cohorts, there is no cohort-specific branch or input);
* a **small** atrous convolution block on the backbone features, for the local,
  detailed CAC evidence, giving the 2-channel map ``m = [m_b, m_c]``
  (background, CAC);
* a **larger** atrous convolution block, for wider context that tells the four
  arteries apart, giving the 4-channel map ``M = [M_1 .. M_4]`` (LM, LCX, LAD, RCA);
* two softmaxes and eq. 1 turn ``(m, M)`` into the per-artery score
  (:meth:`SPSSNet.scores`, which calls :func:`cacs.agatston.differentiable_agatston_from_logits`).

Widths, depths, dilations, normalisation and the exact block layout are not given;
every one of them is a field of :class:`SPSSConfig`, whose comments justify the
defaults.  The choices the paper leaves open and that we had to make:

1. Backbone: MONAI's ``DynUNet`` (the nnU-Net encoder-decoder: two 3x3x3 conv +
   instance norm + leaky ReLU per level, stride-2 downsampling, transposed-conv
   upsampling, skip connections), with a full-resolution first level.  A full
   resolution level matters here: a calcification is often 1-3 voxels on the
   1.5 x 1.5 x 3 mm model grid, and MONAI's ``UNet`` downsamples in its very first
   layer, so its output would have to re-create voxel detail from half-resolution
   features.  The backbone ends with a linear 1x1x1 conv to ``feature_width``
   channels, which both heads read (the heads are parallel, not stacked).
2. Atrous block: a 1x1x1 projection to the block width, then one residual 3x3x3
   dilated conv (+ norm + activation) per dilation rate, cascaded, then a linear
   1x1x1 classifier.  Cascaded rates add up their reach (small (1, 2): 7 voxels;
   large (2, 4, 8): 29 voxels), and the residual connections keep the un-dilated
   signal, so even dilation rates with a common factor (2, 4, 8) do not leave the
   "gridding" holes a plain cascade would have.
3. The final 1x1x1 classifiers run in float32 even under autocast, so the logits
   (and hence eq. 1, a sum over ~10^5-10^6 voxels) are never bfloat16/float16.
4. The CAC classifier's bias starts at the calcium prior (focal-loss style, Lin et
   al. 2017): with a zero bias every voxel would start at p(CAC) = 0.5, and eq. 1
   would then count half of all bone and aortic calcium in the crop.

Why the heads are hand-written: they are the paper-specific part (two atrous blocks
of different reach reading one backbone, with fixed 2- and 4-channel outputs).
MONAI's library blocks (``Convolution``) are used inside them; no library network
has this two-head shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import DynUNet
from torch import nn
from torch.nn import functional as F

from cacs.agatston import differentiable_agatston_from_logits

__all__ = ["N_ARTERIES", "N_CAC_CLASSES", "SPSSConfig", "SPSSNet", "SPSSOutput"]

N_CAC_CLASSES = 2
"""CAC head channels: 0 background, 1 calcium."""
N_ARTERIES = 4
"""Artery head channels, in label order: LM, LCX, LAD, RCA (label = channel + 1)."""

NORMS = ("instance", "batch")
ACTS = ("leakyrelu", "relu", "prelu")


@dataclass(frozen=True)
class SPSSConfig:
    """Architecture of :class:`SPSSNet`; the paper gives none of these numbers.

    Lists (as YAML gives them) are accepted and stored as tuples.
    """

    in_channels: int = 1
    # One CT channel (HU, normalised by the training code).
    channels: tuple[int, ...] = (16, 32, 64, 128)
    # Backbone widths per level; level i works at 1/2**i resolution.  Four levels
    # (three downsamplings) take the 48 x 128 x 128 crop (72 x 192 x 192 mm) to
    # 6 x 16 x 16, whose 3x3x3 receptive field already spans the whole heart; 16 at
    # full resolution keeps a batch of 2 x 48 x 128 x 128 well inside one GPU.
    # The paper trains on only 358 gated scans: ~1.4 M backbone parameters, not tens
    # of millions, limits overfitting.
    feature_width: int = 16
    # Channels of the backbone output read by both heads (= the full-resolution
    # level's width, so the last 1x1x1 conv of the backbone does not bottleneck it).
    small_dilations: tuple[int, ...] = (1, 2)
    # Small atrous block (CAC vs background): reach 7 voxels (~10 mm in-plane),
    # about one lesion plus its surroundings; CAC evidence is local (>= 130 HU on
    # the wall of a vessel), wider context comes from the backbone.
    small_width: int = 16
    large_dilations: tuple[int, ...] = (2, 4, 8)
    # Large atrous block (which artery): reach 29 voxels (~44 mm in-plane, ~87 mm
    # in z), the scale of the coronary tree, so that a lesion's artery can be told
    # from where it lies relative to the aortic root and the other vessels.
    large_width: int = 32
    # Twice the small width: four classes that differ only by context.
    artery_level: int = 0
    # Backbone level the large atrous block reads: 0 = the backbone output at full
    # resolution (both heads read the same features), 1 = the decoder's features at half
    # resolution (channels[1] wide), whose 4 logits are then upsampled trilinearly to the
    # input's size.  Which artery a lesion belongs to is a smooth field over the heart, so
    # half resolution loses nothing a reader needs, and on a CPU it takes about a quarter
    # off a whole crop's forward + backward (2.41 s -> 1.80 s on 2 AVX2 cores; the
    # full-resolution dilated convs of this block were a third of it; docs/benchmarks.md).
    # The same dilations reach twice as far.
    norm: str = "instance"
    # Instance norm: the paper's batch is 2 images per GPU, too few for batch
    # statistics, and one batch can mix gated and non-gated scans; per-image
    # statistics keep each scan's output independent of its batch mates.
    act: str = "leakyrelu"
    # nnU-Net's (and DynUNet's) default; the heads use the same activation.
    dropout: float = 0.0
    # The paper mentions no dropout (its only regulariser is weight decay 3e-5).
    cac_prior: float | None = 0.01
    # Initial p(CAC) of every voxel (classifier bias), see the module docstring; the
    # true calcium fraction of a crop is far below 1 %, but 0.01 keeps the Dice and
    # eq. 1 gradients alive at the start.
    # None: plain (zero) bias.

    def __post_init__(self) -> None:
        for name in ("channels", "small_dilations", "large_dilations"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _check_int("in_channels", self.in_channels)
        if len(self.channels) < 3:
            raise ValueError(f"channels needs at least 3 levels (DynUNet), got {self.channels!r}")
        for c in self.channels:
            _check_int("channels", c)
        for name in ("feature_width", "small_width", "large_width"):
            _check_int(name, getattr(self, name))
        for name in ("small_dilations", "large_dilations"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not value:
                raise ValueError(f"{name} must be a non-empty list of positive ints, got {value!r}")
            for d in value:
                _check_int(name, d)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("act", self.act, ACTS)
        _check_dropout(self.dropout)
        if isinstance(self.artery_level, bool) or self.artery_level not in range(len(self.channels) - 1):
            raise ValueError(
                f"artery_level must be a backbone level below the bottleneck, 0..{len(self.channels) - 2}; "
                f"got {self.artery_level!r}"
            )
        if self.cac_prior is not None and not (
            isinstance(self.cac_prior, int | float) and not isinstance(self.cac_prior, bool) and 0 < self.cac_prior < 1
        ):
            raise ValueError(f"cac_prior must be in (0, 1) or null, got {self.cac_prior!r}")

    @property
    def size_multiple(self) -> int:
        """Every spatial input size must be a multiple of this (2 ** downsamplings)."""
        return 2 ** (len(self.channels) - 1)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must hold positive ints, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_dropout(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"dropout must be in [0, 1), got {value!r}")


def norm_spec(norm: str) -> tuple[str, dict] | str:
    """MONAI norm argument: instance norm with a learnable scale/shift (nnU-Net)."""
    return ("instance", {"affine": True}) if norm == "instance" else "batch"


def act_spec(act: str) -> tuple[str, dict] | str:
    """MONAI activation argument (leaky ReLU with nnU-Net's slope 0.01)."""
    return ("leakyrelu", {"negative_slope": 0.01}) if act == "leakyrelu" else act


def fp32(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` in float32 whatever the autocast state (for small final layers)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return module(x.float())


class SPSSOutput(NamedTuple):
    """Raw SPSS outputs (logits, float32), both with the input's spatial size.

    A NamedTuple rather than a dataclass so that DDP, activation checkpointing and
    tracing see plain tensors.
    """

    cac_logits: torch.Tensor
    """[B, 2, Z, Y, X]: channel 0 background, channel 1 CAC (``m`` of the paper)."""
    artery_logits: torch.Tensor
    """[B, 4, Z, Y, X]: LM, LCX, LAD, RCA (``M`` of the paper); label = channel + 1."""


class AtrousBlock(nn.Module):
    """1x1x1 projection, residual cascade of dilated 3x3x3 convs, linear 1x1x1 classifier."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        dilations: tuple[int, ...],
        out_channels: int,
        norm: str,
        act: str,
        dropout: float,
    ) -> None:
        super().__init__()
        common = {"spatial_dims": 3, "norm": norm_spec(norm), "act": act_spec(act)}
        self.proj = Convolution(in_channels=in_channels, out_channels=width, kernel_size=1, **common)
        self.stages = nn.ModuleList(
            Convolution(
                in_channels=width,
                out_channels=width,
                kernel_size=3,
                dilation=d,
                dropout=dropout or None,
                **common,
            )
            for d in dilations
        )
        self.classifier = nn.Conv3d(width, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        for stage in self.stages:
            h = h + stage(h)
        return fp32(self.classifier, h)

    @property
    def reach(self) -> int:
        """Receptive field of the block alone, in voxels along each axis."""
        return 1 + 2 * sum(int(s.conv.dilation[0]) for s in self.stages)


class SPSSNet(nn.Module):
    """Shared backbone + small atrous CAC head + large atrous artery head (section 3.3).

    ``forward(x)`` takes a [B, 1, Z, Y, X] crop (gated or non-gated: same weights,
    same call) whose Z, Y and X are multiples of ``config.size_multiple`` and returns
    an :class:`SPSSOutput` of logits; :meth:`scores` gives eq. 1 and
    :meth:`predict_labels` the 0-4 label map.
    """

    def __init__(self, config: SPSSConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SPSSConfig()
        n = len(cfg.channels)
        self.backbone = DynUNet(
            spatial_dims=3,
            in_channels=cfg.in_channels,
            out_channels=cfg.feature_width,
            kernel_size=[3] * n,
            strides=[1] + [2] * (n - 1),
            upsample_kernel_size=[2] * (n - 1),
            filters=list(cfg.channels),
            dropout=cfg.dropout or None,
            norm_name=norm_spec(cfg.norm),
            act_name=act_spec(cfg.act),
        )
        head = {"norm": cfg.norm, "act": cfg.act, "dropout": cfg.dropout}
        self.cac_head = AtrousBlock(
            cfg.feature_width, cfg.small_width, cfg.small_dilations, N_CAC_CLASSES, **head
        )
        artery_in = cfg.feature_width if cfg.artery_level == 0 else cfg.channels[cfg.artery_level]
        self.artery_head = AtrousBlock(artery_in, cfg.large_width, cfg.large_dilations, N_ARTERIES, **head)
        self._decoder_features: torch.Tensor | None = None
        if cfg.artery_level:
            # DynUNet builds its decoder recursively and returns only the top level's output;
            # a hook on the upsampling block of the wanted level hands its output to forward().
            # upsamples[-1] is the full-resolution level, upsamples[-1 - k] level k.
            self.backbone.upsamples[-1 - cfg.artery_level].register_forward_hook(self._keep_decoder_features)
        if cfg.cac_prior is not None:
            # softmax([0, b])_1 = prior  <=>  b = log(prior / (1 - prior))
            with torch.no_grad():
                bias = self.cac_head.classifier.bias
                bias.zero_()
                bias[1] = math.log(cfg.cac_prior / (1 - cfg.cac_prior))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is [B, in_channels, Z, Y, X] with valid sizes."""
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"SPSSNet expects a [B, {cfg.in_channels}, Z, Y, X] tensor, got shape {tuple(x.shape)}")
        k = cfg.size_multiple
        if any(s % k for s in x.shape[2:]) or any(s == 0 for s in x.shape[2:]):
            raise ValueError(
                f"SPSSNet input spatial size (Z, Y, X) = {tuple(x.shape[2:])} must be non-zero multiples of "
                f"{k} (2 ** {len(cfg.channels) - 1} downsamplings); pad or crop the model grid"
            )

    def _keep_decoder_features(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._decoder_features = output

    def forward(self, x: torch.Tensor) -> SPSSOutput:
        self.check_input(x)
        features = self.backbone(x)
        if self.config.artery_level == 0:
            return SPSSOutput(cac_logits=self.cac_head(features), artery_logits=self.artery_head(features))
        coarse, self._decoder_features = self._decoder_features, None  # no activation kept past the call
        artery = F.interpolate(self.artery_head(coarse), size=x.shape[2:], mode="trilinear", align_corners=False)
        return SPSSOutput(cac_logits=self.cac_head(features), artery_logits=artery)

    @staticmethod
    def scores(
        output: SPSSOutput,
        weight_map: torch.Tensor,
        voxel_factor: float | torch.Tensor,
    ) -> torch.Tensor:
        """Per-artery differentiable Agatston score, eq. 1: [B, 4] (LM, LCX, LAD, RCA).

        Args:
            output: :meth:`forward`'s result.
            weight_map: [B, Z, Y, X] :func:`cacs.agatston.lesion_weight_map` of each crop
                (in HU on the model grid), no gradient.
            voxel_factor: ``s`` = :func:`cacs.agatston.voxel_score_factor` of the model
                grid's spacing, a float or a [B] tensor.

        Computed outside autocast, in float32 (or float64 if the logits are).
        """
        cac, art = output.cac_logits, output.artery_logits
        low = (torch.float16, torch.bfloat16)
        with torch.autocast(device_type=cac.device.type, enabled=False):
            return differentiable_agatston_from_logits(
                cac.float() if cac.dtype in low else cac,
                art.float() if art.dtype in low else art,
                weight_map,
                voxel_factor,
            )

    @staticmethod
    def predict_labels(output: SPSSOutput) -> torch.Tensor:
        """[B, Z, Y, X] int64 label map: 0 where argmax(CAC head) is background, else
        1 + argmax(artery head) (1 LM, 2 LCX, 3 LAD, 4 RCA)."""
        is_cac = output.cac_logits.argmax(dim=1) == 1
        artery = output.artery_logits.argmax(dim=1) + 1
        return torch.where(is_cac, artery, torch.zeros_like(artery))
