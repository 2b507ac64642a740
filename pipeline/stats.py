"""Summaries over seeds: a GAN's outcome is a distribution, so every comparison is a mean with
an interval and the number of seeds behind it.

* :func:`summarize` -- mean, sample standard deviation (ddof 1) and the two-sided Student-t
  confidence interval of the mean, ``mean +- t_{(1+c)/2, n-1} * std / sqrt(n)``. Non-finite
  values (a diverged seed's NaN) are left out and counted in ``n_dropped``.
* :func:`rate` -- a success fraction k/n with the Wilson score interval, which stays inside
  [0, 1] and is sensible at k = 0 or k = n (where the normal approximation collapses to a point).
* :func:`overlap` -- whether two intervals overlap; non-overlapping 95% intervals is a
  conservative sign that a difference exceeds seed noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    """A mean over ``n`` seeds with its confidence interval ``[lo, hi]``.

    For :func:`rate`, ``mean`` is the fraction and ``k`` the number of successes. ``lo`` and
    ``hi`` are NaN when no interval exists (fewer than two finite values for a mean, n = 0 for
    a rate)."""

    mean: float
    std: float
    n: int
    lo: float
    hi: float
    confidence: float = 0.95
    n_dropped: int = 0
    k: int | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def format(self, digits: int = 4) -> str:
        """``0.532 ± 0.041 (n=20)``; a rate also shows ``k/n``."""
        if self.n == 0:
            return "n/a (n=0)"
        if self.k is not None:
            return (
                f"{self.mean:.{digits}g} [{self.lo:.{digits}g}, {self.hi:.{digits}g}] "
                f"({self.k}/{self.n})"
            )
        if not self.has_interval:
            return f"{self.mean:.{digits}g} (n={self.n})"
        half = (self.hi - self.lo) / 2
        return f"{self.mean:.{digits}g} ± {half:.{digits - 1}g} (n={self.n})"


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def summarize(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std and Student-t interval of the finite ``values``."""
    from scipy import stats

    _check_confidence(confidence)
    all_values = [float(v) for v in values]
    finite = [v for v in all_values if math.isfinite(v)]
    dropped = len(all_values) - len(finite)
    n = len(finite)
    nan = float("nan")
    if n == 0:
        return Summary(nan, nan, 0, nan, nan, confidence, dropped)
    mean = math.fsum(finite) / n
    if n == 1:
        return Summary(mean, nan, 1, nan, nan, confidence, dropped)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half, confidence, dropped)


def rate(k: int, n: int, confidence: float = 0.95) -> Summary:
    """The fraction ``k/n`` with its Wilson score interval; ``std`` is sqrt(p(1-p)/n)."""
    from scipy import stats

    _check_confidence(confidence)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    nan = float("nan")
    if n == 0:
        return Summary(nan, nan, 0, nan, nan, confidence, 0, k)
    p = k / n
    z = float(stats.norm.ppf((1 + confidence) / 2))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends, not rounding noise
    hi = 1.0 if k == n else min(1.0, centre + half)
    return Summary(p, math.sqrt(p * (1 - p) / n), n, lo, hi, confidence, 0, k)


def overlap(a: Summary, b: Summary) -> bool:
    """True when the intervals overlap, or when either has none (nothing can be claimed)."""
    if not (a.has_interval and b.has_interval):
        return True
    return a.lo <= b.hi and b.lo <= a.hi
