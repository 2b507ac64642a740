"""Shared fixtures: every test that touches MLflow gets its own store in a temp directory."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def pytest_configure(config):
    """The Ctrl-C tests need SIGINT delivered. A shell starts background jobs (``make test &``,
    a CI runner's detached job) with SIGINT ignored, and gan-pipe, like every POSIX program,
    leaves an inherited "ignore" alone; the tests then saw no Ctrl-C at all. Restore Python's
    handler here: runs in this process get it, and subprocesses start with the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with no MLflow tracking URI: the default sqlite store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GAN_PIPE_STRICT_PLUGINS", "0")
    monkeypatch.setenv("GAN_PIPE_CACHE", str(tmp_path / "cache"))  # cached classifiers
    return tmp_path


@pytest.fixture(autouse=True)
def _quiet_threads():
    # Keep CPU tests from oversubscribing small CI machines.
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def mlp_nets(hidden: str = "[16]", params: str = "") -> str:
    """The [model] tables of most end-to-end tests: an MLP generator and an MLP discriminator,
    both of widths ``hidden`` (TOML), with the ``params`` lines added to each."""
    extra = f"\n{params}" if params else ""
    return "".join(
        f'\n[model.{net}]\nname = "mlp"\n[model.{net}.params]\nhidden = {hidden}{extra}\n'
        for net in ("generator", "discriminator")
    )


def ring8_recipe(
    name: str, *, n_train: int, n_val: int, n_test: int, seed: int | None = None, nets: str = ""
) -> str:
    """The head of a tiny ring8 recipe: [experiment] ``name`` (and ``seed``), ring8 data of
    these sizes, ``nets`` (default :func:`mlp_nets`) and the non-saturating loss. Tests append
    their own [train], [[evaluate.metrics]], [[report]] and [noise] tables."""
    seed_line = "" if seed is None else f"seed = {seed}\n"
    return (
        f'[experiment]\nname = "{name}"\n{seed_line}\n'
        f'[data]\nname = "ring8"\n[data.params]\n'
        f"n_train = {n_train}\nn_val = {n_val}\nn_test = {n_test}\n"
        f'{nets or mlp_nets()}\n[loss]\nname = "non-saturating"\n'
    )
