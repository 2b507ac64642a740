"""pytest fixtures for plugin authors, loaded automatically once gan-pipe is installed
(entry point ``pytest11``; turn them off with ``-p no:gan_pipe``).

``gan_pipe_workdir``
    A fresh temporary working directory whose MLflow store is its own ``mlflow.db`` (the
    tracking URI of the environment is ignored): a test run never touches a real store.
``tiny_run``
    A function that runs a tiny tracked experiment (ring8, MLP nets, 30 steps: a few
    seconds on a CPU) with your plugin modules loaded beside the built-ins and returns a
    :class:`TinyRun` to read what was logged::

        def test_my_loss_logs_its_scalar(tiny_run):
            run = tiny_run(my_plugin, set=['loss.name="my-loss"'])
            assert run.status == "FINISHED"
            assert "train/my_scalar" in run.metrics

``gan_pipe_metric_context``
    :func:`gan_pipe.testing.metric_context`: what a metric or report sees, from tensors.

The same run without pytest: :func:`run_tiny`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: The recipe :func:`run_tiny` runs unless given another: every stage on embedded data.
TINY_RECIPE = """\
[experiment]
name = "tiny"
seed = 0
device = "cpu"

[data]
name = "ring8"
[data.params]
n_train = 512
n_val = 128
n_test = 256

[model.generator]
name = "mlp"
[model.generator.params]
hidden = [16, 16]
output = "none"

[model.discriminator]
name = "mlp"
[model.discriminator.params]
hidden = [16, 16]

[loss]
name = "non-saturating"

[train]
batch_size = 64
steps = 30
log_every = 10
progress = false

[[evaluate.metrics]]
name = "divergences"
[evaluate.metrics.params]
n_samples = 400
n_kde = 200
n_assign = 100

[[report]]
name = "loss-curves"
"""


@dataclass
class TinyRun:
    """A finished (or failed) tiny run and the MLflow client of its store."""

    run_id: str
    client: Any  # mlflow.MlflowClient
    results: dict[str, float]

    @property
    def run(self) -> Any:
        return self.client.get_run(self.run_id)

    @property
    def status(self) -> str:
        return self.run.info.status

    @property
    def params(self) -> dict[str, str]:
        return self.run.data.params

    @property
    def metrics(self) -> dict[str, float]:
        return self.run.data.metrics

    @property
    def tags(self) -> dict[str, str]:
        return self.run.data.tags

    def history(self, key: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric, by step."""
        points = self.client.get_metric_history(self.run_id, key)
        return sorted((m.step, m.value) for m in points)

    def artifacts(self, path: str = "") -> list[str]:
        """Every artifact path under ``path``, recursively."""
        out: list[str] = []
        for f in self.client.list_artifacts(self.run_id, path or None):
            out += self.artifacts(f.path) if f.is_dir else [f.path]
        return out


def run_tiny(
    *plugins: Any,
    set: Sequence[str] = (),  # noqa: A002  (the CLI's --set)
    recipe: str | Path | None = None,
    workdir: str | Path = ".",
) -> TinyRun:
    """Run ``recipe`` (a path, TOML text, or :data:`TINY_RECIPE`) with ``--set``-style
    overrides and ``plugins`` loaded beside the built-ins, in the MLflow store that the
    environment selects (``gan_pipe_workdir`` makes it a temporary one). Bad recipes and
    plugins raise as in a run (:class:`~gan_pipe.errors.RecipeError`,
    :class:`~gan_pipe.errors.PluginError`)."""
    from mlflow import MlflowClient

    from .recipe import load_recipe
    from .runner import run
    from .testing import plugins_with

    if recipe is None or (isinstance(recipe, str) and "\n" in recipe):
        path = Path(workdir) / "tiny.toml"
        path.write_text(TINY_RECIPE if recipe is None else str(recipe))
    else:
        path = Path(recipe)
    host = plugins_with(*plugins)
    result = run(load_recipe(path, host.registry, list(set)), host)
    return TinyRun(result.run_id, MlflowClient(result.tracking_uri), dict(result.results))


@pytest.fixture
def gan_pipe_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary working directory with its own MLflow store (``./mlflow.db``)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("GAN_PIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GAN_PIPE_SPOOL_DIR", str(tmp_path / "spool"))
    if "GAN_PIPE_STRICT_PLUGINS" not in os.environ:
        monkeypatch.setenv("GAN_PIPE_STRICT_PLUGINS", "1")  # a broken plugin fails the test
    yield tmp_path


@pytest.fixture
def tiny_run(gan_pipe_workdir: Path) -> Callable[..., TinyRun]:
    """:func:`run_tiny` in ``gan_pipe_workdir``."""

    def go(*plugins: Any, set: Sequence[str] = (), recipe: str | Path | None = None) -> TinyRun:  # noqa: A002
        return run_tiny(*plugins, set=set, recipe=recipe, workdir=gan_pipe_workdir)

    return go


@pytest.fixture
def gan_pipe_metric_context() -> Callable[..., Any]:
    """:func:`gan_pipe.testing.metric_context`."""
    from .testing import metric_context

    return metric_context
