"""Callbacks as recipe components: ``[[callbacks]]`` validated, logged and tagged like every
component; their events in a real run; their state in every checkpoint, back on resume and
in ``gan-pipe evaluate``; and the built-in ``ema``, checked against its closed form."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from typer.testing import CliRunner

from gan_pipe import hookimpl
from gan_pipe.cli import app
from gan_pipe.errors import PluginError, RecipeError
from gan_pipe.plugins.callbacks.ema import GeneratorEMA
from gan_pipe.recipe import load_recipe
from gan_pipe.runner import run
from gan_pipe.testing import plugins_with, registry_of

from .conftest import write
from .test_resume_exact import RECIPE as EXACT
from .test_resume_exact import _client, _final_checkpoint, _run_id, _signal_at, assert_same_state

runner = CliRunner()

EMA = """
[[callbacks]]
name = "ema"
[callbacks.params]
decay = 0.8
start_step = 2
update_every = 3

[[evaluate.metrics]]
name = "divergences"
[evaluate.metrics.params]
n_samples = 400
n_projections = 8
n_assign = 0
kde = false
"""


def recipe_text(callbacks: str = EMA) -> str:
    """test_resume_exact's recipe (ring8, 24 steps, checkpoints every 5) plus callbacks."""
    return EXACT + callbacks


# ------------------------------------------------------------------ a third party's callback
class CounterParams(BaseModel):
    """A stateful callback's params: what to add to its tensor sum each step."""

    model_config = ConfigDict(extra="forbid")
    weight: float = 1.0


class Counter:
    """Counts steps in a tensor (state), records every event it sees (class-wide log)."""

    events: list[tuple[Any, ...]] = []

    def __init__(self, params: CounterParams):
        self.weight = params.weight
        self.total: torch.Tensor | None = None
        self.steps = 0

    def setup(self, ctx):
        self.total = torch.zeros((), device=ctx.device)
        self.events.append(("setup",))

    def on_train_start(self, ctx):
        self.events.append(("start", ctx.step, self.steps))

    def on_step(self, ctx, step):
        self.total += self.weight
        self.steps += 1

    def on_log(self, ctx, step, metrics):
        self.events.append(("log", step, sorted(metrics)[0]))

    def on_checkpoint(self, ctx, step):
        self.events.append(("checkpoint", step))

    def before_evaluation(self, ctx, step):
        self.events.append(("before_eval", step))

    def after_evaluation(self, ctx, step, results):
        self.events.append(("after_eval", step, *sorted(results)[:1]))

    def on_train_end(self, ctx):
        self.events.append(("end", ctx.step, self.steps))

    def teardown(self, ctx):
        self.events.append(("teardown",))

    def state_dict(self):
        return {"total": self.total, "steps": self.steps}

    def load_state_dict(self, state):
        self.total.copy_(state["total"])
        self.steps = state["steps"]
        self.events.append(("loaded", self.steps))


class CounterPlugin:
    @hookimpl
    def register_callbacks(self, register):
        register("counter", Counter, params=CounterParams)


COUNTER = """
[[callbacks]]
name = "counter"
[callbacks.params]
weight = 0.5
"""


def _run_with(workdir: Path, plugin: Any, text: str, *sets: str):
    plugins = plugins_with(plugin)
    resolved = load_recipe(write(workdir / "r.toml", text), plugins.registry, list(sets))
    return run(resolved, plugins), plugins


def test_a_third_party_callback_gets_its_events_params_tags_and_state(workdir):
    Counter.events = []
    sets = ("train.eval_every=12", "train.steps=13", "train.checkpoint_every=0")
    result, _ = _run_with(workdir, CounterPlugin(), recipe_text(COUNTER + EMA), *sets)
    ev = Counter.events
    assert ev[:2] == [("setup",), ("start", 0, 0)]
    assert [e[1] for e in ev if e[0] == "log"] == [3, 6, 9, 12, 13]
    assert ("log", 3, "train/d_fake") in ev
    # the periodic evaluation at 12, the final one at 13, each inside before/after
    assert [e for e in ev if "eval" in e[0]] == [
        ("before_eval", 12),
        ("after_eval", 12, "div_bins"),
        ("before_eval", 13),
        ("after_eval", 13, "div_bins"),
    ]
    assert ev.index(("checkpoint", 13)) < ev.index(("end", 13, 13)) < ev.index(("teardown",))
    run_ = _client().get_run(result.run_id)
    params, tags = run_.data.params, run_.data.tags
    assert params["callbacks"] == "counter,ema"
    assert params["callbacks.counter.weight"] == "0.5"
    assert params["callbacks.ema.decay"] == "0.8" and params["callbacks.ema.update_every"] == "3"
    assert tags["gan_pipe.component.callbacks.0"] == "counter (plugin CounterPlugin-0)"
    assert tags["gan_pipe.component.callbacks.1"] == "ema (plugin gan_pipe.plugins.callbacks.ema)"
    assert tags["gan_pipe.provider.callbacks.1"].startswith("gan-pipe==")
    assert tags["gan_pipe.generator"] == "provided by callback ema (callbacks.1)"
    state = _final_checkpoint(result.run_id)["callbacks"]
    assert state["callbacks.0"] == {"steps": 13, "total": torch.tensor(6.5)}
    assert set(state["callbacks.1"]) == {"started_at", "updates", "average"}


