"""Seed summaries against scipy and published Wilson intervals."""

import math

import numpy as np
import pytest
from scipy import stats

from gan_pipe.stats import overlap, rate, summarize


@pytest.mark.parametrize("n", [2, 3, 5, 20, 40])
def test_mean_interval_equals_scipy_t_interval(n):
    x = np.random.default_rng(n).normal(3.0, 2.0, n)
    s = summarize(x)
    lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
    assert s.n == n
    assert s.mean == pytest.approx(x.mean(), rel=1e-12)
    assert s.std == pytest.approx(x.std(ddof=1), rel=1e-12)
    assert (s.lo, s.hi) == (pytest.approx(lo, rel=1e-10), pytest.approx(hi, rel=1e-10))


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = sum(
        s.lo <= 1.5 <= s.hi for s in (summarize(rng.normal(1.5, 1.0, 5)) for _ in range(4000))
    )
    assert 0.935 < hits / 4000 < 0.965


def test_non_finite_values_are_dropped_and_counted():
    s = summarize([1.0, float("nan"), 3.0, float("inf")])
    assert (s.n, s.n_dropped, s.mean) == (2, 2, 2.0)


def test_one_or_no_value_has_no_interval():
    one = summarize([4.0])
    assert one.mean == 4.0 and one.n == 1 and not one.has_interval
    none = summarize([])
    assert none.n == 0 and math.isnan(none.mean)
    assert "n=1" in one.format() and "n=0" in none.format()


# Wilson 95% intervals as tabulated by Newcombe (1998), Statistics in Medicine 17, table I.
@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombe(k, n, lo, hi):
    r = rate(k, n)
    assert r.k == k and r.n == n and r.mean == pytest.approx(k / n)
    assert r.lo == pytest.approx(lo, abs=1e-4)
    assert r.hi == pytest.approx(hi, abs=1e-4)


def test_rate_at_the_edges_stays_in_unit_interval():
    assert rate(20, 20).hi == 1.0 and rate(20, 20).lo < 1.0
    assert rate(0, 20).lo == 0.0 and rate(0, 20).hi > 0.0
    with pytest.raises(ValueError):
        rate(3, 2)


def test_overlap():
    a, b = summarize([0.0, 0.1, 0.2]), summarize([5.0, 5.1, 5.2])
    assert not overlap(a, b)
    assert overlap(a, summarize([0.05, 0.15, 0.1]))
    assert overlap(a, summarize([7.0]))  # no interval: nothing can be claimed


@pytest.mark.parametrize("k,n", [(0, 20), (1, 29), (7, 40), (20, 20), (81, 263), (3, 5)])
def test_wilson_interval_equals_scipy_binomtest(k, n):
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    r = rate(k, n)
    assert (r.lo, r.hi) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
