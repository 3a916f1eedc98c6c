"""Training-time augmentation of the localiser (MONAI dictionary transforms on coarse (C, z, y, x) tensors)."""

from __future__ import annotations

from typing import Any

import torch
from monai.transforms import (
    Compose,
    MapTransform,
    RandAffined,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from cacs.localizer.params import LocalizerParams


class RandCardiacFOVd(RandomizableTransform, MapTransform):
    """Simulate a gated scan's small reconstruction field of view on a chest CT.

    SegTHOR volumes show the whole chest, but COCA's gated scans are
    reconstructed on a ~200 mm disk around the heart with air outside.  A
    localizer that never saw that undersegments the heart on gated scans (and
    the crop then misses calcium).  With probability ``prob`` everything
    outside a random axial disk (``diameter_mm``) near the heart's centre
    becomes air in the image and background in the label.  Hand-written
    because no MONAI transform masks outside a disk around a label.
    """

    def __init__(
        self,
        keys: tuple[str, str],
        spacing_xy_mm: tuple[float, float],
        prob: float = 0.3,
        diameter_mm: tuple[float, float] = (180.0, 280.0),
        jitter_mm: float = 20.0,
        air: float = -1.0,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.spacing_xy_mm = spacing_xy_mm
        self.diameter_mm = diameter_mm
        self.jitter_mm = jitter_mm
        self.air = air

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        image_key, label_key = self.keys
        label = torch.as_tensor(d[label_key])
        _, nz, ny, nx = label.shape
        heart = torch.nonzero(label[0] > 0)
        centre = heart.float().mean(dim=0)[1:] if len(heart) else torch.tensor([ny / 2, nx / 2])
        radius = self.R.uniform(*self.diameter_mm) / 2
        dy, dx = self.R.uniform(-self.jitter_mm, self.jitter_mm, size=2)
        sx, sy = self.spacing_xy_mm
        yy = (torch.arange(ny) - centre[0]) * sy - dy
        xx = (torch.arange(nx) - centre[1]) * sx - dx
        outside = (yy[:, None] ** 2 + xx[None, :] ** 2) > radius**2
        image = torch.as_tensor(d[image_key]).clone()
        image[..., outside] = self.air
        label = label.clone()
        label[..., outside] = 0
        d[image_key], d[label_key] = image, label
        return d


def augmentation(params: LocalizerParams) -> Compose:
    """Random patch (heart-centred or not, 1:1) plus mild geometric and intensity jitter.

    No flips: the heart sits on the patient's left and a mirrored chest is an
    anatomy the network never has to handle.  Rotations stay within ~6 degrees
    and scaling within 10 %, as between patients and scanners.
    """
    roi = tuple(int(v) for v in params.patch_size[::-1])
    crop = RandCropByPosNegLabeld(keys=("image", "label"), label_key="label", spatial_size=roi, pos=1.0, neg=1.0)
    if not params.augment:
        return Compose([crop])
    return Compose(
        [
            RandCardiacFOVd(("image", "label"), params.spacing_mm[:2]),
            crop,
            RandAffined(
                keys=("image", "label"),
                prob=0.5,
                rotate_range=(0.1, 0.1, 0.1),
                scale_range=(0.1, 0.1, 0.1),
                mode=("bilinear", "nearest"),
                padding_mode=("border", "zeros"),
            ),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandGaussianNoised(keys="image", prob=0.3, std=0.02),
        ]
    )
