"""Heart localisation network (paper section 3.2).

The paper trains "a standard 3D UNet with four downsampling steps" on the
public SegTHOR heart annotations and uses the predicted heart bounding box
(+16 mm axially) to crop every COCA scan.  Scans differ in field of view,
matrix and slice thickness, so localisation works in physical space:

* every scan is resampled onto a coarse isotropic grid (``spacing_mm``) that
  keeps its origin and direction, so a voxel of the coarse mask maps back to
  the same millimetres in the original scan;
* the network sees clipped, normalised HU (``hu_window`` -> [-1, 1]), so
  scanners that store out-of-FOV air as -2048 or -3024 look the same;
* the predicted box is returned in physical mm (:func:`mask_bounding_box_mm`),
  which the crop step maps onto each scan's own index grid.

Training is resumable: a checkpoint is written atomically after every epoch
and a re-run continues from it.  Data order and augmentation are drawn from
``(seed, epoch)`` only, so a run killed after epoch k and resumed ends with
exactly the weights of an uninterrupted run (on the same device and threads).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
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
from scipy import ndimage
from tqdm import tqdm

from cacs.bundle import BUNDLE_KEY, localizer_bundle, require_bundle
from cacs.devices import resolve_device  # also re-exported: `from cacs.localizer import resolve_device`
from cacs.io.atomic import write_csv, write_torch
from cacs.io.nifti import Geometry, index_box_extent_mm, read_volume

log = logging.getLogger(__name__)

METRICS_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_dice", "lr", "seconds")
DICE_COLUMNS: tuple[str, ...] = ("case_id", "dice", "dice_coarse", "true_ml", "pred_ml")
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
METRICS_NAME = "metrics.csv"
DICE_NAME = "dice.csv"
_OUTSIDE_HU = -1024.0  # what "outside the scan" is filled with when a grid overhangs it


@dataclass(frozen=True)
class LocalizerParams:
    """Everything that determines a trained localiser (stored inside ``model.pt``).

    Spatial tuples are (x, y, z) like every geometry in this package.  The
    defaults train on the ``small`` synthetic preset to held-out Dice > 0.85
    in about 3 CPU minutes (2 cores, ~4 s/epoch; > 0.85 from epoch ~21 with
    seed 42, ~0.93 at epoch 40); the paper's 200 epochs are a config override.
    The learning rate is constant (Adam, 3e-3), so a run resumed with more
    epochs follows exactly the same path as one started with them.
    """

    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 4.0)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    patch_size: tuple[int, int, int] = (96, 96, 64)  # coarse voxels (x, y, z); 384 x 384 x 256 mm at 4 mm
    epochs: int = 40
    batch_size: int = 2
    lr: float = 3e-3
    val_fraction: float = 0.25
    seed: int = 42
    augment: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        # Coerce lists (from YAML / torch.load) to tuples so the frozen object stays hashable and comparable.
        for name in ("spacing_mm", "hu_window", "channels", "patch_size"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.spacing_mm) != 3 or any(not s > 0 for s in self.spacing_mm):
            raise ValueError(f"localizer.spacing_mm must be three positive mm values (x, y, z), got {self.spacing_mm}")
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"localizer.hu_window must be (low, high) HU with low < high, got {self.hu_window}")
        if len(self.channels) < 2 or any(int(c) != c or c < 1 for c in self.channels):
            raise ValueError(f"localizer.channels needs >= 2 positive integers, got {self.channels}")
        factor = self.downsampling_factor
        if len(self.patch_size) != 3 or any(int(p) != p or p < factor or p % factor for p in self.patch_size):
            raise ValueError(
                f"localizer.patch_size must be three multiples of {factor} (2 ** downsampling steps), "
                f"got {self.patch_size}"
            )
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"localizer.epochs must be an integer >= 1, got {self.epochs}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"localizer.batch_size must be an integer >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"localizer.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"localizer.val_fraction must be in [0, 1), got {self.val_fraction}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"localizer.seed must be an integer >= 0, got {self.seed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"localizer.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    @property
    def downsampling_factor(self) -> int:
        """Each network input side must be a multiple of this (one halving per step)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalizerParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------- geometry


def _to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    return geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))


