"""The parzen metric: the protocol's parameters and its computation on fake runs (the
log-density itself is checked against references in tests/estimators/test_kde.py):

* scikit-learn's KernelDensity in low dimension (exact there),
* a float64 brute-force logsumexp over explicit differences in d = 784 (KernelDensity is not
  trustworthy there),
* the closed-form Gaussian log-density for a single centre,
* the upper bound -log N - (d/2) log(2 pi sigma^2) (532.14 nats for N = 10k, d = 784, sigma 0.2).
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from gan_pipe.errors import UserError
from gan_pipe.estimators.kde import sigma_at_edge
from gan_pipe.plugins.metrics import parzen
from gan_pipe.plugins.metrics.parzen import DEFAULT_SIGMAS, ParzenMetric, ParzenParams
from gan_pipe.registry import Register, Registry

from ..estimators.test_kde import brute_force_ll


def test_protocol_sigma_grid():
    np.testing.assert_allclose(DEFAULT_SIGMAS, np.logspace(-1, 0, 10), rtol=1e-15)
    assert ParzenParams().sigmas == DEFAULT_SIGMAS


# ------------------------------------------------------------------ params and registration
def test_params_defaults_and_validation():
    p = ParzenParams()
    assert (p.n_samples, p.n_val, p.n_test, p.sigma, p.batch_size, p.dtype, p.seed) == (
        10000,
        1000,
        10000,
        None,
        None,
        "float32",
        0,
    )
    bad_params = (
        {"sigmas": [0.1, -1.0]},
        {"sigmas": []},
        {"sigma": 0},
        {"sigma": float("inf")},
        {"nsamples": 5},
        {"dtype": "half"},
    )
    for bad in bad_params:
        with pytest.raises(ValidationError):
            ParzenParams.model_validate(bad)
    assert all(f.description for f in ParzenParams.model_fields.values())


def test_registers_as_a_metric():
    registry = Registry()
    parzen.register_metrics(register=Register(registry, "metric", "parzen-test"))
    comp = registry.get("metric", "parzen")
    assert comp.factory is ParzenMetric and comp.params is ParzenParams and comp.description
    metric = comp.factory(comp.validate_params({"n_samples": 50}))
    assert hasattr(metric, "compute")


def test_module_import_does_not_import_torch():
    code = "import sys, gan_pipe.plugins.metrics.parzen; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ the metric on a fake run
class FakeTracker:
    def __init__(self) -> None:
        self.dicts: list[tuple[dict, str]] = []

    def log_dict(self, d: dict, path: str) -> None:
        self.dicts.append((d, path))


class FakeDataset:
    """Data in [-1, 1] (a GAN's tanh scale), images of shape (1, 4, 4)."""

    name = "fake"
    value_range = (-1.0, 1.0)

    def __init__(self, val, test):
        self.val, self.test = val, test

    def to_unit(self, x):
        return (x + 1.0) / 2.0


def fake_ctx(n_val=50, n_test=40, n_gen=300, tracker=None, seed=14):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(8, 1, 4, 4, generator=g) * 2 - 1  # 8 "modes" in [-1, 1]

    def draw(n):
        idx = torch.randint(0, 8, (n,), generator=g)
        return (base[idx] + 0.15 * torch.randn(n, 1, 4, 4, generator=g)).clamp(-1, 1)

    samples = draw(n_gen)
    val = draw(n_val) if n_val else None
    test = draw(n_test)

    def generate(n, batch_size=1000):
        assert n <= n_gen
        return samples[:n].clone()

    ctx = SimpleNamespace(
        generate=generate,
        dataset=FakeDataset(val, test),
        device=torch.device("cpu"),
        tracker=tracker if tracker is not None else FakeTracker(),
        eval_dir="eval",
    )
    return ctx, samples, val, test


KEYS = {
    "parzen_ll",
    "parzen_ll_se",
    "parzen_sigma",
    "parzen_n_samples",
    "parzen_n_val",
    "parzen_n_test",
    "parzen_sigma_at_edge",
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compute_on_a_fake_run(dtype):
    ctx, samples, val, test = fake_ctx()
    params = ParzenParams(n_samples=200, n_val=30, n_test=100, dtype=dtype)
    out = ParzenMetric(params).compute(ctx)
    assert set(out) == KEYS
    assert all(isinstance(v, float) for v in out.values())
    assert out["parzen_sigma"] in params.sigmas
    sizes = (out["parzen_n_samples"], out["parzen_n_val"], out["parzen_n_test"])
    assert sizes == (200.0, 30.0, 40.0)

    # independent recomputation: the first 200 samples and 30 val rows (seed 0), in [0, 1]
    centres = ((samples[:200].double() + 1) / 2).reshape(200, -1).numpy()
    v = ((val[:30].double() + 1) / 2).reshape(30, -1).numpy()
    x = ((test.double() + 1) / 2).reshape(40, -1).numpy()
    means = [brute_force_ll(v, centres, s).mean() for s in params.sigmas]
    assert out["parzen_sigma"] == params.sigmas[int(np.argmax(means))]
    ll = brute_force_ll(x, centres, out["parzen_sigma"])
    rtol = 1e-9 if dtype == "float64" else 1e-5
    assert out["parzen_ll"] == pytest.approx(ll.mean(), rel=rtol)
    assert out["parzen_ll_se"] == pytest.approx(np.std(ll, ddof=0) / np.sqrt(len(ll)), rel=1e-4)

    # the sigma table went to the tracker
    [(table, path)] = ctx.tracker.dicts
    assert path == "eval/parzen_sigma_search.json"
    assert table["sigma"] == params.sigmas and table["best_sigma"] == out["parzen_sigma"]
    np.testing.assert_allclose(table["val_mean_ll"], means, rtol=rtol)
    assert table["n_val"] == 30 and table["n_samples"] == 200


def test_compute_random_subset_with_a_seed():
    ctx, *_ = fake_ctx(n_test=60)
    a = ParzenMetric(ParzenParams(n_samples=100, n_test=20, seed=3)).compute(ctx)
    b = ParzenMetric(ParzenParams(n_samples=100, n_test=20, seed=3)).compute(ctx)
    c = ParzenMetric(ParzenParams(n_samples=100, n_test=20, seed=0)).compute(ctx)
    assert a == b and a["parzen_n_test"] == 20.0
    assert a["parzen_ll"] != c["parzen_ll"]


def test_compute_without_val_split_is_a_clear_error():
    ctx, *_ = fake_ctx(n_val=0)
    with pytest.raises(UserError, match="no validation split"):
        ParzenMetric(ParzenParams(n_samples=100)).compute(ctx)


def test_compute_with_a_fixed_sigma_needs_no_val_and_logs_no_table():
    ctx, samples, _, test = fake_ctx(n_val=0)
    out = ParzenMetric(ParzenParams(n_samples=100, sigma=0.25)).compute(ctx)
    assert out["parzen_sigma"] == 0.25 and out["parzen_n_val"] == 0.0
    assert out["parzen_sigma_at_edge"] == 0.0  # nothing was searched
    assert ctx.tracker.dicts == []
    centres = ((samples[:100] + 1) / 2).reshape(100, -1).double().numpy()
    ll = brute_force_ll(((test + 1) / 2).reshape(len(test), -1).numpy(), centres, 0.25)
    assert out["parzen_ll"] == pytest.approx(ll.mean(), rel=1e-5)


def test_compute_with_a_tracker_without_log_dict():
    ctx, *_ = fake_ctx(tracker=object())
    out = ParzenMetric(ParzenParams(n_samples=100, batch_size=7)).compute(ctx)
    assert set(out) == KEYS


def test_sigma_at_edge_flags_a_grid_that_may_miss_the_optimum():
    """The flag follows the brute-force argmax of the validation log-likelihood: -1 when it is
    the grid's smallest sigma, +1 the largest, 0 inside. The grids (one unsorted) cover all
    three cases on this data, whose best sigma is about the noise scale 0.075."""
    ctx, samples, val, _ = fake_ctx()
    centres = ((samples[:200].double() + 1) / 2).reshape(200, -1).numpy()
    v = ((val[:30].double() + 1) / 2).reshape(30, -1).numpy()
    seen = set()
    for grid in ([0.5, 1.0, 2.0], [0.002, 0.004, 0.008], [0.3, 0.01, 0.12, 0.03, 0.06]):
        params = ParzenParams(n_samples=200, n_val=30, n_test=40, sigmas=grid, dtype="float64")
        out = ParzenMetric(params).compute(ctx)
        means = [brute_force_ll(v, centres, s).mean() for s in grid]
        best = grid[int(np.argmax(means))]
        expected = -1.0 if best == min(grid) else 1.0 if best == max(grid) else 0.0
        assert out["parzen_sigma"] == best and out["parzen_sigma_at_edge"] == expected
        seen.add(expected)
    assert seen == {-1.0, 0.0, 1.0}
    assert sigma_at_edge(0.5, [0.5]) == -1.0  # a one-value grid: documented as -1
