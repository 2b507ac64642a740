"""Divergences between generated and real samples, and the mode-collapse metric.

Conventions: ``p`` is the data distribution, ``q`` (or G) the generator's; every value is in
nats. JS is the *divergence* (scipy's ``jensenshannon`` returns its square root), so it lies in
[0, ln 2]. TV is half the L1 distance between probability vectors, in [0, 1]. KL directions in
the ``divergences`` metric: ``kl*`` = KL(data || G) (large when G misses data mass: mode
dropping), ``kl_reverse*`` = KL(G || data) (large when G puts mass where data has none).

Estimators, by dimension (seed-systems section 6):

* 1-D, exact on samples: W1 (``scipy.stats.wasserstein_distance``), the KS statistic.
* 1-D and 2-D: KL / JS / TV on a FIXED histogram (bins and range are logged). Mass outside
  the range falls in one extra "outside" cell, so nothing is silently dropped (on a coarser
  partition every f-divergence can only shrink). JS and TV are the plug-in values. The plug-in
  KL(p||q) is infinite when p has a sample in a cell where q has none, which with continuous
  data happens almost always (a sparse tail cell), even for two samples of one distribution;
  so KL is always computed on Krichevsky-Trofimov estimates (count + a) / (n + a K), a pseudo-
  count a = 0.5 per cell (logged), and ``*_inf`` = 1 says the unsmoothed plug-in KL is
  infinite. Never NaN (see :func:`count_divergences`).
* d <= 3: closed-form KL between Gaussians fitted to both samples (exact for Gaussians, a
  moment-matched summary otherwise; see :func:`gaussian_fit_divergences`).
* Where the dataset knows its density (``ctx.dataset.log_density``): Monte-Carlo KL with a
  Gaussian KDE of G (see :func:`density_divergences`).
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
``info["mode_std"]`` (see :func:`mode_statistics`).

The functions take numpy arrays or torch tensors (rows are samples) and compute in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gan_pipe import hookimpl

if TYPE_CHECKING:
    import numpy as np

ArrayLike = Any  # numpy array, torch tensor or nested sequence
Range = tuple[float, float]


# ---------------------------------------------------------------- helpers
def _np(x: ArrayLike) -> np.ndarray:
    import numpy as np

    if hasattr(x, "detach"):  # torch tensor, possibly on an accelerator
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def as_rows(x: ArrayLike) -> np.ndarray:
    """``(N, d)`` float64: a 1-D array is N samples of dimension 1; images are flattened."""
    a = _np(x)
    return a.reshape(-1, 1) if a.ndim <= 1 else a.reshape(len(a), -1)


def _as_1d(x: ArrayLike) -> np.ndarray:
    a = as_rows(x)
    if a.shape[1] != 1:
        raise ValueError(f"expected 1-D samples, got dimension {a.shape[1]}")
    return a[:, 0]


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[rng.choice(len(x), n, replace=False)]


# ---------------------------------------------------------------- 1-D, exact
def w1_1d(a: ArrayLike, b: ArrayLike) -> float:
    """Exact W1 between two 1-D empirical distributions (``scipy.stats.wasserstein_distance``)."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(_as_1d(a), _as_1d(b)))


