"""Agatston calcium scores: the clinical (hard) score and the paper's differentiable one.

The convention is fixed by ``docs/agatston.md``; every choice that
implementations disagree on is a field of :class:`AgatstonParams` so that another
tool's numbers can be reproduced:

* candidates are voxels with ``HU >= threshold_hu`` (130) *inside one artery's mask*;
* lesions are connected components of those candidates, formed separately for each
  artery label, per axial slice (``lesion_dim="2d"``, the clinical default) or in 3D;
* a lesion's weight comes from its **peak** HU (1: [130, 200), 2: [200, 300),
  3: [300, 400), 4: >= 400); its area is pixel count x pixel area;
* lesions smaller than ``min_area_mm2`` are dropped (an area exactly equal is kept);
* artery score = sum of area x weight, times ``slice increment / 3 mm`` so that the
  same calcium scanned with thinner, overlapping or thicker slices scores the same;
* total = LM + LCX + LAD + RCA.

Arrays are numpy ``(z, y, x)``; spacing is SimpleITK's ``(x, y, z)`` in mm, the z
spacing being the slice *increment* (distance between slice centres), which is what
a NIfTI volume records.

3D lesions (``lesion_dim="3d"``): a lesion's "area" is the sum of its per-slice areas
(voxel count x pixel area), and the minimum-area rule is applied to that sum.  With
the slice correction this makes a 3D lesion score ``volume x weight / 3 mm``, which is
exactly what the paper's differentiable score (eq. 1) sums voxel by voxel, so the hard
3D score and :func:`differentiable_agatston` agree on one-hot inputs.

One module per concern, all re-exported here so that ``from cacs.agatston import
...`` is the one import callers need:

* :mod:`~cacs.agatston.params`: :class:`AgatstonParams`, the weight of a peak HU,
  the slice-correction and voxel factors (no scipy labelling, no torch);
* :mod:`~cacs.agatston.lesions`: connected components of candidates per artery;
* :mod:`~cacs.agatston.clinical`: :func:`agatston_scores` and :func:`lesion_table`;
* :mod:`~cacs.agatston.differentiable`: eq. 1 and its weights W (torch, lazily);
* :mod:`~cacs.agatston.files`: :func:`score_files`, scoring an image and label file.
"""

from cacs.agatston.clinical import LESION_COLUMNS, agatston_scores, lesion_table
from cacs.agatston.differentiable import (
    differentiable_agatston,
    differentiable_agatston_from_logits,
    lesion_weight_map,
)
from cacs.agatston.files import score_files
from cacs.agatston.params import AgatstonParams, agatston_weight, slice_correction_factor, voxel_score_factor
from cacs.cvd import cvd_rank

__all__ = [
    "LESION_COLUMNS",
    "AgatstonParams",
    "agatston_scores",
    "agatston_weight",
    "cvd_rank",
    "differentiable_agatston",
    "differentiable_agatston_from_logits",
    "lesion_table",
    "lesion_weight_map",
    "score_files",
    "slice_correction_factor",
    "voxel_score_factor",
]
