"""Heart localisation network (paper section 3.2), one module per concern.

* :mod:`~cacs.localizer.params`: :class:`LocalizerParams` (everything that
  defines a trained localiser, stored in ``model.pt``) and ``MODEL_NAME``;
* :mod:`~cacs.localizer.preprocess`: resampling onto the coarse grid, input
  normalisation and mask geometry (bounding box in mm, volume, largest
  component, Dice), numpy / SimpleITK only;
* :mod:`~cacs.localizer.network`: the 3D UNet, sliding-window inference,
  :func:`predict_heart` and :func:`load_localizer`;
* :mod:`~cacs.localizer.transforms`: the training augmentation (MONAI);
* :mod:`~cacs.localizer.training`: :func:`train_localizer` on SegTHOR, in the
  shared epoch loop of :mod:`cacs.training_loop`.

Inference (:mod:`cacs.heart_boxes`, :mod:`cacs.infer`) needs only the first
three, so the training modules are imported on first use of one of their
names (``from cacs.localizer import train_localizer`` works as before).
"""

from __future__ import annotations

from typing import Any

from cacs.devices import resolve_device  # re-exported: `from cacs.localizer import resolve_device`
from cacs.localizer.network import build_unet, load_localizer, predict_heart
from cacs.localizer.params import MODEL_NAME, LocalizerParams
from cacs.localizer.preprocess import (
    dice,
    largest_component,
    mask_bounding_box_mm,
    mask_volume_ml,
    prepare_input,
    resample_mask_to,
    resample_to_spacing,
)

_TRANSFORMS = ("RandCardiacFOVd", "augmentation")
_TRAINING = ("train_localizer", "CHECKPOINT_NAME", "METRICS_NAME", "DICE_NAME", "METRICS_COLUMNS", "DICE_COLUMNS")

__all__ = [
    "MODEL_NAME",
    "LocalizerParams",
    "build_unet",
    "dice",
    "largest_component",
    "load_localizer",
    "mask_bounding_box_mm",
    "mask_volume_ml",
    "predict_heart",
    "prepare_input",
    "resample_mask_to",
    "resample_to_spacing",
    "resolve_device",
    *_TRANSFORMS,
    *_TRAINING,
]


def __getattr__(name: str) -> Any:
    """The training-side names (MONAI transforms, the training loop), imported when first asked for."""
    if name in _TRANSFORMS:
        from cacs.localizer import transforms

        return getattr(transforms, name)
    if name in _TRAINING:
        from cacs.localizer import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
