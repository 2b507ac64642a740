"""Shared fixtures: every test that touches MLflow gets its own store in a temp directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


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