def resample_to_spacing(
    array: np.ndarray, geometry: Geometry, spacing_mm: tuple[float, float, float], is_label: bool
) -> tuple[np.ndarray, Geometry]:
    """Resample a (z, y, x) array onto a grid of ``spacing_mm`` (x, y, z) covering the same extent.

    Origin and direction are kept, so voxel (0, 0, 0) stays centred on the
    same physical point and every mm position means the same anatomy on both
    grids; size is ``ceil(extent / spacing)`` so nothing is cut off.  Images
    are low-pass filtered along axes that get coarser before linear
    interpolation (otherwise noise and thin bright structures alias into the
    coarse grid) and come back as float32; labels use nearest neighbour and
    keep their dtype.
    """
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) array, got shape {array.shape}")
    spacing_in = np.asarray(geometry.spacing, dtype=float)
    spacing_out = np.asarray(spacing_mm, dtype=float)
    extent = np.asarray(array.shape[::-1], dtype=float) * spacing_in
    size = [max(1, int(math.ceil(v - 1e-6))) for v in extent / spacing_out]
    image = _to_sitk(array if is_label else array.astype(np.float32, copy=False), geometry)
    if not is_label:
        for axis in range(3):
            ratio = spacing_out[axis] / spacing_in[axis]
            if ratio > 1.0 and image.GetSize()[axis] >= 4:  # ITK's recursive Gaussian needs >= 4 voxels
                sigma_mm = (ratio - 1.0) / 2.0 * spacing_in[axis]  # scikit-image's anti-aliasing rule
                image = sitk.RecursiveGaussian(
                    image, sigma_mm, False, sitk.RecursiveGaussianImageFilter.ZeroOrder, axis
                )
    out_geometry = Geometry(tuple(float(v) for v in spacing_out), geometry.origin, geometry.direction)
    reference = out_geometry.apply(sitk.Image(size, image.GetPixelID()))
    resampled = sitk.Resample(
        image,
        reference,
        sitk.Transform(),
        sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear,
        0.0 if is_label else _OUTSIDE_HU,
        image.GetPixelID(),
    )
    return sitk.GetArrayFromImage(resampled), out_geometry


def resample_mask_to(
    mask: np.ndarray, geometry: Geometry, target: Geometry, target_shape_zyx: tuple[int, int, int]
) -> np.ndarray:
    """Nearest-neighbour resampling of a mask onto another grid (e.g. coarse prediction -> native scan)."""
    image = _to_sitk(mask.astype(np.uint8, copy=False), geometry)
    reference = target.apply(sitk.Image([int(s) for s in target_shape_zyx[::-1]], sitk.sitkUInt8))
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def prepare_input(hu: np.ndarray, geometry: Geometry, params: LocalizerParams) -> tuple[np.ndarray, Geometry]:
    """Resample HU onto the coarse grid and map ``hu_window`` linearly to [-1, 1] (float32, (z, y, x)).

    Clipping first makes the input independent of how a scanner encodes
    out-of-FOV air and of metal/contrast extremes; padding for the network is
    left to inference, so the returned grid is the physical coarse grid.
    """
    coarse, coarse_geometry = resample_to_spacing(hu, geometry, params.spacing_mm, is_label=False)
    lo, hi = params.hu_window
    out = (np.clip(coarse, lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0
    return out.astype(np.float32, copy=False), coarse_geometry


def mask_bounding_box_mm(mask: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Physical (x, y, z) min and max corners of the axis-aligned box around a mask's voxels.

    The box covers whole voxels (index bounds -/+ 0.5, i.e. voxel edges), so
    a one-voxel mask has the size of one voxel, not zero.  All 8 corners of
    the index box are transformed, which makes it right for any origin,
    anisotropic spacing and direction matrix (flips and obliques included).
    """
    kji = np.argwhere(np.asarray(mask) > 0)
    if len(kji) == 0:
        raise ValueError("mask is empty: no heart voxels to box")
    return index_box_extent_mm(geometry, kji.min(axis=0)[::-1] - 0.5, kji.max(axis=0)[::-1] + 0.5)


def mask_volume_ml(mask: np.ndarray, geometry: Geometry) -> float:
    """Mask volume in millilitres (a plausibility check on the predicted heart)."""
    return float(np.count_nonzero(mask)) * float(np.prod(geometry.spacing)) / 1000.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks; 1.0 when both are empty (nothing to find, nothing found)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"dice: shapes differ {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest face-connected component (uint8): stray blobs would stretch the heart box."""
    labels, n = ndimage.label(np.asarray(mask) > 0)
    if n <= 1:
        return (labels > 0).astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(np.argmax(sizes))).astype(np.uint8)


# --------------------------------------------------------------------------- network


def build_unet(params: LocalizerParams) -> UNet:
    """MONAI 3D UNet, background/heart logits; one stride-2 step per channel transition (4 for the default)."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=tuple(int(c) for c in params.channels),
        strides=(2,) * (len(params.channels) - 1),
        num_res_units=2,
    )


def _autocast(device: torch.device) -> torch.autocast:
    """bfloat16 autocast on CUDA (no loss scaler needed); disabled on CPU, where it is slow and less reproducible."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _predict_logits(model: torch.nn.Module, x: torch.Tensor, params: LocalizerParams) -> torch.Tensor:
    """Logits for a (B, 1, z, y, x) input of any size.

    Sliding windows of the training patch size rather than one padded pass:
    the UNet's instance normalisation then sees the same field of view as in
    training, memory stays bounded on long (neck-to-abdomen) scans, and inputs
    smaller than a window are padded with air (-1) and cropped back.
    """
    roi = tuple(int(v) for v in params.patch_size[::-1])  # (z, y, x)
    with _autocast(x.device):
        logits = sliding_window_inference(
            x, roi, sw_batch_size=max(1, params.batch_size), predictor=model, overlap=0.25, mode="gaussian", cval=-1.0
        )
    return torch.as_tensor(logits).float()


def _coarse_argmax(model: torch.nn.Module, params: LocalizerParams, x: np.ndarray, device: torch.device) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x))[None, None].to(device)
        return _predict_logits(model, t, params).argmax(dim=1)[0].cpu().numpy().astype(np.uint8)


