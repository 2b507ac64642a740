"""The pytest fixtures gan-pipe gives plugin authors (gan_pipe.pytest_plugin)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest

from gan_pipe.errors import RecipeError
from gan_pipe.pytest_plugin import TINY_RECIPE, run_tiny


class _CountSteps:
    """A callback that counts steps and logs the count: state a tiny run must show."""

    def __init__(self, params):
        self.seen = 0

    def on_step(self, ctx, step):
        self.seen += 1

    def on_train_end(self, ctx):
        ctx.tracker.log_metrics({"train/steps_seen": float(self.seen)}, ctx.step)

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class CountingPlugin:
    from gan_pipe import hookimpl

    @staticmethod
    @hookimpl
    def register_callbacks(register):
        register("count-steps", _CountSteps, description="counts steps")


def test_run_tiny_runs_the_plugin_and_reads_back_what_it_logged(workdir):
    run = run_tiny(CountingPlugin, set=["callbacks=[{name = 'count-steps'}]"], workdir=workdir)
    assert run.status == "FINISHED"
    assert run.metrics["train/steps_seen"] == 30.0  # TINY_RECIPE trains 30 steps
    assert run.params["callbacks"] == "count-steps"
    assert [s for s, _ in run.history("train/d_loss")] == [10, 20, 30]
    assert "plots/losses.png" in run.artifacts()
    assert run.results  # the final evaluation, as logged
    assert all(run.metrics[f"eval/{k}"] == pytest.approx(v) for k, v in run.results.items())


def test_run_tiny_reports_a_bad_override_as_a_recipe_error(workdir):
    with pytest.raises(RecipeError, match="train.stepz"):
        run_tiny(set=["train.stepz=3"], workdir=workdir)


def test_tiny_recipe_text_is_accepted_in_place_of_a_path(workdir):
    run = run_tiny(recipe=TINY_RECIPE.replace("steps = 30", "steps = 10"), workdir=workdir)
    assert [s for s, _ in run.history("train/d_loss")] == [10]


def test_the_fixtures_work_in_an_authors_test_file(tmp_path):
    """A plugin author's test file uses tiny_run and gan_pipe_metric_context with no
    conftest of its own: the fixtures come from gan-pipe (entry point pytest11)."""
    (tmp_path / "test_author.py").write_text(
        textwrap.dedent(
            """
            import os
            import torch

            def test_tiny(tiny_run, gan_pipe_workdir):
                run = tiny_run(set=["train.steps=10"])
                assert run.status == "FINISHED"
                assert (gan_pipe_workdir / "mlflow.db").exists()
                assert os.getcwd() == str(gan_pipe_workdir)

            def test_context(gan_pipe_metric_context):
                ctx = gan_pipe_metric_context(torch.zeros(50, 2), fake=torch.ones(50, 2))
                assert ctx.generate(10).shape == (10, 2)
            """
        )
    )
    installed = any(e.value == "gan_pipe.pytest_plugin" for e in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "gan_pipe.pytest_plugin"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
