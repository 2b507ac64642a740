"""A small study on a local Ray instance: the same seed runs, scheduled by Ray instead of the
local process pool, logging to the same store. Skipped where Ray is not installed
(pip install 'gan-pipe[ray]')."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gan_pipe.cli import app

from .conftest import write
from .test_study import TINY, _tree

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'gan-pipe[ray]'")


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_study_on_local_ray(workdir, local_ray):
    path = write(workdir / "tiny.toml", TINY)
    res = CliRunner().invoke(
        app,
        [
            "sweep",
            str(path),
            "--seeds",
            "3",
            "--executor",
            "ray",
            "--cpus-per-run",
            "1",
            "--name",
            "on-ray",
        ],
    )
    assert res.exit_code == 0, res.output
    c, kind = _tree(workdir)
    (study,) = kind["study"]
    (variant,) = kind["variant"]
    assert study.data.tags["gan_pipe.study"] == "on-ray"
    assert sorted(int(s.data.tags["gan_pipe.seed"]) for s in kind["seed"]) == [0, 1, 2]
    assert all(s.info.status == "FINISHED" for s in kind["seed"])
    assert all(s.data.tags["mlflow.parentRunId"] == variant.info.run_id for s in kind["seed"])
    assert variant.data.metrics["eval/modes.n"] == 3
    # each seed ran in a Ray worker with the thread count it was given
    assert all(s.data.tags["device"].endswith("1 threads)") for s in kind["seed"])


def test_ray_missing_is_a_clear_error(workdir, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    path = write(workdir / "tiny.toml", TINY)
    res = CliRunner().invoke(app, ["sweep", str(path), "--seeds", "1", "--executor", "ray"])
    assert res.exit_code == 2
    assert "pip install 'gan-pipe[ray]'" in res.output
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert c.get_experiment_by_name("tiny-ring") is None or not c.search_runs(
        [c.get_experiment_by_name("tiny-ring").experiment_id]
    )  # checked before the study wrote anything
