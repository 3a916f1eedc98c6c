"""SPSS losses (paper eqs. 2-6): sampling indicator, each term, the ablations, no NaN."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cacs.agatston import differentiable_agatston_from_logits
from cacs.losses import (
    LossConfig,
    artery_ce,
    convnet_loss,
    dice_loss,
    local_sampled_bce,
    plain_ce,
    regression_loss,
    sampling_indicator,
    semantic_loss,
    total_loss,
)

SHAPE = (16, 24, 24)
POS = (slice(4, 6), slice(6, 8), slice(6, 8))  # 2x2x2 = 8 calcium voxels (LAD)
BONE = (slice(9, 14), slice(16, 22), slice(16, 22))  # 5x6x6 = 180 bright voxels, far from POS


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def phantom(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft tissue (40 HU), a calcified plaque (400 HU, labelled) and a bone block (700 HU, unlabelled)."""
    hu = torch.full((batch, *SHAPE), 40.0)
    labels = torch.zeros((batch, *SHAPE), dtype=torch.long)
    hu[(slice(None), *POS)] = 400.0
    labels[(slice(None), *POS)] = 3
    hu[(slice(None), *BONE)] = 700.0
    return labels, hu


def shell_of(pos: torch.Tensor, r: int) -> torch.Tensor:
    """Reference cubic dilation minus the positives, written without max_pool3d."""
    out = torch.zeros_like(pos)
    for b, z, y, x in pos.nonzero().tolist():
        out[b, max(z - r, 0) : z + r + 1, max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1] = True
    return out & ~pos


def good_logits(labels: torch.Tensor, margin: float = 4.0) -> torch.Tensor:
    """CAC logits that agree with the mask by ``margin`` everywhere."""
    sign = (labels > 0).float() * 2 - 1
    return torch.stack([-margin * sign, margin * sign], dim=1)


def artery_logits_for(labels: torch.Tensor, margin: float = 4.0) -> torch.Tensor:
    onehot = F.one_hot((labels - 1).clamp_min(0), 4).permute(0, 4, 1, 2, 3).float()
    return margin * onehot


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": -0.1},
        {"lam": float("nan")},
        {"neg_ratio": -1},
        {"candidate_share": 1.5},
        {"neg_radius_vox": -1},
        {"neg_radius_vox": 1.5},
        {"negative_sampling": "focal"},
        {"semantic": "yes"},
        {"empty_negatives": True},
        {"dice_smooth": 0},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LossConfig(**kwargs)


def test_config_defaults_are_the_papers():
    cfg = LossConfig(neg_ratio=3)  # YAML ints become floats
    assert (cfg.alpha, cfg.beta, cfg.lam) == (0.1, 0.1, 0.001)
    assert cfg.semantic and cfg.negative_sampling == "local"
    assert isinstance(cfg.neg_ratio, float)


# --------------------------------------------------------------------------- sampling indicator


def test_indicator_covers_positives_and_only_shell_or_candidates():
    labels, hu = phantom(batch=2)
    labels[1] = 0
    labels[1, 2:4, 15:17, 3:5] = 1  # a second, differently placed plaque
    hu[1, 2:4, 15:17, 3:5] = 250.0
    cfg = LossConfig(far_share=0.0)
    pos = labels > 0
    ind = sampling_indicator(pos, hu, cfg, gen())
    assert ind.dtype == torch.bool and ind.shape == pos.shape
    assert bool((ind | ~pos).all()), "every positive voxel must be sampled"
    shell = shell_of(pos, cfg.neg_radius_vox)
    candidate = (hu >= cfg.candidate_hu) & ~pos
    negatives = ind & ~pos
    assert not bool((negatives & ~(shell | candidate)).any()), "a negative outside the shell and the candidates"
    soft_tissue_far = (hu < cfg.candidate_hu) & ~shell & ~pos
    assert not bool((ind & soft_tissue_far).any())
    for b in range(2):
        n_pos = int(pos[b].sum())
        n_neg = round(cfg.neg_ratio * n_pos)
        assert int(negatives[b].sum()) == n_neg
        # candidate_share = 0.5: half from the bone block, half from the shell
        assert int((negatives[b] & candidate[b] & ~shell[b]).sum()) == n_neg // 2
        assert int((negatives[b] & shell[b]).sum()) == n_neg - n_neg // 2


