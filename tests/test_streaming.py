"""Streaming training data through a DataLoader: the same batches, in the same order, as the
device-resident path, so a streamed run equals a resident run bit for bit and resumes
exactly; lazy image folders stream with a bounded memory footprint."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gan_pipe.cli import app
from gan_pipe.context import Dataset, RunContext
from gan_pipe.dataloading import Rows, StreamSampler, TensorRows, should_stream
from gan_pipe.errors import UserError
from gan_pipe.plugins.train import BatchSampler, Trainer
from gan_pipe.recipe import Recipe
from gan_pipe.scoring import MemoryTracker

from .conftest import write
from .test_resume_exact import RECIPE, _final_checkpoint, _run_id, assert_same_state

runner = CliRunner()


class SquareRows(Rows):
    """Row i is a vector of i's: a lazy dataset with known values."""

    row_shape = (3,)

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def load(self, i: int) -> torch.Tensor:
        return torch.full((3,), float(i) ** 2 / self.n)


# ---------------------------------------------------------------- rows and decisions
def test_rows_index_like_a_tensor():
    rows, ref = SquareRows(10), torch.stack([SquareRows(10).load(i) for i in range(10)])
    assert rows.shape == ref.shape == (10, 3) and len(rows) == 10
    assert torch.equal(rows[4], ref[4])
    assert torch.equal(rows[2:7], ref[2:7])
    idx = torch.tensor([9, 0, 3, 3])
    assert torch.equal(rows[idx], ref[idx])
    assert torch.equal(rows[np.array([1, 5])], ref[[1, 5]])
    assert torch.equal(rows.materialize(workers=0), ref)
    assert rows.nbytes == 10 * 3 * 4


def test_materialize_with_workers_keeps_row_order():
    rows = SquareRows(600)  # three loader batches of MATERIALIZE_ROWS = 256
    assert torch.equal(rows.materialize(workers=2), rows[torch.arange(600)])


def _ds(train, fits=None):
    return Dataset("x", train=train, fits_device=fits)


def test_should_stream_follows_the_setting_and_the_size():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    tensor = torch.zeros(100, 10)  # 4,000 bytes
    assert should_stream(_ds(tensor), True, cpu)[0] is True
    assert should_stream(_ds(SquareRows(5)), False, cpu)[0] is False
    # auto: the dataset's declaration first, then lazy rows, then the size vs free memory
    assert should_stream(_ds(tensor, fits=False), "auto", cpu) == (
        True,
        "the dataset declares fits_device = False",
    )
    assert should_stream(_ds(SquareRows(5), fits=True), "auto", cpu)[0] is False
    assert should_stream(_ds(SquareRows(5)), "auto", cpu)[0] is True
    assert should_stream(_ds(tensor), "auto", cpu)[0] is False  # host memory already
    stream, why = should_stream(_ds(tensor), "auto", cuda, free=7999)
    assert stream and "more than 50%" in why
    assert should_stream(_ds(tensor), "auto", cuda, free=8000)[0] is False


# ---------------------------------------------------------------- same batches
def test_stream_sampler_gives_the_resident_batches_in_order():
    data = torch.randn(50, 4)
    torch.manual_seed(7)
    resident = BatchSampler(data, 8)
    want = [resident.next() for _ in range(20)]  # 6 per epoch: crosses 3 epoch boundaries
    rng_after = torch.get_rng_state()
    torch.manual_seed(7)
    stream = StreamSampler(TensorRows(data), 8, torch.device("cpu"), workers=2)
    got = [stream.next() for _ in range(20)]
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    # the global RNG saw the same draws (the loader seeds itself from its own generator)
    assert torch.equal(torch.get_rng_state(), rng_after)
    stream.close()


def test_stream_position_can_be_set_mid_epoch():
    data = torch.randn(40, 2)
    torch.manual_seed(1)
    a = StreamSampler(TensorRows(data), 5, torch.device("cpu"), workers=1)
    for _ in range(3):
        a.next()
    perm, i, rng = a._perm.clone(), a._i, torch.get_rng_state()
    rest = [a.next() for _ in range(9)]  # 5 more of this epoch, then 4 of the next
    b = StreamSampler(TensorRows(data), 5, torch.device("cpu"), workers=1)
    b.next()  # b's loader is under way elsewhere: setting the position restarts it
    torch.set_rng_state(rng)
    b._perm, b._i = perm, i
    again = [b.next() for _ in range(9)]
    assert all(torch.equal(x, y) for x, y in zip(rest, again, strict=True))