def test_a_callback_resumes_with_its_state(workdir):
    Counter.events = []
    first, plugins = _run_with(workdir, CounterPlugin(), recipe_text(COUNTER), "train.steps=10")
    from gan_pipe.reevaluate import resume

    Counter.events = []
    resume(first.run_id, plugins, steps=16)
    assert Counter.events[:3] == [("setup",), ("loaded", 10), ("start", 10, 10)]
    state = _final_checkpoint(first.run_id)["callbacks"]["callbacks.0"]
    assert state == {"steps": 16, "total": torch.tensor(8.0)}


def test_callback_entries_are_validated_like_every_component(workdir):
    plugins = plugins_with(CounterPlugin())

    def problems(callbacks: str) -> str:
        with pytest.raises(RecipeError) as e:
            load_recipe(write(workdir / "r.toml", recipe_text(callbacks)), plugins.registry)
        return "\n".join(e.value.problems)

    assert "callbacks.0.params.decai = 0.9: unknown key; did you mean 'decay'" in problems(
        '[[callbacks]]\nname = "ema"\n[callbacks.params]\ndecai = 0.9\n'
    )
    assert "callbacks.0.params.decay = 1.0" in problems(
        '[[callbacks]]\nname = "ema"\n[callbacks.params]\ndecay = 1.0\n'
    )
    assert "callbacks.1.name = 'emma': unknown callback; did you mean 'ema'" in problems(
        COUNTER + '[[callbacks]]\nname = "emma"\n'
    )
    assert "callbacks.0.params.weight = 'x'" in problems(COUNTER.replace("0.5", '"x"'))
    # the command line says it without a traceback, exit 2
    path = write(workdir / "bad.toml", recipe_text('[[callbacks]]\nname = "ema"\nevery = 2\n'))
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "callbacks.0.every = 2: unknown key" in res.output
    assert "Traceback" not in res.output


def test_a_callback_without_any_event_is_refused_naming_it(workdir):
    class Nothing:
        def __init__(self, params):
            pass

    class NothingPlugin:
        @hookimpl
        def register_callbacks(self, register):
            register("nothing", Nothing)

    assert registry_of(NothingPlugin()).get("callback", "nothing").factory is Nothing
    text = recipe_text('[[callbacks]]\nname = "nothing"\n')
    with pytest.raises(PluginError, match=r"callback 'nothing' of plugin .* without setup"):
        _run_with(workdir, NothingPlugin(), text)


# ------------------------------------------------------------------ ema: the closed form
class Spy:
    """Records the trained generator's weights after every step (and at the start)."""

    seen: dict[int, dict[str, torch.Tensor]] = {}

    def __init__(self, params=None):
        pass

    def _keep(self, ctx, step):
        weights = ctx.generator.named_parameters()
        Spy.seen[step] = {k: v.detach().double().clone() for k, v in weights}

    def on_train_start(self, ctx):
        self._keep(ctx, ctx.step)

    def on_step(self, ctx, step):
        self._keep(ctx, step)


class SpyPlugin:
    @hookimpl
    def register_callbacks(self, register):
        register("spy", Spy)


def ema_closed_form(seen, decay: float, start: int, every: int, last: int):
    """beta^k theta(s) + sum_j (1 - beta) beta^(k - j) theta(u_j): the average started at
    step s with updates at u_1 < ... < u_k (every ``every`` steps after s), in float64."""
    updates = list(range(start + every, last + 1, every))
    k = len(updates)
    out = {}
    for name, first in seen[start].items():
        acc = decay**k * first
        for j, u in enumerate(updates, start=1):
            acc = acc + (1 - decay) * decay ** (k - j) * seen[u][name]
        out[name] = acc
    return out


