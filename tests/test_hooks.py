"""Every hook, used the way a third-party plugin uses it, in a real (tiny) run."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest

from gan_pipe import hookimpl, hookspecs
from gan_pipe.manager import REGISTER_HOOKS
from gan_pipe.recipe import load_recipe
from gan_pipe.runner import run
from gan_pipe.testing import plugins_with

from .conftest import write
from .test_cli import TINY

HOOKS = [n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "gan_pipe_spec")]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_every_hook_is_documented_with_its_exact_signature():
    text = DOCS.read_text()
    assert len(HOOKS) == 15
    for name in HOOKS:
        args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"{name}({args})" in text, f"docs/plugins.md lacks {name}({args})"
    assert set(REGISTER_HOOKS) == {h for h in HOOKS if h.startswith("register_")}


class Recorder:
    """A third-party plugin that joins every stage and event."""

    def __init__(self):
        self.calls: list[str] = []
        self.steps: list[int] = []

    @hookimpl(wrapper=True)
    def gan_pipe_train(self, ctx):
        self.calls.append("train:before")
        steps = yield
        self.calls.append(f"train:after:{steps}")
        return steps

    @hookimpl
    def gan_pipe_on_train_step(self, step):  # opt-in: only the argument it needs
        self.steps.append(step)

    @hookimpl
    def gan_pipe_on_train_end(self, ctx):
        self.calls.append(f"end:{ctx.step}")

    @hookimpl
    def gan_pipe_evaluate(self, ctx):
        return {"generator_params": float(sum(p.numel() for p in ctx.generator.parameters()))}

    @hookimpl
    def gan_pipe_report(self, ctx):
        ctx.tracker.log_text("hello", "extra/report.txt")
        self.calls.append("report")

    @hookimpl
    def gan_pipe_on_stage_error(self, stage, error):
        self.calls.append(f"error:{stage}:{error}")


def _run(workdir, plugin, text=TINY):
    plugins = plugins_with(plugin)
    resolved = load_recipe(write(workdir / "r.toml", text), plugins.registry)
    return run(resolved, plugins)


def test_stage_wrapper_events_and_contributions(workdir):
    rec = Recorder()
    result = _run(workdir, rec)
    assert rec.calls == ["train:before", "train:after:6", "end:6", "report"]
    assert rec.steps == [1, 2, 3, 4, 5, 6]
    assert result.results["generator_params"] > 0  # merged with the built-in metrics
    assert "parzen_ll" in result.results
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run_ = client.get_run(result.run_id)
    assert run_.data.metrics["eval/generator_params"] == result.results["generator_params"]
    assert "extra/report.txt" in [f.path for f in client.list_artifacts(result.run_id, "extra")]


def test_stage_error_hook_sees_the_failure(workdir):
    rec = Recorder()

    class Failing:
        @hookimpl(tryfirst=True)
        def gan_pipe_data(self, ctx):
            raise RuntimeError("disk on fire")

    plugins = plugins_with(rec, Failing())
    resolved = load_recipe(write(workdir / "r.toml", TINY), plugins.registry)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(resolved, plugins)
    assert rec.calls == ["error:data:disk on fire"]


def test_a_plugin_can_replace_a_stage(workdir):
    class NoTraining:
        @hookimpl(tryfirst=True)
        def gan_pipe_train(self, ctx):
            return 0  # firstresult: the built-in loop does not run

    result = _run(workdir, NoTraining())
    assert result.steps == 0


def test_registered_component_is_usable_from_a_recipe(workdir):
    from pydantic import BaseModel, ConfigDict

    from gan_pipe.plugins.losses.bce import NonSaturatingLoss

    class P(BaseModel):
        model_config = ConfigDict(extra="forbid")
        scale: float = 1.0

    class Scaled(NonSaturatingLoss):
        def __init__(self, params):
            super().__init__()
            self.scale = params.scale

        def generator_loss(self, x):
            loss, extras = super().generator_loss(x)
            return loss * self.scale, extras

    mod = types.ModuleType("scaled_plugin")
    mod.register_losses = hookimpl(lambda register: register("scaled", Scaled, params=P))
    text = re.sub(
        r'\[loss\]\nname = "non-saturating"\n\[loss.params\]\nreal_label = 0.9',
        '[loss]\nname = "scaled"\n[loss.params]\nscale = 2.0',
        TINY,
    )
    result = _run(workdir, mod, text)
    assert result.steps == 6
