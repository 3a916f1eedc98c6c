"""Paper eq. 1 (differentiable Agatston score) against the hard 3D score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cacs import ARTERIES
from cacs.agatston import (
    AgatstonParams,
    agatston_scores,
    differentiable_agatston,
    differentiable_agatston_from_logits,
    lesion_weight_map,
    voxel_score_factor,
)

SAME_CONVENTION = AgatstonParams(lesion_dim="3d", min_area_mm2=0.0)


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """Isolated 3D lesions of different peaks and arteries in a noisy sub-130 background.

    The reference mask covers each lesion's whole component of HU >= 130 plus a margin
    of sub-threshold voxels (which must count for nothing).
    """
    rng = np.random.default_rng(0)
    hu = rng.normal(20, 30, (8, 32, 32)).clip(-200, 120)
    lab = np.zeros(hu.shape, dtype=np.uint8)
    lesions = [  # (artery label, z slice range, y, x, base HU, peak HU)
        (1, slice(1, 3), slice(2, 5), slice(2, 6), 140, 180),  # weight 1
        (2, slice(2, 6), slice(10, 13), slice(3, 5), 150, 260),  # weight 2, 4 slices
        (3, slice(0, 1), slice(20, 22), slice(20, 23), 200, 350),  # weight 3
        (4, slice(4, 7), slice(25, 29), slice(8, 11), 300, 900),  # weight 4
        (3, slice(5, 8), slice(3, 5), slice(25, 29), 135, 420),  # LAD, second lesion
        (4, slice(6, 7), slice(15, 16), slice(15, 16), 500, 500),  # 1 voxel, < 1 mm^2
    ]
    for label, zs, ys, xs, base, peak in lesions:
        hu[zs, ys, xs] = rng.uniform(base, peak, hu[zs, ys, xs].shape)
        hu[zs.start, ys.start, xs.start] = peak
        grown = (
            slice(max(zs.start - 1, 0), zs.stop + 1),
            slice(ys.start - 1, ys.stop + 1),
            slice(xs.start - 1, xs.stop + 1),
        )
        lab[grown] = label
    return hu, lab


def _one_hot(lab: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.as_tensor(lab.astype(np.int64))[None]
    cac = (labels > 0).double()
    artery = torch.stack([(labels == k + 1).double() for k in range(4)], dim=1)
    return cac, artery


def test_weight_map_components_and_peaks() -> None:
    hu = np.zeros((2, 6, 6))
    hu[0, 0:2, 0:2] = 150
    hu[1, 1, 1] = 450  # joins the first block across slices: whole component weighs 4
    hu[0, 4, 4] = 210  # isolated, weight 2
    hu[1, 5, 5] = 129  # below threshold
    w = lesion_weight_map(hu)
    assert w.dtype == np.float32
    assert w.shape == hu.shape
    assert np.all(w[0, 0:2, 0:2] == 4) and w[1, 1, 1] == 4
    assert w[0, 4, 4] == 2 and w[1, 5, 5] == 0
    assert np.count_nonzero(w) == 4 + 1 + 1
    # 26- vs 6-connectivity: a diagonal neighbour across slices
    hu = np.zeros((2, 4, 4))
    hu[0, 0, 0] = 150
    hu[1, 1, 1] = 450
    assert lesion_weight_map(hu, AgatstonParams(connectivity=8))[0, 0, 0] == 4
    assert lesion_weight_map(hu, AgatstonParams(connectivity=4))[0, 0, 0] == 1


def test_one_hot_equals_hard_3d_score() -> None:
    hu, lab = _phantom()
    spacing = (0.6, 0.7, 1.5)
    w = torch.as_tensor(lesion_weight_map(hu, SAME_CONVENTION), dtype=torch.float64)[None]
    s = voxel_score_factor(spacing, SAME_CONVENTION)
    cac, artery = _one_hot(lab)
    soft = differentiable_agatston(cac, artery, w, s)
    assert soft.shape == (1, 4)
    hard = agatston_scores(hu, lab, spacing, SAME_CONVENTION)
    assert all(hard[a] > 0 for a in ARTERIES)
    np.testing.assert_allclose(soft[0].numpy(), [hard[a] for a in ARTERIES], rtol=1e-6)
    # The clinical 1 mm^2 minimum drops the 1-voxel RCA lesion that eq. 1 counts.
    clinical = agatston_scores(hu, lab, spacing, AgatstonParams(lesion_dim="3d"))
    assert clinical["RCA"] < hard["RCA"]


def test_from_large_logits_approximates_one_hot() -> None:
    hu, lab = _phantom()
    spacing = (0.6, 0.7, 1.5)
    w = torch.as_tensor(lesion_weight_map(hu), dtype=torch.float64)[None]
    s = voxel_score_factor(spacing)
    cac, artery = _one_hot(lab)
    big = 30.0
    cac_logits = torch.stack([(1 - cac) * big, cac * big], dim=1)
    artery_logits = artery * big
    soft = differentiable_agatston_from_logits(cac_logits, artery_logits, w, s)
    hard = agatston_scores(hu, lab, spacing, SAME_CONVENTION)
    np.testing.assert_allclose(soft[0].numpy(), [hard[a] for a in ARTERIES], rtol=1e-6)


def test_gradients_flow_to_both_logit_tensors() -> None:
    hu, lab = _phantom()
    w = torch.as_tensor(lesion_weight_map(hu))[None]
    gen = torch.Generator().manual_seed(0)
    cac_logits = torch.randn((1, 2, *hu.shape), generator=gen, requires_grad=True)
    artery_logits = torch.randn((1, 4, *hu.shape), generator=gen, requires_grad=True)
    y = differentiable_agatston_from_logits(cac_logits, artery_logits, w, 0.5)
    y.sum().backward()
    assert cac_logits.grad is not None and artery_logits.grad is not None
    positive = w[0] > 0
    assert torch.all(cac_logits.grad[0, 1][positive] != 0)
    assert torch.all(cac_logits.grad[0, :, ~positive] == 0)  # W = 0: no signal
    # Per-artery loss: the artery channels receive gradients where W > 0.
    cac_logits.grad = None
    artery_logits.grad = None
    y = differentiable_agatston_from_logits(cac_logits, artery_logits, w, 0.5)
    ((y - torch.tensor([[1.0, 2.0, 3.0, 4.0]])) ** 2).sum().backward()
    assert torch.all(artery_logits.grad[0][:, positive].abs().sum(dim=0) > 0)
    assert torch.all(artery_logits.grad[0][:, ~positive] == 0)


def test_voxels_below_130_contribute_nothing() -> None:
    hu, lab = _phantom()
    w = torch.as_tensor(lesion_weight_map(hu), dtype=torch.float64)[None]
    below = torch.as_tensor(hu < 130)[None]
    assert torch.all(w[below] == 0)
    cac = below.double()  # all probability mass on sub-threshold voxels
    artery = torch.full((1, 4, *hu.shape), 0.25, dtype=torch.float64)
    assert torch.all(differentiable_agatston(cac, artery, w, 1.0) == 0)


def test_batch_with_per_sample_voxel_factor() -> None:
    hu, lab = _phantom()
    spacings = [(0.6, 0.7, 1.5), (0.8, 0.8, 3.0)]
    w1 = torch.as_tensor(lesion_weight_map(hu), dtype=torch.float64)
    hu2 = hu[:, ::-1, :].copy()
    lab2 = lab[:, ::-1, :].copy()
    lab2[lab2 == 1] = 2  # LM lesion relabelled LCX in the second case
    w2 = torch.as_tensor(lesion_weight_map(hu2), dtype=torch.float64)
    cac1, art1 = _one_hot(lab)
    cac2, art2 = _one_hot(lab2)
    factors = torch.tensor([voxel_score_factor(sp) for sp in spacings], dtype=torch.float64)
    out = differentiable_agatston(
        torch.cat([cac1, cac2]), torch.cat([art1, art2]), torch.stack([w1, w2]), factors
    )
    assert out.shape == (2, 4)
    for i, (h, lb, sp) in enumerate([(hu, lab, spacings[0]), (hu2, lab2, spacings[1])]):
        hard = agatston_scores(h, lb, sp, SAME_CONVENTION)
        np.testing.assert_allclose(out[i].numpy(), [hard[a] for a in ARTERIES], rtol=1e-6)
    assert out[1, 0] == 0 and out[1, 1] > out[0, 1]


def test_shape_errors() -> None:
    cac = torch.zeros((1, 2, 3, 3))
    with pytest.raises(ValueError, match="artery_prob"):
        differentiable_agatston(cac, torch.zeros((1, 3, 2, 3, 3)), torch.zeros((1, 2, 3, 3)), 1.0)
    with pytest.raises(ValueError, match="weight_map"):
        differentiable_agatston(cac, torch.zeros((1, 4, 2, 3, 3)), torch.zeros((2, 3, 3)), 1.0)
    with pytest.raises(ValueError, match="voxel_factor"):
        differentiable_agatston(
            cac, torch.zeros((1, 4, 2, 3, 3)), torch.zeros((1, 2, 3, 3)), torch.ones(2)
        )
    with pytest.raises(ValueError, match="cac_logits"):
        differentiable_agatston_from_logits(
            torch.zeros((1, 1, 2, 3, 3)), torch.zeros((1, 4, 2, 3, 3)), torch.zeros((1, 2, 3, 3)), 1
        )
