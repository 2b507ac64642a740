"""The distance estimators (transport, histogram, Gaussian fits, KDE against a known density,
mode statistics) against independent references and closed forms.

References: scipy (wasserstein_distance, ks_2samp, entropy, jensenshannon), POT (sliced
Wasserstein, exact OT) and the closed forms of seed-systems section 6. "Quantile samples"
x_i = mu + sigma * Phi^-1((i + 1/2) / n) remove Monte-Carlo noise, so tolerances there only
cover the O(1/n) discretisation.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import jensenshannon

from gan_pipe.estimators import gaussian as G
from gan_pipe.estimators import histogram as H
from gan_pipe.estimators import kde as K
from gan_pipe.estimators import modes as M
from gan_pipe.estimators import transport as T
from gan_pipe.plugins.data import synthetic as S

KL_WIDE_NARROW = 47.197  # KL(N(4,.5) || N(4,.05)) = ln 10 + 100/2 - 1/2 - ... (section 6)
KL_NARROW_WIDE = 1.8076  # KL(N(4,.05) || N(4,.5))
W1_WIDE_NARROW = 0.45 * math.sqrt(2 / math.pi)  # 0.35905
TV_SHIFT = 2 * stats.norm.cdf(0.5) - 1  # TV(N(0,1), N(1,1)) = 0.38292
HQ_2D_3STD = 1 - math.exp(-4.5)  # P(chi2(2) <= 9) = 0.98889


def quantiles(mu: float, sigma: float, n: int) -> np.ndarray:
    return mu + sigma * stats.norm.ppf((np.arange(n) + 0.5) / n)


def normal_log_density(mu: float, sigma: float):
    return lambda x: torch.distributions.Normal(mu, sigma).log_prob(x).sum(dim=1)


def test_closed_forms_are_what_we_think() -> None:
    """The anchors themselves, from the Gaussian KL formula, so the tests below mean something."""

    def kl(s1: float, s2: float) -> float:
        return math.log(s2 / s1) + s1**2 / (2 * s2**2) - 0.5

    assert kl(0.5, 0.05) == pytest.approx(KL_WIDE_NARROW, abs=1e-3)
    assert kl(0.05, 0.5) == pytest.approx(KL_NARROW_WIDE, abs=1e-4)
    assert W1_WIDE_NARROW == pytest.approx(0.35905, abs=1e-5)
    assert TV_SHIFT == pytest.approx(0.38292, abs=1e-5)
    assert HQ_2D_3STD == pytest.approx(0.98889, abs=1e-5)


# ---------------------------------------------------------------- 1-D exact
def test_w1_and_ks_match_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 1234), rng.standard_t(3, 777)
    assert T.w1_1d(a, b) == stats.wasserstein_distance(a, b)
    assert T.w1_1d(torch.from_numpy(a).float().reshape(-1, 1), b) == pytest.approx(
        stats.wasserstein_distance(a.astype(np.float32), b), rel=1e-12
    )
    ties_a, ties_b = rng.integers(0, 10, 500), rng.integers(2, 12, 333)
    for x, y in ((a, b), (ties_a, ties_b), (b, a)):
        assert T.ks_1d(x, y) == pytest.approx(stats.ks_2samp(x, y).statistic, abs=1e-15)


def test_w1_closed_form() -> None:
    """Quantile samples: W1 = 0.45 * mean|z_i| -> 0.45 E|Z|, error O(log n / n)."""
    n = 100_000
    assert T.w1_1d(quantiles(4, 0.5, n), quantiles(4, 0.05, n)) == pytest.approx(
        W1_WIDE_NARROW, abs=1e-4
    )
    # random samples: W1 estimate's sd is about 0.5 / sqrt(n) = 0.0016; 0.01 is > 5 sd
    rng = np.random.default_rng(1)
    w = T.w1_1d(rng.normal(4, 0.5, n), rng.normal(4, 0.05, n))
    assert w == pytest.approx(W1_WIDE_NARROW, abs=0.01)


@pytest.mark.parametrize("p", [1, 2])
def test_wasserstein_columns_match_pot(p: int) -> None:
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=(300, 4)), rng.exponential(size=(170, 4))
    got = T.wasserstein_1d_columns(u, v, p)
    expected = ot.wasserstein_1d(u, v, p=p)  # W_p^p per column
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    if p == 1:
        np.testing.assert_allclose(
            got, [stats.wasserstein_distance(u[:, j], v[:, j]) for j in range(4)], rtol=1e-10
        )


# ---------------------------------------------------------------- sliced / assignment
@pytest.mark.parametrize("p", [1, 2])
def test_sliced_wasserstein_matches_pot_with_same_projections(p: int) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 6)), rng.normal(0.5, 2.0, size=(250, 6))
    theta = T.random_projections(6, 64, seed=5)
    np.testing.assert_allclose((theta**2).sum(axis=0), 1.0)
    got = T.sliced_wasserstein(a, b, p=p, projections=theta)
    expected = ot.sliced_wasserstein_distance(a, b, p=p, projections=theta)
    assert got == pytest.approx(expected, rel=1e-10)
    # own random directions: same seed, same value; torch input accepted
    assert T.sliced_wasserstein(torch.from_numpy(a), b, 64, p, seed=5) == pytest.approx(got)


def test_sliced_wasserstein_statistically_matches_pot() -> None:
    """Independent directions: both are Monte-Carlo over the sphere; 2000 directions keep
    each estimate's relative sd under 1%, 5% tolerance."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(500, 10)), rng.normal(0.3, 1.0, size=(500, 10))
    ours = T.sliced_wasserstein(a, b, n_projections=2000, p=2, seed=0)
    pot = ot.sliced_wasserstein_distance(a, b, n_projections=2000, p=2, seed=1)
    assert ours == pytest.approx(pot, rel=0.05)


