"""Synthetic datasets: exact densities against scipy and numerical integration, exact samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy import stats
from scipy.special import logsumexp

from gan_pipe.plugins.data import synthetic as S
from gan_pipe.registry import Registry
from gan_pipe.testing import registry_of

SMALL = {"n_train": 20_000, "n_val": 1_000, "n_test": 5_000}


def _registry() -> Registry:
    return registry_of(S)


def test_registered_with_params_models() -> None:
    reg = _registry()
    assert reg.names("dataset") == ["gaussian-1d", "grid25", "ring8"]
    comp = reg.get("dataset", "ring8")
    ds = comp.factory(comp.validate_params({"n_train": 100, "n_val": 0, "n_test": 10}))
    assert ds.train.shape == (100, 2) and ds.val is None and ds.test.shape == (10, 2)
    with pytest.raises(ValidationError):
        comp.validate_params({"radious": 2.0})
    with pytest.raises(ValidationError):
        reg.get("dataset", "gaussian-1d").validate_params({"sigma": 0.0})


def test_defaults_follow_the_protocols() -> None:
    g = S.gaussian_1d(S.Gaussian1DParams())
    assert g.info["modes"] == [[4.0]] and g.info["mode_std"] == 0.5
    assert g.train.shape == (50_000, 1) and g.train.dtype == torch.float32
    assert g.value_range == (2.0, 6.0) and not g.is_image

    r = S.ring(S.RingParams(**SMALL))
    modes = S.mixture_modes(r)
    assert modes.shape == (8, 2) and r.info["mode_std"] == 0.01
    assert torch.allclose(modes.norm(dim=1), torch.ones(8, dtype=torch.float64))
    angles = torch.sort(torch.atan2(modes[:, 1], modes[:, 0]) % (2 * math.pi)).values
    assert torch.allclose(angles, torch.arange(8, dtype=torch.float64) * math.pi / 4)

    gr = S.grid(S.GridParams(**SMALL))
    assert gr.info["mode_std"] == 0.05 and gr.info["n_modes"] == 25
    expected = {(a, b) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)}
    assert {tuple(m) for m in gr.info["modes"]} == expected
    assert gr.value_range == pytest.approx((-4.2, 4.2))


@pytest.mark.parametrize("mu,sigma", [(4.0, 0.5), (-1.0, 0.05)])
def test_gaussian_log_density_is_scipy_norm(mu: float, sigma: float) -> None:
    ds = S.gaussian_1d(S.Gaussian1DParams(mu=mu, sigma=sigma, **SMALL))
    x = np.linspace(mu - 12 * sigma, mu + 12 * sigma, 1001)
    got = ds.log_density(torch.from_numpy(x).reshape(-1, 1)).numpy()
    np.testing.assert_allclose(got, stats.norm.logpdf(x, mu, sigma), rtol=1e-12, atol=1e-12)
    # float32 (N,) input, as a generator would give it, is accepted too
    got32 = ds.log_density(torch.tensor(x, dtype=torch.float32))
    assert got32.shape == (1001,)


def _mixture_logpdf_scipy(x: np.ndarray, modes: list[list[float]], std: float) -> np.ndarray:
    comps = [stats.multivariate_normal(m, std**2).logpdf(x) for m in modes]
    return logsumexp(np.stack(comps), axis=0) - math.log(len(modes))


@pytest.mark.parametrize("factory,params", [(S.ring, S.RingParams), (S.grid, S.GridParams)])
def test_mixture_log_density_is_scipy_mixture(factory, params) -> None:
    ds = factory(params(**SMALL))
    x = ds.sample(500, torch.Generator().manual_seed(3)).double().numpy()
    x = np.concatenate([x, np.random.default_rng(0).uniform(-5, 5, (500, 2))])
    expected = _mixture_logpdf_scipy(x, ds.info["modes"], ds.info["mode_std"])
    np.testing.assert_allclose(ds.log_density(torch.from_numpy(x)).numpy(), expected, rtol=1e-10)


def test_densities_integrate_to_one() -> None:
    """Riemann sums with a step of a fifth of the mode std: for Gaussians this is accurate to
    far below 1e-6 (the error decays like exp(-2 pi^2 sigma^2 / step^2))."""
    g = S.gaussian_1d(S.Gaussian1DParams(**SMALL))
    x = torch.arange(4 - 6, 4 + 6, 0.1, dtype=torch.float64).reshape(-1, 1)
    assert float(g.log_density(x).exp().sum() * 0.1) == pytest.approx(1.0, abs=1e-6)
    for ds, lim in ((S.ring(S.RingParams(**SMALL)), 1.2), (S.grid(S.GridParams(**SMALL)), 4.6)):
        step = ds.info["mode_std"] / 5
        axis = torch.arange(-lim, lim, step, dtype=torch.float64)
        xx, yy = torch.meshgrid(axis, axis, indexing="ij")
        pts = torch.stack([xx.ravel(), yy.ravel()], dim=1)
        mass = float(ds.log_density(pts).exp().sum() * step * step)
        assert mass == pytest.approx(1.0, abs=1e-6), ds.name


def test_gaussian_samples_follow_the_distribution() -> None:
    ds = S.gaussian_1d(S.Gaussian1DParams(**SMALL))
    for split in (ds.train, ds.val, ds.test):
        assert stats.kstest(split.numpy().ravel(), stats.norm(4, 0.5).cdf).pvalue > 1e-4


@pytest.mark.parametrize("factory,params", [(S.ring, S.RingParams), (S.grid, S.GridParams)])
def test_mixture_samples_follow_the_distribution(factory, params) -> None:
    """Modes equally likely (chi-square) and |x - mode|^2 / std^2 ~ chi2(2) (KS)."""
    ds = factory(params(**SMALL))
    x = ds.train.double()
    modes = S.mixture_modes(ds)
    d2 = torch.cdist(x, modes).square()
    nearest = d2.argmin(dim=1)
    counts = torch.bincount(nearest, minlength=len(modes)).numpy()
    assert stats.chisquare(counts).pvalue > 1e-4
    r2 = d2.min(dim=1).values.numpy() / ds.info["mode_std"] ** 2
    assert stats.kstest(r2, stats.chi2(2).cdf).pvalue > 1e-4


def test_seeds_and_splits() -> None:
    a = S.ring(S.RingParams(**SMALL, seed=1))
    b = S.ring(S.RingParams(**SMALL, seed=1))
    c = S.ring(S.RingParams(**SMALL, seed=2))
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.train[: len(a.test)], a.test)  # splits use independent streams
    # a split's content does not depend on another split's size
    d = S.ring(S.RingParams(n_train=10, n_val=1_000, n_test=5_000, seed=1))
    assert torch.equal(a.test, d.test)
    s1 = a.sample(100, generator=torch.Generator().manual_seed(9))
    s2 = a.sample(100, generator=torch.Generator().manual_seed(9))
    assert torch.equal(s1, s2) and s1.shape == (100, 2) and s1.dtype == torch.float32


def test_mixture_modes_needs_modes() -> None:
    ds = S.gaussian_1d(S.Gaussian1DParams(**SMALL))
    assert S.mixture_modes(ds).tolist() == [[4.0]]
    ds.info = {}
    with pytest.raises(ValueError, match="no modes"):
        S.mixture_modes(ds)
