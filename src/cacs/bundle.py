"""What a trained model file carries, so that using it needs nothing else (docs/infer.md).

The nnU-Net habit: the plans travel with the checkpoint.  Every ``model.pt``
that ``cacs train`` and ``cacs train-localizer`` write holds, under the key
``bundle``, a plain (JSON-like) dict:

* ``format`` (:data:`BUNDLE_FORMAT`), ``kind`` (``experiment`` | ``localizer``);
* ``network``: what builds the network (model kind and config; the localizer's
  UNet channels and inference window);
* ``input``: the input normalisation (HU clip and scale; the localizer's HU window);
* experiment: ``crop`` (:class:`cacs.crop.CropParams`: margins, model grid,
  fallback box, guard), ``agatston`` (:class:`cacs.agatston.AgatstonParams`),
  ``plausibility`` (min / max heart mL of the heart boxes its crops were cut
  with; ``None`` when the boxes did not record it) and ``localizer`` (the
  localizer those boxes came from, when recorded);
* localizer: ``grid`` (its coarse spacing);
* ``provenance``: data (the training table and a fingerprint of what was read),
  data source, git commit (empty when unknown), ``config_sha256`` (of every
  section above and the training settings), package versions, time.

The crop settings reach ``cacs train`` through the crops themselves:
``cacs crop`` writes them beside its index (:func:`crop_meta_path`), and
``cacs predict-heart`` writes the plausibility range and the localizer beside
its box table (:func:`boxes_meta_path`), which ``cacs crop`` copies.

Settings given again when a model is used (``cacs infer`` options, its
``--config``, ``cacs predict`` options) must equal the model's:
:func:`check_given` refuses a contradiction, naming both values.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import subprocess
import time
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

BUNDLE_KEY = "bundle"
BUNDLE_FORMAT = 1


class Given(NamedTuple):
    """A setting given when a model is used: ``source`` names where it came from (``--model-size``, a config key)."""

    section: str
    key: str
    value: Any
    source: str


# --------------------------------------------------------------------------- writing


def plain(obj: Any) -> Any:
    """A JSON-like copy (dicts, lists, str, float, int, bool, None): what ``torch.load(weights_only=True)`` reads."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    return json.loads(json.dumps(obj, default=str))


def config_sha256(sections: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plain(sections), sort_keys=True).encode()).hexdigest()


def git_commit() -> str:
    """The commit of the source tree the package runs from ('' without git or outside a repository); never fails."""
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        commit = done.stdout.strip() if done.returncode == 0 else ""
        if commit:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=10)  # fmt: skip
            if dirty.returncode == 0 and dirty.stdout.strip():
                commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return ""