@pytest.mark.parametrize(("ratio", "share"), [(1.0, 0.0), (2.0, 1.0), (5.0, 0.25)])
def test_indicator_counts_follow_ratio_and_share(ratio, share):
    labels, hu = phantom()
    pos = labels > 0
    cfg = LossConfig(neg_ratio=ratio, candidate_share=share, far_share=0.0)
    ind = sampling_indicator(pos, hu, cfg, gen())
    n_neg = round(ratio * 8)
    assert int((ind & ~pos).sum()) == n_neg
    bone = torch.zeros_like(pos)
    bone[(slice(None), *BONE)] = True
    assert int((ind & bone).sum()) == math.floor(share * n_neg + 0.5)


def test_indicator_fills_a_short_pool_from_the_other():
    labels, hu = phantom()
    hu[(slice(None), *BONE)] = 40.0
    hu[0, 12, 20, 20:23] = 900.0  # only 3 candidates left
    pos = labels > 0
    cfg = LossConfig(candidate_share=1.0, far_share=0.0)  # wants all 24 negatives among candidates
    ind = sampling_indicator(pos, hu, cfg, gen())
    assert bool(ind[0, 12, 20, 20:23].all())
    assert int((ind & ~pos).sum()) == 24
    assert int((ind & shell_of(pos, 3)).sum()) == 21
    # asking for more than both pools hold takes everything and stops
    big = sampling_indicator(pos, hu, LossConfig(neg_ratio=1000.0, neg_radius_vox=1, far_share=0.0), gen())
    assert int((big & ~pos).sum()) == int(shell_of(pos, 1).sum()) + 3


def test_far_negatives_take_their_share_away_from_calcium_and_bone():
    labels, hu = phantom()
    pos = labels > 0
    cfg = LossConfig(neg_ratio=4.0, candidate_share=0.25, far_share=0.5)  # 32 negatives: 8 shell, 8 bone, 16 far
    ind = sampling_indicator(pos, hu, cfg, gen())
    shell = shell_of(pos, cfg.neg_radius_vox)
    far = ~pos & ~shell & (hu < cfg.candidate_hu)
    assert int((ind & far).sum()) == 16
    assert int((ind & shell).sum()) == 8 and int((ind & ~pos).sum()) == 32
    with pytest.raises(ValueError, match="must be <= 1"):
        LossConfig(candidate_share=0.75, far_share=0.5)


def test_indicator_without_positives_samples_fixed_background():
    labels, hu = phantom()
    labels.zero_()
    cfg = LossConfig()
    ind = sampling_indicator(labels > 0, hu, cfg, gen())
    assert int(ind.sum()) == cfg.empty_negatives
    assert int((ind & (hu >= cfg.candidate_hu)).sum()) == cfg.empty_negatives // 2


