"""The divergences and modes metric plugins: keys, parameters, errors (their estimators are
checked against references and closed forms in tests/estimators/test_distances.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from scipy import stats

from gan_pipe.context import Dataset
from gan_pipe.errors import UserError
from gan_pipe.estimators.modes import mode_statistics
from gan_pipe.plugins.data import synthetic as S
from gan_pipe.plugins.metrics import divergence as D
from gan_pipe.registry import Registry
from gan_pipe.testing import registry_of

from ..estimators.test_distances import (
    HQ_2D_3STD,
    KL_NARROW_WIDE,
    KL_WIDE_NARROW,
    W1_WIDE_NARROW,
    normal_log_density,
)


# ---------------------------------------------------------------- the metric plugins
def _ctx(ds: Dataset, sampler) -> SimpleNamespace:
    return SimpleNamespace(dataset=ds, generate=sampler, device=torch.device("cpu"))


def _registry() -> Registry:
    return registry_of(D)


def test_metrics_registered() -> None:
    reg = _registry()
    assert reg.names("metric") == ["divergences", "modes"]
    comp = reg.get("metric", "divergences")
    metric = comp.factory(comp.validate_params({"bins": 30, "range": [-1, 9]}))
    assert metric.params.range == (-1.0, 9.0)
    with pytest.raises(Exception, match="extra"):
        comp.validate_params({"binz": 3})


def test_divergences_plugin_1d_collapse() -> None:
    """Seed 001's collapse: G = N(4, 0.05) against N(4, 0.5)."""
    ds = S.gaussian_1d(S.Gaussian1DParams(n_train=10, n_val=0, n_test=10_000))
    gen = torch.Generator().manual_seed(0)
    metric = D.DivergenceMetric(D.DivergenceParams(n_kde=2000))
    out = metric.compute(_ctx(ds, lambda n: 4 + 0.05 * torch.randn(n, 1, generator=gen)))
    # plug-in KL(data || G) infinite (G leaves the data's tail bins empty): flagged; the
    # pseudo-count value is finite and far below the closed form 47.2
    assert out["kl_inf"] == 1 and 1 < out["kl"] < KL_WIDE_NARROW / 2
    assert out["kl_reverse"] == pytest.approx(KL_NARROW_WIDE, abs=0.1)
    assert out["kl_reverse_kde"] == pytest.approx(KL_NARROW_WIDE, abs=0.1)
    # Gaussian fits reach the closed forms; n = 10k: sd ~ 50 * sqrt(4 / n) = 1 nat for 47.2
    assert out["kl_gauss"] == pytest.approx(KL_WIDE_NARROW, abs=3)
    assert out["kl_reverse_gauss"] == pytest.approx(KL_NARROW_WIDE, abs=0.05)
    assert out["kl_gauss_inf"] == 0 == out["kl_reverse_gauss_inf"]
    assert out["w1"] == pytest.approx(W1_WIDE_NARROW, abs=0.02)
    assert out["std_ratio"] == pytest.approx(0.1, abs=0.01)
    # KS closed form: max_s Phi(10 s) - Phi(s), at s^2 = ln 10 / 49.5; sd at n = 10k ~ 0.005
    s_star = math.sqrt(math.log(10) / 49.5)
    ks = stats.norm.cdf(10 * s_star) - stats.norm.cdf(s_star)  # 0.3991
    assert out["ks"] == pytest.approx(ks, abs=0.02)
    assert out["div_bins"] == 100 and out["div_pseudo_count"] == 0.5
    assert out["div_n_samples"] == 10_000 == out["div_n_real"]
    assert out["js"] <= math.log(2) and 0 < out["tv"] <= 1
    assert all(math.isfinite(v) for v in out.values())

    perfect = metric.compute(_ctx(ds, lambda n: ds.sample(n, generator=gen)))
    # Sparse tail bins (a sample or two on one side only) can make even a perfect sampler's
    # plug-in KL infinite: the flag may go up but the pseudo-count value stays about
    # (K - 1) / n = 0.01 at n = 10k (two-sample bias).
    assert perfect["kl"] < 0.03 and perfect["kl_reverse"] < 0.03 and perfect["js"] < 0.005
    assert perfect["w1"] < 0.02 and perfect["std_ratio"] == pytest.approx(1, abs=0.03)