def versions() -> dict[str, str]:
    from cacs import __version__

    out = {"cacs": __version__, "python": platform.python_version()}
    for name in ("torch", "numpy", "monai"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _provenance(sections: dict[str, Any], data: dict[str, Any], data_source: str | None) -> dict[str, Any]:
    return {
        "data": plain(data),
        "data_source": data_source or "unrecorded",
        "git_commit": git_commit(),
        "config_sha256": config_sha256(sections),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def experiment_bundle(
    train_config: dict[str, Any],
    crop: Any,
    agatston: Any,
    plausibility: Any | None,
    localizer: dict[str, Any] | None,
    data: dict[str, Any],
    data_source: str | None = None,
) -> dict[str, Any]:
    """The bundle of an experiment's ``model.pt`` (see the module docstring)."""
    from cacs.models.inputs import HU_CLIP, HU_SCALE

    sections = {
        "network": {"model": train_config["model"], "model_config": train_config.get("model_config") or {}},
        "input": {"hu_clip": list(HU_CLIP), "hu_scale": HU_SCALE},
        "crop": plain(crop),
        "agatston": plain(agatston),
        "plausibility": None if plausibility is None else plain(plausibility),
        "localizer": None if localizer is None else plain(localizer),
    }
    hashed = {**sections, "train": plain(train_config)}
    hashed["train"].pop("device", None)  # where it ran is not a setting
    return {"format": BUNDLE_FORMAT, "kind": "experiment", **plain(sections),
            "provenance": _provenance(hashed, data, data_source)}  # fmt: skip


def localizer_bundle(params: Any, data: dict[str, Any], data_source: str | None = None) -> dict[str, Any]:
    """The bundle of the localizer's ``model.pt``: UNet, HU window, coarse grid, provenance."""
    p = params.to_dict()
    sections = {
        "network": {"channels": p["channels"], "patch_size": p["patch_size"]},
        "input": {"hu_window": p["hu_window"]},
        "grid": {"spacing_mm": p["spacing_mm"]},
    }
    hashed = {**sections, "train": {k: v for k, v in p.items() if k != "device"}}
    return {"format": BUNDLE_FORMAT, "kind": "localizer", **plain(sections),
            "provenance": _provenance(hashed, data, data_source)}  # fmt: skip


def localizer_summary(path: Path, bundle: dict[str, Any], state_dict: dict[str, Any]) -> dict[str, Any]:
    """How an experiment's bundle names the localizer that cut its crops.

    The localizer is identified by its weights (:func:`weights_sha256`), not by the file's bytes: a
    model file also records when it was written, so two runs that train the same weights write
    different files, and their crops would otherwise claim different localizers.
    """
    return {"path": str(path), "weights_sha256": weights_sha256(state_dict), "spacing_mm": bundle["grid"]["spacing_mm"],
            "hu_window": bundle["input"]["hu_window"],
            "config_sha256": bundle["provenance"]["config_sha256"]}  # fmt: skip


def weights_sha256(state_dict: dict[str, Any]) -> str:
    """SHA-256 of a network's weights: every tensor's name, dtype, shape and bytes, in name order."""
    import torch  # here, not at the top: the torch-free environments import this module's readers

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading


def require_bundle(payload: Any, path: Path, kind: str) -> dict[str, Any]:
    """The bundle of a loaded model file; a model file without one (or of another kind) is refused."""
    bundle = payload.get(BUNDLE_KEY) if isinstance(payload, dict) else None
    if not isinstance(bundle, dict):
        what = "cacs train" if kind == "experiment" else "cacs train-localizer"
        raise ValueError(
            f"{path}: model file without its settings (no crop grid, Agatston convention or provenance: written "
            f"before model files carried them); retrain it with {what} (the checkpoint beside it resumes, so "
            "this is quick)"
        )
    if bundle.get("kind") != kind:
        raise ValueError(f"{path}: a {bundle.get('kind')} model file, not the {kind} model expected here")
    if int(bundle.get("format", 0)) > BUNDLE_FORMAT:
        raise ValueError(f"{path}: model file of a newer bundle format ({bundle.get('format')}); update cacs")
    return bundle


def read_bundle(path: Path, kind: str) -> dict[str, Any]:
    """The bundle of a model file on disk (see :func:`require_bundle`)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt / foreign file
        raise ValueError(f"{path}: not a cacs model file ({exc.__class__.__name__}: {exc})") from exc
    return require_bundle(payload, path, kind)


def read_json(path: Path) -> dict[str, Any] | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def crop_meta_path(index_csv: Path) -> Path:
    """Where ``cacs crop`` records its settings: beside the crop index (``index.csv`` -> ``index.json``)."""
    return Path(index_csv).with_suffix(".json")


def boxes_meta_path(table: Path) -> Path:
    """Where ``cacs predict-heart`` records its plausibility range and localizer (``boxes.csv`` -> ``boxes.json``)."""
    return Path(table).with_suffix(".json")


def same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def show(value: Any) -> str:
    """A setting as one writes it on the command line: ``2.5 2.5 3``, ``130``, ``grow``."""
    if isinstance(value, list | tuple):
        return " ".join(show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_NAMES = {
    ("crop", "model_spacing_mm"): "crop grid",
    ("crop", "model_size"): "crop grid size",
}


def describe(section: str, key: str) -> str:
    return _NAMES.get((section, key), f"{section}.{key}")


def check_given(given: list[Given], recorded: dict[str, dict | None], whose: str, where: Path | str) -> None:
    """Refuse a given setting that differs from the recorded one: one line naming both values and the file.

    ``recorded`` maps a section to its recorded values (``None``: not recorded,
    so anything given is taken).  ``whose`` says whose they are: "the model's".
    """
    for g in given:
        block = recorded.get(g.section)
        if block is None or g.key not in block:
            continue
        if not same(g.value, block[g.key]):
            raise ValueError(f"{g.source} {show(g.value)} contradicts {whose} {describe(g.section, g.key)} "
                             f"{show(block[g.key])} ({where})")  # fmt: skip


def given_from(section: str, obj: Any | None, source: str) -> list[Given]:
    """Every field of a whole settings object (a CropParams passed to a function) as given values."""
    if obj is None:
        return []
    return [Given(section, k, v, f"{source}.{k}") for k, v in plain(obj).items()]
