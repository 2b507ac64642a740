"""Resume after any interruption ends bit-identical to an uninterrupted run.

Ctrl-C (SIGINT) and SIGTERM at many points of a step (inside the discriminator step, between
D and G, while logging, while checkpointing), a second Ctrl-C in the middle of a step, and
SIGKILL of a real process at random moments: each time ``gan-pipe resume`` finishes the run,
and every tensor of its final checkpoint (both nets, both optimisers, schedules, RNG state,
batch order) equals the uninterrupted run's.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from gan_pipe.cli import app
from gan_pipe.plugins.callbacks.frames import SampleFrames
from gan_pipe.plugins.train import Trainer

from .conftest import write

runner = CliRunner()
SLOW = pytest.mark.slow

RECIPE = """
[experiment]
name = "exact"
seed = 3
device = "cpu"

[data]
name = "ring8"
[data.params]
n_train = 512
n_val = 64
n_test = 64

[model.generator]
name = "mlp"
[model.generator.params]
hidden = [16, 16]
activation = "relu"
output = "none"

[model.discriminator]
name = "mlp"
[model.discriminator.params]
hidden = [16, 16]
activation = "relu"

[noise]
distribution = "normal"
dim = 4

[loss]
name = "non-saturating"

[train]
batch_size = 64
steps = 24
n_critic = 2
lr = 1e-3
log_every = 3
sample_every = 12
checkpoint_every = 5
progress = false
"""


def _client():
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{Path.cwd() / 'mlflow.db'}")


def _final_checkpoint(run_id: str) -> dict[str, Any]:
    client = _client()
    ckpts = sorted(f.path for f in client.list_artifacts(run_id, "checkpoints"))
    path = client.download_artifacts(run_id, ckpts[-1], str(Path.cwd() / f"dl-{run_id}"))
    state = torch.load(path, weights_only=True)
    state.pop("recipe")  # not training state (a reference run may differ in train.progress)
    return state


def assert_same_state(a: Any, b: Any, where: str = "checkpoint") -> None:
    """Every tensor torch.equal, every other value ==, recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _run_id(output: str) -> str:
    return re.search(r"run id:\s+(\S+)", output).group(1)  # type: ignore[union-attr]


@pytest.fixture
def recipe(workdir):
    return write(workdir / "exact.toml", RECIPE)


@pytest.fixture
def straight(recipe):
    """The uninterrupted run's final checkpoint."""
    res = runner.invoke(app, ["run", str(recipe)])
    assert res.exit_code == 0, res.output
    return _final_checkpoint(_run_id(res.output))


def _signal_at(
    monkeypatch, method: str, call: int, when: str, sig: int, times: int = 1, cls: Any = Trainer
):
    """Send ``sig`` to this process ``times`` times, before or after the ``call``-th call of
    ``cls.<method>`` (a Trainer method by default)."""
    original = getattr(cls, method)
    calls = {"n": 0}

    def wrapper(self, *args, **kwargs):
        calls["n"] += 1
        hit = calls["n"] == call
        if hit and when == "before":
            for _ in range(times):
                signal.raise_signal(sig)
        out = original(self, *args, **kwargs)
        if hit and when == "after":
            for _ in range(times):
                signal.raise_signal(sig)
        return out

    monkeypatch.setattr(cls, method, wrapper)


def _interrupt_then_resume(recipe, monkeypatch, point, sig, times=1) -> tuple[str, Any]:
    with monkeypatch.context() as m:
        _signal_at(m, *point, sig=sig, times=times)
        res = runner.invoke(app, ["run", str(recipe)])
    assert res.exit_code == 130, res.output
    found = re.search(
        r"checkpoint of step (\d+): continue it with gan-pipe resume (\S+)", res.output
    )
    assert found, res.output
    step, run_id = int(found.group(1)), found.group(2)
    assert _client().get_run(run_id).info.status == "KILLED"
    res = runner.invoke(app, ["resume", run_id])
    assert res.exit_code == 0, res.output
    # resume says what stopped the run: the signal by name
    assert f"was KILLED (KeyboardInterrupt: stopped by {signal.Signals(sig).name}" in res.output
    run = _client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gan_pipe.resumed_from_step"] == str(step)
    return run_id, step


