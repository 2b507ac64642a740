"""Divergences between generated and real samples, and the mode-collapse metric.

Conventions: ``p`` is the data distribution, ``q`` (or G) the generator's; every value is in
nats. JS is the *divergence* (scipy's ``jensenshannon`` returns its square root), so it lies in
[0, ln 2]. TV is half the L1 distance between probability vectors, in [0, 1]. KL directions in
the ``divergences`` metric: ``kl*`` = KL(data || G) (large when G misses data mass: mode
dropping), ``kl_reverse*`` = KL(G || data) (large when G puts mass where data has none).

The estimators live in :mod:`gan_pipe.estimators` (``transport``, ``histogram``, ``gaussian``,
``kde``, ``modes``); this module declares the metrics' parameters and calls them. By dimension
(seed-systems section 6):

* 1-D, exact on samples: W1 (``scipy.stats.wasserstein_distance``), the KS statistic.
* 1-D and 2-D: KL / JS / TV on a FIXED histogram (bins and range are logged). Mass outside
  the range falls in one extra "outside" cell, so nothing is silently dropped (on a coarser
  partition every f-divergence can only shrink). JS and TV are the plug-in values. The plug-in
  KL(p||q) is infinite when p has a sample in a cell where q has none, which with continuous
  data happens almost always (a sparse tail cell), even for two samples of one distribution;
  so KL is always computed on Krichevsky-Trofimov estimates (count + a) / (n + a K), a pseudo-
  count a = 0.5 per cell (logged), and ``*_inf`` = 1 says the unsmoothed plug-in KL is
  infinite. Never NaN (see :func:`gan_pipe.estimators.histogram.count_divergences`).
* d <= 3: closed-form KL between Gaussians fitted to both samples (exact for Gaussians, a
  moment-matched summary otherwise; see
  :func:`gan_pipe.estimators.gaussian.gaussian_fit_divergences`).
* Where the dataset knows its density (``ctx.dataset.log_density``): Monte-Carlo KL with a
  Gaussian KDE of G (see :func:`gan_pipe.estimators.kde.density_divergences`).
* Any dimension: sliced Wasserstein over random directions; in 2-D also exact W1 between
  equal-size subsamples (an assignment problem).

Keys of the ``divergences`` metric (logged as ``eval/<key>``; which appear depends on d):

* ``kl``, ``kl_reverse``, ``kl_inf``, ``kl_reverse_inf``, ``js``, ``tv``: histogram (d <= 2).
* ``kl_gauss``, ``kl_reverse_gauss``, ``kl_gauss_inf``, ``kl_reverse_gauss_inf``: Gaussian
  fits (d <= 3).
* ``kl_kde`` (KL(data || G), an upper-biased "G misses data mass" indicator), ``kl_reverse_kde``,
  ``kde_bandwidth``, ``kde_n``: KDE against a known density (d <= 3).
* ``w1``, ``ks``, ``std_ratio`` (G / data), ``mean_gen`` (1-D); ``sw1`` (d >= 2);
  ``w1_assign`` (2-D); ``nonfinite_gen`` (fraction of generated rows dropped as NaN / inf).
* Settings and counts, prefixed ``div_`` so they collide with no other metric:
  ``div_n_samples`` (generated samples used), ``div_n_real`` (real samples used),
  ``div_bins``, ``div_pseudo_count``, ``div_range_lo`` / ``div_range_hi``
  (``_0``, ``_1`` per axis in 2-D), ``div_outside_real`` / ``div_outside_gen`` (fraction
  outside the range), ``div_gauss_ridge``, ``div_n_projections``, ``div_n_assign``.

``modes`` is the VEEGAN / PacGAN protocol on mixtures that declare ``info["modes"]`` and
``info["mode_std"]`` (see :func:`gan_pipe.estimators.modes.mode_statistics`).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gan_pipe import hookimpl

Range = tuple[float, float]


def _real_samples(dataset: Any, n: int, seed: int) -> Any:
    """Fresh exact samples when the dataset has a sampler, else the first n held-out rows."""
    import torch

    if dataset.sample is not None:
        return dataset.sample(n, generator=torch.Generator().manual_seed(seed))
    for split in (dataset.test, dataset.val, dataset.train):
        if split is not None:
            return split[:n]
    raise ValueError(f"dataset {dataset.name!r} has no samples")


class DivergenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_samples: int = Field(10_000, ge=2, description="generated (and real) samples")
    bins: int | None = Field(
        None, gt=0, description="histogram bins per axis; default 100 in 1-D, 50 in 2-D"
    )
    range: Range | list[Range] | None = Field(
        None, description="histogram (lo, hi), once or per axis; default real min/max + margin"
    )
    margin: float = Field(0.05, ge=0, description="default range padding, fraction of span")
    pseudo_count: float = Field(
        0.5,
        gt=0,
        description="added to every histogram cell's count, both samples, for KL "
        "(0.5: Jeffreys / Krichevsky-Trofimov)",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_smoothing(cls, data: Any) -> Any:
        """``smoothing`` (an additive probability, default 1e-10) was replaced by
        ``pseudo_count``: runs logged before store the old default in their resolved recipe,
        which re-evaluating them maps to the new default; any other value is an error."""
        if isinstance(data, dict) and "smoothing" in data:
            data = dict(data)
            old = data.pop("smoothing")
            if old != 1e-10:
                raise ValueError(
                    f"`smoothing` ({old}) was an additive probability and is gone: histogram KL "
                    "now adds `pseudo_count` (default 0.5) to every cell's count; set that"
                )
        return data

    n_projections: int = Field(128, gt=0, description="sliced Wasserstein directions")
    n_assign: int = Field(1000, ge=0, description="2-D exact-W1 subsample size (0: skip)")
    kde: bool = Field(True, description="KDE KL against dataset.log_density when known")
    n_kde: int = Field(5000, ge=2, description="generated samples in the KDE")
    bandwidth: float | None = Field(
        None,
        gt=0,
        description="KDE bandwidth (logged as kde_bandwidth); default: leave-one-out CV on G's "
        "samples at each evaluation, which follows G's scale; set it to keep one kernel across "
        "evaluations and runs",
    )
    seed: int = Field(
        0,
        description="seed of the real samples (when the dataset has a sampler), the sliced-W "
        "directions and the W1 / KDE subsamples",
    )

    @field_validator("range")
    @classmethod
    def _finite_increasing(cls, value: Range | list[Range] | None) -> Range | list[Range] | None:
        if value is None:
            return value
        pairs = [value] if isinstance(value, tuple) else value
        if not pairs:
            raise ValueError("give (lo, hi) once, or one pair per axis; got an empty list")
        for lo, hi in pairs:
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"range bounds must be finite numbers, got ({lo}, {hi})")
            if lo >= hi:
                raise ValueError(f"range needs lo < hi, got ({lo}, {hi})")
        return value


class DivergenceMetric:
    """KL (both directions), JS, TV, W1 / sliced W between real and generated samples.

    ``kl`` = KL(data || G), ``kl_reverse`` = KL(G || data); the logged keys are listed in the
    module docstring.
    """

    def __init__(self, params: DivergenceParams | None = None):
        self.params = params or DivergenceParams()

    def compute(self, ctx: Any) -> dict[str, float]:
        import numpy as np

        from gan_pipe.estimators.kde import density_divergences
        from gan_pipe.estimators.rows import as_rows

        p, ds = self.params, ctx.dataset
        gen = as_rows(ctx.generate(p.n_samples))
        finite = np.isfinite(gen).all(axis=1)
        if not finite.any():
            raise ValueError("every generated sample is NaN or infinite: training diverged")
        nonfinite, gen = 1.0 - float(finite.mean()), gen[finite]
        real = as_rows(_real_samples(ds, p.n_samples, p.seed))
        d = gen.shape[1]
        out: dict[str, float] = {}
        if d <= 2:
            out.update(self._histogram(real, gen))
        if d <= 3 and min(len(real), len(gen)) >= 2:
            out.update(_gaussian_fits(real, gen))
        out.update(_one_d(real, gen) if d == 1 else self._transport(real, gen))
        if p.kde and ds.log_density is not None and d <= 3:
            out.update(density_divergences(gen, ds.log_density, real, p.bandwidth, p.n_kde, p.seed))
        out["div_n_samples"] = float(len(gen))  # generated samples used (finite rows)
        out["div_n_real"] = float(len(real))
        out["nonfinite_gen"] = nonfinite  # fraction dropped before everything above
        return out

    def _histogram(self, real: Any, gen: Any) -> dict[str, float]:
        from gan_pipe.errors import UserError
        from gan_pipe.estimators.histogram import axis_ranges, histogram_divergences

        p, d = self.params, gen.shape[1]
        if isinstance(p.range, list) and len(p.range) not in (1, d):
            raise UserError(
                f"divergences: `range` has {len(p.range)} (lo, hi) pairs but the samples "
                f"have {d} dimension(s); give one pair for all axes or one per axis"
            )
        ranges = axis_ranges(p.range, real, p.margin)
        h = histogram_divergences(real, gen, p.bins, ranges, p.pseudo_count)
        out = {
            "kl": h.pop("kl_pq"),
            "kl_reverse": h.pop("kl_qp"),
            "kl_inf": h.pop("kl_pq_inf"),
            "kl_reverse_inf": h.pop("kl_qp_inf"),
            "js": h.pop("js"),
            "tv": h.pop("tv"),
            "div_outside_real": h.pop("outside_p"),
            "div_outside_gen": h.pop("outside_q"),
        }
        out.update({f"div_{k}": v for k, v in h.items()})  # bins, pseudo_count, range_lo/hi
        return out

    def _transport(self, real: Any, gen: Any) -> dict[str, float]:
        """Sliced W1 in any dimension, exact W1 of subsamples in 2-D."""
        from gan_pipe.estimators.transport import sliced_wasserstein, w1_assignment

        p = self.params
        out = {
            "sw1": sliced_wasserstein(real, gen, p.n_projections, 1, p.seed),
            "div_n_projections": float(p.n_projections),
        }
        if gen.shape[1] == 2 and p.n_assign:
            out["w1_assign"] = w1_assignment(real, gen, p.n_assign, p.seed)
            out["div_n_assign"] = float(min(p.n_assign, len(real), len(gen)))
        return out


def _gaussian_fits(real: Any, gen: Any) -> dict[str, float]:
    from gan_pipe.estimators.gaussian import gaussian_fit_divergences

    g = gaussian_fit_divergences(real, gen)
    return {
        "kl_gauss": g["kl_pq"],
        "kl_reverse_gauss": g["kl_qp"],
        "kl_gauss_inf": g["kl_pq_inf"],
        "kl_reverse_gauss_inf": g["kl_qp_inf"],
        "div_gauss_ridge": g["ridge"],
    }


def _one_d(real: Any, gen: Any) -> dict[str, float]:
    """Exact W1 and KS, the spread ratio and G's mean of 1-D samples."""
    from gan_pipe.estimators.transport import ks_1d, w1_1d

    g_std, r_std = float(gen.std()), float(real.std())
    return {
        "w1": w1_1d(real, gen),
        "ks": ks_1d(real, gen),
        # constant data: any spread of G is infinitely wider; none at all matches it
        "std_ratio": g_std / r_std if r_std > 0 else (math.inf if g_std > 0 else 1.0),
        "mean_gen": float(gen.mean()),
    }


