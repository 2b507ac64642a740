"""Gaussian kernel density estimates (Parzen windows): the one log-density of the built-in
metrics, the choice of its width, and Monte-Carlo KL against a known density.

For a point x and n kernel centres mu_i of d values each, width h (``sigma``)::

    log q(x) = logsumexp_i(-||x - mu_i||^2 / (2 h^2)) - log n - (d/2) log(2 pi h^2)

:func:`log_density` works on any device and in float32 or float64: squared distances come
from one matmul per chunk of points (``||x||^2 + ||mu||^2 - 2 x mu^T`` after centring both sets
on the centres' mean, which keeps the cancellation small), the logsumexp is shifted by the
nearest centre's term (the largest for every width), every width of a grid is evaluated on the
same distance matrix, and chunks are sized so the working set stays under ``max_bytes``.
``parzen`` scores test rows with it; ``divergences`` uses it (float64, leave-one-out) for
G's entropy in :func:`density_divergences`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .rows import ArrayLike, as_rows, random_rows, to_numpy

#: (chunk, n_centres) matrices alive at once per chunk: the distances and their scaled copy.
_MATRICES_PER_CHUNK = 2

#: Kernel terms below exp(-log N - this) of the largest are floored there (their total is
#: below exp(-this) of the sum, far under float64 resolution).
_NEGLIGIBLE_NATS = 50.0


def _as_sigmas(sigma: float | Sequence[float] | Any) -> tuple[list[float], bool]:
    """``(sigmas, was_scalar)``; accepts a float, a 0-d tensor/array or a sequence."""
    if isinstance(sigma, (int, float)):
        sigmas, scalar = [float(sigma)], True
    elif hasattr(sigma, "ndim") and sigma.ndim == 0:
        sigmas, scalar = [float(sigma)], True
    else:
        sigmas, scalar = [float(s) for s in sigma], False
    if not sigmas:
        raise ValueError("kde: no sigma given")
    bad = [s for s in sigmas if not (math.isfinite(s) and s > 0)]
    if bad:
        raise ValueError(f"kde: sigma must be finite and > 0, got {bad}")
    return sigmas, scalar


def _compute_dtype(x: torch.Tensor, centres: torch.Tensor, dtype: Any) -> torch.dtype:

    if dtype is None:
        dtype = torch.promote_types(x.dtype, centres.dtype)
        if not dtype.is_floating_point or torch.finfo(dtype).bits < 32:
            dtype = torch.float32
    elif isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"kde: dtype must be float32 or float64, not {dtype}")
    return dtype


@contextlib.contextmanager
def exact_matmul() -> Iterator[None]:
    """Full-precision float32 matmuls (no TF32 on CUDA, no bf16 on oneDNN) and no autocast:
    TF32's 10-bit mantissa would swamp the distance expansion."""
    candidates = (
        getattr(torch.backends.cuda, "matmul", None),
        getattr(getattr(torch.backends, "mkldnn", None), "matmul", None),
    )
    backends = [b for b in candidates if b is not None and hasattr(b, "fp32_precision")]
    saved = [b.fp32_precision for b in backends]
    old_tf32 = None
    if not backends:  # older torch
        old_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for b in backends:
            b.fp32_precision = "ieee"
        with contextlib.ExitStack() as stack:
            for device_type in ("cpu", "cuda"):
                if device_type == "cuda" and not torch.cuda.is_available():
                    continue
                stack.enter_context(torch.autocast(device_type, enabled=False))
            yield
    finally:
        for b, old in zip(backends, saved, strict=True):
            b.fp32_precision = old
        if old_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = old_tf32