@pytest.mark.parametrize(
    "bad,match",
    [
        ([1, 0], "lo < hi"),
        ([2, 2], "lo < hi"),
        ([0, math.inf], "finite"),
        ([math.nan, 1], "finite"),
        ([[0, 1], [3, -3]], "lo < hi"),
        ([], "empty"),
    ],
)
def test_bad_range_is_a_validation_error(bad, match: str) -> None:
    comp = _registry().get("metric", "divergences")
    with pytest.raises(ValidationError, match=match):
        comp.validate_params({"range": bad})


def test_range_with_the_wrong_number_of_axes_is_a_user_error() -> None:
    ds = S.ring(S.RingParams(n_train=10, n_val=0, n_test=10))
    gen = torch.Generator().manual_seed(0)
    params = D.DivergenceParams(n_samples=200, kde=False, range=[(-2, 2)] * 3)
    with pytest.raises(UserError, match="3 .* pairs .* 2 dimension"):
        D.DivergenceMetric(params).compute(_ctx(ds, lambda n: ds.sample(n, generator=gen)))
    # one pair for every axis, or one per axis, are both fine
    for rng in ([(-2, 2)], [(-2, 2), (-3, 3)]):
        params = D.DivergenceParams(n_samples=200, kde=False, range=rng)
        out = D.DivergenceMetric(params).compute(_ctx(ds, lambda n: ds.sample(n, generator=gen)))
        assert out["div_range_hi_1"] == rng[-1][1]


def test_divergences_plugin_2d_and_high_dim() -> None:
    ds = S.ring(S.RingParams(n_train=10, n_val=0, n_test=10))
    gen = torch.Generator().manual_seed(0)
    params = D.DivergenceParams(n_samples=3000, n_kde=1000, n_assign=300)
    out = D.DivergenceMetric(params).compute(_ctx(ds, lambda n: ds.sample(n, generator=gen)))
    assert {"kl", "kl_reverse", "js", "tv", "sw1", "w1_assign", "kl_reverse_kde"} <= out.keys()
    assert "w1" not in out and out["div_bins"] == 50 and out["div_n_assign"] == 300
    assert out["kl_gauss"] < 0.01 and out["kl_gauss_inf"] == 0  # 2-D fits of one distribution
    assert out["sw1"] < 0.05 and out["js"] < 0.05

    x = torch.randn(2000, 5)
    flat = Dataset(name="flat", train=x, test=x)
    out = D.DivergenceMetric(D.DivergenceParams(n_samples=1000)).compute(
        _ctx(flat, lambda n: torch.randn(n, 5, generator=gen) + 1)
    )
    assert set(out) == {
        "sw1",
        "div_n_projections",
        "div_n_samples",
        "div_n_real",
        "nonfinite_gen",
    }
    # each projection of a unit shift along (1,..,1) moves by theta . 1: E|theta . 1| = 0.69 or so
    assert 0.3 < out["sw1"] < 1.2


def test_divergences_plugin_drops_nonfinite_rows() -> None:
    ds = S.gaussian_1d(S.Gaussian1DParams(n_train=10, n_val=0, n_test=1000))

    def sampler(n: int) -> torch.Tensor:
        x = ds.sample(n, generator=torch.Generator().manual_seed(0))
        x[::10] = float("nan")
        return x

    out = D.DivergenceMetric(D.DivergenceParams(n_samples=1000, kde=False)).compute(
        _ctx(ds, sampler)
    )
    assert out["nonfinite_gen"] == pytest.approx(0.1) and math.isfinite(out["kl"])
    assert out["div_n_samples"] == 900 and out["div_n_real"] == 1000


#: The divergences keys a user reads; everything else is a setting or count, prefixed div_.
HEADLINE = {
    "kl",
    "kl_reverse",
    "kl_inf",
    "kl_reverse_inf",
    "js",
    "tv",
    "w1",
    "ks",
    "sw1",
    "w1_assign",
    "std_ratio",
    "mean_gen",
    "kl_gauss",
    "kl_reverse_gauss",
    "kl_gauss_inf",
    "kl_reverse_gauss_inf",
    "kl_kde",
    "kl_reverse_kde",
    "kde_bandwidth",
    "kde_n",
    "nonfinite_gen",
}