def predict_heart(
    model: torch.nn.Module,
    params: LocalizerParams,
    hu: np.ndarray,
    geometry: Geometry,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, Geometry]:
    """Heart mask (uint8, (z, y, x)) on the coarse grid of a scan, with that grid's geometry.

    Only the largest connected component is kept.  Use
    :func:`mask_bounding_box_mm` on the result for the crop box, and
    :func:`resample_mask_to` to bring the mask onto the scan's own grid.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x, coarse_geometry = prepare_input(hu, geometry, params)
    return largest_component(_coarse_argmax(model, params, x, device)), coarse_geometry


def load_localizer(
    model_path: str | Path, device: torch.device | str | None = None
) -> tuple[torch.nn.Module, LocalizerParams]:
    """Load ``model.pt`` onto ``device`` (default: CUDA when present, else CPU) in eval mode.

    The file must carry its bundle (:mod:`cacs.bundle`); one written before that is refused.
    """
    path = Path(model_path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    require_bundle(payload, path, "localizer")  # a file without its settings (an old one) is refused
    params = LocalizerParams.from_dict(payload["params"])
    target = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    model = build_unet(params)
    model.load_state_dict(payload["state_dict"])
    return model.to(target).eval(), params


# --------------------------------------------------------------------------- training


@dataclass
class _Case:
    case_id: str
    image: np.ndarray  # normalised, coarse, (z, y, x), padded to >= patch size with air
    label: np.ndarray  # uint8 heart mask on the same grid (padding = background)
    shape: tuple[int, int, int]  # coarse shape before padding


def _resolve(path: str, table: Path) -> Path:
    """Table paths may be absolute, relative to the working directory (Snakemake) or to the table."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    beside = table.parent / p
    return beside if beside.exists() else p


def _split_cases(case_ids: list[str], params: LocalizerParams) -> tuple[list[str], list[str]]:
    """Deterministic (fit, held-out) split by seed, independent of the table's row order."""
    ids = sorted(case_ids)
    n = len(ids)
    n_val = 0
    if params.val_fraction > 0 and n >= 2:
        n_val = min(n - 1, max(1, int(round(params.val_fraction * n))))
    elif params.val_fraction > 0:
        log.warning("only %d SegTHOR training case(s): no held-out case for validation", n)
    order = np.random.default_rng(params.seed).permutation(n)
    held = sorted(ids[i] for i in order[:n_val])
    return [i for i in ids if i not in held], held


