"""Gaussians fitted to samples: the closed-form KL between two fits, and the Frechet
distance between two (mean, covariance) pairs (FID's formula). float64 throughout."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import linalg

from .rows import ArrayLike, as_rows, to_numpy

#: Ridge added to each fitted covariance's diagonal, as a fraction of that fit's own variance
#: on the axis (of the other fit's where it is 0; 1.0 where both are 0).
GAUSS_RIDGE = 1e-9
#: A fit whose correlation matrix has its smallest eigenvalue at most this (or a zero variance)
#: is singular (a collapsed G, data on a line): the Gaussian KL is then infinite or undefined.
GAUSS_SINGULAR = 1e-12


def gaussian_kl(mean0: ArrayLike, cov0: ArrayLike, mean1: ArrayLike, cov1: ArrayLike) -> float:
    """Closed form KL(N(mean0, cov0) || N(mean1, cov1)) in nats, positive-definite covariances:
    (tr(S1^-1 S0) + (m1 - m0)^T S1^-1 (m1 - m0) - d + ln det S1 - ln det S0) / 2."""
    m0, m1 = to_numpy(mean0).ravel(), to_numpy(mean1).ravel()
    s0, s1 = np.atleast_2d(to_numpy(cov0)), np.atleast_2d(to_numpy(cov1))
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


def feature_stats(f: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1, float64) of features ``f`` of shape (n, d)."""
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats: need an (n >= 2, d) array, got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _nonnegative(w: np.ndarray, what: str) -> np.ndarray:
    """Eigenvalues ``w`` with rounding-size negatives set to 0; a clearly negative one (below
    -1e-6 of the largest) means the input was not a covariance: ValueError."""
    top = float(np.abs(w).max(initial=0.0))
    if w.size and float(w.min()) < -1e-6 * max(top, 1e-300):
        raise ValueError(
            f"frechet_distance: {what} has a negative eigenvalue ({float(w.min()):.3g}): "
            "not a covariance matrix"
        )
    return np.clip(w, 0.0, None)


def _symmetric(s: np.ndarray, which: str) -> np.ndarray:
    scale = max(float(np.abs(s).max(initial=0.0)), 1e-300)
    if np.abs(s - s.T).max(initial=0.0) > 1e-6 * scale:
        raise ValueError(f"frechet_distance: {which} is not symmetric: not a covariance matrix")
    return 0.5 * (s + s.T)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^(1/2)) for two covariances.

    sigma1 sigma2 is similar to R sigma2 R with R = sigma1^(1/2) (symmetric), whose
    eigenvalues are real and >= 0: the trace is the sum of their square roots. Two symmetric
    eigendecompositions instead of ``scipy.linalg.sqrtm`` of a non-symmetric product: about 6x
    faster at d = 2048 (``bench/metrics.py``), equal to rounding (3e-13 relative there), and
    finite for singular covariances without pytorch-fid's ``eps`` retry.
    """
    w, v = linalg.eigh(_symmetric(sigma1, "sigma1"))
    root = (v * np.sqrt(_nonnegative(w, "sigma1"))) @ v.T
    inner = linalg.eigvalsh(root @ _symmetric(sigma2, "sigma2") @ root)
    return float(np.sqrt(_nonnegative(inner, "sigma2")).sum())


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64).

    ``d^2 = ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``.
    The trace term comes from symmetric eigendecompositions (:func:`_trace_sqrt_product`);
    pytorch-fid's ``sqrtm`` gives the same value to rounding. A matrix that is not symmetric
    or has a clearly negative eigenvalue is not a covariance: ValueError.
    Scalars and 1-D arrays are taken as 1-D Gaussians (variance) and diagonal-free 1x1.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: means of shapes {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: covariances of shapes {sigma1.shape} and {sigma2.shape}, "
            f"means of length {d}"
        )
    diff = mu1 - mu2
    covmean_trace = _trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * covmean_trace)