def test_divergences_auxiliary_keys_are_prefixed_and_count_real_samples() -> None:
    """1-D and 2-D runs: every key is a headline name or starts with div_; no key another
    built-in metric logs; div_n_real counts the real rows actually used (a 700-row test split
    when 1000 were asked for), div_n_samples the generated ones."""
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(700, 1)
    x2 = torch.randn(700, 2)
    one = Dataset(name="one", train=x1, test=x1, log_density=normal_log_density(0, 1))
    two = Dataset(name="two", train=x2, test=x2)
    params = D.DivergenceParams(n_samples=1000, n_kde=300, n_assign=200, range=[(-5, 5)])
    keys = set()
    for ds, d in ((one, 1), (two, 2)):
        out = D.DivergenceMetric(params).compute(
            _ctx(ds, lambda n, d=d: torch.randn(n, d, generator=gen))
        )
        assert out["div_n_real"] == 700 and out["div_n_samples"] == 1000
        keys |= set(out)
    assert {k for k in keys if not k.startswith("div_")} <= HEADLINE
    assert {
        "div_bins",
        "div_pseudo_count",
        "div_range_lo",
        "div_range_hi_1",
        "div_outside_real",
        "div_outside_gen",
        "div_n_projections",
        "div_n_assign",
        "div_gauss_ridge",
    } <= keys
    ring = S.ring(S.RingParams(n_train=10, n_val=0, n_test=10))
    modes = D.ModesMetric().compute(_ctx(ring, lambda n: ring.sample(n, generator=gen)))
    assert not keys & set(modes)
    assert not keys & {"n_samples", "bins", "smoothing", "n_projections", "n_assign"}


def test_modes_plugin() -> None:
    ds = S.grid(S.GridParams(n_train=10, n_val=0, n_test=10))
    gen = torch.Generator().manual_seed(0)
    out = D.ModesMetric().compute(_ctx(ds, lambda n: ds.sample(n, generator=gen)))
    assert out["modes"] == 25 and out["modes_n_samples"] == 2500
    assert out["hq_fraction"] == pytest.approx(HQ_2D_3STD, abs=0.01)  # sd 0.002 at n = 2500
    centre = torch.tensor(ds.info["modes"][7], dtype=torch.float32)
    out = D.ModesMetric().compute(_ctx(ds, lambda n: centre.repeat(n, 1)))
    assert out["modes"] == 1 and out["modes_kl"] == pytest.approx(math.log(25))
    with pytest.raises(UserError, match="Dataset.modes"):
        D.ModesMetric().compute(_ctx(Dataset(name="x", train=torch.zeros(3, 2)), None))


def test_modes_reads_dataset_modes_and_falls_back_to_info() -> None:
    """ring8 sets Dataset.modes / mode_std; a dataset giving only the fields, or only the
    older info["modes"] / info["mode_std"], scores the same."""
    ring = S.ring(S.RingParams(n_train=10, n_val=0, n_test=10))
    assert ring.modes.shape == (8, 2) and ring.mode_std == 0.01
    assert ring.modes.tolist() == ring.info["modes"]
    x = ring.sample(900, torch.Generator().manual_seed(4)) * 1.02
    want = D.ModesMetric().compute(_ctx(ring, lambda n: x[:n]))
    fields = Dataset(name="f", train=x, modes=ring.modes, mode_std=0.01)
    info = Dataset(name="i", train=x, info={"modes": ring.info["modes"], "mode_std": 0.01})
    for ds in (fields, info):
        assert D.ModesMetric().compute(_ctx(ds, lambda n: x[:n])) == want
    # the field wins over info
    moved = Dataset(name="m", train=x, modes=ring.modes + 10, mode_std=0.01, info=info.info)
    assert D.ModesMetric().compute(_ctx(moved, lambda n: x[:n]))["modes"] == 0


def test_modes_plugin_reports_the_samples_it_got() -> None:
    """A sampler that returns fewer rows than asked (a small sample file): the count logged is
    the number the statistics were computed on."""
    ds = S.ring(S.RingParams(n_train=10, n_val=0, n_test=10))
    x = ds.sample(700, torch.Generator().manual_seed(0))
    out = D.ModesMetric().compute(_ctx(ds, lambda n: x[:n]))
    assert out["modes_n_samples"] == 700 != D.ModesParams().n_samples
    assert out == {**mode_statistics(x, ds.info["modes"], ds.info["mode_std"]), **out}


def test_old_smoothing_param_of_logged_runs() -> None:
    """Runs logged before pseudo_count store smoothing = 1e-10 (the old default) in their
    resolved recipe: re-evaluating them uses the new default; another value is an error."""
    from pydantic import ValidationError

    assert D.DivergenceParams.model_validate({"smoothing": 1e-10}).pseudo_count == 0.5
    with pytest.raises(ValidationError, match="pseudo_count"):
        D.DivergenceParams.model_validate({"smoothing": 1e-6})
