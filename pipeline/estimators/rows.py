"""Samples as rows, and drawing ``n`` of them reproducibly."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array, torch tensor or nested sequence


def to_numpy(x: ArrayLike) -> np.ndarray:
    """float64 numpy copy of ``x`` (a torch tensor on any device, an array, a sequence)."""
    if hasattr(x, "detach"):  # torch tensor, possibly on an accelerator
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def as_rows(x: ArrayLike) -> np.ndarray:
    """``(N, d)`` float64: a 1-D array is N samples of dimension 1; images are flattened."""
    a = to_numpy(x)
    return a.reshape(-1, 1) if a.ndim <= 1 else a.reshape(len(a), -1)


def as_1d(x: ArrayLike) -> np.ndarray:
    """``(N,)`` float64 of 1-D samples; other dimensions are an error."""
    a = as_rows(x)
    if a.shape[1] != 1:
        raise ValueError(f"expected 1-D samples, got dimension {a.shape[1]}")
    return a[:, 0]


def random_rows(x: Any, n: int, seed: int | np.random.Generator) -> Any:
    """``n`` rows of ``x`` (a tensor or an array) drawn without replacement; all of ``x``, in
    order, when it has no more than ``n``. The global RNGs are left alone.

    ``seed`` an int: the rows of ``torch.randperm`` under a ``torch.Generator`` seeded with it.
    ``seed`` a ``numpy.random.Generator``: ``seed.choice(len(x), n, replace=False)``, which
    advances that generator (one stream for several subsets, as the ``divergences`` metric
    draws its KDE and assignment subsamples).
    """
    if len(x) <= n:
        return x
    if isinstance(seed, np.random.Generator):
        return x[seed.choice(len(x), n, replace=False)]
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(x), generator=g)[:n]
    return x[idx.to(x.device)] if isinstance(x, torch.Tensor) else x[idx.numpy()]
