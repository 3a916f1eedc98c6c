"""Device choice: the GPU(s) the scheduler made visible, a loud CPU fallback, require_gpu, torchrun's environment."""

from __future__ import annotations

import logging

import pytest
import torch

from cacs import devices
from cacs.devices import DistributedEnv, GPUUnavailableError, distributed_env, resolve_device


@pytest.fixture()
def no_gpu(monkeypatch):
    """A job the scheduler gave no GPU (also on a machine that has one)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture()
def two_gpus(monkeypatch):
    """A job granted two GPUs (physical 5 and 7): torch numbers them cuda:0 and cuda:1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake H100 #{i}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")


def test_auto_without_gpu_is_cpu_with_a_warning(no_gpu, caplog):
    with caplog.at_level(logging.WARNING, logger="cacs.devices"):
        assert resolve_device("auto") == torch.device("cpu")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "CPU" in text and "CUDA_VISIBLE_DEVICES=''" in text and "slower" in text


@pytest.mark.parametrize("section", ["train", "localizer"])
def test_require_gpu_without_gpu_names_the_variable_and_the_key(no_gpu, section):
    with pytest.raises(GPUUnavailableError) as err:
        resolve_device("auto", require_gpu=True, section=section)
    text = str(err.value)
    assert "CUDA_VISIBLE_DEVICES=''" in text and f"{section}.require_gpu" in text
    # Both kinds: a RuntimeError (environment) the CLI still reports as one line (ValueError).
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, ValueError)


def test_require_gpu_reports_an_unset_variable(no_gpu, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES=<unset>"):
        resolve_device("auto", True)


def test_cuda_requested_without_gpu_is_an_error(no_gpu):
    with pytest.raises(RuntimeError, match=r"train\.device is 'cuda'.*CUDA_VISIBLE_DEVICES"):
        resolve_device("cuda", section="train")


def test_cpu_is_cpu_but_contradicts_require_gpu(no_gpu, caplog):
    with caplog.at_level(logging.WARNING, logger="cacs.devices"):
        assert resolve_device("cpu") == torch.device("cpu")
    assert not caplog.records  # asked for: no warning
    with pytest.raises(ValueError, match="train.require_gpu"):
        resolve_device("cpu", require_gpu=True, section="train")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_device("tpu")


def test_visible_gpus_are_numbered_from_zero_and_logged(two_gpus, caplog):
    with caplog.at_level(logging.INFO, logger="cacs.devices"):
        assert str(resolve_device("auto")) == "cuda:0"
    assert "CUDA_VISIBLE_DEVICES='5,7'" in caplog.text and "Fake H100 #1" in caplog.text
    assert str(resolve_device("cuda", require_gpu=True)) == "cuda:0"
    assert str(resolve_device("auto", local_rank=1)) == "cuda:1"  # torchrun's second process
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit cpu stays cpu


def test_a_rank_without_its_own_gpu_is_an_error(two_gpus):
    with pytest.raises(GPUUnavailableError, match=r"LOCAL_RANK 2.*CUDA_VISIBLE_DEVICES='5,7'.*train\.gpus"):
        resolve_device("auto", local_rank=2, section="train")


def test_localizer_keeps_its_resolve_device():
    """Other modules import it from cacs.localizer and call it with the device string only."""
    from cacs.localizer import resolve_device as from_localizer

    assert from_localizer is devices.resolve_device
    assert from_localizer("cpu") == torch.device("cpu")


# --------------------------------------------------------------------------- torchrun environment


def test_plain_run_is_rank_zero_of_one():
    env = distributed_env({})
    assert env == DistributedEnv() and not env.enabled and env.is_main


def test_torchrun_environment_is_read():
    env = distributed_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert env == DistributedEnv(rank=3, local_rank=1, world_size=4, local_world_size=2)
    assert env.enabled and not env.is_main


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"WORLD_SIZE": "two"}, "not an integer"),
        ({"WORLD_SIZE": "2"}, "RANK is not set"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "inconsistent"),
        ({"WORLD_SIZE": "0"}, ">= 1"),
    ],
)
def test_broken_torchrun_environment_is_named(environ, message):
    with pytest.raises(ValueError, match=message):
        distributed_env(environ)


def test_training_checks_gpu_and_world_before_reading_anything(no_gpu, tmp_path, monkeypatch):
    """Both fail at once, before the (missing) crop index is read or a process group is waited for."""
    from cacs.train import TrainConfig, train_experiment

    missing = tmp_path / "no-such-index.csv"
    with pytest.raises(GPUUnavailableError, match="train.require_gpu"):
        train_experiment("x", missing, tmp_path / "out", TrainConfig(), require_gpu=True)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=r"multiple of 2 x 3 = 6"):
        train_experiment("x", missing, tmp_path / "out", TrainConfig(batch_size=4))
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_missing_gpu_in_one_line(no_gpu, tmp_path, caplog):
    from cacs.cli import main

    args = ["train", "--experiment", "x", "--index", str(tmp_path / "i.csv"), "--out-dir", str(tmp_path / "o"),
            "--config-json", "{}", "--require-gpu"]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        with caplog.at_level(logging.ERROR):
            assert main(args) == 2
    finally:
        torch.set_num_threads(threads)  # the command sets the process's thread count
    assert "train.require_gpu is true" in caplog.text
