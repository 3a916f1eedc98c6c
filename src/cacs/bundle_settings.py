"""A model bundle's (or crop record's) settings as the typed objects that use them.

:mod:`cacs.bundle` stays a leaf (plain dicts, no cacs imports at module
level), so that the modules whose settings it records (:mod:`cacs.crop`,
:mod:`cacs.heart_boxes`, :mod:`cacs.localizer`) can import it; turning those
records back into :class:`~cacs.crop.CropParams`,
:class:`~cacs.agatston.AgatstonParams` and
:class:`~cacs.heart_boxes.Plausibility` happens here, above all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cacs.agatston import AgatstonParams
from cacs.bundle import Given, check_given
from cacs.crop import CropParams


def experiment_settings(bundle: dict[str, Any], given: list[Given], where: Path | str, whose: str = "the model's"):
    """The crop, Agatston and plausibility settings of a model's bundle (or a crop record), checked against the given.

    A given value that contradicts the recorded one is refused; where no
    plausibility range was recorded, the given one (the last given of each
    key) is used, else ``None``.
    """
    from cacs.heart_boxes import Plausibility  # here: the training and prediction modules need no localizer

    plaus = bundle.get("plausibility")
    recorded = {"crop": bundle["crop"], "agatston": bundle["agatston"], "plausibility": plaus}
    given = list(given)
    check_given(given, recorded, whose, where)
    if plaus is None:
        chosen = {g.key: g.value for g in given if g.section == "plausibility"}
        plaus = chosen or None
    crop = dict(bundle["crop"])
    crop.update(model_spacing_mm=tuple(crop["model_spacing_mm"]), model_size=tuple(crop["model_size"]),
                fallback_box_mm=tuple(crop["fallback_box_mm"]))  # fmt: skip
    agatston = dict(bundle["agatston"])
    if "weight_edges" in agatston:
        agatston["weight_edges"] = tuple(agatston["weight_edges"])
    plausibility = None
    if plaus is not None:
        plausibility = Plausibility(float(plaus.get("min_heart_ml", Plausibility.min_heart_ml)),
                                    float(plaus.get("max_heart_ml", Plausibility.max_heart_ml)))  # fmt: skip
    return CropParams(**crop), AgatstonParams(**agatston), plausibility