# (method, how many calls it gets before the last step, signal before or after the call):
# D steps are 2 per step (n_critic 2), G steps 1, logging every 3, checkpoints every 5,
# sample pictures at 0 and 12 (the second call is step 12's).
POINTS = [
    ("discriminator_step", 46, "before"),
    ("discriminator_step", 46, "after"),
    ("generator_step", 23, "before"),
    ("generator_step", 23, "after"),
    ("_drain", 7, "after"),
    ("save_checkpoint", 4, "before"),
]


def _random_point(seed: int) -> tuple[str, int, str]:
    rng = random.Random(seed)
    method, calls, when = rng.choice(POINTS)
    return method, rng.randint(1, calls), when


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=SLOW)], ids=["SIGINT", "SIGTERM"]
)
@pytest.mark.parametrize("seed", [0, *[pytest.param(s, marks=SLOW) for s in range(1, 6)]])
def test_resume_after_a_signal_equals_an_uninterrupted_run(
    recipe, straight, monkeypatch, sig, seed
):
    point = _random_point(seed)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    run_id, step = _interrupt_then_resume(recipe, monkeypatch, point, sig)
    # the step under way when the signal came was finished and is the checkpoint's label
    assert 0 < step < 24
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert_same_state(straight, _final_checkpoint(run_id), f"after {point}")


@SLOW
def test_a_second_ctrl_c_mid_step_resumes_from_the_last_periodic_checkpoint(
    recipe, straight, monkeypatch
):
    # two Ctrl-Cs inside step 13's discriminator step: it is abandoned half done, nothing is
    # checkpointed for it, and resume starts from step 10's periodic checkpoint
    run_id, step = _interrupt_then_resume(
        recipe, monkeypatch, ("discriminator_step", 25, "after"), signal.SIGINT, times=2
    )
    assert step == 10
    assert_same_state(straight, _final_checkpoint(run_id))


def test_ctrl_c_before_the_first_step_promises_no_resume(recipe, monkeypatch):
    # step 0's picture
    _signal_at(monkeypatch, "draw", 1, "before", signal.SIGINT, cls=SampleFrames)
    res = runner.invoke(app, ["run", str(recipe)])
    assert res.exit_code == 130
    assert "nothing to resume" in res.output and "gan-pipe resume" not in res.output
    (run,) = _client().search_runs(_client().search_experiments()[0].experiment_id)
    assert run.info.status == "KILLED"
    assert not _client().list_artifacts(run.info.run_id, "checkpoints")


@SLOW
def test_a_signal_during_the_last_step_keeps_the_finished_training(recipe, straight, monkeypatch):
    _signal_at(monkeypatch, "generator_step", 24, "before", signal.SIGTERM)
    res = runner.invoke(app, ["run", str(recipe)])
    assert res.exit_code == 130 and "outside training" in res.output
    (run,) = [
        r
        for r in _client().search_runs(_client().search_experiments()[0].experiment_id)
        if r.info.status == "KILLED"
    ]
    assert run.data.tags["gan_pipe.error"] == "KeyboardInterrupt: stopped by SIGTERM"
    assert_same_state(straight, _final_checkpoint(run.info.run_id))


# ------------------------------------------------------------------ real processes
_LONG = ["--set", "train.checkpoint_every=20", "--set", "train.sample_every=50"]