def mode_centres(dataset: Any) -> tuple[Any, float]:
    """``(centres (K, d), std)`` of a dataset's modes: ``Dataset.modes`` / ``mode_std``, else
    ``info["modes"]`` / ``info["mode_std"]``; a UserError where it has neither."""
    from gan_pipe.errors import UserError

    info = getattr(dataset, "info", None) or {}
    centres = getattr(dataset, "modes", None)
    centres = centres if centres is not None else info.get("modes")
    std = getattr(dataset, "mode_std", None)
    std = std if std is not None else info.get("mode_std")
    if centres is None or std is None:
        raise UserError(
            f"metric 'modes' needs a dataset with mode centres and their std (Dataset.modes "
            f"and Dataset.mode_std: ring8, grid25, gaussian-1d); {dataset.name!r} has none"
        )
    return centres, float(std)


class ModesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_samples: int = Field(2500, gt=0, description="generated samples (protocol: 2,500)")
    n_std: float = Field(3.0, gt=0, description="high quality: within n_std mode stds")


class ModesMetric:
    """Modes captured, high-quality fraction and mode-histogram KL (VEEGAN / PacGAN)."""

    def __init__(self, params: ModesParams | None = None):
        self.params = params or ModesParams()

    def compute(self, ctx: Any) -> dict[str, float]:
        from gan_pipe.estimators.modes import mode_statistics
        from gan_pipe.estimators.rows import as_rows

        centres, std = mode_centres(ctx.dataset)
        gen = as_rows(ctx.generate(self.params.n_samples))
        out = mode_statistics(gen, centres, std, self.params.n_std)
        out["modes_n_samples"] = float(len(gen))  # what the sampler returned, not the request
        out["modes_n_std"] = float(self.params.n_std)
        return out


@hookimpl
def register_metrics(register: Any) -> None:
    register(
        "divergences",
        DivergenceMetric,
        params=DivergenceParams,
        description="KL both ways, JS, TV, W1 between real data and G, nats: kl = KL(data || G) "
        "and kl_reverse = KL(G || data) from fixed histograms with a 0.5 pseudo-count (kl_inf, "
        "kl_reverse_inf flag an infinite plug-in KL); kl_gauss, kl_reverse_gauss (same "
        "directions) between fitted Gaussians; kl_kde, kl_reverse_kde against a known density; "
        "settings and sample counts logged as div_*",
    )
    register("modes", ModesMetric, params=ModesParams)
