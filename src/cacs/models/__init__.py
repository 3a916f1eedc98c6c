"""Networks: the SPSS siamese segmentation network and the ConvNet regression baseline.

``build_model(kind, config)`` is the entry point for the training code, where the
experiment's ``model`` section of the YAML config is passed as ``config``:

* ``"spss"`` -> :class:`SPSSNet` (used by the spss, spss_wo_ssl and spss_ce experiments:
  the ablations change losses, not the network);
* ``"convnet"`` -> :class:`ConvNetRegressor`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from cacs.models.convnet import ConvNetConfig, ConvNetRegressor
from cacs.models.spss import N_ARTERIES, N_CAC_CLASSES, SPSSConfig, SPSSNet, SPSSOutput

__all__ = [
    "MODEL_KINDS",
    "N_ARTERIES",
    "N_CAC_CLASSES",
    "ConvNetConfig",
    "ConvNetRegressor",
    "SPSSConfig",
    "SPSSNet",
    "SPSSOutput",
    "build_model",
    "count_parameters",
    "make_config",
]

MODEL_KINDS: dict[str, tuple[type, type[nn.Module]]] = {
    "spss": (SPSSConfig, SPSSNet),
    "convnet": (ConvNetConfig, ConvNetRegressor),
}
"""kind -> (config dataclass, network class)."""


def make_config(kind: str, config: Mapping[str, Any] | None = None) -> SPSSConfig | ConvNetConfig:
    """The config dataclass of ``kind`` from a dict (missing keys take the defaults).

    Raises:
        ValueError: unknown kind, unknown keys (all named), or an invalid value.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(sorted(MODEL_KINDS))}")
    config_cls = MODEL_KINDS[kind][0]
    config = dict(config or {})
    unknown = sorted(set(config) - set(config_cls.field_names()))
    if unknown:
        raise ValueError(
            f"unknown {kind} model config key(s): {', '.join(map(str, unknown))}; "
            f"valid keys: {', '.join(config_cls.field_names())}"
        )
    return config_cls(**config)


def build_model(kind: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """A freshly initialised network: ``kind`` is ``"spss"`` or ``"convnet"``, ``config``
    a dict of the matching config dataclass's fields (see :func:`make_config`)."""
    cfg = make_config(kind, config)
    return MODEL_KINDS[kind][1](cfg)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