def _load_case(case_id: str, image_path: Path, heart_path: Path, params: LocalizerParams) -> _Case:
    hu, geometry = read_volume(image_path)
    heart, heart_geometry = read_volume(heart_path)
    if heart.shape != hu.shape:
        raise ValueError(f"{case_id}: heart mask shape {heart.shape} differs from image shape {hu.shape}")
    x, _ = prepare_input(hu, geometry, params)
    y, _ = resample_to_spacing((heart > 0).astype(np.uint8), heart_geometry, params.spacing_mm, is_label=True)
    need = [max(0, p - s) for p, s in zip(params.patch_size[::-1], x.shape, strict=True)]
    pad = [(n // 2, n - n // 2) for n in need]
    return _Case(
        case_id,
        np.pad(x, pad, constant_values=-1.0).astype(np.float32),
        np.pad(y, pad, constant_values=0).astype(np.uint8),
        x.shape,
    )


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


def _augmentation(params: LocalizerParams) -> Compose:
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


def _epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (seed, epoch): the sole source of randomness of an epoch, so resuming replays it exactly."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def _rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 - snapshot of the legacy global RNG others use
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, key, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))  # noqa: NPY002
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - legacy global RNG used by third-party code
    torch.manual_seed(seed)



def _compatible(saved: dict[str, Any], params: LocalizerParams, fit_ids: list[str], held_ids: list[str]) -> str:
    """Why a checkpoint cannot be continued ('' when it can).

    Only ``epochs`` (train further) and ``device`` (a GPU run killed and
    resumed on a CPU host) may change; anything else defines another model.
    """
    old = dict(saved.get("params", {}))
    new = params.to_dict()
    for key in ("epochs", "device"):
        old.pop(key, None)
        new.pop(key, None)
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return f"parameters changed ({', '.join(changed)})"
    if saved.get("fit_ids") != fit_ids or saved.get("heldout_ids") != held_ids:
        return "the SegTHOR training cases changed"
    if int(saved["epoch"]) > params.epochs:
        return f"it is at epoch {saved['epoch']}, beyond the requested {params.epochs}"
    return ""


def _train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: DiceCELoss,
    cases: list[_Case],
    params: LocalizerParams,
    epoch: int,
    device: torch.device,
) -> float:
    seed = _epoch_seed(params.seed, epoch)
    torch.manual_seed(seed)
    order = np.random.default_rng(seed).permutation(len(cases))
    augment = _augmentation(params).set_random_state(seed=seed % 2**32)
    model.train()
    losses: list[float] = []
    for start in range(0, len(order), params.batch_size):
        xs, ys = [], []
        for i in order[start : start + params.batch_size]:
            case = cases[int(i)]
            sample = augment({"image": torch.from_numpy(case.image[None]), "label": torch.from_numpy(case.label[None])})
            sample = sample[0] if isinstance(sample, list) else sample
            xs.append(torch.as_tensor(sample["image"]).float())
            ys.append(torch.as_tensor(sample["label"]).float())
        x = torch.stack(xs).to(device)
        y = torch.stack(ys).round().to(device)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _validate(model: torch.nn.Module, cases: list[_Case], params: LocalizerParams, device: torch.device) -> float:
    """Mean coarse-grid Dice of the argmax on the held-out cases (NaN when none are held out)."""
    if not cases:
        return float("nan")
    return float(np.mean([dice(_coarse_argmax(model, params, c.image, device), c.label) for c in cases]))


