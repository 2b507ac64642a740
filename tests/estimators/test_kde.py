"""The Gaussian KDE log-density (``gan_pipe.estimators.kde.log_density``, the Parzen window)
against independent references:

* scikit-learn's KernelDensity in low dimension (exact there),
* a float64 brute-force logsumexp over explicit differences in d = 784 (KernelDensity is not
  trustworthy there),
* the closed-form Gaussian log-density for a single centre,
* the upper bound -log N - (d/2) log(2 pi sigma^2) (532.14 nats for N = 10k, d = 784, sigma 0.2).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.neighbors import KernelDensity

from gan_pipe.estimators import kde
from gan_pipe.estimators.kde import log_density, select_sigma
from gan_pipe.plugins.metrics.parzen import DEFAULT_SIGMAS


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
    got64 = log_density(t(x), t(centres), sigma).numpy()
    np.testing.assert_allclose(got64, ref, rtol=1e-6, atol=1e-9)
    got32 = log_density(t(x, torch.float32), t(centres, torch.float32), sigma)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), ref, rtol=1e-4, atol=1e-4)


def test_sklearn_tree_is_not_exact_far_in_the_tails():
    """Why the brute force is the reference: at d = 10 and small sigma, KernelDensity's tree
    (rtol = atol = 0) misses up to tens of nats on points far from every centre (0.01 nats
    at sigma 0.1, 85 at sigma 0.05; 1e-11 at sigma >= 0.2); we do not."""
    x, centres = _data(300, 500, 10, seed=10)
    ref = brute_force_ll(x, centres, 0.05)
    got = log_density(t(x), t(centres), 0.05).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    assert np.abs(sklearn_ll(x, centres, 0.05) - ref).max() > 1.0


@pytest.mark.parametrize("sigma", [0.1, 0.2, 1.0])
def test_matches_brute_force_d784(sigma):
    x, centres = _data(60, 1000, 784, seed=1)
    ref = brute_force_ll(x, centres, sigma)
    got64 = log_density(t(x), t(centres), sigma).numpy()
    np.testing.assert_allclose(got64, ref, rtol=1e-6)
    got32 = log_density(t(x), t(centres), sigma, dtype=torch.float32)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), ref, rtol=1e-4)


@pytest.mark.parametrize("d", [1, 5, 784])
def test_single_centre_is_gaussian_logpdf(d):
    rng = np.random.default_rng(d)
    mu = rng.random(d)
    x = mu + 0.3 * rng.standard_normal((20, d))
    sigma = 0.3
    ref = multivariate_normal(mean=mu, cov=sigma**2 * np.eye(d)).logpdf(x)
    got = log_density(t(x), t(mu[None]), sigma).numpy()
    np.testing.assert_allclose(got, np.atleast_1d(ref), rtol=1e-9)


def test_flattens_image_shaped_inputs():
    x, centres = _data(10, 40, 16, seed=3)
    flat = log_density(t(x), t(centres), 0.2)
    img = log_density(t(x).reshape(10, 1, 4, 4), t(centres).reshape(40, 1, 4, 4), 0.2)
    torch.testing.assert_close(img, flat)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunking_does_not_change_the_result(dtype):
    x, centres = _data(37, 200, 50, seed=4)
    xs, cs = t(x, dtype), t(centres, dtype)
    whole = log_density(xs, cs, [0.1, 0.5])
    tol = {"rtol": 1e-12, "atol": 0} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 0}
    for kw in ({"max_bytes": 1}, {"max_bytes": 3 * 200 * 8 * 5}, {"batch_size": 7}):
        part = log_density(xs, cs, [0.1, 0.5], **kw)
        torch.testing.assert_close(part, whole, **tol)


def test_chunk_size_follows_max_bytes():
    per_row = kde._MATRICES_PER_CHUNK * 10_000 * 4
    assert kde.chunk_rows(10_000, 4, 256 * 2**20) == 256 * 2**20 // per_row
    assert kde.chunk_rows(10_000, 8, 1) == 1


def test_several_sigmas_in_one_pass_equal_separate_passes():
    x, centres = _data(50, 300, 20, seed=5)
    grid = [0.1, 0.2, 0.7]
    many = log_density(t(x), t(centres), grid)
    assert many.shape == (3, 50)
    for k, s in enumerate(grid):
        one = log_density(t(x), t(centres), s)
        assert one.shape == (50,)
        torch.testing.assert_close(many[k], one, rtol=1e-13, atol=0)
    # a one-element sequence still gives the (n_sigmas, n) shape
    assert log_density(t(x), t(centres), [0.2]).shape == (1, 50)


def test_float32_far_away_points_are_finite_and_match_float64():
    x, centres = _data(20, 500, 784, seed=6)
    far = x + 1000.0  # every kernel term underflows: exp(-~4e10) == 0 without logsumexp
    assert np.all(np.exp(-((far[:1] - centres) ** 2).sum(1) / (2 * 0.1**2)) == 0)
    ref = brute_force_ll(far, centres, 0.1)
    got32 = log_density(t(far, torch.float32), t(centres, torch.float32), 0.1)
    assert torch.isfinite(got32).all()
    np.testing.assert_allclose(got32.double().numpy(), ref, rtol=1e-5)
    got64 = log_density(t(far), t(centres), 0.1)
    np.testing.assert_allclose(got64.numpy(), ref, rtol=1e-9)


def test_float32_large_common_offset_is_accurate():
    """Both sets far from the origin: the expansion must not cancel catastrophically."""
    x, centres = _data(40, 300, 784, seed=7)
    ref = brute_force_ll(x, centres, 0.1)
    got = log_density(t(x + 100.0, torch.float32), t(centres + 100.0, torch.float32), 0.1)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-4)


def test_reduced_precision_matmul_settings_are_overridden_and_restored():
    """A run that set bf16/TF32 matmuls (float32_matmul_precision "medium") still gets exact
    distances, and its setting is back afterwards."""
    x, centres = _data(40, 300, 784, seed=15)
    ref = brute_force_ll(x, centres, 0.2)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        got = log_density(t(x, torch.float32), t(centres, torch.float32), 0.2)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(old)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-5)


def test_inputs_of_mixed_dtypes_and_half_precision():
    x, centres = _data(10, 30, 8, seed=8)
    assert log_density(t(x), t(centres, torch.float32), 0.3).dtype == torch.float64
    half = log_density(t(x, torch.float16), t(centres, torch.float16), 0.3)
    assert half.dtype == torch.float32
    x16, c16 = (t(a, torch.float16).double().numpy() for a in (x, centres))
    ref = brute_force_ll(x16, c16, 0.3)
    np.testing.assert_allclose(half.double().numpy(), ref, rtol=1e-5)


def test_bad_inputs_are_rejected():
    x, centres = _data(5, 10, 4)
    with pytest.raises(ValueError, match="sigma"):
        log_density(t(x), t(centres), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        log_density(t(x), t(centres), [])
    with pytest.raises(ValueError, match="values each"):
        log_density(t(x), t(centres[:, :3]), 0.2)
    with pytest.raises(ValueError, match="centres"):
        log_density(t(x), t(centres[:0]), 0.2)
    assert log_density(t(x[:0]), t(centres), 0.2).shape == (0,)


def test_upper_bound_n10k_d784():
    n, d, sigma = 10_000, 784, 0.2
    bound = upper_bound(n, d, sigma)
    assert bound == pytest.approx(532.14, abs=0.005)  # the anchor in the docs
    rng = np.random.default_rng(9)
    centres = torch.as_tensor(rng.random((n, d)), dtype=torch.float32)
    x = torch.cat([centres[:5], torch.as_tensor(rng.random((50, d)), dtype=torch.float32)])
    for dtype in (torch.float32, torch.float64):
        ll = log_density(x, centres, sigma, dtype=dtype).double()
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
    ll = log_density(t(centre[None]), t(centres), sigma)
    assert float(ll[0]) == pytest.approx(top_bound(d, sigma), rel=1e-12)
    x, cs = _data(100, 200, d, seed=11)
    x[:10] = cs[:10]
    for s in DEFAULT_SIGMAS:
        ll = log_density(t(x), t(cs), s)
        assert (ll <= top_bound(d, s) + 1e-9).all()
        assert (ll[:10] >= top_bound(d, s) - math.log(200) - 1e-9).all()  # the own centre's term
    # with sigma small against the centres' spacing, the -log N bound holds and is attained
    ll = log_density(t(x), t(cs), 0.02)
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_float64_reference():
    x, centres = _data(300, 2000, 784, seed=13)
    ref = brute_force_ll(x[:50], centres, 0.2)
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        got = log_density(t(x, dtype).cuda(), t(centres, dtype).cuda(), [0.2, 1.0], max_bytes=2**20)
        assert got.device.type == "cuda"
        np.testing.assert_allclose(got[0, :50].double().cpu().numpy(), ref, rtol=rtol)
        # TF32 must not leak in, even if the user turned it on
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            again = log_density(t(x, dtype).cuda(), t(centres, dtype).cuda(), 0.2)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        np.testing.assert_allclose(again[:50].double().cpu().numpy(), ref, rtol=rtol)
