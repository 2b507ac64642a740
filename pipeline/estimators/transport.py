"""Transport distances between samples: exact in 1-D, sliced or by assignment beyond.

Every function takes numpy arrays or torch tensors (rows are samples) and computes in float64.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance

from .rows import ArrayLike, as_1d, as_rows, random_rows, to_numpy


def w1_1d(a: ArrayLike, b: ArrayLike) -> float:
    """Exact W1 between two 1-D empirical distributions (``scipy.stats.wasserstein_distance``)."""
    return float(wasserstein_distance(as_1d(a), as_1d(b)))


def ks_1d(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) - F_b(x)| (exact, ties handled)."""
    a, b = np.sort(as_1d(a)), np.sort(as_1d(b))
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
    u, v = np.sort(as_rows(u), axis=0), np.sort(as_rows(v), axis=0)
    n, m = len(u), len(v)
    levels = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    widths = np.diff(levels, prepend=0.0)
    mid = levels - widths / 2
    iu = np.minimum((mid * n).astype(np.int64), n - 1)
    iv = np.minimum((mid * m).astype(np.int64), m - 1)
    return (widths[:, None] * np.abs(u[iu] - v[iv]) ** p).sum(axis=0)


def random_projections(d: int, n_projections: int, seed: int = 0) -> np.ndarray:
    """``(d, n_projections)`` unit vectors, uniform on the sphere (POT's layout)."""
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
    a, b = as_rows(a), as_rows(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimensions differ: {a.shape[1]} and {b.shape[1]}")
    theta = (
        random_projections(a.shape[1], n_projections, seed)
        if projections is None
        else to_numpy(projections)
    )
    return float(np.mean(wasserstein_1d_columns(a @ theta, b @ theta, p)) ** (1.0 / p))


def w1_assignment(a: ArrayLike, b: ArrayLike, n: int = 1000, seed: int = 0) -> float:
    """Exact W1 (Euclidean cost) between equal-size random subsamples of ``a`` and ``b``.

    With equal uniform weights optimal transport is an assignment problem
    (``scipy.optimize.linear_sum_assignment``). It is the exact W1 of the two *subsamples*:
    as an estimate of W1 between the distributions it is biased upwards (about n^(-1/d)
    for identical distributions in d >= 2), so always log ``n`` with it.
    """
    a, b = as_rows(a), as_rows(b)
    rng = np.random.default_rng(seed)
    k = min(n, len(a), len(b))
    a, b = random_rows(a, k, rng), random_rows(b, k, rng)
    cost = cdist(a, b)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())
