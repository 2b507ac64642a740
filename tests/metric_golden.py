"""Every built-in metric's values on fixed tiny inputs and on one tiny tracked run, recorded
before the metric code was reorganised into ``gan_pipe.estimators`` (see
``tests/data/metric_golden.json``); ``tests/test_metric_golden.py`` checks they stay the same.

Run ``python -m tests.metric_golden OUT.json`` to write the current values (to compare two
versions exactly: ``diff``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .conftest import ring8_recipe

GOLDEN = Path(__file__).parent / "data" / "metric_golden.json"

RUN = (
    ring8_recipe("golden", seed=3, n_train=2000, n_val=300, n_test=300)
    + """
[noise]
distribution = "normal"
dim = 4
[train]
batch_size = 64
steps = 4
log_every = 2
eval_every = 2
progress = false
[[evaluate.metrics]]
name = "modes"
[evaluate.metrics.params]
n_samples = 500
[[evaluate.metrics]]
name = "divergences"
[evaluate.metrics.params]
n_samples = 800
n_kde = 300
n_assign = 200
[[evaluate.metrics]]
name = "parzen"
prefix = "p_"
[evaluate.metrics.params]
n_samples = 400
"""
)


def _context(dataset: Any, fake: Any, tmp: Path) -> Any:
    """The context a metric sees in a run, from tensors (the first n fake rows)."""
    import torch

    from gan_pipe.testing import metric_context

    return metric_context(dataset, fake, device=torch.device("cpu"))


def _dataset(name: str, **params: Any) -> Any:
    from gan_pipe.host import PluginHost

    comp = PluginHost.load(entry_points=False).registry.get("dataset", name)
    return comp.factory(comp.params.model_validate(params))


def _metric(name: str, **params: Any) -> Any:
    from gan_pipe.host import PluginHost

    comp = PluginHost.load(entry_points=False).registry.get("metric", name)
    return comp.factory(comp.validate_params(params))


def tensor_cases(tmp: Path) -> dict[str, dict[str, float]]:
    """Metric values on fixed generated rows (no training): every branch of every metric."""
    import torch

    from gan_pipe.context import Dataset
    from gan_pipe.evaluation import isolated_rng

    g = torch.Generator().manual_seed(7)
    out: dict[str, dict[str, float]] = {}
    g1 = _dataset("gaussian-1d", n_train=500, n_val=200, n_test=300)
    ring = _dataset("ring8", n_train=500, n_val=200, n_test=300)
    fake1 = 4.2 + 0.7 * torch.randn(900, 1, generator=g)
    fake1[3, 0] = float("nan")
    fake2 = ring.sample(900, torch.Generator().manual_seed(11)) * 1.05 + 0.01
    fake3 = torch.randn(600, 3, generator=g)
    d3 = Dataset(
        name="three",
        train=torch.randn(400, 3, generator=g),
        test=torch.randn(300, 3, generator=g),
        value_range=(-4.0, 4.0),
    )
    cases = [
        ("div_1d", g1, fake1, "divergences", {"n_samples": 800, "n_kde": 300}),
        ("div_2d", ring, fake2, "divergences", {"n_samples": 800, "n_kde": 300, "n_assign": 200}),
        ("div_2d_range", ring, fake2, "divergences",
         {"n_samples": 500, "bins": 10, "range": [[-2, 2], [-1.5, 1.5]], "bandwidth": 0.05}),
        ("div_3d", d3, fake3, "divergences", {"n_samples": 500}),
        ("modes", ring, fake2, "modes", {"n_samples": 700}),
        ("parzen", ring, fake2, "parzen", {"n_samples": 600, "n_val": 150, "n_test": 250}),
        ("parzen_seeded", ring, fake2, "parzen",
         {"n_samples": 600, "n_val": 100, "n_test": 200, "seed": 3, "dtype": "float64"}),
        ("parzen_fixed", g1, fake1[4:], "parzen", {"n_samples": 500, "sigma": 0.2}),
    ]  # fmt: skip
    for key, ds, fake, name, params in cases:
        with isolated_rng(0):
            out[key] = dict(_metric(name, **params).compute(_context(ds, fake, tmp)))
    digits = _dataset("digits", image_size=8, val_size=100, test_size=200)
    fake_img = digits.train[:300] * 0.8 + 0.05 * torch.randn(300, *digits.shape, generator=g)
    fid = {"n_samples": 250, "kid_subsets": 5, "kid_subset_size": 50, "epochs": 1}
    fid["cache_dir"] = str(tmp / "classifiers")
    with isolated_rng(0):
        out["fid"] = dict(_metric("fid", **fid).compute(_context(digits, fake_img, tmp)))
    return out


def run_case(tmp: Path) -> dict[str, Any]:
    """One tiny tracked ring8 run with periodic evaluation: every eval/ curve and final value."""
    import os

    from mlflow.tracking import MlflowClient

    from gan_pipe.host import PluginHost
    from gan_pipe.recipe import load_recipe
    from gan_pipe.runner import run

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    path = tmp / "golden.toml"
    path.write_text(RUN)
    plugins = PluginHost.load(entry_points=False)
    result = run(load_recipe(path, plugins.registry), plugins)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    metrics = client.get_run(result.run_id).data.metrics
    curves = {}
    for key in sorted(metrics):
        if key.startswith("eval/"):
            hist = client.get_metric_history(result.run_id, key)
            curves[key] = sorted((m.step, m.value) for m in hist)
    return {"results": result.results, "curves": curves}


def one_thread(fn: Any, tmp: Path) -> Any:
    """``fn(tmp)`` on one torch thread: sums (the fid classifier's training) depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(tmp)
    finally:
        torch.set_num_threads(before)


def collect(tmp: Path) -> dict[str, Any]:
    return {"tensors": one_thread(tensor_cases, tmp), "run": one_thread(run_case, tmp)}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        values = collect(Path(d))
    Path(sys.argv[1]).write_text(json.dumps(values, indent=1, sort_keys=True))
