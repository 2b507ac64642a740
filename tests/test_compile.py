"""``train.compile = true``: torch.compile of G and D on the CPU, compile time logged apart."""

from __future__ import annotations

import types

import pytest
import torch

from gan_pipe.context import Dataset, RunContext
from gan_pipe.errors import UserError
from gan_pipe.plugins import train_compile
from gan_pipe.plugins.train import Trainer
from gan_pipe.plugins.train_compile import CompileClock, compile_unavailable
from gan_pipe.recipe import Recipe
from gan_pipe.scoring import MemoryTracker

UNAVAILABLE = compile_unavailable()
needs_compile = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"torch.compile cannot run here: {UNAVAILABLE}"
)


def _trainer(compile: bool, steps: int = 6) -> Trainer:
    from gan_pipe.plugins.losses.bce import NonSaturatingLoss

    recipe = Recipe.model_validate(
        {
            "experiment": {"name": "t", "seed": 0},
            "data": {"name": "x"},
            "model": {"generator": {"name": "g"}, "discriminator": {"name": "d"}},
            "loss": {"name": "l"},
            "noise": {"dim": 4},
            "train": {
                "batch_size": 16,
                "steps": steps,
                "log_every": 2,
                "sample_every": 100,
                "progress": False,
                "compile": compile,
            },
        }
    )
    ctx = RunContext(
        recipe=recipe,
        plugins=types.SimpleNamespace(has_step_listeners=lambda: False),
        tracker=MemoryTracker(),
        device=torch.device("cpu"),
    )
    torch.manual_seed(0)
    ctx.dataset = Dataset("x", train=torch.randn(64, 2))
    ctx.generator = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    )
    ctx.discriminator = torch.nn.Sequential(
        torch.nn.Linear(2, 16), torch.nn.LeakyReLU(0.2), torch.nn.Linear(16, 1)
    )
    ctx.loss = NonSaturatingLoss()
    ctx.noise = lambda n, generator=None: torch.randn(n, 4, generator=generator)
    return Trainer(ctx)


@pytest.mark.slow
@needs_compile
def test_compiled_training_matches_eager_and_logs_compile_time():
    torch._dynamo.reset()
    eager = _trainer(False)
    eager.fit()
    compiled = _trainer(True)
    assert compiled.G._compiled_call_impl is not None  # nn.Module.compile: in place
    assert compiled.D._compiled_call_impl is not None
    compiled.fit()
    # the same nets and state_dict keys (checkpoints load either way), the same training up
    # to floating-point reassociation by the generated kernels
    for name in ("generator", "discriminator"):
        a = eager.checkpoint_state(6)[name]
        b = compiled.checkpoint_state(6)[name]
        assert list(a) == list(b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    for key in ("train/d_loss", "train/g_loss"):
        got = [v for _, v in compiled.ctx.history[key]]
        want = [v for _, v in eager.ctx.history[key]]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    # compile time is logged apart, at every logging step, and only with compile on
    seconds = [v for _, v in compiled.ctx.history["perf/compile_seconds"]]
    assert len(seconds) == 3 and seconds[0] > 0 and seconds == sorted(seconds)
    assert "perf/compile_seconds" not in eager.ctx.history


def test_compile_clock_adds_the_intervals_between_start_and_end():
    clock = CompileClock()
    times = iter([10.0, 12.5, 20.0, 20.25])
    real = train_compile.time.perf_counter
    train_compile.time.perf_counter = lambda: next(times)
    try:
        for _ in range(2):
            train_compile._on_start(None)
            train_compile._on_end(None)
    finally:
        train_compile.time.perf_counter = real
    assert clock.seconds == 2.75
    train_compile._on_end(None)  # an end without a start adds nothing
    assert clock.seconds == 2.75


def test_compile_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(train_compile, "compile_unavailable", lambda: "no C++ compiler (test)")
    with pytest.raises(UserError, match=r"train.compile = true: no C\+\+ compiler \(test\); set"):
        _trainer(True)


def test_compile_is_off_by_default():
    assert Recipe.model_fields["train"].default_factory().compile is False
    assert _trainer(False)._compile is None


@pytest.mark.slow
@needs_compile
def test_cli_run_with_compile_simultaneous_updates_and_gradient_penalty(workdir):
    """The whole pipeline with train.compile = true: WGAN-GP (its penalty's double backward
    runs eager), simultaneous updates (retain_graph), evaluation and the logged generator."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from gan_pipe.cli import app

    from .conftest import RECIPES

    sets = [
        "train.compile=true",
        "train.steps=4",
        "train.log_every=2",
        "train.n_critic=1",
        "train.updates=simultaneous",
        "train.progress=false",
    ]
    args = [x for s in sets for x in ("--set", s)]
    res = CliRunner().invoke(app, ["run", str(RECIPES / "ring8-wgan-gp.toml"), *args])
    assert res.exit_code == 0, res.output
    (run,) = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(["1"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.compile"] == "True"
    assert run.data.metrics["perf/compile_seconds"] > 0
