"""The example third-party package (examples/gan-pipe-relativistic), as users install it."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from gan_pipe.cli import app
from gan_pipe.context import LossInputs
from gan_pipe.host import PluginHost

from .conftest import write
from .test_cli import TINY


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_relativistic_average_loss_matches_its_formula():
    comp = PluginHost.load().registry.get("loss", "relativistic-average")
    loss = comp.factory(comp.params())
    r, f = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])  # means 2.0 and -0.5
    critic = torch.nn.Identity()
    x = LossInputs(critic, r.clone(), torch.zeros(2), r, f)
    d, _ = loss.discriminator_loss(x)
    expected = (
        sum(_bce(v + 0.5, 1) for v in r.tolist()) / 2
        + sum(_bce(v - 2.0, 0) for v in f.tolist()) / 2
    )
    assert d.item() == pytest.approx(expected, rel=1e-6)
    g, _ = loss.generator_loss(LossInputs(critic, r.clone(), torch.zeros(2), None, f))
    expected = (
        sum(_bce(v - 2.0, 1) for v in f.tolist()) / 2
        + sum(_bce(v + 0.5, 0) for v in r.tolist()) / 2
    )
    assert g.item() == pytest.approx(expected, rel=1e-6)


def test_a_run_uses_the_installed_plugin(workdir):
    res = CliRunner().invoke(
        app,
        [
            "run",
            str(write(workdir / "t.toml", TINY)),
            "--set",
            "loss.name=relativistic-average",
            "--set",
            "loss.params={}",
            "--set",
            "report=[]",
        ],
    )
    assert res.exit_code == 0, res.output
    from mlflow import MlflowClient

    (run,) = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(experiment_ids=["1"])
    assert run.data.params["loss.name"] == "relativistic-average"
    assert run.data.tags["gan_pipe.provider.loss"].startswith("gan-pipe-relativistic==0.1.0")
