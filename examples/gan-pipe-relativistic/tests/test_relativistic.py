"""Tests of the relativistic loss: the component alone, then a tiny tracked run of the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gan_pipe.recipe import load_recipe
from gan_pipe.runner import run
from gan_pipe.testing import plugins_with, registry_of
from gan_pipe_relativistic import plugin

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "relativistic.toml"


def test_registered_with_documented_params():
    reg = registry_of(plugin)  # raises on a clash with a built-in or a misspelt hook
    comp = reg.get("loss", "relativistic")
    for field_name, field in comp.params.model_fields.items():
        assert field.description, f"document params field {field_name}"


def test_loss_values():
    from gan_pipe.context import LossInputs

    comp = registry_of(plugin).get("loss", "relativistic")
    loss = comp.factory(comp.validate_params({"real_label": 0.9}))
    zeros = torch.zeros(4)  # logits 0: sigmoid 0.5, so every BCE term is log 2
    x = LossInputs(torch.nn.Identity(), torch.zeros(4, 2), torch.zeros(4, 2), zeros, zeros)
    d, _ = loss.discriminator_loss(x)
    g, _ = loss.generator_loss(x)
    assert d.item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())
    assert g.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    with pytest.raises(ValueError, match="real_label"):
        comp.validate_params({"real_label": 2.0})


def test_a_tracked_run_uses_it(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # the run writes ./mlflow.db and ./mlartifacts
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plugins = plugins_with(plugin)
    result = run(load_recipe(RECIPE, plugins.registry), plugins)
    client = MlflowClient(result.tracking_uri)
    data = client.get_run(result.run_id).data
    tag = data.tags["gan_pipe.component.loss"]
    assert tag.startswith("relativistic (plugin gan_pipe_relativistic.plugin"), tag
    assert "train/g_loss" in data.metrics
