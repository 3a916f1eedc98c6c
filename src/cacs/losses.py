"""SPSS training losses: paper eqs. 2-6 plus the two ablations and the ConvNet baseline's loss.

Paper sections 3.4 / 3.5 / 4.2, as read here:

* ``L_ssl`` (eq. 4) is ``L_Dice + alpha * L_ls + beta * L_f`` on **gated** scans and
  exactly 0 on non-gated ones (their masks would be wrong: motion artifacts).  It is
  computed per gated scan and averaged over the gated scans of the batch, so the
  number of non-gated scans in a mixed batch does not dilute it.
* ``L_ls`` (eq. 2) is a binary cross-entropy over *every* calcium voxel and a *sample*
  of background voxels, the sampling indicator ``I_i``.  The paper leaves ``I_i``
  open; :func:`sampling_indicator` documents the choice made here.
* ``L_f`` (eq. 3) is the per-artery cross-entropy over calcium voxels only.
* ``L_rsl`` (eq. 5) is the mean absolute per-artery score error, on every scan.
* ``L = L_ssl + lambda * L_rsl`` (eq. 6).
* Ablations: ``negative_sampling="ce"`` swaps ``L_ls`` for cross-entropy over all
  voxels (Figure 3); ``semantic=False`` is "SPSS w/o SSL" (``L_ssl = 0``).

Only the paper-specific pieces (sampling indicator, eq. 2, eq. 3 restricted to
calcium, the gated/non-gated switch) are hand-written; the Dice loss is MONAI's and
the plain cross-entropies are PyTorch's, so there is nothing to get subtly wrong.

Shapes: ``cac_logits`` [B, 2, Z, Y, X] (channel 1 = CAC), ``artery_logits``
[B, 4, Z, Y, X] (LM, LCX, LAD, RCA), ``labels`` [B, Z, Y, X] integers (0 background,
1 LM, 2 LCX, 3 LAD, 4 RCA; meaningful only for gated scans), ``hu`` [B, Z, Y, X] in
Hounsfield units, ``is_gated`` [B] bool, scores [B, 4].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = [
    "LossConfig",
    "artery_ce",
    "convnet_loss",
    "dice_loss",
    "local_sampled_bce",
    "nongated_background_loss",
    "plain_ce",
    "regression_loss",
    "sampling_indicator",
    "semantic_loss",
    "total_loss",
]

N_ARTERIES = 4

Reduction = Literal["mean", "none"]


@dataclass(frozen=True)
class LossConfig:
    """Weights and sampling settings of the SPSS loss (paper defaults).

    Attributes:
        alpha: weight of ``L_ls`` (or of ``L_ce`` in the ablation) in eq. 4; paper 0.1.
        beta: weight of ``L_f`` in eq. 4; paper 0.1.
        lam: ``lambda`` of eq. 6, weight of ``L_rsl``; paper 0.001 (scores are in the
            hundreds to thousands, so the regression term must be damped to keep the
            segmentation stable, as the paper says).
        semantic: False = the "SPSS w/o SSL" ablation: ``L_ssl = 0`` for every scan.
        negative_sampling: ``"local"`` = eq. 2 with :func:`sampling_indicator`;
            ``"ce"`` = the Figure 3 ablation, plain cross-entropy over all voxels.
        neg_radius_vox: radius (voxels, cubic neighbourhood) of the local shell around
            calcium from which negatives are drawn.
        neg_ratio: sampled negatives per positive voxel.
        candidate_hu: negatives are also drawn among non-calcium voxels at or above
            this HU (bone, aortic calcium, stents): exactly what a scorer confuses with
            coronary calcium, and what a purely local sample would never show it.
        candidate_share: share of the sampled negatives taken among those candidates.
        far_share: share of the sampled negatives taken anywhere else (soft tissue, air
            away from any calcium); the rest come from the local shell.  Without them
            nothing but the weak Dice term tells the network that soft tissue far from
            calcium is background, and on noisy chest CT a network that calls it calcium
            scores the noise above 130 HU there.
        empty_negatives: negatives sampled in a gated scan with no calcium at all, so
            that ``L_ls`` still teaches background there (otherwise it would be 0/0).
        nongated_background: weight of :func:`nongated_background_loss` (0 = the paper,
            which supervises nothing voxel-wise on non-gated scans).
        nongated_background_voxels: voxels it samples per non-gated scan.
        dice_smooth: MONAI ``smooth_nr`` = ``smooth_dr``.  1.0 rather than MONAI's
            1e-5 because many gated scans have no calcium: with 1e-5 their Dice loss is
            ~1 whatever the network does (a constant offset with a vanishing gradient);
            with 1.0 it goes to 0 as the predicted calcium volume goes to 0.  A perfect
            prediction still scores exactly 0 either way.
    """

    alpha: float = 0.1
    beta: float = 0.1
    lam: float = 0.001
    semantic: bool = True
    negative_sampling: Literal["local", "ce"] = "local"
    neg_radius_vox: int = 3
    neg_ratio: float = 3.0
    candidate_hu: float = 130.0
    candidate_share: float = 0.5
    far_share: float = 0.25
    empty_negatives: int = 64
    dice_smooth: float = 1.0
    nongated_background: float = 0.0
    nongated_background_voxels: int = 256

    def __post_init__(self) -> None:
        numbers = ("alpha", "beta", "lam", "neg_ratio", "candidate_hu", "candidate_share", "far_share", "dice_smooth",
                   "nongated_background")  # fmt: skip
        for name in numbers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"LossConfig.{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))  # YAML may give ints: store floats
        for name in ("alpha", "beta", "lam", "neg_ratio", "nongated_background"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not (0.0 <= self.candidate_share <= 1.0 and 0.0 <= self.far_share <= 1.0):
            raise ValueError(f"LossConfig.candidate_share and far_share must be in [0, 1]: {self!r}")
        if self.candidate_share + self.far_share > 1.0 + 1e-9:
            raise ValueError(
                f"LossConfig.candidate_share + far_share must be <= 1, got {self.candidate_share + self.far_share}"
            )
        if self.dice_smooth <= 0:
            raise ValueError(f"LossConfig.dice_smooth must be > 0, got {self.dice_smooth!r}")
        for name in ("neg_radius_vox", "empty_negatives", "nongated_background_voxels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"LossConfig.{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.semantic, bool):
            raise ValueError(f"LossConfig.semantic must be true or false, got {self.semantic!r}")
        if self.negative_sampling not in ("local", "ce"):
            raise ValueError(f"LossConfig.negative_sampling must be 'local' or 'ce', got {self.negative_sampling!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names accepted by the constructor (for config validation messages)."""
        return tuple(f.name for f in fields(cls))