def test_ema_equals_its_closed_form_and_is_the_logged_model(workdir):
    import mlflow

    Spy.seen = {}
    text = recipe_text(EMA + '[[callbacks]]\nname = "spy"\n')
    result, _ = _run_with(workdir, SpyPlugin(), text)
    ckpt = _final_checkpoint(result.run_id)
    ema = ckpt["callbacks"]["callbacks.0"]
    assert (ema["started_at"], ema["updates"]) == (2, 7)  # steps 5, 8, ..., 23
    expected = ema_closed_form(Spy.seen, 0.8, 2, 3, 24)
    for name, value in expected.items():
        torch.testing.assert_close(ema["average"][name].double(), value, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(ckpt["generator"][name].double(), value)  # not the raw G
    # the logged model is the average, bit for bit
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = _client().get_run(result.run_id).info.experiment_id
    (model,) = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")
    logged = mlflow.pytorch.load_model(model.model_uri).state_dict()
    assert_same_state(dict(logged), dict(ema["average"]), "logged model")


def test_ema_updates_every_n_steps_from_its_start():
    """Unit: copy at start_step, lerp every update_every steps, buffers copied."""
    from types import SimpleNamespace

    from gan_pipe.plugins.callbacks.ema import EMAParams

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ctx = SimpleNamespace(generator=net, step=0)
    cb = GeneratorEMA(EMAParams(decay=0.5, start_step=1, update_every=2))
    cb.setup(ctx)
    cb.on_train_start(ctx)
    assert cb.generator() is None  # before start_step: the trained generator is used
    weights = []
    for step in range(1, 6):
        with torch.no_grad():
            net[0].weight.fill_(float(step))
            net[1].running_mean.fill_(10.0 * step)
        cb.on_step(ctx, step)
        weights.append(cb.generator()[0].weight[0, 0].item())
    # start at 1 (copy), update at 3 and 5: 0.5 * 1 + 0.5 * 3 = 2, 0.5 * 2 + 0.5 * 5 = 3.5
    assert weights == [1.0, 1.0, 2.0, 2.0, 3.5]
    assert cb.generator()[1].running_mean.tolist() == [50.0, 50.0]  # copied at the update
    assert not cb.generator()[0].weight.requires_grad


# ------------------------------------------------------------------ re-evaluation
def test_evaluate_run_id_reproduces_the_ema_run_exactly(workdir, monkeypatch):
    path = write(workdir / "ema.toml", recipe_text())
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    run_id = _run_id(res.output)
    client = _client()
    logged = {k: v for k, v in client.get_run(run_id).data.metrics.items() if k.startswith("eval/")}
    assert "eval/kl" in logged
    res = runner.invoke(app, ["evaluate", run_id])
    assert res.exit_code == 0, res.output
    for key, value in logged.items():
        assert [m.value for m in client.get_metric_history(run_id, key)] == [value, value], key

    # what the issue saw: re-evaluated without the EMA state, the raw generator scores
    # otherwise (so the equality above is not one any generator would pass)
    from gan_pipe.callback_list import CallbackList

    monkeypatch.setattr(CallbackList, "load_state_dict", lambda self, states: None)
    res = runner.invoke(app, ["evaluate", run_id])
    assert res.exit_code == 0, res.output
    raw = client.get_metric_history(run_id, "eval/kl")[-1].value
    assert raw != logged["eval/kl"]


# ------------------------------------------------------------------ resume equals straight
@pytest.fixture
def ema_recipe(workdir):
    return write(workdir / "ema.toml", recipe_text())


@pytest.fixture
def straight(ema_recipe):
    """The uninterrupted EMA run's final checkpoint."""
    res = runner.invoke(app, ["run", str(ema_recipe)])
    assert res.exit_code == 0, res.output
    state = _final_checkpoint(_run_id(res.output))
    assert state["callbacks"]["callbacks.0"]["updates"] == 7
    return state


def _stopped(recipe: Path, monkeypatch, *point: Any, **how: Any) -> tuple[int, str]:
    """Run with SIGINT at ``point`` (see test_resume_exact._signal_at); (step, run id)."""
    with monkeypatch.context() as m:
        _signal_at(m, *point, sig=signal.SIGINT, **how)
        res = runner.invoke(app, ["run", str(recipe)])
    assert res.exit_code == 130, res.output
    said = r"checkpoint of step (\d+): continue it with gan-pipe resume (\S+)"
    found = re.search(said, res.output)
    assert found, res.output
    return int(found.group(1)), found.group(2)


@pytest.mark.parametrize(
    "point",
    [("generator_step", 13, "after"), pytest.param(("_drain", 5, "after"), marks=pytest.mark.slow)],
    ids=["generator_step", "drain"],
)
def test_ctrl_c_and_resume_end_with_the_uninterrupted_ema(ema_recipe, straight, monkeypatch, point):
    step, run_id = _stopped(ema_recipe, monkeypatch, *point)
    assert step in (13, 15)  # the step under way was finished and checkpointed
    res = runner.invoke(app, ["resume", run_id])
    assert res.exit_code == 0, res.output
    assert_same_state(straight, _final_checkpoint(run_id), "after resume")


def test_a_second_ctrl_c_inside_an_ema_update_abandons_the_step(ema_recipe, straight, monkeypatch):
    # the 4th update is step 14's: its half-done step is not saved, step 10's checkpoint is
    point = ("_update", 4, "before")
    step, run_id = _stopped(ema_recipe, monkeypatch, *point, times=2, cls=GeneratorEMA)
    assert step == 10
    res = runner.invoke(app, ["resume", run_id])
    assert res.exit_code == 0, res.output
    assert_same_state(straight, _final_checkpoint(run_id), "after resume")


# ------------------------------------------------------------------ the documented example
def _documented_example():
    """The third-party callback of docs/plugins.md, as a plugin module."""
    import types

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    code = re.search(r"```python\n(# my_gan/plugin.py.*?)```", text, re.S).group(1)
    module = types.ModuleType("my_gan_plugin")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    return module


def test_the_documented_callback_runs_logs_and_resumes(workdir):
    from gan_pipe.reevaluate import resume

    plugin = _documented_example()
    text = recipe_text('[[callbacks]]\nname = "g-norm"\n[callbacks.params]\nmomentum = 0.99\n')
    first, plugins = _run_with(workdir, plugin, text, "train.steps=12")
    resume(first.run_id, plugins, steps=24)
    history = _client().get_metric_history(first.run_id, "train/g_weight_norm")
    assert sorted(m.step for m in history) == [3, 6, 9, 12, 15, 18, 21, 24]
    state = _final_checkpoint(first.run_id)["callbacks"]["callbacks.0"]
    assert state["running"].item() == pytest.approx(history[-1].value)
    # the running mean went on from the checkpoint: started over, 12 steps of momentum 0.99
    # would give at most 1 - 0.99**12 = 11% of the norm
    gen = _final_checkpoint(first.run_id)["generator"]
    norm = torch.stack([v.norm() for k, v in gen.items()]).norm().item()
    assert state["running"].item() > (1 - 0.99**12) * norm


def test_a_replaced_build_stage_that_skips_the_callbacks_is_an_error(workdir):
    from gan_pipe.plugins import stages

    class Build:
        @hookimpl(tryfirst=True)
        def gan_pipe_build(self, ctx):
            keep = stages.build_callbacks
            stages.build_callbacks = lambda ctx: None  # "forgets" them
            try:
                return stages.gan_pipe_build(ctx)
            finally:
                stages.build_callbacks = keep

    with pytest.raises(PluginError, match=r"names 1 callback\(s\) but the build stage built 0"):
        _run_with(workdir, Build(), recipe_text())


# ------------------------------------------------------------------ trainer-level details
class Steps:
    """Counts on_step calls (state) and whether teardown came."""

    def __init__(self):
        self.steps, self.torn_down = 0, False

    def on_step(self, ctx, step):
        self.steps += 1

    def teardown(self, ctx):
        self.torn_down = True

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def _with_callback(trainer, cb):
    from gan_pipe.callback_list import CallbackList

    trainer.ctx.callbacks = CallbackList([("callbacks.0", cb)])
    trainer.callbacks = trainer.ctx.callbacks + trainer.duties
    return trainer


def test_a_rollback_restores_the_callbacks_state_and_teardown_always_comes():
    from gan_pipe.plugins.train import TrainingDiverged

    from .plugins.test_train import _poisoned

    t, _ = _poisoned([5], on_nonfinite="rollback")  # NaN after 5, found at 6, back to 4
    cb = Steps()
    assert _with_callback(t, cb).fit() == 12
    assert cb.steps == 12 and cb.torn_down  # steps 5 and 6 of the abandoned try undone
    t, _ = _poisoned([5])
    cb = Steps()
    with pytest.raises(TrainingDiverged):
        _with_callback(t, cb).fit()
    assert cb.torn_down


def test_sample_frames_draw_the_provided_generator():
    import copy

    import numpy as np

    from gan_pipe.plugins.callbacks.frames import SampleFrames

    from .plugins.test_train import _tiny_trainer

    t = _tiny_trainer(dim=2)
    got = []
    t.ctx.tracker.log_image = lambda image, key, step: got.append(image)
    frames = SampleFrames(t.ctx, every=1, total=2)
    other = copy.deepcopy(t.G)
    with torch.no_grad():
        other.bias.add_(1.0)

    class Provides:
        def generator(self):
            return other

    frames.draw(t.ctx, 1)
    _with_callback(t, Provides())
    frames.draw(t.ctx, 1)
    t.ctx.generator = other
    frames.draw(t.ctx, 1)
    raw, provided, drawn_from_other = got
    assert not np.array_equal(raw, provided) and np.array_equal(provided, drawn_from_other)
