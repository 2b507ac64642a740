"""Mode statistics of samples against known mode centres (VEEGAN / PacGAN protocol)."""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import rel_entr

from .rows import ArrayLike, as_rows


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