def chunk_rows(n_centres: int, itemsize: int, max_bytes: int) -> int:
    """Rows of ``x`` per chunk so that the chunk's (rows, n_centres) matrices fit ``max_bytes``
    (sigmas of a grid are evaluated one after another on the same buffers)."""
    per_row = _MATRICES_PER_CHUNK * max(n_centres, 1) * itemsize
    return max(1, int(max_bytes) // per_row)


def log_density(
    x: torch.Tensor,
    centres: torch.Tensor,
    sigma: float | Sequence[float],
    *,
    leave_one_out: bool = False,
    batch_size: int | None = None,
    max_bytes: int = 256 * 2**20,
    dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """Per-point log q(x) of ``x`` under a Gaussian KDE with kernels at ``centres``.

    ``x`` is (n, ...) and ``centres`` (N, ...); both are flattened to rows of d values. Runs on
    ``centres.device`` (``x`` is moved there chunk by chunk). ``sigma`` a float gives a tensor
    of shape (n,); a sequence of sigmas gives (n_sigmas, n), all from one distance matrix per
    chunk. ``leave_one_out`` (``x`` is the centres) leaves each point's own kernel out (N - 1
    terms), so a KDE is not scored on its own centres. ``batch_size`` fixes the rows per chunk;
    otherwise it is chosen so the chunk's (rows, N) matrices fit in ``max_bytes``. ``dtype``
    (float32 or float64) is the compute and result dtype; by default the promoted dtype of the
    inputs, at least float32.
    """
    sigmas, scalar = _as_sigmas(sigma)
    dtype = _compute_dtype(x, centres, dtype)
    device = centres.device
    if centres.ndim < 1 or centres.shape[0] == 0:
        raise ValueError("kde: no kernel centres")
    n = int(x.shape[0])
    mu = centres.reshape(centres.shape[0], -1).to(dtype)
    m, d = mu.shape
    xs = x.reshape(n, -1) if n else x.reshape(0, math.prod(x.shape[1:]))
    if xs.shape[1] != d:
        raise ValueError(f"kde: points have {xs.shape[1]} values each, centres have {d}")
    if leave_one_out and (n != m or m < 2):
        raise ValueError("kde: leave_one_out needs x to be the centres, at least 2 of them")
    out = torch.empty(len(sigmas), n, dtype=dtype, device=device)
    if n == 0:
        return out[0] if scalar else out
    itemsize = torch.finfo(dtype).bits // 8
    rows = int(batch_size) if batch_size else chunk_rows(m, itemsize, max_bytes)
    if rows < 1:
        raise ValueError(f"kde: batch_size must be >= 1, got {batch_size}")
    log_n = math.log(m - 1 if leave_one_out else m)
    with torch.no_grad(), exact_matmul():
        for j, s in enumerate(sigmas):
            out[j] = -log_n - 0.5 * d * math.log(2.0 * math.pi * s * s)
        _add_logsumexp(out, xs, mu, [-0.5 / (s * s) for s in sigmas], min(rows, n), leave_one_out)
    return out[0] if scalar else out


def _add_logsumexp(
    out: torch.Tensor,
    xs: torch.Tensor,
    mu: torch.Tensor,
    coefs: list[float],
    rows: int,
    leave_one_out: bool,
) -> None:
    """``out[j, i] +=`` log sum_k exp(coefs[j] ||x_i - mu_k||^2), chunk by chunk of ``rows``.

    The first width's scale is folded into the matmul: e_ik = c0 (||mu_k||^2 - 2 x_i.mu_k),
    c0 = coefs[0]. ||x_i||^2 is constant along a row, so it only enters through the nearest
    centre's squared distance d_min (the row's largest term for every width, which the
    logsumexp is shifted by): log sum = c d_min + log sum_k exp(c (d_ik - d_min)).
    """
    m, device, dtype = mu.shape[0], mu.device, mu.dtype
    floor = -(math.log(m) + _NEGLIGIBLE_NATS)
    c0 = coefs[0]
    order = list(range(1, len(coefs))) + [0]  # width 0 last: it may scale e in place
    shift = mu.mean(dim=0)
    mu = mu - shift  # distances are shift-invariant; centring shrinks the norms
    mu_sq = (mu * mu).sum(dim=1).mul_(c0).unsqueeze(0)  # (1, N), scaled by c0
    mu_t = mu.t()
    e_buf = torch.empty(rows, m, dtype=dtype, device=device)
    s_buf = torch.empty(rows, m, dtype=dtype, device=device) if len(coefs) > 1 else None
    for start in range(0, xs.shape[0], rows):
        xc = xs[start : start + rows].to(device=device, dtype=dtype) - shift
        k = xc.shape[0]
        e = torch.addmm(mu_sq, xc, mu_t, beta=1.0, alpha=-2.0 * c0, out=e_buf[:k])
        if leave_one_out:  # the point's own kernel: no term at all
            own = torch.arange(k, device=device)
            e[own, start + own] = -math.inf
        e_max = e.amax(dim=1)
        e.sub_(e_max.unsqueeze(1))  # c0 (d_ik - d_min): <= 0, 0 at the nearest centre
        # rounding can take d_min a little below 0; a distance is not
        d_min = (xc * xc).sum(dim=1).add_(e_max, alpha=1.0 / c0).clamp_(min=0.0)
        for j in order:
            c = coefs[j]
            sk = e if j == 0 else torch.mul(e, c / c0, out=s_buf[:k])
            # terms below exp(floor) add < exp(-_NEGLIGIBLE_NATS) to a sum >= 1; flooring
            # them keeps exp off its slow underflow path (10x slower on CPU)
            sums = sk.clamp_(min=floor).exp_().sum(dim=1)
            out[j, start : start + k] += sums.log_().add_(d_min, alpha=c)


def select_sigma(
    val: torch.Tensor,
    centres: torch.Tensor,
    sigmas: Sequence[float],
    **kwargs: Any,
) -> tuple[float, dict[float, float]]:
    """Pick sigma by the mean log-likelihood of ``val`` (first of equal maxima).

    Returns ``(best_sigma, {sigma: mean log-likelihood})``; ``kwargs`` go to
    :func:`log_density` (``batch_size``, ``max_bytes``, ``dtype``).
    """
    grid, _ = _as_sigmas(list(sigmas))
    ll = log_density(val, centres, grid, **kwargs)  # (n_sigmas, n_val)
    means = [float(v) for v in ll.mean(dim=1).tolist()]
    table = dict(zip(grid, means, strict=True))
    finite = [(v, i) for i, v in enumerate(means) if math.isfinite(v)]
    if not finite:
        raise ValueError(f"kde: no sigma gives a finite validation log-likelihood: {table}")
    best = max(finite, key=lambda t: (t[0], -t[1]))[1]
    return grid[best], table


def sigma_at_edge(sigma: float, grid: Sequence[float]) -> float:
    """-1.0 if ``sigma`` is the smallest value of ``grid``, +1.0 if the largest, else 0.0.

    At an edge the likelihood's maximum may lie outside the grid. A one-value grid is -1.
    """
    if sigma <= min(grid):
        return -1.0
    return 1.0 if sigma >= max(grid) else 0.0


def log_density64(
    x: np.ndarray, centres: np.ndarray, sigma: float | Sequence[float], leave_one_out: bool = False
) -> np.ndarray:
    """:func:`log_density` of float64 rows, in float64 on the CPU, as a numpy array."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    c = t if centres is x else torch.from_numpy(np.ascontiguousarray(centres))
    return log_density(t, c, sigma, leave_one_out=leave_one_out, dtype=torch.float64).numpy()


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
    x = as_rows(samples)
    n, d = x.shape
    if grid is None:
        scale = float(x.std(axis=0).mean())
        scale = scale if scale > 0 else 1e-6 * (1.0 + float(np.abs(x).max()))
        grid = scale * np.logspace(-3, 0, 16)
    grid = np.asarray(grid, dtype=np.float64)
    sub = random_rows(x, n_select, np.random.default_rng(seed))
    scores = log_density64(sub, sub, grid, leave_one_out=True).mean(axis=1)
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
    rng = np.random.default_rng(seed)
    g = random_rows(as_rows(gen), n_max, rng)
    h = float(bandwidth) if bandwidth else select_bandwidth(g, seed=seed)

    def logp(x: np.ndarray) -> np.ndarray:
        return to_numpy(log_p(torch.from_numpy(x))).ravel()

    out = {
        "kl_reverse_kde": float(np.mean(log_density64(g, g, h, leave_one_out=True) - logp(g))),
        "kde_bandwidth": h,
        "kde_n": float(len(g)),
    }
    if real is not None:
        r = random_rows(as_rows(real), n_max, rng)
        out["kl_kde"] = float(np.mean(logp(r) - log_density64(r, g, h)))
    return out
