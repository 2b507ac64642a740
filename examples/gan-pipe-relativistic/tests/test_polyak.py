"""Tests of the polyak callback (added after the scaffold): the mean of the weights in closed
form, its state through a checkpoint, and a run resumed and re-evaluated exactly."""

from __future__ import annotations

import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gan_pipe.recipe import load_recipe
from gan_pipe.runner import run
from gan_pipe.testing import plugins_with, registry_of
from gan_pipe_relativistic import plugin

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "relativistic.toml"


def _polyak(net, **params):
    comp = registry_of(plugin).get("callback", "polyak")
    callback = comp.factory(comp.validate_params(params))
    callback.setup(SimpleNamespace(generator=net))
    return callback


def _train(net, callback, steps):
    """Set G's weight to the step number and its running mean to 10x, then on_step."""
    seen = []
    for step in steps:
        with torch.no_grad():
            net[0].weight.fill_(float(step))
            net[1].running_mean.fill_(10.0 * step)
        callback.on_step(SimpleNamespace(generator=net, step=step), step)
        average = callback.generator()
        seen.append(None if average is None else average[0].weight[0, 0].item())
    return seen


def test_the_average_is_the_mean_of_the_weights_since_start_step():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    callback = _polyak(net, start_step=2, update_every=2)
    callback.on_train_start(SimpleNamespace(step=0))
    # averaged at steps 2, 4, 6: before 2 the trained generator is used (None)
    seen = _train(net, callback, range(1, 7))
    assert seen == [None, 2.0, 2.0, 3.0, 3.0, statistics.mean([2, 4, 6])]
    assert callback.generator()[1].running_mean.tolist() == [60.0, 60.0]  # copied, not averaged
    assert not callback.generator()[0].weight.requires_grad
    # start_step 0: the initial weights (here 0) are the first of the mean
    with torch.no_grad():
        net[0].weight.zero_()
    callback = _polyak(net, start_step=0, update_every=3)
    callback.on_train_start(SimpleNamespace(step=0))
    assert _train(net, callback, range(1, 7))[-1] == statistics.mean([0, 3, 6])
    with pytest.raises(ValueError, match="update_every"):
        registry_of(plugin).get("callback", "polyak").validate_params({"update_every": 0})


def test_its_state_round_trips_through_a_checkpoint(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    callback = _polyak(net, start_step=1)
    _train(net, callback, range(1, 4))
    torch.save(callback.state_dict(), tmp_path / "state.pt")
    fresh = _polyak(net, start_step=1)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    # resumed on a checkpoint at its start step: that step is not counted twice
    fresh.on_train_start(SimpleNamespace(step=3))
    assert _train(net, fresh, [4]) == _train(net, callback, [4]) == [2.5]  # mean of 1..4
    assert fresh.state_dict()["count"] == 4


def _final_checkpoint(result):
    from mlflow import MlflowClient

    client = MlflowClient(result.tracking_uri)
    last = max(f.path for f in client.list_artifacts(result.run_id, "checkpoints"))
    path = client.download_artifacts(result.run_id, last, str(Path.cwd() / result.run_id))
    return torch.load(path, weights_only=True)


def test_resume_and_reevaluation_are_exact(tmp_path, monkeypatch):
    from gan_pipe.reevaluate import reevaluate, resume

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plugins = plugins_with(plugin)
    straight = run(load_recipe(RECIPE, plugins.registry), plugins)
    first = run(load_recipe(RECIPE, plugins.registry, ["train.steps=14"]), plugins)
    resumed = resume(first.run_id, plugins, steps=20)  # what `gan-pipe resume RUN_ID` does
    expected = _final_checkpoint(straight)["callbacks"]["callbacks.0"]
    got = _final_checkpoint(resumed)["callbacks"]["callbacks.0"]
    assert got["count"] == expected["count"] == 6  # steps 10, 12, ..., 20
    assert got["average"].keys() == expected["average"].keys()
    for name, value in expected["average"].items():
        assert torch.equal(got["average"][name], value), name
    assert any(key.endswith("kl") for key in straight.results)  # the recipe's divergences
    assert resumed.results == straight.results
    # `gan-pipe evaluate RUN_ID` scores the average again: the logged values, exactly
    results, step = reevaluate(resumed.run_id, plugins)
    assert step == 20 and results == resumed.results
