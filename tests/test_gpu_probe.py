"""cacs.gpu_probe: the workflow's torch-free answer to 'will a local job see a GPU?'."""

from __future__ import annotations

import stat

import pytest

from cacs import gpu_probe


def _fake_smi(folder, listing: str, code: int = 0):
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '%s' '{listing}'\nexit {code}\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return {"PATH": str(folder)}


@pytest.fixture
def no_amd(monkeypatch):
    monkeypatch.setattr(gpu_probe, "AMD_KERNEL_DRIVER", "/nonexistent/kfd")


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_hidden_gpus_count_as_none(tmp_path, hidden):
    env = _fake_smi(tmp_path, "GPU 0: NVIDIA H200 (UUID: GPU-1)\n") | {"CUDA_VISIBLE_DEVICES": hidden}
    assert gpu_probe.local_gpu_visible(env) is False


def test_an_nvidia_listing_counts(tmp_path, no_amd):
    env = _fake_smi(tmp_path, "GPU 0: NVIDIA H200 (UUID: GPU-1)\n")
    assert gpu_probe.local_gpu_visible(env) is True


@pytest.mark.parametrize(("listing", "code"), [("No devices were found\n", 6), ("", 9)])
def test_a_driver_without_gpus_counts_as_none(tmp_path, no_amd, listing, code):
    env = _fake_smi(tmp_path, listing, code)
    assert gpu_probe.local_gpu_visible(env) is False


def test_no_driver_at_all_counts_as_none(tmp_path, no_amd):
    assert gpu_probe.local_gpu_visible({"PATH": str(tmp_path)}) is False


def test_the_amd_kernel_driver_counts(tmp_path, monkeypatch):
    kfd = tmp_path / "kfd"
    kfd.write_text("")
    monkeypatch.setattr(gpu_probe, "AMD_KERNEL_DRIVER", str(kfd))
    assert gpu_probe.local_gpu_visible({"PATH": str(tmp_path)}) is True
