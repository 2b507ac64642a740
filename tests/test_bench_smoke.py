"""The benchmark scripts run at their smallest settings and print their ratio lines.

Only the output's shape is checked (finite numbers on the lines the docs quote): never wall
times, which depend on the machine and its load."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def numbers(out: str, pattern: str) -> list[float]:
    found = re.findall(pattern, out, flags=re.MULTILINE)
    assert found, f"no line matching {pattern!r} in:\n{out}"
    return [float(x) for x in found]


@pytest.mark.slow
def test_overhead_prints_finite_ratios(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["--warmup", "1", "--window", "1", "--reps", "1", "--threads", "1"]
    out = run_bench("overhead.py", *args, cwd=tmp_path)
    for label in ("pipeline/bare", "tracking on/off"):
        for kind in ("wall", "CPU"):
            (ratio,) = numbers(out, rf"^ratio {re.escape(label)} \({kind}\): (\S+)")
            assert math.isfinite(ratio) and ratio > 0, out
    assert numbers(out, r"^tracking calls alone \(CPU\): (\S+) ms/step")
    assert numbers(out, r"^load\s*: (\S+)")
    assert not list(tmp_path.iterdir()), "the bench must leave no MLflow store behind"


@pytest.mark.slow
def test_startup_prints_finite_differences(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = run_bench("startup.py", "--reps", "1", cwd=tmp_path)
    walls = numbers(out, r"above interpreter: wall (\S+) s")
    cpus = numbers(out, r"above interpreter: .* CPU (\S+) s")
    assert len(walls) == len(cpus) == 3, out
    assert all(math.isfinite(x) for x in walls + cpus), out
    assert numbers(out, r"^python -c pass\s*: wall median (\S+) s")


def test_metrics_bench_agrees_with_its_references(tmp_path):
    """Every estimator line prints finite times and a relative difference to its reference
    that is at rounding level (the one subsample-dependent line draws the same rows)."""
    out = run_bench("metrics.py", "--scale", "0.05", cwd=tmp_path)
    lines = re.findall(r"^(\S.*?)\s+(\S+) s\s+(\S+) s\s+(\S+)x\s+(\S+)", out, flags=re.MULTILINE)
    names = [name for name, *_ in lines]
    assert len(lines) == 8, out
    names_wanted = ("histogram", "W1 1-D", "sliced W1", "assignment", "KDE", "Frechet")
    for name in (*names_wanted, "FID features", "KID"):
        assert any(name in n for n in names), (name, out)
    for name, ours, ref, ratio, diff in lines:
        assert all(math.isfinite(float(v)) for v in (ours, ref, ratio)), name
        assert float(diff) < 1e-9, (name, diff)
    assert numbers(out, r"FID features .*\((\d+) images/s")
    assert numbers(out, r"classifier: 1 training epoch\s+(\S+) s")
