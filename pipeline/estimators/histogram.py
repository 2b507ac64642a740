"""KL, JS and TV between two samples on one fixed histogram (1-D to 3-D).

Conventions: every value is in nats; JS is the divergence (scipy's ``jensenshannon`` returns
its square root), in [0, ln 2]; TV is half the L1 distance, in [0, 1]. Mass outside the
range falls in one extra "outside" cell, so nothing is silently dropped. KL is computed on
Krichevsky-Trofimov estimates (see :func:`count_divergences`): never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import rel_entr

from .rows import ArrayLike, as_rows, to_numpy

Range = tuple[float, float]


def axis_ranges(
    range_: Range | Sequence[Range] | None, x: np.ndarray, margin: float
) -> list[Range]:
    """Per-axis (lo, hi): given, or the min/max of ``x`` widened by ``margin`` of the span."""
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
    p, q = as_rows(p), as_rows(q)
    d = p.shape[1]
    if q.shape[1] != d:
        raise ValueError(f"dimensions differ: {d} and {q.shape[1]}")
    if d > 3:
        raise ValueError(f"histograms need d <= 3 (got {d}); use sliced_wasserstein")
    bins = bins or (100 if d == 1 else 50)
    ranges = axis_ranges(range, np.concatenate([p, q]), margin)

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
    P, Q = to_numpy(P).ravel(), to_numpy(Q).ravel()
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
    cp, cq = to_numpy(count_p).ravel(), to_numpy(count_q).ravel()
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