def _trainer(train, stream, steps=14, resume=None, **extra):
    recipe = Recipe.model_validate(
        {
            "experiment": {"name": "t", "seed": 0},
            "data": {"name": "x", "stream": stream, "workers": 2},
            "model": {"generator": {"name": "g"}, "discriminator": {"name": "d"}},
            "loss": {"name": "l"},
            "noise": {"dim": 3},
            "train": {"batch_size": 8, "steps": steps, "n_critic": 2, "progress": False, "sample_every": 7}
            | extra,
        }
    )
    plugins = types.SimpleNamespace(has_step_listeners=lambda: False)
    ctx = RunContext(
        recipe=recipe, plugins=plugins, tracker=MemoryTracker(), device=torch.device("cpu")
    )
    torch.manual_seed(0)
    from gan_pipe.plugins.losses.bce import NonSaturatingLoss

    ctx.dataset = Dataset("x", train=train)
    ctx.generator = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    ctx.discriminator = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Dropout(0.2), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    )
    ctx.loss = NonSaturatingLoss()
    ctx.noise = lambda n, generator=None: torch.randn(n, 3, generator=generator)
    if resume is not None:
        ctx.state["resume"] = resume
    return Trainer(ctx)


def _state(t: Trainer):
    state = t.checkpoint_state(t.ctx.step)
    state.pop("recipe")
    return state


def test_a_streamed_run_equals_the_resident_run_bit_for_bit():
    data = torch.randn(60, 3)  # 7 batches per epoch, 2 per step: 4 epochs in 14 steps
    resident = _trainer(data, False)
    assert isinstance(resident.sampler, BatchSampler)
    resident.fit()
    streamed = _trainer(data, True)
    assert isinstance(streamed.sampler, StreamSampler) and streamed.sampler.workers == 2
    streamed.fit()
    assert_same_state(_state(resident), _state(streamed))
    assert resident.ctx.history == streamed.ctx.history
    # lazy rows stream the same values: a Rows over the same tensor gives the same run
    lazy = _trainer(SquareRows(60), "auto")
    lazy.fit()
    tensor = _trainer(SquareRows(60).materialize(), False)
    tensor.fit()
    assert isinstance(lazy.sampler, StreamSampler)
    assert_same_state(_state(lazy), _state(tensor))


def test_data_stream_false_loads_lazy_rows_whole():
    t = _trainer(SquareRows(60), False)
    assert isinstance(t.sampler, BatchSampler) and torch.equal(t.data, SquareRows(60)[0:60])


def test_a_streamed_run_resumes_exactly_mid_epoch():
    data = torch.randn(60, 3)
    straight = _trainer(data, True)
    straight.fit()
    first = _trainer(data, True)
    first.steps = 5  # stops at step 5: batch 10 of 14 read, mid-epoch (7 per epoch)
    first.fit()
    checkpoint = copy.deepcopy(first.checkpoint_state(5))
    assert checkpoint["sampler_i"] == 3
    resumed = _trainer(data, True, resume=checkpoint)
    assert resumed.start_step == 5
    resumed.fit()
    assert_same_state(_state(straight), _state(resumed))


def test_replacement_sampling_cannot_stream():
    with pytest.raises(UserError, match="cannot be prefetched"):
        _trainer(torch.randn(60, 3), True, sampling="replacement")


def test_data_stream_is_validated():
    base = {
        "experiment": {"name": "t"},
        "model": {"generator": {"name": "g"}, "discriminator": {"name": "d"}},
        "loss": {"name": "l"},
    }
    from gan_pipe.registry import strict_validate

    for bad in ({"stream": "yes"}, {"stream": 1}, {"workers": -1}):
        with pytest.raises(ValueError):
            strict_validate(Recipe, base | {"data": {"name": "x", **bad}})
    ok = strict_validate(Recipe, base | {"data": {"name": "x", "stream": True, "workers": 0}})
    assert ok.data.stream is True and ok.data.workers == 0


# ---------------------------------------------------------------- through the CLI
@pytest.mark.slow
def test_cli_streamed_run_matches_the_resident_run(workdir):
    recipe = write(workdir / "exact.toml", RECIPE)
    runs = {}
    for stream in ("false", "true"):
        res = runner.invoke(
            app, ["run", str(recipe), "--set", f"data.stream={stream}", "--set", "data.workers=1"]
        )
        assert res.exit_code == 0, res.output
        runs[stream] = _final_checkpoint(_run_id(res.output))
    assert_same_state(runs["false"], runs["true"])


def test_cli_replacement_with_stream_is_a_clear_error(workdir):
    recipe = write(workdir / "exact.toml", RECIPE)
    args = ["--set", "data.stream=true", "--set", "train.sampling=replacement"]
    res = runner.invoke(app, ["run", str(recipe), *args])
    assert res.exit_code == 2, res.output
    assert "cannot be prefetched" in res.output and "Traceback" not in res.output