def test_sliced_wasserstein_in_1d_is_exact_w1() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(800, 1)), rng.normal(1, 2, size=(600, 1))
    assert T.sliced_wasserstein(a, b, n_projections=8, p=1) == pytest.approx(
        T.w1_1d(a, b), rel=1e-12
    )


def test_w1_assignment_matches_pot_emd() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(300, 2)), rng.normal(1, 1, size=(300, 2))
    expected = ot.emd2(ot.unif(300), ot.unif(300), ot.dist(a, b, metric="euclidean"))
    assert T.w1_assignment(a, b, n=1000) == pytest.approx(expected, rel=1e-9)
    # a shift of identical clouds costs exactly the shift
    assert T.w1_assignment(a, a + [3.0, 4.0]) == pytest.approx(5.0)


# ---------------------------------------------------------------- histograms
def test_histogram_kl_and_js_match_scipy_exactly() -> None:
    rng = np.random.default_rng(7)
    p, q = rng.normal(0, 1, 20_000), rng.normal(0.3, 1.2, 20_000)
    P, Q, _ = H.histogram_probs(p, q, bins=40)
    assert P.sum() == pytest.approx(1) and P[-1] == 0 == Q[-1]  # joint range: nothing outside
    keep = (P > 0) & (Q > 0)  # scipy.stats.entropy needs Q > 0 where P > 0
    P, Q = P[keep] / P[keep].sum(), Q[keep] / Q[keep].sum()
    out = H.discrete_divergences(P, Q)
    assert out["kl_pq"] == pytest.approx(stats.entropy(P, Q), rel=1e-12)
    assert out["kl_qp"] == pytest.approx(stats.entropy(Q, P), rel=1e-12)
    assert out["js"] == pytest.approx(jensenshannon(P, Q) ** 2, rel=1e-10)
    assert out["tv"] == pytest.approx(0.5 * np.abs(P - Q).sum(), rel=1e-12)
    assert out["kl_pq_inf"] == 0 == out["kl_qp_inf"]


