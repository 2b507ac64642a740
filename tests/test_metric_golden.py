"""The metric values recorded before the estimators moved to ``gan_pipe.estimators`` (and the
evaluation path became one function) are still what every metric gives, on fixed tensors and
on a tiny tracked run (periodic and final evaluations). See ``tests/metric_golden.py``."""

from __future__ import annotations

import json
import math

import pytest

from .metric_golden import GOLDEN, one_thread, run_case, tensor_cases

# The KDE of ``divergences`` and the Parzen window now share one implementation; the values
# agree to rounding, not bit for bit (see docs/metrics.md).
RTOL = 1e-9


def _same(got, want, where):
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), where
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), where
    else:
        assert got == pytest.approx(want, rel=RTOL, abs=1e-12), where


def test_metric_values_on_fixed_tensors_are_unchanged(tmp_path):
    want = json.loads(GOLDEN.read_text())["tensors"]
    _same(json.loads(json.dumps(one_thread(tensor_cases, tmp_path))), want, "tensors")


@pytest.mark.slow
def test_a_tiny_runs_logged_evaluations_are_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("GAN_PIPE_CACHE", str(tmp_path / "cache"))
    want = json.loads(GOLDEN.read_text())["run"]
    _same(json.loads(json.dumps(one_thread(run_case, tmp_path))), want, "run")