def _start(recipe: Path, steps: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # the same intra-op threads as this process, which runs the reference and the resume
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    cmd = [sys.executable, "-m", "gan_pipe.cli", "run", str(recipe)]
    cmd += [*_LONG, "--set", f"train.steps={steps}", "--set", "train.progress=true"]
    return subprocess.Popen(
        cmd, cwd=Path.cwd(), env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )


@SLOW
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"]
)
@pytest.mark.parametrize("seed", range(2))
def test_a_signal_from_outside_at_a_random_moment(recipe, sig, seed):
    """A real ``gan-pipe run`` process, signalled at a random moment between 20% and 50% of
    its training (timed by its own progress lines); SIGKILL leaves no chance to checkpoint,
    so resume starts from the last periodic one."""
    steps = 200
    proc = _start(recipe, steps)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # progress lines at 10% and 20% of the training
        if re.search(r"step \d+/200", line):
            seen.append(time.monotonic())
            if len(seen) == 2:
                break
    else:
        pytest.fail("the run printed no progress")
    # somewhere between 20% and 50% of the training
    time.sleep(random.Random(seed).uniform(0, 3 * (seen[1] - seen[0])))
    proc.send_signal(sig)
    err = proc.stderr.read()
    proc.wait(timeout=120)
    (run,) = _client().search_runs(_client().search_experiments()[0].experiment_id)
    run_id = run.info.run_id
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert run.info.status == "RUNNING"  # nobody could close it
    else:
        assert proc.returncode == 130, err
        assert f"gan-pipe resume {run_id}" in err
        assert run.info.status == "KILLED"
    res = runner.invoke(app, ["resume", run_id])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["run", str(recipe), *_LONG, "--set", f"train.steps={steps}"])
    assert res.exit_code == 0, res.output
    assert_same_state(_final_checkpoint(_run_id(res.output)), _final_checkpoint(run_id))