def kt(counts: np.ndarray, a: float) -> np.ndarray:
    """Krichevsky-Trofimov estimate (c + a) / (n + a K), written out for the reference."""
    return (counts + a) / (counts.sum() + a * len(counts))


def test_count_divergences_match_scipy_on_kt_estimates() -> None:
    """KL from counts is scipy's KL of the (c + a) / (n + a K) vectors; JS, TV unsmoothed."""
    rng = np.random.default_rng(17)
    cp, cq = rng.integers(0, 30, 60).astype(float), rng.integers(0, 30, 60).astype(float)
    cp[3], cq[7] = 0, 0  # an empty cell on each side: both plug-in KLs are infinite
    for a in (0.5, 1.0, 1e-3):
        out = H.count_divergences(cp, cq, a)
        assert out["kl_pq"] == pytest.approx(stats.entropy(kt(cp, a), kt(cq, a)), rel=1e-12)
        assert out["kl_qp"] == pytest.approx(stats.entropy(kt(cq, a), kt(cp, a)), rel=1e-12)
        assert out["kl_pq_inf"] == 1 == out["kl_qp_inf"] and out["pseudo_count"] == a
        assert out["js"] == pytest.approx(jensenshannon(cp, cq) ** 2, rel=1e-10)
        assert out["tv"] == pytest.approx(0.5 * np.abs(cp / cp.sum() - cq / cq.sum()).sum())
    with pytest.raises(ValueError, match="pseudo_count"):
        H.count_divergences(cp, cq, 0.0)


def test_empty_cell_makes_the_plug_in_kl_infinite_and_flagged() -> None:
    """Probability vectors carry no sample size, so no pseudo-count: inf and the flag."""
    out = H.discrete_divergences([0.5, 0.5, 0.0], [0.5, 0.25, 0.25])
    assert out["kl_pq"] == pytest.approx(stats.entropy([0.5, 0.5, 0], [0.5, 0.25, 0.25]))
    assert out["kl_pq_inf"] == 0 and out["kl_qp"] == math.inf and out["kl_qp_inf"] == 1
    assert all(not math.isnan(v) for v in out.values())


def test_histogram_divergences_2d_match_scipy() -> None:
    rng = np.random.default_rng(8)
    p, q = rng.normal(size=(30_000, 2)), rng.normal(0.2, 1.0, size=(30_000, 2))
    out = H.histogram_divergences(p, q, bins=20, range=(-6, 6))
    P, Q, ranges = H.histogram_probs(p, q, bins=20, range=(-6, 6))
    assert len(P) == 20 * 20 + 1 and ranges == [(-6.0, 6.0)] * 2
    assert out["js"] == pytest.approx(jensenshannon(P, Q) ** 2, rel=1e-10)
    assert out["range_lo_1"] == -6 and out["range_hi_0"] == 6 and out["bins"] == 20
    # counts from numpy directly, outside cell appended
    edges = np.linspace(-6, 6, 21)
    cp = np.append(np.histogram2d(*p.T, bins=[edges, edges])[0].ravel(), 0)
    cq = np.append(np.histogram2d(*q.T, bins=[edges, edges])[0].ravel(), 0)
    cp[-1], cq[-1] = len(p) - cp.sum(), len(q) - cq.sum()
    assert out["kl_pq"] == pytest.approx(stats.entropy(kt(cp, 0.5), kt(cq, 0.5)), rel=1e-12)
    assert out["kl_pq_inf"] == float(((cp > 0) & (cq == 0)).any())


