"""Frechet distance and KID (``gan_pipe.estimators.gaussian``, ``.mmd``) against independent
references:

* the closed-form Frechet distance of Gaussians (diagonal covariances, 1-D),
* a direct computation of tr((S1 S2)^(1/2)) from eigenvalues of S1^(1/2) S2 S1^(1/2)
  (symmetric eigendecompositions, no ``sqrtm``),
* a brute-force double loop for the unbiased polynomial-kernel MMD^2.
"""

from __future__ import annotations

import numpy as np
import pytest

from gan_pipe.estimators.gaussian import feature_stats, frechet_distance
from gan_pipe.estimators.mmd import kid


# ------------------------------------------------------------------ references
def reference_frechet(mu1, s1, mu2, s2) -> float:
    """tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), all from eigh (no sqrtm)."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def brute_force_mmd2(x, y, degree=3, gamma=None, coef0=1.0) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with explicit loops."""
    m, d = x.shape
    g = 1.0 / d if gamma is None else gamma

    def k(a, b):
        return (float(np.dot(a, b)) * g + coef0) ** degree

    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return kxx / (m * (m - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (m * m)


def random_cov(rng, d, n=None):
    a = rng.standard_normal((n or 2 * d, d))
    return a.T @ a / a.shape[0]


# ------------------------------------------------------------------ frechet_distance
def test_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(
    ("m1", "sd1", "m2", "sd2"), [(0, 1, 0, 1), (1.5, 0.5, -2, 2), (0, 3, 0, 1)]
)
def test_one_dimensional_closed_form(m1, sd1, m2, sd2):
    expected = (m1 - m2) ** 2 + (sd1 - sd2) ** 2
    assert frechet_distance(m1, sd1**2, m2, sd2**2) == pytest.approx(expected, abs=1e-12)
    got = frechet_distance(np.array([m1]), np.array([[sd1**2]]), np.array([m2]), [[sd2**2]])
    assert got == pytest.approx(expected, abs=1e-12)


def test_zero_for_identical_stats_and_symmetric():
    rng = np.random.default_rng(1)
    d = 20
    mu, s = rng.standard_normal(d), random_cov(rng, d)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8
    mu2, s2 = rng.standard_normal(d), random_cov(rng, d)
    assert frechet_distance(mu, s, mu2, s2) == pytest.approx(
        frechet_distance(mu2, s2, mu, s), rel=1e-9
    )


@pytest.mark.parametrize("d", [2, 16, 128])
def test_matches_direct_computation_full_covariances(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), 0.3 * rng.standard_normal(d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d) * 2.0
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(reference_frechet(mu1, s1, mu2, s2), rel=1e-8, abs=1e-8)
    assert got > 0


def test_singular_covariances_stay_finite():
    """Fewer samples than dimensions: rank-deficient covariances (the eps fallback's case)."""
    rng = np.random.default_rng(3)
    d = 30
    s1, s2 = random_cov(rng, d, n=10), random_cov(rng, d, n=12)
    mu1, mu2 = np.zeros(d), np.full(d, 0.1)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got)
    assert got == pytest.approx(reference_frechet(mu1, s1, mu2, s2), rel=1e-3, abs=1e-3)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))


def test_feature_stats_matches_numpy():
    rng = np.random.default_rng(4)
    f = rng.standard_normal((50, 7)).astype(np.float32)
    mu, s = feature_stats(f)
    assert mu.dtype == np.float64 and s.shape == (7, 7)
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-12)
    ref = (f - f.mean(0)).T.astype(np.float64) @ (f - f.mean(0)).astype(np.float64) / 49
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-7)


def test_fid_of_gaussian_samples_approaches_closed_form():
    """Stats from samples of N(mu1, D1), N(mu2, D2) give about the closed form."""
    rng = np.random.default_rng(5)
    d, n = 4, 20000
    v1, v2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([2.0, 1.0, 0.5, 4.0])
    x = rng.standard_normal((n, d)) * np.sqrt(v1)
    y = rng.standard_normal((n, d)) * np.sqrt(v2) + 1.0
    expected = d * 1.0 + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = frechet_distance(*feature_stats(x), *feature_stats(y))
    assert got == pytest.approx(expected, rel=0.05)


# ------------------------------------------------------------------ kid
@pytest.mark.parametrize(
    ("degree", "gamma", "coef0"), [(3, None, 1.0), (2, 0.5, 0.0), (1, None, 2.0)]
)
def test_kid_one_subset_matches_brute_force(degree, gamma, coef0):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((25, 5))
    y = rng.standard_normal((25, 5)) + 0.3
    # one subset of all rows: a permutation of each set, and MMD^2 is permutation invariant
    mean, std = kid(x, y, subsets=1, subset_size=25, degree=degree, gamma=gamma, coef0=coef0)
    assert mean == pytest.approx(brute_force_mmd2(x, y, degree, gamma, coef0), rel=1e-10)
    assert std == 0.0


def test_kid_subset_is_a_sample_without_replacement():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 3))
    y = rng.standard_normal((30, 3)) + 0.5
    mean, _ = kid(x, y, subsets=1, subset_size=12, seed=3)
    r = np.random.RandomState(3)
    a = x[r.choice(40, 12, replace=False)]
    b = y[r.choice(30, 12, replace=False)]
    assert mean == pytest.approx(brute_force_mmd2(a, b), rel=1e-10)


def test_kid_near_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(8)
    d = 16
    x = rng.standard_normal((1000, d))
    y = rng.standard_normal((1000, d))
    z = rng.standard_normal((1000, d)) + 0.5
    same, same_std = kid(x, y, subsets=20, subset_size=200)
    shifted, shifted_std = kid(x, z, subsets=20, subset_size=200)
    assert abs(same) < 0.02
    assert abs(same) < 3 * same_std
    assert shifted > 0.3 and shifted > 10 * abs(same) and shifted > 5 * shifted_std


def test_kid_is_seeded():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((100, 4)), rng.standard_normal((100, 4))
    assert kid(x, y, 5, 30, seed=1) == kid(x, y, 5, 30, seed=1)
    assert kid(x, y, 5, 30, seed=1) != kid(x, y, 5, 30, seed=2)


def test_matrices_that_are_not_covariances_are_refused():
    rng = np.random.default_rng(6)
    s = random_cov(rng, 5)
    skew = s.copy()
    skew[0, 1] += 1.0
    with pytest.raises(ValueError, match="sigma1 is not symmetric"):
        frechet_distance(np.zeros(5), skew, np.zeros(5), s)
    negative = s - 10 * np.abs(s).max() * np.eye(5)
    with pytest.raises(ValueError, match="sigma2 has a negative eigenvalue"):
        frechet_distance(np.zeros(5), s, np.zeros(5), negative)
