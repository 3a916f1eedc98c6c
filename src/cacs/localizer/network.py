"""The localiser network: the 3D UNet, sliding-window inference, loading ``model.pt``.

Inference reads the scan, resamples it (:func:`cacs.localizer.preprocess.prepare_input`),
runs the UNet in windows of the training patch size and keeps the largest
connected component: :func:`predict_heart`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from cacs.bundle import require_bundle
from cacs.io.nifti import Geometry
from cacs.localizer.params import LocalizerParams
from cacs.localizer.preprocess import largest_component, prepare_input


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