def test_disjoint_supports() -> None:
    """Two non-overlapping distributions: JS = ln 2, TV = 1, both plug-in KLs infinite and
    flagged; the KL values are the pseudo-count (Krichevsky-Trofimov) ones, never NaN."""
    rng = np.random.default_rng(9)
    p, q = rng.uniform(0, 1, 5000), rng.uniform(2, 3, 5000)
    out = H.histogram_divergences(p, q, bins=100)
    assert out["js"] == pytest.approx(math.log(2), abs=1e-12)
    assert out["tv"] == pytest.approx(1.0, abs=1e-12)
    assert out["kl_pq_inf"] == 1.0 and out["kl_qp_inf"] == 1.0
    assert all(math.isfinite(v) for v in out.values())
    assert out["pseudo_count"] == 0.5
    edges = np.linspace(min(p.min(), q.min()), max(p.max(), q.max()), 101)
    cp = np.append(np.histogram(p, edges)[0], 0.0)
    cq = np.append(np.histogram(q, edges)[0], 0.0)
    assert out["kl_pq"] == pytest.approx(stats.entropy(kt(cp, 0.5), kt(cq, 0.5)), rel=1e-9)
    assert out["kl_qp"] == pytest.approx(stats.entropy(kt(cq, 0.5), kt(cp, 0.5)), rel=1e-9)
    # the same sample outside a given range lands in the outside cell, not nowhere
    out = H.histogram_divergences(p, q, bins=10, range=(0, 1))
    assert out["outside_p"] == 0 and out["outside_q"] == 1 and out["tv"] == pytest.approx(1)


def test_histogram_kl_of_two_samples_of_one_distribution_is_near_zero() -> None:
    """N(0,1) vs N(0,1), 100k samples each, 100 bins: a tail bin with samples on one side only
    makes the plug-in KL infinite (flag up), but the pseudo-count estimate is about
    (K - 1) / n = 0.001 each way. The previous probability epsilon (1e-10) gave ~12 nats."""
    rng = np.random.default_rng(18)
    n = 100_000
    out = H.histogram_divergences(rng.normal(0, 1, n), rng.normal(0, 1, n), bins=100)
    assert out["kl_pq_inf"] == 1 or out["kl_qp_inf"] == 1  # the case the pseudo-count is for
    assert 0 <= out["kl_pq"] < 0.01 and 0 <= out["kl_qp"] < 0.01


def test_histogram_kl_shifted_gaussians_closed_form() -> None:
    """KL(N(0,1) || N(1,1)) = 1/2 both ways. 100k samples each, 100 bins of width ~0.09:
    discretisation bias < 1e-3, sampling sd about sqrt(2 / n) = 0.0045, pseudo-count bias
    about (K - 1) / n = 0.001; tolerance 0.03 (> 5 sd)."""
    rng = np.random.default_rng(19)
    n = 100_000
    out = H.histogram_divergences(rng.normal(0, 1, n), rng.normal(1, 1, n), bins=100)
    assert out["kl_pq"] == pytest.approx(0.5, abs=0.03)
    assert out["kl_qp"] == pytest.approx(0.5, abs=0.03)


def test_histogram_tv_closed_form() -> None:
    """TV(N(0,1), N(1,1)) = 0.38292. Exact bin probabilities (cdf differences, 2000 bins):
    only the bin holding the crossing x = 0.5 loses mass, < 0.002. From 200k samples each and
    100 bins: sd ~ 0.002, plug-in bias ~ sum_i sqrt(p_i / n) over the few bins where the
    densities nearly agree, < 0.005; tolerance 0.01."""
    edges = np.linspace(-9, 10, 2001)
    P, Q = np.diff(stats.norm.cdf(edges)), np.diff(stats.norm.cdf(edges, 1))
    assert H.discrete_divergences(P, Q)["tv"] == pytest.approx(TV_SHIFT, abs=2e-3)
    rng = np.random.default_rng(10)
    n = 200_000
    out = H.histogram_divergences(rng.normal(0, 1, n), rng.normal(1, 1, n), bins=100)
    assert out["tv"] == pytest.approx(TV_SHIFT, abs=0.01)


