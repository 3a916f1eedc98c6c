"""The paper's differentiable Agatston score (eq. 1) and its image-derived weights W.

``y_k = sum(p_CAC x p_k x W) x s`` per artery k, differentiable with respect to
both probability maps (used by :meth:`cacs.models.spss.SPSSNet.scores`).  W
(:func:`lesion_weight_map`) is computed from the image alone with the clinical
convention's threshold, connectivity and weight bins
(:class:`~cacs.agatston.params.AgatstonParams`), which is what makes eq. 1 agree
with the hard 3D score on one-hot inputs (see :func:`differentiable_agatston`).
torch is imported only inside the functions that need it, so the clinical scorer
never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from cacs import ARTERIES
from cacs.agatston.params import DEFAULT_PARAMS, AgatstonParams, agatston_weight

if TYPE_CHECKING:  # torch is heavy; only the differentiable functions import it
    import torch

__all__ = ["differentiable_agatston", "differentiable_agatston_from_logits", "lesion_weight_map"]

_N_ARTERIES = len(ARTERIES)


def lesion_weight_map(hu: np.ndarray, params: AgatstonParams = DEFAULT_PARAMS) -> np.ndarray:
    """W of eq. 1: each voxel's Agatston weight, that of the 3D lesion it belongs to.

    Lesions are 3D connected components of ``hu >= threshold_hu`` over the *whole*
    input (26-connectivity for ``connectivity=8``, 6 for 4), weighted by their peak
    HU; voxels under the threshold get 0.  W depends on the image only (not on any
    mask), which is what lets eq. 1 be differentiated with respect to the network's
    masks; compute it once per case.  ``params.lesion_dim`` is ignored: eq. 1 is 3D.

    Returns:
        float32 array with the shape of ``hu``.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3D (z, y, x) array, got shape {hu.shape}")
    structure = ndimage.generate_binary_structure(3, 3 if params.connectivity == 8 else 1)
    comp, n = ndimage.label(hu >= params.threshold_hu, structure=structure)
    if n == 0:
        return np.zeros(hu.shape, dtype=np.float32)
    inside = comp > 0
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, comp[inside], hu[inside].astype(float))
    weight = np.asarray(agatston_weight(peak, params.weight_edges), dtype=np.float32)
    weight[0] = 0.0  # background
    return weight[comp]


# Hand-written on purpose: eq. 1 is specific to the SPSS paper (a soft, per-artery
# Agatston sum of two softmax outputs weighted by an image-derived W); no library
# (MONAI, torchmetrics, ...) provides it, and it is a two-line einsum anyway.


def differentiable_agatston(
    cac_prob: torch.Tensor,
    artery_prob: torch.Tensor,
    weight_map: torch.Tensor | np.ndarray,
    voxel_factor: float | torch.Tensor,
) -> torch.Tensor:
    """Per-artery soft Agatston score, paper eq. 1: ``y_k = sum(p_CAC x p_k x W) x s``.

    Args:
        cac_prob: [B, Z, Y, X] probability that a voxel is calcium (softmax(m)_CAC).
        artery_prob: [B, 4, Z, Y, X] artery probabilities (softmax(M)), order
            LM, LCX, LAD, RCA.
        weight_map: [B, Z, Y, X] :func:`lesion_weight_map` of each case (no gradient).
        voxel_factor: ``s`` = :func:`voxel_score_factor`, a float or a [B] tensor (one
            per case, since spacings differ between cases).

    Returns:
        [B, 4] scores, differentiable with respect to both probability tensors.

    Same-convention relation: if the probabilities are one-hot copies of a reference
    mask (``cac_prob = labels > 0``, ``artery_prob[:, k] = labels == k + 1``) whose
    lesions are whole 3D components of ``hu >= 130`` (each component entirely inside
    one artery's mask, or entirely outside), then every masked component is exactly
    one hard 3D lesion with the same peak, so the result equals
    ``agatston_scores(hu, labels, spacing, AgatstonParams(lesion_dim="3d",
    min_area_mm2=0))`` per artery (W and s built with the same threshold,
    connectivity and slice correction).  Eq. 1 has no minimum area, hence the 0.
    Mask voxels under 130 HU have W = 0 and count for nothing, as in the hard score.
    """
    import torch

    if cac_prob.ndim < 2:
        raise ValueError(f"cac_prob must be [B, Z, Y, X], got shape {tuple(cac_prob.shape)}")
    batch, spatial = cac_prob.shape[0], tuple(cac_prob.shape[1:])
    if tuple(artery_prob.shape) != (batch, _N_ARTERIES, *spatial):
        raise ValueError(
            f"artery_prob must be [B, {_N_ARTERIES}, *spatial] = "
            f"{(batch, _N_ARTERIES, *spatial)}, got {tuple(artery_prob.shape)}"
        )
    w = torch.as_tensor(weight_map, dtype=cac_prob.dtype, device=cac_prob.device)
    if tuple(w.shape) != tuple(cac_prob.shape):
        raise ValueError(
            f"weight_map shape {tuple(w.shape)} differs from cac_prob {tuple(cac_prob.shape)}"
        )
    s = torch.as_tensor(voxel_factor, dtype=cac_prob.dtype, device=cac_prob.device)
    if s.ndim == 0:
        s = s.expand(batch)
    if tuple(s.shape) != (batch,):
        raise ValueError(
            f"voxel_factor must be a float or a [{batch}] tensor, got {tuple(s.shape)}"
        )
    weighted = (cac_prob * w).reshape(batch, -1)
    per_artery = torch.einsum("bn,bkn->bk", weighted, artery_prob.reshape(batch, _N_ARTERIES, -1))
    return per_artery * s[:, None]


def differentiable_agatston_from_logits(
    cac_logits: torch.Tensor,
    artery_logits: torch.Tensor,
    weight_map: torch.Tensor | np.ndarray,
    voxel_factor: float | torch.Tensor,
) -> torch.Tensor:
    """Eq. 1 from raw network outputs: softmax over channels, then
    :func:`differentiable_agatston`.

    Args:
        cac_logits: [B, 2, Z, Y, X] (channel 0 background, channel 1 CAC).
        artery_logits: [B, 4, Z, Y, X] (LM, LCX, LAD, RCA).
        weight_map, voxel_factor: as in :func:`differentiable_agatston`.
    """
    import torch

    if cac_logits.ndim < 3 or cac_logits.shape[1] != 2:
        raise ValueError(
            f"cac_logits must be [B, 2, Z, Y, X] (background, CAC), got {tuple(cac_logits.shape)}"
        )
    cac_prob = torch.softmax(cac_logits, dim=1)[:, 1]
    artery_prob = torch.softmax(artery_logits, dim=1)
    return differentiable_agatston(cac_prob, artery_prob, weight_map, voxel_factor)
