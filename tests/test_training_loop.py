"""The shared epoch loop (cacs.training_loop) on a toy regression: resume replays, a foreign checkpoint is refused."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from cacs.training_loop import EpochLoop, epoch_seed, rng_states, set_rng_states

log = logging.getLogger("cacs.test_loop")


def _loop(out_dir, epochs: int, config: str = "a", kill_at: int | None = None):
    """A linear model fitted to noise drawn from the epoch's seed; ``kill_at`` raises inside that epoch."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loop = EpochLoop("toy", log, out_dir, model, optimizer, seed=7, epochs=epochs, identity={"config": config},
                     compatible=lambda saved: "" if saved.get("config") == config else "its config differs",
                     columns=("epoch", "loss", "val", "seconds"))  # fmt: skip
    seen: list[int] = []

    def train_epoch(epoch: int, seed: int) -> dict[str, float]:
        if epoch == kill_at:
            raise RuntimeError("simulated kill")
        seen.append(epoch)
        rng = np.random.default_rng(seed)
        x = torch.from_numpy(rng.normal(size=(8, 3)).astype(np.float32))
        y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(8, 1)  # torch's global RNG: reseeded by the loop
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach())}

    def validate(epoch: int) -> dict[str, float]:
        return {"val": float(model.weight.sum())}

    return loop, model, seen, train_epoch, validate


def test_resume_after_a_kill_replays_the_same_epochs(tmp_path, caplog):
    loop, straight, _, step, val = _loop(tmp_path / "a", epochs=4)
    loop.resume()
    loop.run(step, val)

    loop, _, seen, step, val = _loop(tmp_path / "b", epochs=4, kill_at=3)
    assert loop.resume() is None
    with pytest.raises(RuntimeError, match="simulated kill"):
        loop.run(step, val)
    assert seen == [1, 2]
    assert pd.read_csv(tmp_path / "b" / "metrics.csv").epoch.tolist() == [1, 2]

    loop, resumed, seen, step, val = _loop(tmp_path / "b", epochs=4)
    with caplog.at_level(logging.INFO, logger=log.name):
        assert loop.resume() is not None
    assert "resuming" in caplog.text and loop.start == 2
    rows = loop.run(step, val)
    assert seen == [3, 4]  # only the epochs the kill lost
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    a = pd.read_csv(tmp_path / "a" / "metrics.csv").drop(columns="seconds")
    b = pd.read_csv(tmp_path / "b" / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)


def test_an_incompatible_checkpoint_trains_from_scratch_with_a_warning(tmp_path, caplog):
    loop, _, _, step, val = _loop(tmp_path, epochs=2, config="a")
    loop.resume()
    loop.run(step, val)

    loop, _, seen, step, val = _loop(tmp_path, epochs=2, config="b")
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert loop.resume() is None
    assert "ignoring" in caplog.text and "its config differs" in caplog.text and "from scratch" in caplog.text
    loop.run(step, val)
    assert seen == [1, 2]

    caplog.clear()
    loop, _, seen, step, val = _loop(tmp_path, epochs=1, config="b")  # the checkpoint is at epoch 2 now
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert loop.resume() is None
    assert "beyond the requested 1" in caplog.text


def test_epoch_seed_and_rng_states_round_trip():
    assert epoch_seed(42, 3) == epoch_seed(42, 3) != epoch_seed(42, 4)
    states = rng_states()
    first = (torch.rand(3), np.random.random(), __import__("random").random())  # noqa: NPY002
    set_rng_states(states)
    again = (torch.rand(3), np.random.random(), __import__("random").random())  # noqa: NPY002
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