def test_histogram_kl_closed_forms() -> None:
    """KL(N(4,.05) || N(4,.5)) = 1.8076 from 200k samples each, 400 bins on [2, 6] (width
    0.01 = std/5 of the narrow one): discretisation bias < 1e-3, sd about 0.003, and the
    pseudo-counts move (empty narrow cells) * a / n ~ 1e-3 of the narrow histogram's mass
    into the wide one's tails, lowering it by about 0.007; tolerance 0.02. The reverse,
    KL(N(4,.5) || N(4,.05)) = 47.197, cannot come from a histogram of samples: the narrow
    one has no sample in the wide one's tails, so it is flagged infinite and the pseudo-count
    value stays far below the truth (kl_reverse_gauss is the estimate for that case)."""
    rng = np.random.default_rng(11)
    n = 200_000
    narrow, wide = rng.normal(4, 0.05, n), rng.normal(4, 0.5, n)
    out = H.histogram_divergences(narrow, wide, bins=400, range=(2, 6))
    assert out["kl_pq"] == pytest.approx(KL_NARROW_WIDE, abs=0.02) and out["kl_pq_inf"] == 0
    assert out["kl_qp_inf"] == 1 and 1 < out["kl_qp"] < KL_WIDE_NARROW / 2


# ---------------------------------------------------------------- Gaussian fits
def test_gaussian_fit_kl_1d_closed_forms() -> None:
    """Quantile samples of N(4,.5) and N(4,.05) are scaled copies, so the fitted variance ratio
    is exactly 100: both closed forms to rounding. Random samples, n = 1e6 each: the variance
    ratio's relative sd is sqrt(4 / n) = 0.002, so KL(wide||narrow) = 47.197 has sd ~ 50 *
    0.002 = 0.1 (tolerance 0.5) and KL(narrow||wide) = 1.8076 sd ~ 49.5 * 0.01 * 0.002 = 0.001
    (tolerance 0.01)."""
    n = 100_000
    out = G.gaussian_fit_divergences(quantiles(4, 0.5, n), quantiles(4, 0.05, n))
    assert out["kl_pq"] == pytest.approx(KL_WIDE_NARROW, abs=1e-3)
    assert out["kl_qp"] == pytest.approx(KL_NARROW_WIDE, abs=1e-4)
    assert out["kl_pq_inf"] == 0 == out["kl_qp_inf"] and 0 < out["ridge"] <= 1e-9
    rng = np.random.default_rng(20)
    n = 1_000_000
    out = G.gaussian_fit_divergences(rng.normal(4, 0.5, n), rng.normal(4, 0.05, n))
    assert out["kl_pq"] == pytest.approx(KL_WIDE_NARROW, abs=0.5)
    assert out["kl_qp"] == pytest.approx(KL_NARROW_WIDE, abs=0.01)


def test_gaussian_fit_kl_2d_against_numpy_and_monte_carlo() -> None:
    """2-D, correlated: the estimate equals the textbook formula written with numpy's inv and
    det on np.mean / np.cov of the samples, and the Monte-Carlo KL E_0[log p0 - log p1] of the
    fitted Gaussians with scipy's logpdf (2e5 draws: sd < 0.005, tolerance 0.03); and at
    n = 2e5 it is within 0.02 of the true parameters' closed form."""
    m0, s0 = np.array([0.0, 1.0]), np.array([[1.0, 0.6], [0.6, 0.8]])
    m1, s1 = np.array([0.5, 0.0]), np.array([[0.5, -0.2], [-0.2, 1.5]])
    rng = np.random.default_rng(21)
    a, b = rng.multivariate_normal(m0, s0, 200_000), rng.multivariate_normal(m1, s1, 200_000)
    out = G.gaussian_fit_divergences(a, b)

    def textbook(ma, sa, mb, sb):
        inv = np.linalg.inv(sb)
        dm = mb - ma
        logdets = math.log(np.linalg.det(sb) / np.linalg.det(sa))
        return 0.5 * (np.trace(inv @ sa) + dm @ inv @ dm - 2 + logdets)

    fa, fb = (a.mean(0), np.cov(a.T)), (b.mean(0), np.cov(b.T))
    assert out["kl_pq"] == pytest.approx(textbook(*fa, *fb), rel=1e-6)
    assert out["kl_qp"] == pytest.approx(textbook(*fb, *fa), rel=1e-6)
    g0, g1 = stats.multivariate_normal(*fa), stats.multivariate_normal(*fb)
    x = g0.rvs(200_000, random_state=22)
    assert out["kl_pq"] == pytest.approx(np.mean(g0.logpdf(x) - g1.logpdf(x)), abs=0.03)
    assert out["kl_pq"] == pytest.approx(textbook(m0, s0, m1, s1), abs=0.02)
    assert out["kl_qp"] == pytest.approx(textbook(m1, s1, m0, s0), abs=0.02)