# --------------------------------------------------------------------------- helpers


def _round_half_up(x: float) -> int:
    """Python's ``round`` rounds half to even; counts should not flip with parity."""
    return int(math.floor(x + 0.5))


def _check_cac(cac_logits: torch.Tensor, labels: torch.Tensor) -> None:
    if cac_logits.ndim != 5 or cac_logits.shape[1] != 2:
        raise ValueError(f"cac_logits must be [B, 2, Z, Y, X], got {tuple(cac_logits.shape)}")
    if labels.shape != cac_logits.shape[:1] + cac_logits.shape[2:]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match cac_logits {tuple(cac_logits.shape)}")


def _reduce(per_sample: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if per_sample.numel() == 0:  # an empty batch contributes an exact zero, never NaN
        return per_sample.sum()
    return per_sample.mean()


def _sample_from(pool: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """``k`` flat indices drawn uniformly without replacement from the True entries of 1-D ``pool``."""
    idx = pool.nonzero().squeeze(1)
    if k >= idx.numel():
        return idx
    if k <= 0:
        return idx[:0]
    # randperm must run on the generator's device; the indices then come back.
    device = generator.device if generator is not None else idx.device
    perm = torch.randperm(idx.numel(), generator=generator, device=device)[:k]
    return idx[perm.to(idx.device)]


def _split_counts(want_a: int, want_b: int, size_a: int, size_b: int) -> tuple[int, int]:
    """Take ``want_a`` from pool a and ``want_b`` from pool b; a short pool is filled from the other."""
    na, nb = min(want_a, size_a), min(want_b, size_b)
    short = want_a + want_b - na - nb
    extra = min(short, size_a - na)
    na, short = na + extra, short - extra
    nb += min(short, size_b - nb)
    return na, nb


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Cubic dilation of a [Z, Y, X] bool mask by ``r`` voxels (Chebyshev distance <= r).

    ``max_pool3d`` with stride 1 is a dilation; the cube is separable, so three 1-D
    pools (3 x (2r+1) taps rather than (2r+1)^3), run only on the positives' bounding
    box plus ``r``: calcium is tiny, so this is cheap even on CPU.
    """
    if r == 0:
        return mask.clone()
    nz = mask.nonzero()
    lo = (nz.min(0).values - r).clamp_min(0).tolist()
    hi = [min(int(v) + r + 1, n) for v, n in zip(nz.max(0).values.tolist(), mask.shape, strict=True)]
    box = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][None, None].float()
    for axis in range(3):
        kernel, pad = [1, 1, 1], [0, 0, 0]
        kernel[axis], pad[axis] = 2 * r + 1, r
        box = F.max_pool3d(box, kernel_size=kernel, stride=1, padding=pad)
    out = torch.zeros_like(mask)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = box[0, 0] > 0
    return out


def _logits(out: Any, name: str) -> torch.Tensor:
    """Network outputs as a mapping or an object with attributes (both are in use)."""
    if isinstance(out, Mapping):
        return out[name]
    return getattr(out, name)


# --------------------------------------------------------------------------- eq. 2


@torch.no_grad()
def sampling_indicator(
    labels_bin: torch.Tensor,
    hu: torch.Tensor,
    cfg: LossConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The sampling indicator ``I_i`` of eq. 2 (which voxels ``L_ls`` looks at).

    The paper only says negatives are "locally sampled in the feature map" so that the
    few calcium voxels are not drowned by millions of background ones (section 4.2).
    Choice made here, per sample:

    * every positive voxel (``m_i = 1``) is included: eq. 2 has no indicator on the
      positive term;
    * ``round(neg_ratio * n_pos)`` negatives are drawn uniformly without replacement
      from three disjoint pools: (a) the *local shell*, the cubic dilation of the
      positives by ``neg_radius_vox`` voxels minus the positives (the calcium edges the
      Dice loss is least sure about), (b) *candidates*, voxels ``hu >=
      candidate_hu`` that are neither calcium nor in the shell (bone, aortic calcium:
      the confusers the paper's Figure 5 shows the w/o-SSL model scoring), and (c)
      *far* voxels, everything else (soft tissue and air away from calcium).
      ``candidate_share`` of them come from (b), ``far_share`` from (c), the rest from
      (a); when (a) or (b) has too few voxels, the other of the two makes up the
      difference, and (c) gives at most its share;
    * a sample without positives gets ``empty_negatives`` negatives,
      ``candidate_share`` of them among candidates and the rest anywhere else, so the
      loss still teaches background on calcium-free gated scans.

    Args:
        labels_bin: [B, Z, Y, X] bool, the binary CAC mask ``m``.
        hu: [B, Z, Y, X] Hounsfield units.
        cfg: sampling settings.
        generator: torch generator (on any device) for reproducible draws; ``None``
            uses the global RNG.

    Returns:
        [B, Z, Y, X] bool, True where ``I_i = 1`` (positives included).
    """
    if labels_bin.shape != hu.shape or labels_bin.ndim != 4:
        raise ValueError(f"labels_bin {tuple(labels_bin.shape)} and hu {tuple(hu.shape)} must both be [B, Z, Y, X]")
    pos = labels_bin.bool()
    indicator = pos.clone()
    flat = indicator.view(indicator.shape[0], -1)
    for b in range(pos.shape[0]):
        n_pos = int(pos[b].sum())
        candidate = (hu[b] >= cfg.candidate_hu) & ~pos[b]
        if n_pos > 0:
            n_neg = _round_half_up(cfg.neg_ratio * n_pos)
            shell = _dilate(pos[b], cfg.neg_radius_vox) & ~pos[b]
            candidate &= ~shell
        else:
            n_neg = cfg.empty_negatives
            shell = torch.zeros_like(pos[b])  # no calcium: no shell, "local" means anywhere
        far = ~pos[b] & ~shell & ~candidate
        pools = [p.reshape(-1) for p in (shell, candidate, far)]
        want_cand = _round_half_up(cfg.candidate_share * n_neg)
        want_far = min(_round_half_up(cfg.far_share * n_neg), n_neg - want_cand)
        if n_pos == 0:  # without a shell its share goes to "anywhere"
            want_far = n_neg - want_cand
        n_far = min(want_far, int(pools[2].sum()))
        takes = (*_split_counts(n_neg - want_cand - n_far, want_cand, int(pools[0].sum()), int(pools[1].sum())), n_far)
        for pool, take in zip(pools, takes, strict=True):
            flat[b, _sample_from(pool, take, generator)] = True
    return indicator


def local_sampled_bce(
    cac_logits: torch.Tensor,
    labels: torch.Tensor,
    hu: torch.Tensor,
    cfg: LossConfig,
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Local-sampled loss ``L_ls`` (eq. 2), per sample, then averaged over the batch.

    ``-1/N sum_i [m_i log p_i + I_i (1 - m_i) log(1 - p_i)]`` with ``p = softmax(m~)_CAC``.
    ``N`` (the paper's "pixel number") is taken as the number of *sampled* voxels
    (positives + sampled negatives), not all voxels: dividing by every voxel would
    shrink the term by ~1e4 and re-create the imbalance the sampling removes, whereas
    this makes it the mean BCE over a ~1:neg_ratio positive/negative set.
    ``log_softmax`` gives ``log p`` and ``log(1 - p)`` without overflow or log(0).
    """
    _check_cac(cac_logits, labels)
    m = labels > 0
    indicator = sampling_indicator(m, hu, cfg, generator)
    logp = F.log_softmax(cac_logits, dim=1)
    nll = -torch.where(m, logp[:, 1], logp[:, 0])
    nll = torch.where(indicator, nll, torch.zeros_like(nll))  # where, not *: no 0 * inf
    count = indicator.flatten(1).sum(1).clamp_min(1).to(nll.dtype)
    return _reduce(nll.flatten(1).sum(1) / count, reduction)


def plain_ce(cac_logits: torch.Tensor, labels: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Cross-entropy over **all** voxels: the ``L_ce`` of the Figure 3 ablation.

    Every background voxel counts, so the handful of calcium voxels weigh ~1e-4 of
    the loss: the stagnation the paper attributes to it.
    """
    _check_cac(cac_logits, labels)
    ce = F.cross_entropy(cac_logits, (labels > 0).long(), reduction="none")
    return _reduce(ce.flatten(1).mean(1), reduction)


def dice_loss(
    cac_logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """``L_Dice`` on the binary CAC task, per sample (MONAI ``DiceLoss``).

    Softmax over the two channels, one-hot binary target, background channel
    excluded (the background Dice is ~1 always and would hide the calcium term).
    ``smooth`` is MONAI's ``smooth_nr`` = ``smooth_dr``; see ``LossConfig.dice_smooth``.
    """
    _check_cac(cac_logits, labels)
    loss_fn = DiceLoss(
        include_background=False, to_onehot_y=True, softmax=True, reduction="none", smooth_nr=smooth, smooth_dr=smooth
    )
    per_sample = loss_fn(cac_logits, (labels > 0).long()[:, None]).flatten(1).mean(1)
    return _reduce(per_sample, reduction)


# --------------------------------------------------------------------------- eq. 3


def artery_ce(artery_logits: torch.Tensor, labels: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Per-artery loss ``L_f`` (eq. 3): cross-entropy over calcium voxels only.

    Which artery a background voxel "belongs to" is undefined, so only voxels with
    ``labels > 0`` count (target ``label - 1``), normalised by their number per sample
    (``N_{m>0}``).  A sample without calcium contributes exactly 0 (eq. 3's sum is
    empty), never 0/0.
    """
    if artery_logits.ndim != 5 or artery_logits.shape[1] != N_ARTERIES:
        raise ValueError(f"artery_logits must be [B, 4, Z, Y, X], got {tuple(artery_logits.shape)}")
    if labels.shape != artery_logits.shape[:1] + artery_logits.shape[2:]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match artery_logits {tuple(artery_logits.shape)}")
    calcium = labels > 0
    target = (labels.long() - 1).clamp(0, N_ARTERIES - 1)  # background -> 0, masked out below
    ce = F.cross_entropy(artery_logits, target, reduction="none")
    ce = torch.where(calcium, ce, torch.zeros_like(ce))
    count = calcium.flatten(1).sum(1)
    per_sample = ce.flatten(1).sum(1) / count.clamp_min(1).to(ce.dtype)
    return _reduce(per_sample, reduction)


# --------------------------------------------------------------------------- eq. 4


def semantic_loss(
    out: Any,
    labels: torch.Tensor,
    hu: torch.Tensor,
    is_gated: torch.Tensor,
    cfg: LossConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L_ssl`` (eq. 4), averaged over the gated samples of the batch.

    Args:
        out: network output with ``cac_logits`` and ``artery_logits`` (attributes or keys).
        labels, hu: [B, Z, Y, X]; only the gated samples' labels are read.
        is_gated: [B] bool.
        cfg: weights and the ablation switches.
        generator: for the sampling indicator.

    Returns:
        ``(total, parts)``; parts holds ``"dice"``, ``"ls"`` (or ``"ce"``) and ``"f"``,
        each averaged over gated samples (unweighted).  Non-gated samples are never
        passed to any term (they have no masks), so they cannot produce NaN; a batch
        with no gated sample, or ``cfg.semantic=False``, gives exact zeros.
    """
    cac_logits, artery_logits = _logits(out, "cac_logits"), _logits(out, "artery_logits")
    is_gated = is_gated.to(device=cac_logits.device, dtype=torch.bool).reshape(-1)
    if is_gated.numel() != cac_logits.shape[0]:
        raise ValueError(f"is_gated has {is_gated.numel()} entries for a batch of {cac_logits.shape[0]}")
    neg_key = "ls" if cfg.negative_sampling == "local" else "ce"
    zero = cac_logits.new_zeros(())
    if not cfg.semantic or not bool(is_gated.any()):
        return zero, {"dice": zero, neg_key: zero, "f": zero}
    idx = is_gated.nonzero().squeeze(1)
    cac, art = cac_logits[idx], artery_logits[idx]
    lab = labels.to(cac_logits.device)[idx]
    dice = dice_loss(cac, lab, smooth=cfg.dice_smooth)
    if cfg.negative_sampling == "local":
        neg = local_sampled_bce(cac, lab, hu.to(cac_logits.device)[idx], cfg, generator)
    else:
        neg = plain_ce(cac, lab)
    f = artery_ce(art, lab)
    total = dice + cfg.alpha * neg + cfg.beta * f
    return total, {"dice": dice, neg_key: neg, "f": f}


# --------------------------------------------------------------------------- non-gated background


def nongated_background_loss(
    cac_logits: torch.Tensor,
    hu: torch.Tensor,
    is_gated: torch.Tensor,
    cfg: LossConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Label-free background on non-gated scans: BCE towards "not calcium" on sampled soft tissue.

    Not in the paper (an addition of the CPU default run, off by default).  The
    paper supervises nothing voxel-wise on a non-gated scan: eq. 1 counts only
    voxels >= 130 HU, so whatever the network says about soft tissue there costs
    nothing, and the regression towards a gated twin's larger score rewards a
    network that simply calls more of a chest CT calcium.  Scored at native
    resolution, such a region collects the noise above 130 HU inside it.
    Agatston's own definition gives a label without any mask: a voxel under
    ``candidate_hu`` that is at least ``neg_radius_vox`` voxels from every voxel
    at or above it cannot be (or hold) scorable calcium.  ``nongated_background_voxels``
    of those are drawn per non-gated scan; the mean BCE over all of them.

    Args:
        cac_logits: [B, 2, Z, Y, X]; hu: [B, Z, Y, X]; is_gated: [B] bool (gated samples are skipped).

    Returns:
        scalar; exactly 0 when the batch has no non-gated sample.
    """
    nongated = ~is_gated.to(device=cac_logits.device, dtype=torch.bool).reshape(-1)
    if not bool(nongated.any()):
        return cac_logits.new_zeros(())
    losses = []
    for b in nongated.nonzero().squeeze(1).tolist():
        with torch.no_grad():
            bright = hu[b] >= cfg.candidate_hu
            near = _dilate(bright, cfg.neg_radius_vox) if bool(bright.any()) else bright
            pool = (~near).reshape(-1)
            idx = _sample_from(pool, cfg.nongated_background_voxels, generator)
        if idx.numel():
            logp = F.log_softmax(cac_logits[b].flatten(1)[:, idx].float(), dim=0)
            losses.append(-logp[0].mean())
    return torch.stack(losses).mean() if losses else cac_logits.new_zeros(())


# --------------------------------------------------------------------------- eqs. 5, 6


def regression_loss(pred_scores: torch.Tensor, ref_scores: torch.Tensor) -> torch.Tensor:
    """``L_rsl`` (eq. 5): ``1/K sum_k |y_k - y~_k|``, averaged over the batch (every scan).

    Raw Agatston units, as in the paper (hence its small lambda).
    """
    if pred_scores.shape != ref_scores.shape or pred_scores.ndim != 2:
        raise ValueError(
            f"pred_scores {tuple(pred_scores.shape)} and ref_scores {tuple(ref_scores.shape)} must be [B, K]"
        )
    return (pred_scores - ref_scores.to(pred_scores)).abs().mean()


def total_loss(
    out: Any,
    pred_scores: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    cfg: LossConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The SPSS objective ``L = L_ssl + lambda * L_rsl`` (eq. 6).

    Args:
        out: network output with ``cac_logits`` [B, 2, Z, Y, X] and ``artery_logits``
            [B, 4, Z, Y, X] (attributes or keys).
        pred_scores: [B, 4] differentiable per-artery scores (eq. 1) from ``out``.
        batch: mapping with ``"labels"`` [B, Z, Y, X] int (0 bg, 1 LM, 2 LCX, 3 LAD,
            4 RCA; ignored for non-gated scans), ``"hu"`` [B, Z, Y, X] Hounsfield
            units, ``"is_gated"`` [B] bool and ``"ref_scores"`` [B, 4] reference
            per-artery Agatston scores.  Other keys are ignored.
        cfg: loss settings.
        generator: for the sampling indicator (reproducible per seed).

    Returns:
        ``(loss, parts)``: the scalar to back-propagate and plain floats for the
        metrics CSV: ``"dice"``, ``"ls"`` (``"ce"`` in the CE ablation), ``"f"``,
        ``"ssl"``, ``"rsl"``, ``"total"``.
    """
    ssl, parts = semantic_loss(out, batch["labels"], batch["hu"], batch["is_gated"], cfg, generator)
    rsl = regression_loss(pred_scores, batch["ref_scores"])
    loss = ssl + cfg.lam * rsl
    named = {**parts, "ssl": ssl, "rsl": rsl, "total": loss}
    values = torch.stack([v.detach().float().reshape(()) for v in named.values()]).tolist()  # one device sync
    return loss, dict(zip(named, values, strict=True))


def convnet_loss(pred_log1p: torch.Tensor, ref_scores: torch.Tensor) -> torch.Tensor:
    """ConvNet baseline: mean squared error between its output and ``log1p(reference score)``, per artery.

    Scores span 0 to thousands; in raw units the loss would be dominated by the few
    heavily calcified patients, while ``log1p`` spreads zero, mild and severe calcium
    evenly and keeps 0 at 0; ``expm1`` maps a prediction back to a score.

    Squared, not absolute, error: most arteries of most patients are calcium-free,
    so the per-artery median of the targets is 0, and L1 (whose best constant is the
    median, with a gradient of constant size) let the network settle on predicting
    ~0 for every scan (measured on the default run: the same 0.1 for all 40 test
    scans, Spearman -0.06).  The squared error's best constant is the mean and its
    gradient grows with the error, so the calcified scans keep pulling.
    """
    if pred_log1p.shape != ref_scores.shape:
        raise ValueError(f"pred {tuple(pred_log1p.shape)} and ref_scores {tuple(ref_scores.shape)} differ in shape")
    return F.mse_loss(pred_log1p, torch.log1p(ref_scores.to(pred_log1p).clamp_min(0)))