# ------------------------------------------------------------------ divergence
def test_a_diverged_run_fails_naming_the_step_and_saves_no_nan_checkpoint(recipe):
    res = runner.invoke(
        app,
        [
            "run",
            str(recipe),
            "--set",
            'train.optimizer="sgd"',
            "--set",
            "train.lr=1e30",
            "--set",
            "train.max_abs_value=0",  # the NaN check alone
        ],
    )
    assert res.exit_code == 2, res.output
    found = re.search(r"training diverged at step (\d+): (\S+) = (\S+)", res.output)
    assert found, res.output
    assert int(found.group(1)) % 3 == 0 or int(found.group(1)) % 5 == 0  # log or checkpoint
    assert found.group(3) in ("nan", "inf", "-inf")
    (run,) = _client().search_runs(_client().search_experiments()[0].experiment_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["gan_pipe.diverged"].startswith(f"step {found.group(1)}:")
    for f in _client().list_artifacts(run.info.run_id, "checkpoints"):
        state = torch.load(_client().download_artifacts(run.info.run_id, f.path, "."))
        assert all(torch.isfinite(t).all() for t in state["generator"].values())
        assert all(torch.isfinite(t).all() for t in state["discriminator"].values())


def test_large_but_finite_losses_count_as_diverged(recipe):
    """lr = 50 with Adam: losses and weights blow up to 1e7 and more without ever being NaN;
    train.max_abs_value (1e6 by default) catches them and the run FAILS instead of FINISHED."""
    res = runner.invoke(app, ["run", str(recipe), "--set", "train.lr=50"])
    assert res.exit_code == 2, res.output
    found = re.search(r"training diverged at step (\d+): (.+?) \(beyond", res.output)
    assert found and "train.max_abs_value = 1e+06" in res.output, res.output
    (run,) = _client().search_runs(_client().search_experiments()[0].experiment_id)
    assert run.info.status == "FAILED"
    # with the check off the same run trains to the end
    res = runner.invoke(
        app, ["run", str(recipe), "--set", "train.lr=50", "--set", "train.max_abs_value=0"]
    )
    assert res.exit_code == 0, res.output


def test_first_nonfinite_names_the_value_or_the_weight():
    from gan_pipe.plugins.train import _first_nonfinite

    assert _first_nonfinite({"train/d_loss": 1.0}, 3.0, 1e6) is None
    assert _first_nonfinite({"train/d_loss": float("nan")}, 3.0, 0) == "train/d_loss = nan"
    big = _first_nonfinite({"train/g_loss": -2.5e7}, 3.0, 1e6)
    assert big == "train/g_loss = -2.5e+07 (beyond train.max_abs_value = 1e+06)"
    assert _first_nonfinite({"train/g_loss": -2.5e7}, 3.0, 0) is None  # check off
    assert "NaN or infinite" in _first_nonfinite({}, float("inf"), 0)
    assert "reached 2e+06" in _first_nonfinite({}, 2e6, 1e6)
    assert _first_nonfinite({}, 2e6, 0) is None


# ------------------------------------------------------------------ history after resume
def test_a_resumed_run_plots_its_whole_history(recipe, monkeypatch):
    """Loss curves after a resume that extends a run cover the whole run: ctx.history starts
    with what the run logged up to its checkpoint."""
    seen = {}
    fit = Trainer.fit

    def keep_history(self):
        out = fit(self)
        seen.update({k: list(v) for k, v in self.ctx.history.items()})
        return out

    monkeypatch.setattr(Trainer, "fit", keep_history)
    res = runner.invoke(app, ["run", str(recipe), "--set", "train.steps=12"])
    assert res.exit_code == 0, res.output
    run_id = _run_id(res.output)
    first = dict(seen["train/d_loss"])
    res = runner.invoke(app, ["resume", run_id, "--steps", "18"])
    assert res.exit_code == 0, res.output
    steps = [s for s, _ in seen["train/d_loss"]]
    assert steps == [3, 6, 9, 12, 15, 18]
    assert {s: v for s, v in seen["train/d_loss"] if s <= 12} == pytest.approx(first)


# ------------------------------------------------------------------ what a resume records
def _checkpoints(run_id: str) -> dict[int, dict[str, Any]]:
    """step -> checkpoint, every checkpoint of the run."""
    client, out = _client(), {}
    for f in client.list_artifacts(run_id, "checkpoints"):
        path = client.download_artifacts(run_id, f.path, str(Path.cwd() / f"all-{run_id}"))
        state = torch.load(path, weights_only=True)
        out[int(state["step"])] = state
    return out


def test_checkpoints_hold_the_same_recipe_form_before_and_after_a_resume(recipe):
    """Every checkpoint holds the recipe as recipe/resolved.json does (every default filled
    in, component params included), in the first attempt as after a resume; only what the
    resume changed (train.steps) differs."""
    import json

    res = runner.invoke(app, ["run", str(recipe), "--set", "train.steps=12"])
    assert res.exit_code == 0, res.output
    run_id = _run_id(res.output)
    res = runner.invoke(app, ["resume", run_id, "--steps", "18"])
    assert res.exit_code == 0, res.output
    path = _client().download_artifacts(run_id, "recipe/resolved.json", ".")
    resolved = json.loads(Path(path).read_text())
    assert resolved["data"]["params"]["n_train"] == 512  # written in the recipe ...
    assert len(resolved["data"]["params"]) > 3  # ... and defaults the recipe does not write
    ckpts = _checkpoints(run_id)
    assert sorted(ckpts) == [5, 10, 12, 15, 18]
    for step, state in ckpts.items():
        expected = json.loads(json.dumps(resolved))
        expected["train"]["steps"] = 12 if step <= 12 else 18
        assert state["recipe"] == expected, f"checkpoint of step {step}"


def test_perf_of_a_resumed_run_covers_the_resumed_part(recipe):
    """perf/* of a resumed run measure the process that resumed it: steps_per_s x
    train_time_s is the number of steps it trained (total - gan_pipe.resumed_from_step), and
    samples_per_s = steps_per_s x batch_size x n_critic. The first part's figures stay in the
    metric's history at the step it ended."""
    res = runner.invoke(app, ["run", str(recipe), "--set", "train.steps=12"])
    assert res.exit_code == 0, res.output
    run_id = _run_id(res.output)
    res = runner.invoke(app, ["resume", run_id, "--steps", "18"])
    assert res.exit_code == 0, res.output
    client = _client()
    run = client.get_run(run_id)
    assert run.data.tags["gan_pipe.resumed_from_step"] == "12"

    def covered(step: int) -> float:
        values = {}
        for key in ("perf/steps_per_s", "perf/train_time_s", "perf/samples_per_s"):
            (m,) = [m for m in client.get_metric_history(run_id, key) if m.step == step]
            values[key] = m.value
        assert values["perf/samples_per_s"] == pytest.approx(values["perf/steps_per_s"] * 128)
        return values["perf/steps_per_s"] * values["perf/train_time_s"]

    assert covered(12) == pytest.approx(12, rel=1e-9)  # the first attempt: steps 0-12
    assert covered(18) == pytest.approx(6, rel=1e-9)  # the resume: steps 12-18 only
    m = run.data.metrics  # the run's latest values are the resumed part's
    assert m["perf/steps_per_s"] * m["perf/train_time_s"] == pytest.approx(6, rel=1e-9)
