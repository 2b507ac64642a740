"""Parzen-window log-likelihood: checked against independent references.

* scikit-learn's KernelDensity in low dimension (exact there),
* a float64 brute-force logsumexp over explicit differences in d = 784 (KernelDensity is not
  trustworthy there),
* the closed-form Gaussian log-density for a single centre,
* the upper bound -log N - (d/2) log(2 pi sigma^2) (532.14 nats for N = 10k, d = 784, sigma 0.2).
"""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.neighbors import KernelDensity

from gan_pipe.errors import UserError
from gan_pipe.plugins.metrics import parzen
from gan_pipe.plugins.metrics.parzen import (
    DEFAULT_SIGMAS,
    ParzenMetric,
    ParzenParams,
    parzen_log_likelihood,
    select_sigma,
)
from gan_pipe.registry import Register, Registry


# ------------------------------------------------------------------ references
def brute_force_ll(x: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """float64 log p(x) from explicit differences and scipy's logsumexp."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    mu = np.asarray(centres, dtype=np.float64).reshape(len(centres), -1)
    n, d = mu.shape
    out = np.empty(len(x))
    for i, row in enumerate(x):
        sq = ((row[None, :] - mu) ** 2).sum(axis=1)
        out[i] = logsumexp(-sq / (2 * sigma**2))
    return out - math.log(n) - 0.5 * d * math.log(2 * math.pi * sigma**2)


def sklearn_ll(x: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    kde = KernelDensity(kernel="gaussian", bandwidth=sigma).fit(centres)
    return kde.score_samples(x)


def upper_bound(n_centres: int, d: int, sigma: float) -> float:
    """log p at a centre when every other centre is far away (sum of kernels = 1)."""
    return -math.log(n_centres) - 0.5 * d * math.log(2 * math.pi * sigma**2)


def _data(n: int, m: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Test points: half random in [0, 1]^d, half near a centre (so nearest terms matter)."""
    rng = np.random.default_rng(seed)
    centres = rng.random((m, d))
    near = centres[rng.integers(0, m, n - n // 2)] + 0.05 * rng.standard_normal((n - n // 2, d))
    x = np.concatenate([rng.random((n // 2, d)), near])
    return x, centres


def t(a: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.as_tensor(a, dtype=dtype)


# ------------------------------------------------------------------ pure function
@pytest.mark.parametrize(
    ("d", "sigma"), [(2, 0.05), (2, 0.2), (2, 1.0), (10, 0.2), (10, 0.5), (10, 1.0)]
)
def test_matches_sklearn_low_dimension(d, sigma):
    x, centres = _data(300, 500, d, seed=d)
    ref = sklearn_ll(x, centres, sigma)
    # the brute force agrees too (it is the reference where sklearn's tree is not exact, see below)
    np.testing.assert_allclose(brute_force_ll(x, centres, sigma), ref, rtol=1e-9, atol=1e-12)
    got64 = parzen_log_likelihood(t(x), t(centres), sigma).numpy()
    np.testing.assert_allclose(got64, ref, rtol=1e-6, atol=1e-9)
    got32 = parzen_log_likelihood(t(x, torch.float32), t(centres, torch.float32), sigma)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), ref, rtol=1e-4, atol=1e-4)


def test_sklearn_tree_is_not_exact_far_in_the_tails():
    """Why the brute force is the reference: at d = 10 and small sigma, KernelDensity's tree
    (rtol = atol = 0) misses up to tens of nats on points far from every centre (0.01 nats
    at sigma 0.1, 85 at sigma 0.05; 1e-11 at sigma >= 0.2); we do not."""
    x, centres = _data(300, 500, 10, seed=10)
    ref = brute_force_ll(x, centres, 0.05)
    got = parzen_log_likelihood(t(x), t(centres), 0.05).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    assert np.abs(sklearn_ll(x, centres, 0.05) - ref).max() > 1.0


@pytest.mark.parametrize("sigma", [0.1, 0.2, 1.0])
def test_matches_brute_force_d784(sigma):
    x, centres = _data(60, 1000, 784, seed=1)
    ref = brute_force_ll(x, centres, sigma)
    got64 = parzen_log_likelihood(t(x), t(centres), sigma).numpy()
    np.testing.assert_allclose(got64, ref, rtol=1e-6)
    got32 = parzen_log_likelihood(t(x), t(centres), sigma, dtype=torch.float32)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), ref, rtol=1e-4)


@pytest.mark.parametrize("d", [1, 5, 784])
def test_single_centre_is_gaussian_logpdf(d):
    rng = np.random.default_rng(d)
    mu = rng.random(d)
    x = mu + 0.3 * rng.standard_normal((20, d))
    sigma = 0.3
    ref = multivariate_normal(mean=mu, cov=sigma**2 * np.eye(d)).logpdf(x)
    got = parzen_log_likelihood(t(x), t(mu[None]), sigma).numpy()
    np.testing.assert_allclose(got, np.atleast_1d(ref), rtol=1e-9)


def test_flattens_image_shaped_inputs():
    x, centres = _data(10, 40, 16, seed=3)
    flat = parzen_log_likelihood(t(x), t(centres), 0.2)
    img = parzen_log_likelihood(t(x).reshape(10, 1, 4, 4), t(centres).reshape(40, 1, 4, 4), 0.2)
    torch.testing.assert_close(img, flat)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunking_does_not_change_the_result(dtype):
    x, centres = _data(37, 200, 50, seed=4)
    xs, cs = t(x, dtype), t(centres, dtype)
    whole = parzen_log_likelihood(xs, cs, [0.1, 0.5])
    tol = {"rtol": 1e-12, "atol": 0} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 0}
    for kw in ({"max_bytes": 1}, {"max_bytes": 3 * 200 * 8 * 5}, {"batch_size": 7}):
        part = parzen_log_likelihood(xs, cs, [0.1, 0.5], **kw)
        torch.testing.assert_close(part, whole, **tol)


def test_chunk_size_follows_max_bytes():
    per_row = parzen._MATRICES_PER_CHUNK * 10_000 * 4
    assert parzen.chunk_rows(10_000, 4, 256 * 2**20) == 256 * 2**20 // per_row
    assert parzen.chunk_rows(10_000, 8, 1) == 1


def test_several_sigmas_in_one_pass_equal_separate_passes():
    x, centres = _data(50, 300, 20, seed=5)
    grid = [0.1, 0.2, 0.7]
    many = parzen_log_likelihood(t(x), t(centres), grid)
    assert many.shape == (3, 50)
    for k, s in enumerate(grid):
        one = parzen_log_likelihood(t(x), t(centres), s)
        assert one.shape == (50,)
        torch.testing.assert_close(many[k], one, rtol=1e-13, atol=0)
    # a one-element sequence still gives the (n_sigmas, n) shape
    assert parzen_log_likelihood(t(x), t(centres), [0.2]).shape == (1, 50)


def test_float32_far_away_points_are_finite_and_match_float64():
    x, centres = _data(20, 500, 784, seed=6)
    far = x + 1000.0  # every kernel term underflows: exp(-~4e10) == 0 without logsumexp
    assert np.all(np.exp(-((far[:1] - centres) ** 2).sum(1) / (2 * 0.1**2)) == 0)
    ref = brute_force_ll(far, centres, 0.1)
    got32 = parzen_log_likelihood(t(far, torch.float32), t(centres, torch.float32), 0.1)
    assert torch.isfinite(got32).all()
    np.testing.assert_allclose(got32.double().numpy(), ref, rtol=1e-5)
    got64 = parzen_log_likelihood(t(far), t(centres), 0.1)
    np.testing.assert_allclose(got64.numpy(), ref, rtol=1e-9)


def test_float32_large_common_offset_is_accurate():
    """Both sets far from the origin: the expansion must not cancel catastrophically."""
    x, centres = _data(40, 300, 784, seed=7)
    ref = brute_force_ll(x, centres, 0.1)
    got = parzen_log_likelihood(t(x + 100.0, torch.float32), t(centres + 100.0, torch.float32), 0.1)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-4)


def test_reduced_precision_matmul_settings_are_overridden_and_restored():
    """A run that set bf16/TF32 matmuls (float32_matmul_precision "medium") still gets exact
    distances, and its setting is back afterwards."""
    x, centres = _data(40, 300, 784, seed=15)
    ref = brute_force_ll(x, centres, 0.2)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        got = parzen_log_likelihood(t(x, torch.float32), t(centres, torch.float32), 0.2)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(old)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-5)


def test_inputs_of_mixed_dtypes_and_half_precision():
    x, centres = _data(10, 30, 8, seed=8)
    assert parzen_log_likelihood(t(x), t(centres, torch.float32), 0.3).dtype == torch.float64
    half = parzen_log_likelihood(t(x, torch.float16), t(centres, torch.float16), 0.3)
    assert half.dtype == torch.float32
    x16, c16 = (t(a, torch.float16).double().numpy() for a in (x, centres))
    ref = brute_force_ll(x16, c16, 0.3)
    np.testing.assert_allclose(half.double().numpy(), ref, rtol=1e-5)


def test_bad_inputs_are_rejected():
    x, centres = _data(5, 10, 4)
    with pytest.raises(ValueError, match="sigma"):
        parzen_log_likelihood(t(x), t(centres), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        parzen_log_likelihood(t(x), t(centres), [])
    with pytest.raises(ValueError, match="values each"):
        parzen_log_likelihood(t(x), t(centres[:, :3]), 0.2)
    with pytest.raises(ValueError, match="centres"):
        parzen_log_likelihood(t(x), t(centres[:0]), 0.2)
    assert parzen_log_likelihood(t(x[:0]), t(centres), 0.2).shape == (0,)


def test_upper_bound_n10k_d784():
    n, d, sigma = 10_000, 784, 0.2
    bound = upper_bound(n, d, sigma)
    assert bound == pytest.approx(532.14, abs=0.005)  # the anchor in the docs
    rng = np.random.default_rng(9)
    centres = torch.as_tensor(rng.random((n, d)), dtype=torch.float32)
    x = torch.cat([centres[:5], torch.as_tensor(rng.random((50, d)), dtype=torch.float32)])
    for dtype in (torch.float32, torch.float64):
        ll = parzen_log_likelihood(x, centres, sigma, dtype=dtype).double()
        ulp = 2 * torch.finfo(dtype).eps * bound  # the result's own rounding, nothing more
        assert (ll <= bound + ulp).all()
        # at a centre, with every other centre far away, the bound is attained
        tol = 1e-3 if dtype == torch.float32 else 1e-9
        np.testing.assert_allclose(ll[:5].numpy(), bound, atol=tol)
        assert (ll[5:] < bound - 100).all()


def test_never_above_the_all_centres_coincide_bound():
    """The largest possible log p: every centre at x (the sum of kernels is then N)."""
    d, sigma = 30, 0.1
    rng = np.random.default_rng(10)
    centre = rng.random(d)
    centres = np.repeat(centre[None], 25, axis=0)
    ll = parzen_log_likelihood(t(centre[None]), t(centres), sigma)
    assert float(ll[0]) == pytest.approx(top_bound(d, sigma), rel=1e-12)
    x, cs = _data(100, 200, d, seed=11)
    x[:10] = cs[:10]
    for s in DEFAULT_SIGMAS:
        ll = parzen_log_likelihood(t(x), t(cs), s)
        assert (ll <= top_bound(d, s) + 1e-9).all()
        assert (ll[:10] >= top_bound(d, s) - math.log(200) - 1e-9).all()  # the own centre's term
    # with sigma small against the centres' spacing, the -log N bound holds and is attained
    ll = parzen_log_likelihood(t(x), t(cs), 0.02)
    assert (ll <= top_bound(d, 0.02) - math.log(200) + 1e-9).all()
    np.testing.assert_allclose(ll[:10].numpy(), top_bound(d, 0.02) - math.log(200), rtol=1e-12)


def top_bound(d: int, sigma: float) -> float:
    return -0.5 * d * math.log(2 * math.pi * sigma**2)


def test_select_sigma_picks_the_argmax_of_the_grid():
    x, centres = _data(80, 400, 20, seed=12)
    grid = list(np.logspace(-2, 0.5, 12))
    best, table = select_sigma(t(x), t(centres), grid)
    assert list(table) == pytest.approx(grid)
    means = [float(brute_force_ll(x, centres, s).mean()) for s in grid]
    np.testing.assert_allclose(list(table.values()), means, rtol=1e-9)
    assert best == grid[int(np.argmax(means))]
    assert 0 < int(np.argmax(means)) < len(grid) - 1  # an interior optimum: the test means it


def test_protocol_sigma_grid():
    np.testing.assert_allclose(DEFAULT_SIGMAS, np.logspace(-1, 0, 10), rtol=1e-15)
    assert ParzenParams().sigmas == DEFAULT_SIGMAS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_float64_reference():
    x, centres = _data(300, 2000, 784, seed=13)
    ref = brute_force_ll(x[:50], centres, 0.2)
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        got = parzen_log_likelihood(
            t(x, dtype).cuda(), t(centres, dtype).cuda(), [0.2, 1.0], max_bytes=2**20
        )
        assert got.device.type == "cuda"
        np.testing.assert_allclose(got[0, :50].double().cpu().numpy(), ref, rtol=rtol)
        # TF32 must not leak in, even if the user turned it on
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            again = parzen_log_likelihood(t(x, dtype).cuda(), t(centres, dtype).cuda(), 0.2)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        np.testing.assert_allclose(again[:50].double().cpu().numpy(), ref, rtol=rtol)


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
    assert parzen.sigma_at_edge(0.5, [0.5]) == -1.0  # a one-value grid: documented as -1