def test_indicator_is_deterministic_for_a_seed():
    labels, hu = phantom(batch=2)
    pos = labels > 0
    cfg = LossConfig()
    a = sampling_indicator(pos, hu, cfg, gen(5))
    b = sampling_indicator(pos, hu, cfg, gen(5))
    c = sampling_indicator(pos, hu, cfg, gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --------------------------------------------------------------------------- eq. 2 and the CE ablation


def test_local_bce_prefers_good_predictions_and_has_finite_gradients():
    labels, hu = phantom(batch=2)
    cfg = LossConfig()
    good = good_logits(labels).requires_grad_()
    bad = (-good_logits(labels)).requires_grad_()
    lg = local_sampled_bce(good, labels, hu, cfg, gen())
    lb = local_sampled_bce(bad, labels, hu, cfg, gen())
    assert 0 < float(lg.detach()) < 0.05 < 3 < float(lb.detach())
    (lg + lb).backward()
    assert torch.isfinite(good.grad).all() and torch.isfinite(bad.grad).all()
    assert good.grad.abs().sum() > 0


def test_local_bce_is_mean_over_sampled_voxels():
    labels, hu = phantom()
    flat = torch.zeros(1, 2, *SHAPE)  # p = 0.5 everywhere: every sampled voxel costs log 2
    assert float(local_sampled_bce(flat, labels, hu, LossConfig(), gen())) == pytest.approx(math.log(2))
    # extreme logits stay finite thanks to log_softmax
    huge = 1e4 * good_logits(labels, 1.0)
    assert torch.isfinite(local_sampled_bce(-huge, labels, hu, LossConfig(), gen()))


def test_plain_ce_counts_all_voxels_unlike_local_bce():
    labels, hu = phantom()
    cfg = LossConfig()
    logits = good_logits(labels)
    far = (0, slice(None), 0, 23, 0)  # soft tissue far from calcium and bone: never sampled
    assert not bool(sampling_indicator(labels > 0, hu, cfg, gen())[0, 0, 23, 0])
    worse = logits.clone()
    worse[far] = torch.tensor([-8.0, 8.0])  # confidently call it calcium
    assert float(local_sampled_bce(worse, labels, hu, cfg, gen())) == float(
        local_sampled_bce(logits, labels, hu, cfg, gen())
    )
    ce, ce_worse = plain_ce(logits, labels), plain_ce(worse, labels)
    n = labels.numel()
    expected = float(F.cross_entropy(logits, (labels > 0).long()))
    assert float(ce) == pytest.approx(expected)
    # the one changed voxel moves the all-voxel mean by (its new CE - its old CE) / n
    delta = (F.softplus(torch.tensor(16.0)) - F.softplus(torch.tensor(-8.0))).item() / n
    assert float(ce_worse - ce) == pytest.approx(delta, rel=1e-4)
    # missed calcium: all-voxel CE drowns the 8 positives, eq. 2 weighs them ~1/(1 + neg_ratio)
    missed = logits.clone()
    missed[(0, slice(None), *POS)] = torch.tensor([1.0, -1.0])[:, None, None, None]
    ls_missed, ce_missed = float(local_sampled_bce(missed, labels, hu, cfg, gen())), float(plain_ce(missed, labels))
    assert ls_missed > 100 * ce_missed > 0


# --------------------------------------------------------------------------- Dice, eq. 3


def test_dice_loss_zero_for_perfect_and_finite_for_empty():
    labels, _ = phantom()
    assert float(dice_loss(good_logits(labels, 50.0), labels)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(-good_logits(labels, 50.0), labels)) > 0.9
    empty = torch.zeros_like(labels)
    logits = torch.zeros(1, 2, *SHAPE, requires_grad=True)
    loss = dice_loss(logits, empty)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert float(dice_loss(good_logits(empty, 50.0), empty)) == pytest.approx(0.0, abs=1e-6)


def test_artery_ce_ignores_background_and_is_zero_without_calcium():
    labels, _ = phantom()
    labels[0, 4, 6, 6] = 1
    logits = torch.zeros(1, 4, *SHAPE)
    assert float(artery_ce(logits, labels)) == pytest.approx(math.log(4))
    noisy = logits.clone()
    noisy[:, :, labels[0] == 0] = torch.randn(1, 4, int((labels == 0).sum()), generator=gen()) * 10
    assert float(artery_ce(noisy, labels)) == float(artery_ce(logits, labels))
    assert float(artery_ce(artery_logits_for(labels, 50.0), labels)) == pytest.approx(0.0, abs=1e-6)
    empty = torch.zeros_like(labels)
    x = torch.randn(2, 4, *SHAPE, requires_grad=True)
    loss = artery_ce(x, torch.stack([empty[0], empty[0]]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- eq. 4


def outputs(labels: torch.Tensor, margin: float = 1.0, grad: bool = False) -> SimpleNamespace:
    torch.manual_seed(0)
    cac = (good_logits(labels, margin) + torch.randn(labels.shape[0], 2, *SHAPE)).requires_grad_(grad)
    art = (artery_logits_for(labels, margin) + torch.randn(labels.shape[0], 4, *SHAPE)).requires_grad_(grad)
    return SimpleNamespace(cac_logits=cac, artery_logits=art)


def test_semantic_loss_zero_for_nongated_and_for_ablation():
    labels, hu = phantom(batch=2)
    out = outputs(labels)
    loss, parts = semantic_loss(out, labels, hu, torch.tensor([False, False]), LossConfig(), gen())
    assert float(loss) == 0.0 and all(float(v) == 0.0 for v in parts.values())
    loss, parts = semantic_loss(out, labels, hu, torch.tensor([True, True]), LossConfig(semantic=False), gen())
    assert float(loss) == 0.0 and set(parts) == {"dice", "ls", "f"}


def test_semantic_loss_positive_for_gated_and_ignores_nongated_samples():
    labels, hu = phantom(batch=2)
    out = outputs(labels)
    cfg = LossConfig()
    loss, parts = semantic_loss(out, labels, hu, torch.tensor([True, True]), cfg, gen())
    assert float(loss) > 0 and all(float(v) > 0 for v in parts.values())
    assert float(loss) == pytest.approx(float(parts["dice"] + 0.1 * parts["ls"] + 0.1 * parts["f"]))
    # a non-gated sample with nonsense labels and NaN-free but wild HU changes nothing
    mixed_labels, mixed_hu = labels.clone(), hu.clone()
    mixed_labels[1] = torch.randint(0, 5, SHAPE, generator=gen())
    mixed_hu[1] = 3000.0
    one, _ = semantic_loss(
        SimpleNamespace(cac_logits=out.cac_logits[:1], artery_logits=out.artery_logits[:1]),
        labels[:1], hu[:1], torch.tensor([True]), cfg, gen(),
    )  # fmt: skip
    mixed, _ = semantic_loss(out, mixed_labels, mixed_hu, torch.tensor([True, False]), cfg, gen())
    assert float(mixed) == pytest.approx(float(one))


def test_semantic_loss_ce_ablation_uses_plain_ce():
    labels, hu = phantom()
    out = outputs(labels)
    loss, parts = semantic_loss(out, labels, hu, torch.tensor([True]), LossConfig(negative_sampling="ce"), gen())
    assert set(parts) == {"dice", "ce", "f"}
    assert float(parts["ce"]) == pytest.approx(float(plain_ce(out.cac_logits, labels)))
    _, local = semantic_loss(out, labels, hu, torch.tensor([True]), LossConfig(), gen())
    assert float(parts["ce"]) != pytest.approx(float(local["ls"]))


# --------------------------------------------------------------------------- eqs. 5, 6 and the baseline


def test_regression_loss_hand_computed():
    pred = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    ref = torch.tensor([[2.0, 2.0, 5.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # sample 1: (1 + 0 + 2 + 4) / 4 = 1.75; sample 2: 1; mean 1.375
    assert float(regression_loss(pred, ref)) == pytest.approx(1.375)


def test_convnet_loss_is_mse_on_log1p():
    pred = torch.tensor([[0.0, math.log(11.0), 2.0, 0.0]])
    ref = torch.tensor([[0.0, 10.0, 0.0, math.e - 1]])
    assert float(convnet_loss(pred, ref)) == pytest.approx((0 + 0 + 4 + 1) / 4)


def make_batch(labels, hu, gated):
    weight = (hu >= 130).float() * 2
    return {
        "labels": labels,
        "hu": hu,
        "is_gated": torch.tensor(gated),
        "ref_scores": torch.tensor([[0.0, 5.0, 30.0, 0.0]] * labels.shape[0]),
        "weight": weight,
    }


def test_total_loss_is_ssl_plus_lambda_rsl_and_gradients_reach_both_heads():
    labels, hu = phantom(batch=2)
    out = outputs(labels, grad=True)
    batch = make_batch(labels, hu, [True, False])
    pred = differentiable_agatston_from_logits(out.cac_logits, out.artery_logits, batch["weight"], 1.0)
    cfg = LossConfig(lam=0.01)
    loss, parts = total_loss(out, pred, batch, cfg, gen())
    assert set(parts) == {"dice", "ls", "f", "ssl", "rsl", "total"}
    assert all(isinstance(v, float) for v in parts.values())
    assert parts["total"] == pytest.approx(parts["ssl"] + 0.01 * parts["rsl"])
    assert parts["ssl"] == pytest.approx(parts["dice"] + 0.1 * parts["ls"] + 0.1 * parts["f"], rel=1e-5)
    assert parts["rsl"] == pytest.approx(float(regression_loss(pred.detach(), batch["ref_scores"])))
    loss.backward()
    for t in (out.cac_logits, out.artery_logits):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    _, ce_parts = total_loss(out, pred.detach(), batch, LossConfig(negative_sampling="ce"), gen())
    assert set(ce_parts) == {"dice", "ce", "f", "ssl", "rsl", "total"}


def test_wo_ssl_total_is_lambda_rsl_only():
    labels, hu = phantom(batch=2)
    out = outputs(labels)
    batch = make_batch(labels, hu, [True, True])
    pred = differentiable_agatston_from_logits(out.cac_logits, out.artery_logits, batch["weight"], 1.0)
    loss, parts = total_loss(out, pred, batch, LossConfig(semantic=False), gen())
    assert parts["ssl"] == 0.0 and float(loss) == pytest.approx(0.001 * parts["rsl"])


def test_no_nan_with_empty_masks_anywhere():
    labels = torch.zeros((3, *SHAPE), dtype=torch.long)
    hu = torch.full((3, *SHAPE), -1000.0)  # no candidates either
    out = SimpleNamespace(
        cac_logits=torch.randn(3, 2, *SHAPE, generator=gen()).requires_grad_(),
        artery_logits=torch.randn(3, 4, *SHAPE, generator=gen(1)).requires_grad_(),
    )
    batch = make_batch(labels, hu, [True, True, False])
    pred = differentiable_agatston_from_logits(out.cac_logits, out.artery_logits, batch["weight"], 1.0)
    for cfg in (LossConfig(), LossConfig(negative_sampling="ce"), LossConfig(empty_negatives=0)):
        loss, parts = total_loss(out, pred, batch, cfg, gen())
        assert all(math.isfinite(v) for v in parts.values())
        assert parts["f"] == 0.0
        out.cac_logits.grad = out.artery_logits.grad = None
        loss.backward(retain_graph=True)
        assert torch.isfinite(out.cac_logits.grad).all() and torch.isfinite(out.artery_logits.grad).all()


def test_total_loss_accepts_mapping_outputs():
    labels, hu = phantom()
    ns = outputs(labels)
    out = {"cac_logits": ns.cac_logits, "artery_logits": ns.artery_logits}
    batch = make_batch(labels, hu, [True])
    pred = torch.zeros(1, 4)
    a = total_loss(out, pred, batch, LossConfig(), gen(3))[1]
    b = total_loss(ns, pred, batch, LossConfig(), gen(3))[1]
    assert a == b


def test_local_shell_is_the_cubic_dilation_even_at_the_border():
    pos = torch.zeros((1, *SHAPE), dtype=torch.bool)
    pos[0, 0, 0, 0] = pos[0, 15, 23, 10] = pos[0, 7, 12, 12] = True
    hu = torch.full((1, *SHAPE), 40.0)  # no candidates: every negative must come from the shell
    cfg = LossConfig(neg_ratio=1e4, neg_radius_vox=2, candidate_share=0.0, far_share=0.0)
    ind = sampling_indicator(pos, hu, cfg, gen())
    assert torch.equal(ind & ~pos, shell_of(pos, 2))


def test_nongated_background_only_looks_at_soft_tissue_far_from_bright_voxels():
    from cacs.losses import nongated_background_loss

    _, hu = phantom(batch=2)
    cfg = LossConfig(nongated_background=0.1, nongated_background_voxels=50)
    near_bright = shell_of(hu >= 130, cfg.neg_radius_vox) | (hu >= 130)
    # "calcium" called everywhere except far soft tissue: the loss must stay ~0
    logits = torch.where(near_bright, 4.0, -4.0)[:, None].repeat(1, 2, 1, 1, 1)
    logits[:, 0] = -logits[:, 1]
    is_gated = torch.tensor([False, False])
    low = nongated_background_loss(logits, hu, is_gated, cfg, gen())
    assert float(low) == pytest.approx(math.log1p(math.exp(-8.0)), rel=1e-4)
    # calling far soft tissue calcium is what it penalises
    bad = nongated_background_loss(-logits, hu, is_gated, cfg, gen())
    assert float(bad) == pytest.approx(8.0, rel=1e-3)
    # gated samples are never looked at (they have masks and L_ssl)
    assert float(nongated_background_loss(-logits, hu, torch.tensor([True, True]), cfg, gen())) == 0.0
