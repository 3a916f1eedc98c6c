"""COCA's calcium annotations: an Apple property list named ``<pid>.xml``.

Root dict ``{"Images": [{"ImageIndex", "NumberOfROIs", "ROIs": [...]}]}``;
each ROI has ``Name``, ``NumberOfPoints``, ``Point_px`` ("(x, y)" strings,
x = column, y = row) and ``Point_mm`` ("(x, y, z)").  ``ImageIndex`` is the
slice's rank in ascending z (the reverse of file order); the z in
``Point_mm`` is the slice's z and is the more robust key.  ROI names map to
arteries as below; anything else is reported, never guessed (one public
loader maps the circumflex to the left main: we do not).
"""

from __future__ import annotations

import plistlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.draw import polygon as draw_polygon

ROI_NAME_TO_LABEL: dict[str, int] = {
    "left coronary artery": 1,  # = left main (LM)
    "left circumflex artery": 2,  # LCX
    "left anterior descending artery": 3,  # LAD
    "right coronary artery": 4,  # RCA
}

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PX = re.compile(rf"^\(\s*({_NUM})\s*,\s*({_NUM})\s*\)$")
_MM = re.compile(rf"^\(\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\)$")


@dataclass
class XmlRoi:
    image_index: int | None
    name: str
    label: int | None  # None: unknown name
    points_px: np.ndarray  # (n, 2) x (column), y (row); empty for placeholders
    z_mm: float | None  # from Point_mm; None when absent or inconsistent
    declared_points: int

    @property
    def is_placeholder(self) -> bool:
        return self.declared_points == 0 and len(self.points_px) == 0


def label_for_name(name: str) -> int | None:
    return ROI_NAME_TO_LABEL.get(" ".join(str(name).split()).lower())


def _points(values: object, pattern: re.Pattern[str], what: str) -> np.ndarray:
    if not isinstance(values, list):
        raise ValueError(f"{what} is not a list")
    out = []
    for v in values:
        m = pattern.match(str(v).strip())
        if not m:
            raise ValueError(f"{what} entry {v!r} is not a coordinate tuple")
        out.append([float(g) for g in m.groups()])
    return np.array(out, dtype=float).reshape(len(out), pattern.groups)


def parse_point_px(values: list[str]) -> np.ndarray:
    """``Point_px`` strings -> (n, 2) float array (x = column, y = row), exactly as ingest reads them."""
    return _points(values, _PX, "Point_px")


def parse_calcium_xml(path: Path) -> list[XmlRoi]:
    """All ROIs of one file; ``ValueError`` naming the file if its structure is wrong."""
    try:
        with open(path, "rb") as fh:
            root = plistlib.load(fh)
    except Exception as exc:  # plistlib raises several types for malformed input
        raise ValueError(f"{path}: not a readable property list ({type(exc).__name__}: {exc})") from exc
    if not isinstance(root, dict) or not isinstance(root.get("Images"), list):
        raise ValueError(f"{path}: expected a dict with an 'Images' list at the root")
    rois: list[XmlRoi] = []
    for n, image in enumerate(root["Images"]):
        if not isinstance(image, dict):
            raise ValueError(f"{path}: Images[{n}] is not a dict")
        index = image.get("ImageIndex")
        index = int(index) if isinstance(index, int) else None
        for m, roi in enumerate(image.get("ROIs", []) or []):
            where = f"{path}: Images[{n}].ROIs[{m}]"
            if not isinstance(roi, dict):
                raise ValueError(f"{where} is not a dict")
            try:
                px = parse_point_px(roi.get("Point_px", []))
                mm = _points(roi.get("Point_mm", []), _MM, "Point_mm")
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from exc
            z = None
            if len(mm):
                zs = mm[:, 2]
                if np.ptp(zs) < 1e-3:  # a polygon lies in one slice
                    z = float(zs.mean())
            name = str(roi.get("Name", ""))
            rois.append(
                XmlRoi(
                    image_index=index,
                    name=name,
                    label=label_for_name(name),
                    points_px=px,
                    z_mm=z,
                    declared_points=int(roi.get("NumberOfPoints", len(px)) or 0),
                )
            )
    return rois


def rasterise_roi(roi: XmlRoi, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (row, col) indices inside the polygon: rows = y, cols = x, raw float vertices.

    This reproduces the annotation tool's own pixel counts; rounding the
    vertices first does not (docs/data-formats.md).
    """
    return draw_polygon(roi.points_px[:, 1], roi.points_px[:, 0], shape=shape)
