"""Kernel Inception Distance: the unbiased polynomial-kernel MMD^2, averaged over subsets."""

from __future__ import annotations

from typing import Any

import numpy as np


def polynomial_mmd2(
    f1: Any, f2: Any, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> float:
    """Unbiased MMD^2 between two equal-size samples with ``k(x, y) = (gamma x.y + coef0)^degree``
    (``gamma`` defaults to 1/d): within-set sums skip the diagonal, the cross term does not."""
    f1 = np.asarray(f1, dtype=np.float64)
    f2 = np.asarray(f2, dtype=np.float64)
    m = f1.shape[0]
    if f2.shape[0] != m or m < 2:
        raise ValueError(f"kid: subsets must have the same size >= 2, got {m} and {f2.shape[0]}")
    g = 1.0 / f1.shape[1] if gamma is None else float(gamma)
    k11 = (f1 @ f1.T * g + coef0) ** degree
    k22 = (f2 @ f2.T * g + coef0) ** degree
    k12 = (f1 @ f2.T * g + coef0) ** degree
    within = (k11.sum() - np.trace(k11) + k22.sum() - np.trace(k22)) / (m * (m - 1))
    return float(within - 2.0 * k12.sum() / (m * m))


def kid(
    f1: Any,
    f2: Any,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) as torch-fidelity computes it.

    ``subsets`` times, ``m = min(subset_size, n1, n2)`` rows of each set are drawn without
    replacement and their unbiased polynomial MMD^2 computed; returns (mean, std) over the
    subsets (std with ddof 0). Rows are drawn by ``numpy.random.RandomState(seed)``.
    """
    f1 = np.asarray(f1, dtype=np.float64)
    f2 = np.asarray(f2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"kid: need two (n, d) arrays of the same d, got {f1.shape}, {f2.shape}")
    if subsets < 1:
        raise ValueError(f"kid: subsets must be >= 1, got {subsets}")
    m = min(int(subset_size), f1.shape[0], f2.shape[0])
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        a = f1[rng.choice(f1.shape[0], m, replace=False)]
        b = f2[rng.choice(f2.shape[0], m, replace=False)]
        values[i] = polynomial_mmd2(a, b, degree, gamma, coef0)
    return float(values.mean()), float(values.std())