def train_localizer(
    segthor_csv: str | Path,
    out_dir: str | Path,
    params: LocalizerParams | None = None,
    progress: bool = True,
    require_gpu: bool = False,
    data_source: str | None = None,
) -> pd.DataFrame:
    """Train (or resume training of) the heart localiser on the SegTHOR training split.

    Writes, all atomically: ``checkpoint.pt`` and ``metrics.csv`` after every
    epoch, then ``model.pt`` (weights, params, fit/held-out case ids, the bundle of :mod:`cacs.bundle`;
    ``data_source`` is recorded in it) and
    ``dice.csv`` (per held-out case Dice on the scan's own grid, after the
    largest-component step, plus the coarse-grid Dice and volumes).  Returns
    the per-epoch metrics.  A checkpoint whose parameters (other than
    ``epochs`` and ``device``) or cases differ is discarded with a warning: continuing it
    would mix two configurations.  ``require_gpu`` (config ``localizer.require_gpu``)
    makes a job without a visible GPU fail instead of training on the CPU.
    """
    params = params or LocalizerParams()
    segthor_csv, out_dir = Path(segthor_csv), Path(out_dir)
    # One GPU at most: 40 SegTHOR training volumes on a coarse (4 mm) grid do not need DDP.
    device = resolve_device(params.device, require_gpu, section="localizer")
    table = pd.read_csv(segthor_csv, dtype={"case_id": str})
    train_rows = table[table["split"] == "train"]
    if train_rows.empty:
        raise ValueError(f"{segthor_csv}: no SegTHOR training cases (split == 'train')")
    missing = train_rows[train_rows["heart"].isna() | (train_rows["heart"].astype(str).str.strip() == "")]
    if not missing.empty:
        raise ValueError(f"{segthor_csv}: training case(s) without a heart mask: {', '.join(missing['case_id'])}")
    fit_ids, held_ids = _split_cases(list(train_rows["case_id"]), params)
    rows = {r.case_id: r for r in train_rows.itertuples(index=False)}
    log.info("localizer: %d fit / %d held-out SegTHOR cases, device %s", len(fit_ids), len(held_ids), device)

    cases = {
        cid: _load_case(cid, _resolve(rows[cid].image, segthor_csv), _resolve(rows[cid].heart, segthor_csv), params)
        for cid in tqdm(fit_ids + held_ids, desc="localizer: preprocess", unit="case", disable=not progress)
    }
    fit_cases = [cases[c] for c in fit_ids]
    held_cases = [cases[c] for c in held_ids]

    _seed_everything(params.seed)
    model = build_unet(params).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    metrics: list[dict[str, float]] = []
    start_epoch = 0

    ckpt_path = out_dir / CHECKPOINT_NAME
    if ckpt_path.exists():
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        reason = _compatible(saved, params, fit_ids, held_ids)
        if reason:
            log.warning("localizer: ignoring %s because %s; training from scratch", ckpt_path, reason)
        else:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            metrics = [dict(m) for m in saved["metrics"]]
            start_epoch = int(saved["epoch"])
            _set_rng_states(saved["rng"])
            log.info("localizer: resuming from %s after epoch %d", ckpt_path, start_epoch)
    write_csv(out_dir / METRICS_NAME, pd.DataFrame(metrics, columns=list(METRICS_COLUMNS)))

    bar = tqdm(
        range(start_epoch + 1, params.epochs + 1),
        desc="localizer: train",
        unit="epoch",
        initial=start_epoch,
        total=params.epochs,
        disable=not progress,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        train_loss = _train_epoch(model, optimizer, loss_fn, fit_cases, params, epoch, device)
        val_dice = _validate(model, held_cases, params, device)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_dice": val_dice,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t0,
        }
        metrics.append(row)
        write_torch(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "metrics": metrics,
                "params": params.to_dict(),
                "fit_ids": fit_ids,
                "heldout_ids": held_ids,
                "rng": _rng_states(),
            },
        )
        write_csv(out_dir / METRICS_NAME, pd.DataFrame(metrics, columns=list(METRICS_COLUMNS)))
        bar.set_postfix(loss=f"{train_loss:.3f}", val_dice=f"{val_dice:.3f}")
        log.info(
            "localizer epoch %d: loss %.4f, held-out Dice %.4f (%.1f s)", epoch, train_loss, val_dice, row["seconds"]
        )

    dice_rows = []
    for cid in held_ids:
        hu, geometry = read_volume(_resolve(rows[cid].image, segthor_csv))
        truth, _ = read_volume(_resolve(rows[cid].heart, segthor_csv))
        coarse, coarse_geometry = predict_heart(model, params, hu, geometry, device)
        native = resample_mask_to(coarse, coarse_geometry, geometry, truth.shape)
        case = cases[cid]
        raw = _coarse_argmax(model, params, case.image, device)
        dice_rows.append(
            {
                "case_id": cid,
                "dice": dice(native, truth),
                "dice_coarse": dice(raw, case.label),
                "true_ml": mask_volume_ml(truth, geometry),
                "pred_ml": mask_volume_ml(native, geometry),
            }
        )
    write_torch(
        out_dir / MODEL_NAME,
        {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "params": params.to_dict(),
            "fit_ids": fit_ids,
            "heldout_ids": held_ids,
            "epochs": params.epochs,
            BUNDLE_KEY: localizer_bundle(params, {"table": str(segthor_csv), "fit_ids": fit_ids,
                                                  "heldout_ids": held_ids}, data_source),  # fmt: skip
        },
    )
    write_csv(out_dir / DICE_NAME, pd.DataFrame(dice_rows, columns=list(DICE_COLUMNS)))
    return pd.DataFrame(metrics, columns=list(METRICS_COLUMNS))
