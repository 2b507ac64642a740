"""The example third-party package (examples/gan-pipe-relativistic), as users install it: it
is the scaffold's output plus what was added after, its own tests pass, and gan-pipe finds it
by its entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gan_pipe.cli import app
from gan_pipe.scaffold import render

from .conftest import write
from .test_cli import TINY

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gan-pipe-relativistic"


def test_the_example_is_still_what_the_scaffold_writes():
    """`gan-pipe new-plugin relativistic --kind loss` wrote it: the files the scaffold writes
    are all there, and those that were not meant to change did not."""
    fresh = render("relativistic", "loss")
    example = {str(p.relative_to(EXAMPLE)) for p in EXAMPLE.rglob("*") if p.is_file()}
    assert set(fresh) <= example, set(fresh) - example
    init = "src/gan_pipe_relativistic/__init__.py"
    assert (EXAMPLE / init).read_text() == fresh[init]

    def without(text: str, table: str, *keys: str) -> dict:
        data = tomllib.loads(text)
        for key in keys:
            data[table].pop(key, None)
        return data

    # pyproject: all but the description (the entry point, layout, build, test settings)
    ours, theirs = EXAMPLE / "pyproject.toml", fresh["pyproject.toml"]
    assert without(ours.read_text(), "project", "description") == without(
        theirs, "project", "description"
    )
    # the recipe: the scaffold's tiny run on ring8; the loss, callbacks and evaluation added
    recipe = "recipes/relativistic.toml"
    added = ("loss", "callbacks", "evaluate")
    ours = tomllib.loads((EXAMPLE / recipe).read_text())
    theirs = tomllib.loads(fresh[recipe])
    assert {k: v for k, v in ours.items() if k not in added} == {
        k: v for k, v in theirs.items() if k not in added
    }
    # the generated tests are still there, under their names
    tests = (EXAMPLE / "tests/test_relativistic.py").read_text()
    for name in ("test_registered_with_documented_params", "test_a_tracked_run_uses_it"):
        assert f"def {name}(" in fresh["tests/test_relativistic.py"] and f"def {name}(" in tests
    assert "gan-pipe new-plugin relativistic --kind loss" in (EXAMPLE / "README.md").read_text()


@pytest.mark.slow
def test_the_example_passes_its_own_tests():
    """Its tests, run the way its author runs them: `python -m pytest` in the package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTEST_"))}
    env |= {"GAN_PIPE_STRICT_PLUGINS": "1", "OMP_NUM_THREADS": "1"}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "6 passed" in tests.stdout


def test_a_run_uses_the_installed_plugin(workdir):
    text = TINY + '\n[[callbacks]]\nname = "polyak"\n[callbacks.params]\nstart_step = 2\n'
    res = CliRunner().invoke(
        app,
        [
            "run",
            str(write(workdir / "t.toml", text)),
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
    assert run.data.tags["gan_pipe.provider.callbacks.0"].startswith("gan-pipe-relativistic==")
    assert run.data.tags["gan_pipe.generator"] == "provided by callback polyak (callbacks.0)"