def test_gaussian_fit_kl_singular_fit_is_flagged() -> None:
    """A collapsed G (zero variance) or data on a line: the Gaussian KL is infinite both ways;
    the flags say so, the values are finite (ridge-regularised), never NaN."""
    rng = np.random.default_rng(23)
    x = rng.normal(size=1000)
    for p, q in (
        (4 + 0.5 * x, np.full(1000, 4.0)),
        (np.c_[x, 2 * x], rng.normal(size=(1000, 2))),
        (rng.normal(size=(3, 3)), rng.normal(size=(50, 3))),  # 3 samples in 3-D: rank 2
    ):
        out = G.gaussian_fit_divergences(p, q)
        assert out["kl_pq_inf"] == 1 == out["kl_qp_inf"]
        assert all(math.isfinite(v) for v in out.values()) and out["ridge"] > 0


@pytest.mark.parametrize(
    ("scale_p", "scale_q"),
    [((1.0, 1.0), (1e6, 1e6)), ((1e4, 1e-3), (1e4, 1e-3)), ((1e4, 1e-3), (2e4, 3e-3))],
)
def test_gaussian_fit_kl_holds_at_any_pair_of_scales(scale_p, scale_q) -> None:
    """A diverging G (stds 1e6 against 1) or badly scaled axes (1e4 and 1e-3) are neither
    singular nor distorted by the ridge: the fit equals the textbook closed form on the
    same sample moments, and the flags stay 0."""
    rng = np.random.default_rng(24)
    p = rng.normal(size=(20_000, 2)) * np.array(scale_p)
    q = rng.normal(size=(20_000, 2)) * np.array(scale_q) + 1.0
    out = G.gaussian_fit_divergences(p, q)
    assert out["kl_pq_inf"] == 0 == out["kl_qp_inf"]

    def closed(a, b):
        ma, sa, mb, sb = a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T)
        inv, dm = np.linalg.inv(sb), mb - ma
        _, lb = np.linalg.slogdet(sb)
        _, la = np.linalg.slogdet(sa)
        return 0.5 * (np.trace(inv @ sa) + dm @ inv @ dm - 2 + lb - la)

    assert out["kl_pq"] == pytest.approx(closed(p, q), rel=1e-6, abs=1e-6)
    assert out["kl_qp"] == pytest.approx(closed(q, p), rel=1e-6, abs=1e-6)


# ---------------------------------------------------------------- KDE against a known density
def test_density_kl_closed_forms() -> None:
    """Quantile samples, exact log p: kl_reverse_kde only estimates G's entropy with a KDE
    (bias a few 1e-3 nats at n = 5000), so 47.197 and 1.8076 to 0.05 nats."""
    n = 5000
    wide, narrow = quantiles(4, 0.5, n), quantiles(4, 0.05, n)
    out = K.density_divergences(wide, normal_log_density(4, 0.05), real=narrow)
    assert out["kl_reverse_kde"] == pytest.approx(KL_WIDE_NARROW, abs=0.05)
    assert out["kl_kde"] == pytest.approx(KL_NARROW_WIDE, abs=0.05)
    out = K.density_divergences(narrow, normal_log_density(4, 0.5))
    assert out["kl_reverse_kde"] == pytest.approx(KL_NARROW_WIDE, abs=0.05)
    assert out["kde_bandwidth"] < 0.05 and "kl_kde" not in out  # follows G's scale