def ks_1d(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) - F_b(x)| (exact, ties handled)."""
    import numpy as np

    a, b = np.sort(_as_1d(a)), np.sort(_as_1d(b))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def wasserstein_1d_columns(u: ArrayLike, v: ArrayLike, p: float = 1) -> np.ndarray:
    """W_p^p between the empirical distributions of each column of ``u`` (n, P) and ``v`` (m, P).

    Exact for uniform weights and any n, m: integrates |F_u^-1(t) - F_v^-1(t)|^p over the
    pieces of [0, 1] on which both quantile functions are constant. Vectorised over columns
    (the projections of sliced Wasserstein).
    """
    import numpy as np

    u, v = np.sort(as_rows(u), axis=0), np.sort(as_rows(v), axis=0)
    n, m = len(u), len(v)
    levels = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    widths = np.diff(levels, prepend=0.0)
    mid = levels - widths / 2
    iu = np.minimum((mid * n).astype(np.int64), n - 1)
    iv = np.minimum((mid * m).astype(np.int64), m - 1)
    return (widths[:, None] * np.abs(u[iu] - v[iv]) ** p).sum(axis=0)


# ---------------------------------------------------------------- any dimension
def random_projections(d: int, n_projections: int, seed: int = 0) -> np.ndarray:
    """``(d, n_projections)`` unit vectors, uniform on the sphere (POT's layout)."""
    import numpy as np

    theta = np.random.default_rng(seed).standard_normal((d, n_projections))
    return theta / np.linalg.norm(theta, axis=0, keepdims=True)


def sliced_wasserstein(
    a: ArrayLike,
    b: ArrayLike,
    n_projections: int = 128,
    p: float = 1,
    seed: int = 0,
    projections: ArrayLike | None = None,
) -> float:
    """Sliced W_p = (mean over directions theta of W_p^p(theta.a, theta.b))^(1/p).

    Same definition as POT's ``ot.sliced_wasserstein_distance``; pass ``projections``
    (d, P) to use given directions. Each 1-D W_p is exact, so the only randomness is the
    choice of directions (fixed by ``seed``). In 1-D it equals the exact W_p.
    """
    import numpy as np

    a, b = as_rows(a), as_rows(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimensions differ: {a.shape[1]} and {b.shape[1]}")
    theta = (
        random_projections(a.shape[1], n_projections, seed)
        if projections is None
        else _np(projections)
    )
    return float(np.mean(wasserstein_1d_columns(a @ theta, b @ theta, p)) ** (1.0 / p))


def w1_assignment(a: ArrayLike, b: ArrayLike, n: int = 1000, seed: int = 0) -> float:
    """Exact W1 (Euclidean cost) between equal-size random subsamples of ``a`` and ``b``.

    With equal uniform weights optimal transport is an assignment problem
    (``scipy.optimize.linear_sum_assignment``). It is the exact W1 of the two *subsamples*:
    as an estimate of W1 between the distributions it is biased upwards (about n^(-1/d)
    for identical distributions in d >= 2), so always log ``n`` with it.
    """
    import numpy as np
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    a, b = as_rows(a), as_rows(b)
    rng = np.random.default_rng(seed)
    k = min(n, len(a), len(b))
    a, b = _subsample(a, k, rng), _subsample(b, k, rng)
    cost = cdist(a, b)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


# ---------------------------------------------------------------- histograms (1-D, 2-D)
def _ranges(range_: Range | Sequence[Range] | None, x: np.ndarray, margin: float) -> list[Range]:
    """Per-axis (lo, hi): given, or the min/max of ``x`` widened by ``margin`` of the span."""
    import numpy as np

    d = x.shape[1]
    if range_ is not None:
        r = np.asarray(range_, dtype=np.float64).reshape(-1, 2)
        if len(r) == 1:
            r = np.repeat(r, d, axis=0)
        if len(r) != d or np.any(r[:, 1] <= r[:, 0]):
            raise ValueError(f"range must be (lo, hi) with lo < hi, once or per axis; got {range_}")
    else:
        lo, hi = x.min(axis=0), x.max(axis=0)
        pad = np.where(hi > lo, margin * (hi - lo), 0.5)
        r = np.stack([lo - pad, hi + pad], axis=1)
    return [(float(lo), float(hi)) for lo, hi in r]


def histogram_counts(
    p: ArrayLike,
    q: ArrayLike,
    bins: int | None = None,
    range: Range | Sequence[Range] | None = None,  # numpy's name for it
    margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, list[Range]]:
    """Cell counts of ``p`` and ``q`` on one fixed grid, plus the ranges used.

    ``bins`` per axis (default 100 in 1-D, 50 in 2-D); ``range`` (lo, hi) for every axis or
    one pair per axis, default the joint min/max of both samples (plus ``margin``). The last
    cell of each vector counts the samples outside the range, so K = bins^d + 1 cells.
    """
    import numpy as np

    p, q = as_rows(p), as_rows(q)
    d = p.shape[1]
    if q.shape[1] != d:
        raise ValueError(f"dimensions differ: {d} and {q.shape[1]}")
    if d > 3:
        raise ValueError(f"histograms need d <= 3 (got {d}); use sliced_wasserstein")
    bins = bins or (100 if d == 1 else 50)
    ranges = _ranges(range, np.concatenate([p, q]), margin)

    def counts(x: np.ndarray) -> np.ndarray:
        inside = np.histogramdd(x, bins=[bins] * d, range=ranges)[0].ravel()
        return np.append(inside, len(x) - inside.sum())

    return counts(p), counts(q), ranges


def histogram_probs(
    p: ArrayLike, q: ArrayLike, *args: Any, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray, list[Range]]:
    """Cell probabilities (counts / n) of :func:`histogram_counts`, same arguments."""
    cp, cq, ranges = histogram_counts(p, q, *args, **kwargs)
    return cp / cp.sum(), cq / cq.sum(), ranges


def discrete_divergences(P: ArrayLike, Q: ArrayLike) -> dict[str, float]:
    """Plug-in KL(P||Q), KL(Q||P), JS, TV between two probability vectors (normalised here).

    KL is the sum P log(P/Q) (0 log 0 = 0), unsmoothed: where P > 0 = Q in some cell it is
    ``inf`` and ``kl_pq_inf`` (``kl_qp_inf`` for KL(Q||P)) is 1.0, never NaN. JS =
    (KL(P||M) + KL(Q||M)) / 2 with M = (P + Q) / 2 is always finite, at most ln 2. For two
    samples' cell counts, :func:`count_divergences` gives a finite KL estimate.
    """
    import numpy as np
    from scipy.special import rel_entr

    P, Q = _np(P).ravel(), _np(Q).ravel()
    P, Q = P / P.sum(), Q / Q.sum()
    out: dict[str, float] = {}
    for key, a, b in (("kl_pq", P, Q), ("kl_qp", Q, P)):
        out[key] = float(rel_entr(a, b).sum())
        out[f"{key}_inf"] = float(math.isinf(out[key]))
    M = 0.5 * (P + Q)
    out["js"] = float(0.5 * rel_entr(P, M).sum() + 0.5 * rel_entr(Q, M).sum())
    out["tv"] = float(0.5 * np.abs(P - Q).sum())
    return out


def count_divergences(
    count_p: ArrayLike, count_q: ArrayLike, pseudo_count: float = 0.5
) -> dict[str, float]:
    """KL both ways, JS, TV from two samples' counts on the same K cells.

    KL is computed on the Krichevsky-Trofimov (Jeffreys) estimates P = (c_p + a) / (n_p + a K)
    and Q likewise, a = ``pseudo_count`` (0.5) added to every cell of both histograms, always:
    so the estimator is one definition whether or not a cell is empty, and a tail cell that
    only one sample reaches adds about (c / n) log(c / a) instead of infinity. Two samples of
    the same distribution give KL about (K - 1) / n each way. ``kl_pq_inf`` / ``kl_qp_inf``
    say whether the *unsmoothed* plug-in KL is infinite (a cell with counts on one side
    only); JS and TV are the unsmoothed plug-in values (always finite); ``pseudo_count`` is a.
    """
    cp, cq = _np(count_p).ravel(), _np(count_q).ravel()
    if cp.shape != cq.shape or cp.sum() <= 0 or cq.sum() <= 0 or (cp < 0).any() or (cq < 0).any():
        raise ValueError("need two non-negative count vectors of one length, each with counts")
    if not pseudo_count > 0:
        raise ValueError(f"pseudo_count must be > 0, got {pseudo_count}")
    k = len(cp)
    plain = discrete_divergences(cp, cq)
    kt = discrete_divergences(
        (cp + pseudo_count) / (cp.sum() + pseudo_count * k),
        (cq + pseudo_count) / (cq.sum() + pseudo_count * k),
    )
    kl = {"kl_pq": kt["kl_pq"], "kl_qp": kt["kl_qp"], "pseudo_count": float(pseudo_count)}
    return {**plain, **kl}


def histogram_divergences(
    p_samples: ArrayLike,
    q_samples: ArrayLike,
    bins: int | None = None,
    range: Range | Sequence[Range] | None = None,  # numpy's name for it
    pseudo_count: float = 0.5,
    margin: float = 0.0,
) -> dict[str, float]:
    """Histogram KL(p||q), KL(q||p), JS, TV (see :func:`count_divergences`) on fixed bins.

    Returns also ``bins`` (per axis), ``range_lo``/``range_hi`` (suffixed ``_<axis>`` in 2-D),
    ``outside_p``/``outside_q`` (fraction of each sample outside the range), ``pseudo_count``.
    """
    cp, cq, ranges = histogram_counts(p_samples, q_samples, bins, range, margin)
    out = count_divergences(cp, cq, pseudo_count)
    d = len(ranges)
    out["bins"] = float(bins or (100 if d == 1 else 50))
    for i, (lo, hi) in enumerate(ranges):
        suffix = "" if d == 1 else f"_{i}"
        out[f"range_lo{suffix}"], out[f"range_hi{suffix}"] = lo, hi
    out["outside_p"], out["outside_q"] = float(cp[-1] / cp.sum()), float(cq[-1] / cq.sum())
    return out


# ---------------------------------------------------------------- Gaussian fits (d <= 3)
#: Ridge added to each fitted covariance's diagonal, as a fraction of that fit's own variance
#: on the axis (of the other fit's where it is 0; 1.0 where both are 0).
GAUSS_RIDGE = 1e-9
#: A fit whose correlation matrix has its smallest eigenvalue at most this (or a zero variance)
#: is singular (a collapsed G, data on a line): the Gaussian KL is then infinite or undefined.
GAUSS_SINGULAR = 1e-12


def gaussian_kl(mean0: ArrayLike, cov0: ArrayLike, mean1: ArrayLike, cov1: ArrayLike) -> float:
    """Closed form KL(N(mean0, cov0) || N(mean1, cov1)) in nats, positive-definite covariances:
    (tr(S1^-1 S0) + (m1 - m0)^T S1^-1 (m1 - m0) - d + ln det S1 - ln det S0) / 2."""
    import numpy as np

    m0, m1 = _np(mean0).ravel(), _np(mean1).ravel()
    s0, s1 = np.atleast_2d(_np(cov0)), np.atleast_2d(_np(cov1))
    diff = m1 - m0
    logdet0, logdet1 = np.linalg.slogdet(s0)[1], np.linalg.slogdet(s1)[1]
    quad = np.trace(np.linalg.solve(s1, s0)) + diff @ np.linalg.solve(s1, diff)
    kl = float(0.5 * (quad - len(m0) + logdet1 - logdet0))
    # KL >= 0: a rounding residue such as -2e-16 for identical fits is reported as 0 (a NaN
    # from overflowing inputs stays NaN: max(0, nan) would hide it as a perfect 0)
    return 0.0 if -1e-9 < kl < 0 else kl


def gaussian_fit_divergences(
    p: ArrayLike, q: ArrayLike, ridge: float = GAUSS_RIDGE
) -> dict[str, float]:
    """KL both ways between Gaussians fitted (mean, covariance with ddof 1) to two samples.

    Exact (up to sampling error) when both distributions are Gaussian: it reaches values a
    histogram or KDE of samples cannot, such as KL(N(4, .5) || N(4, .05)) = 47.2, which lives
    in q's far tails. Otherwise it is a moment-matched summary (it sees only means and
    covariances: two different distributions with equal moments give 0). Each fit gets
    ``ridge`` times its own variance added on each axis (the other fit's variance on an axis
    where its own is 0, 1.0 where both are), always: a relative change of ``ridge`` (returned
    as ``ridge``), negligible at any scale and for any pair of scales. A singular fit (a zero
    variance, or a correlation matrix with smallest eigenvalue <= :data:`GAUSS_SINGULAR`: a
    collapsed G, data on a line, fewer than d + 1 samples) makes the Gaussian KL infinite
    (or undefined): ``kl_pq_inf`` = ``kl_qp_inf`` = 1 and the values returned are the
    ridge-regularised ones, dominated by the ridge: read the flag, not the number.
    """
    import numpy as np

    p, q = as_rows(p), as_rows(q)
    if p.shape[1] != q.shape[1]:
        raise ValueError(f"dimensions differ: {p.shape[1]} and {q.shape[1]}")
    if min(len(p), len(q)) < 2:
        raise ValueError("a covariance needs at least 2 samples on each side")
    covs = [np.atleast_2d(np.cov(x, rowvar=False)) for x in (p, q)]
    var = np.stack([np.diag(c) for c in covs])  # (2, d)
    base = np.where(var > 0, var, var[::-1])  # an axis without spread borrows the other's
    base = np.where(base > 0, base, 1.0)

    def is_singular(c: np.ndarray, v: np.ndarray) -> bool:
        if np.any(v <= 0):
            return True
        s = 1.0 / np.sqrt(v)
        return bool(np.linalg.eigvalsh(c * s[:, None] * s[None, :]).min() <= GAUSS_SINGULAR)

    singular = any(is_singular(c, v) for c, v in zip(covs, var, strict=True))
    cp, cq = (c + np.diag(ridge * b) for c, b in zip(covs, base, strict=True))
    mp, mq = p.mean(axis=0), q.mean(axis=0)
    return {
        "kl_pq": gaussian_kl(mp, cp, mq, cq),
        "kl_qp": gaussian_kl(mq, cq, mp, cp),
        "kl_pq_inf": float(singular),
        "kl_qp_inf": float(singular),
        "ridge": float(ridge),
    }


# ---------------------------------------------------------------- KDE against a known density
def kde_log_density(
    x: ArrayLike,
    centres: ArrayLike,
    bandwidth: float | Sequence[float],
    leave_one_out: bool = False,
    chunk: int = 1024,
) -> np.ndarray:
    """log q(x) of an isotropic Gaussian KDE with kernels at ``centres``; shape (N,) or (H, N).

    log q(x) = logsumexp_i(-|x - c_i|^2 / 2h^2) - log n - (d/2) log(2 pi h^2). With
    ``leave_one_out`` (x is centres) the kernel of x_i itself is left out (n - 1 terms), so
    the KDE is not scored on its own centres. Several bandwidths share one distance pass.
    """
    import numpy as np
    from scipy.spatial.distance import cdist

    x, c = as_rows(x), as_rows(centres)
    hs = np.atleast_1d(np.asarray(bandwidth, dtype=np.float64))
    n, d = c.shape
    n_eff = n - 1 if leave_one_out else n
    if leave_one_out and len(x) != n:
        raise ValueError("leave_one_out needs x to be the centres")
    out = np.empty((len(hs), len(x)))
    for start in range(0, len(x), chunk):
        sq = cdist(x[start : start + chunk], c, "sqeuclidean")
        if leave_one_out:
            rows = np.arange(len(sq))
            sq[rows, start + rows] = np.inf
        for j, h in enumerate(hs):
            a = sq * (-0.5 / (h * h))
            top = a.max(axis=1)  # finite: at least one other centre
            out[j, start : start + len(sq)] = top + np.log(np.exp(a - top[:, None]).sum(axis=1))
    out -= (math.log(n_eff) + 0.5 * d * np.log(2 * math.pi * hs**2))[:, None]
    return out[0] if np.ndim(bandwidth) == 0 else out


def select_bandwidth(
    samples: ArrayLike, grid: Sequence[float] | None = None, n_select: int = 1000, seed: int = 0
) -> float:
    """Bandwidth maximising the leave-one-out mean log-likelihood of ``samples``.

    Likelihood cross-validation is the bandwidth choice that targets KL. Default grid:
    s * logspace(-3, 0, 16), s the mean per-axis std of the samples, so it follows G's scale
    (a collapsed G gets a narrow kernel, not a data-sized one). For speed the search runs on
    ``n_select`` random samples and the winner is rescaled to the full n by the optimal-rate
    factor (n_select / n)^(1 / (d + 4)).
    """
    import numpy as np

    x = as_rows(samples)
    n, d = x.shape
    if grid is None:
        scale = float(x.std(axis=0).mean())
        scale = scale if scale > 0 else 1e-6 * (1.0 + float(np.abs(x).max()))
        grid = scale * np.logspace(-3, 0, 16)
    grid = np.asarray(grid, dtype=np.float64)
    sub = _subsample(x, n_select, np.random.default_rng(seed))
    scores = kde_log_density(sub, sub, grid, leave_one_out=True).mean(axis=1)
    return float(grid[int(np.argmax(scores))] * (len(sub) / n) ** (1.0 / (d + 4)))


def density_divergences(
    gen: ArrayLike,
    log_p: Callable[[Any], Any],
    real: ArrayLike | None = None,
    bandwidth: float | None = None,
    n_max: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """Monte-Carlo KL between G and a distribution p whose log-density is known exactly.

    q is a Gaussian KDE of (at most ``n_max``) generated samples, bandwidth ``bandwidth`` or
    :func:`select_bandwidth`; ``log_p`` is called on a float64 torch tensor (N, d).

    * ``kl_reverse_kde`` = KL(G||p) ~ mean over generated x of [log q_LOO(x) - log p(x)]
      (leave-one-out KDE: the entropy term without the self-kernel's upward bias). Reliable
      to a few hundredths of a nat: ``log p`` is exact, only G's entropy is estimated. The
      KDE's smoothing biases it down, so a perfect sampler can give a slightly negative value
      (-0.02 to -0.07 nats seen on ring8 / grid25, whose modes are narrow): read |value| below
      about 0.1 as "no detectable difference", not as a negative KL.
    * ``kl_kde`` = KL(p||G) ~ mean over real x of [log p(x) - log q(x)] (needs ``real``): an
      upper-biased indicator that G misses data mass, not a measurement. Where p has mass
      beyond G's samples, log q is the KDE's Gaussian tail, with a bandwidth fitted to G and
      centred on G's outermost samples: far lighter than any true q's tail, so the value can
      be off by orders of magnitude, and it grows with ``n_max`` (for G = N(4, .05) against
      data N(4, .5), true 47.2: about 800 at n_max = 5000, 200 at 2000; about 1e5 for a
      sampler collapsed on one ring8 mode). Compare runs only at equal ``n_max``; read
      ``kl_gauss`` for the magnitude where the data are near Gaussian.
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    g = _subsample(as_rows(gen), n_max, rng)
    h = float(bandwidth) if bandwidth else select_bandwidth(g, seed=seed)

    def logp(x: np.ndarray) -> np.ndarray:
        return _np(log_p(torch.from_numpy(x))).ravel()

    out = {
        "kl_reverse_kde": float(np.mean(kde_log_density(g, g, h, leave_one_out=True) - logp(g))),
        "kde_bandwidth": h,
        "kde_n": float(len(g)),
    }
    if real is not None:
        r = _subsample(as_rows(real), n_max, rng)
        out["kl_kde"] = float(np.mean(logp(r) - kde_log_density(r, g, h)))
    return out


# ---------------------------------------------------------------- mode collapse
def mode_statistics(
    samples: ArrayLike, modes: ArrayLike, std: float, n_std: float = 3.0
) -> dict[str, float]:
    """VEEGAN / PacGAN mode metrics of ``samples`` against mode centres ``modes`` (K, d).

    A sample is high quality (HQ) if its Euclidean distance to the nearest mode is at most
    ``n_std * std``; a mode is captured if it is the nearest mode of at least one HQ sample.
    ``modes_kl`` = KL(h || U) = sum_k h_k log(K h_k), h the histogram of HQ samples over their
    nearest modes, U uniform over the K modes: "reverse" because the model's distribution comes
    first. Always finite (U > 0, 0 log 0 = 0) and in [0, ln K]: 0 for perfectly balanced modes,
    ln(K) for everything in one mode, also returned when there is no HQ sample.
    """
    import numpy as np
    from scipy.spatial.distance import cdist
    from scipy.special import rel_entr

    x, c = as_rows(samples), as_rows(modes)
    dist = cdist(x, c)
    nearest = dist.argmin(axis=1)
    hq = dist[np.arange(len(x)), nearest] <= n_std * std
    counts = np.bincount(nearest[hq], minlength=len(c))
    k = len(c)
    kl = float(rel_entr(counts / counts.sum(), 1.0 / k).sum()) if hq.any() else math.log(k)
    return {
        "modes": float((counts > 0).sum()),
        "n_modes": float(k),
        "hq_fraction": float(hq.mean()),
        "modes_kl": kl,
    }


# ---------------------------------------------------------------- metric plugins
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

        from gan_pipe.errors import UserError

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
            if isinstance(p.range, list) and len(p.range) not in (1, d):
                raise UserError(
                    f"divergences: `range` has {len(p.range)} (lo, hi) pairs but the samples "
                    f"have {d} dimension(s); give one pair for all axes or one per axis"
                )
            ranges = _ranges(p.range, real, p.margin)
            h = histogram_divergences(real, gen, p.bins, ranges, p.pseudo_count)
            out.update(
                kl=h.pop("kl_pq"),
                kl_reverse=h.pop("kl_qp"),
                kl_inf=h.pop("kl_pq_inf"),
                kl_reverse_inf=h.pop("kl_qp_inf"),
                js=h.pop("js"),
                tv=h.pop("tv"),
                div_outside_real=h.pop("outside_p"),
                div_outside_gen=h.pop("outside_q"),
            )
            out.update({f"div_{k}": v for k, v in h.items()})  # bins, pseudo_count, range_lo/hi
        if d <= 3 and min(len(real), len(gen)) >= 2:
            g = gaussian_fit_divergences(real, gen)
            out.update(
                kl_gauss=g["kl_pq"],
                kl_reverse_gauss=g["kl_qp"],
                kl_gauss_inf=g["kl_pq_inf"],
                kl_reverse_gauss_inf=g["kl_qp_inf"],
                div_gauss_ridge=g["ridge"],
            )
        if d == 1:
            out["w1"] = w1_1d(real, gen)
            out["ks"] = ks_1d(real, gen)
            g_std, r_std = float(gen.std()), float(real.std())
            # constant data: any spread of G is infinitely wider; none at all matches it
            out["std_ratio"] = g_std / r_std if r_std > 0 else (math.inf if g_std > 0 else 1.0)
            out["mean_gen"] = float(gen.mean())
        else:
            out["sw1"] = sliced_wasserstein(real, gen, p.n_projections, 1, p.seed)
            out["div_n_projections"] = float(p.n_projections)
            if d == 2 and p.n_assign:
                out["w1_assign"] = w1_assignment(real, gen, p.n_assign, p.seed)
                out["div_n_assign"] = float(min(p.n_assign, len(real), len(gen)))
        if p.kde and ds.log_density is not None and d <= 3:
            out.update(density_divergences(gen, ds.log_density, real, p.bandwidth, p.n_kde, p.seed))
        out["div_n_samples"] = float(len(gen))  # generated samples used (finite rows)
        out["div_n_real"] = float(len(real))
        out["nonfinite_gen"] = nonfinite  # fraction dropped before everything above
        return out


class ModesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_samples: int = Field(2500, gt=0, description="generated samples (protocol: 2,500)")
    n_std: float = Field(3.0, gt=0, description="high quality: within n_std mode stds")


class ModesMetric:
    """Modes captured, high-quality fraction and mode-histogram KL (VEEGAN / PacGAN)."""

    def __init__(self, params: ModesParams | None = None):
        self.params = params or ModesParams()

    def compute(self, ctx: Any) -> dict[str, float]:
        from gan_pipe.errors import UserError

        info = ctx.dataset.info
        if "modes" not in info or "mode_std" not in info:
            raise UserError(
                f"metric 'modes' needs a dataset with info['modes'] and info['mode_std'] "
                f"(ring8, grid25, gaussian-1d); {ctx.dataset.name!r} has none"
            )
        gen = as_rows(ctx.generate(self.params.n_samples))
        out = mode_statistics(gen, info["modes"], info["mode_std"], self.params.n_std)
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