def test_density_kl_near_zero_for_a_perfect_sampler() -> None:
    """G = p on ring8 (modes of std 0.01): the KDE smooths G a little, bias < 0.05 nats."""
    ds = S.ring(S.RingParams(n_train=10, n_val=0, n_test=10))
    g = ds.sample(5000, torch.Generator().manual_seed(0))
    r = ds.sample(5000, torch.Generator().manual_seed(1))
    out = K.density_divergences(g, ds.log_density, real=r)
    assert abs(out["kl_reverse_kde"]) < 0.05 and abs(out["kl_kde"]) < 0.05


def test_kde_leave_one_out_against_brute_force() -> None:
    rng = np.random.default_rng(12)
    x = rng.normal(size=(50, 2))
    h = 0.3
    got = K.log_density64(x, x, h, leave_one_out=True)
    expected = []
    for i in range(50):
        others = np.delete(x, i, axis=0)
        dens = stats.multivariate_normal(np.zeros(2), h * h).pdf(x[i] - others).mean()
        expected.append(math.log(dens))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    both = K.log_density64(x, x, [h, 2 * h])
    assert both.shape == (2, 50)
    np.testing.assert_allclose(both[1], K.log_density64(x, x, 2 * h), rtol=1e-12)


# ---------------------------------------------------------------- modes
@pytest.mark.parametrize(
    "factory,params,k", [(S.ring, S.RingParams, 8), (S.grid, S.GridParams, 25)]
)
def test_modes_of_a_perfect_sampler(factory, params, k: int) -> None:
    """HQ fraction of a perfect sampler is P(chi2(2) <= 9) = 0.98889; sd at n = 100k is
    0.00033, tolerance 0.0015. All modes caught; the mode histogram's KL to uniform is about
    (K - 1) / 2n (a chi-square / 2n), well under 0.01."""
    ds = factory(params(n_train=10, n_val=0, n_test=10))
    x = ds.sample(100_000, torch.Generator().manual_seed(0))
    out = M.mode_statistics(x, ds.info["modes"], ds.info["mode_std"])
    assert out["modes"] == k == out["n_modes"]
    assert out["hq_fraction"] == pytest.approx(HQ_2D_3STD, abs=0.0015)
    assert 0 <= out["modes_kl"] < 0.01


def test_modes_of_collapsed_and_split_samplers() -> None:
    modes, std = S.mixture_modes(S.ring(S.RingParams(n_train=10, n_val=0, n_test=0))), 0.01
    rng = np.random.default_rng(13)
    collapsed = modes[3].numpy() + std * rng.normal(size=(2500, 2)) * 0.1
    out = M.mode_statistics(collapsed, modes, std)
    assert out["modes"] == 1 and out["hq_fraction"] == 1
    assert out["modes_kl"] == pytest.approx(math.log(8))
    split = np.concatenate(
        [np.repeat(modes[:1].numpy(), 10, 0), np.repeat(modes[5:6].numpy(), 30, 0)]
    )
    out = M.mode_statistics(split, modes, std)
    # h = (1/4, 3/4) on two of 8 modes: KL(h || U) = 1/4 ln(8/4) + 3/4 ln(8 * 3/4)
    assert out["modes"] == 2
    assert out["modes_kl"] == pytest.approx(0.25 * math.log(2) + 0.75 * math.log(6), rel=1e-12)
    out = M.mode_statistics(np.zeros((100, 2)), modes, std)  # the centre: far from every mode
    assert out["modes"] == 0 and out["hq_fraction"] == 0 and out["modes_kl"] == math.log(8)


def test_gaussian_kl_keeps_nan_and_clamps_only_rounding() -> None:
    assert math.isnan(G.gaussian_kl([0.0], [[1.0]], [np.nan], [[1.0]]))
    x = np.random.default_rng(3).normal(size=(100, 2))
    assert G.gaussian_fit_divergences(x, x)["kl_pq"] == 0.0
