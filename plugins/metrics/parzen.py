"""Parzen-window (Gaussian kernel density) log-likelihood, Goodfellow et al. 2014 protocol.

The protocol of the official ``parzen_ll.py``: the kernel centres are ``n_samples`` generator
samples (10,000), with data in [0, 1]; sigma is picked from ``logspace(-1, 0, 10)`` by the mean
log-likelihood of the validation rows (1,000); the score is the mean log-likelihood of the test
rows (10,000) with its standard error std/sqrt(N) (ddof 0). For one point::

    log p(x) = logsumexp_i(-||x - mu_i||^2 / (2 sigma^2)) - log N - (d/2) log(2 pi sigma^2)

The score grows with N and rewards memorisation (Theis et al. 2016), so N, sigma and the
validation and test sizes are always reported with it. ``parzen_sigma_at_edge`` says whether the
searched sigma is the grid's smallest (-1) or largest (+1) value, where the optimum may lie
outside the grid (widen the grid), or inside it (0; also 0 for a fixed ``sigma``). A one-value
grid reports -1.

The pure functions work on any device and in float32 or float64: squared distances come from
one matmul per chunk of points (``||x||^2 + ||mu||^2 - 2 x mu^T`` after centring both sets on
the centres' mean, which keeps the cancellation small), the logsumexp is shifted by the nearest
centre's term (the largest for every sigma), every sigma of a grid is evaluated on the same
distance matrix, and chunks are sized so the working set stays under ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl

if TYPE_CHECKING:
    import torch

#: ``numpy.logspace(-1, 0, 10)``: the sigma grid of the protocol.
DEFAULT_SIGMAS: list[float] = [10.0 ** (-1.0 + i / 9.0) for i in range(10)]

#: (chunk, n_centres) matrices alive at once per chunk: the distances and their scaled copy.
_MATRICES_PER_CHUNK = 2

#: Kernel terms below exp(-log N - this) of the largest are floored there (their total is
#: below exp(-this) of the sum, far under float64 resolution).
_NEGLIGIBLE_NATS = 50.0


# ------------------------------------------------------------------ pure functions
def _as_sigmas(sigma: float | Sequence[float] | Any) -> tuple[list[float], bool]:
    """``(sigmas, was_scalar)``; accepts a float, a 0-d tensor/array or a sequence."""
    if isinstance(sigma, (int, float)):
        sigmas, scalar = [float(sigma)], True
    elif hasattr(sigma, "ndim") and sigma.ndim == 0:
        sigmas, scalar = [float(sigma)], True
    else:
        sigmas, scalar = [float(s) for s in sigma], False
    if not sigmas:
        raise ValueError("parzen: no sigma given")
    bad = [s for s in sigmas if not (math.isfinite(s) and s > 0)]
    if bad:
        raise ValueError(f"parzen: sigma must be finite and > 0, got {bad}")
    return sigmas, scalar


def _compute_dtype(x: torch.Tensor, centres: torch.Tensor, dtype: Any) -> torch.dtype:
    import torch

    if dtype is None:
        dtype = torch.promote_types(x.dtype, centres.dtype)
        if not dtype.is_floating_point or torch.finfo(dtype).bits < 32:
            dtype = torch.float32
    elif isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"parzen: dtype must be float32 or float64, not {dtype}")
    return dtype


@contextlib.contextmanager
def _exact_matmul() -> Iterator[None]:
    """Full-precision float32 matmuls (no TF32 on CUDA, no bf16 on oneDNN) and no autocast:
    TF32's 10-bit mantissa would swamp the distance expansion."""
    import torch

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


def parzen_log_likelihood(
    x: torch.Tensor,
    centres: torch.Tensor,
    sigma: float | Sequence[float],
    *,
    batch_size: int | None = None,
    max_bytes: int = 256 * 2**20,
    dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """Per-point log-likelihood of ``x`` under a Gaussian Parzen window on ``centres``.

    ``x`` is (n, ...) and ``centres`` (N, ...); both are flattened to rows of d values. Runs on
    ``centres.device`` (``x`` is moved there chunk by chunk). ``sigma`` a float gives a tensor
    of shape (n,); a sequence of sigmas gives (n_sigmas, n), all from one distance matrix per
    chunk. ``batch_size`` fixes the rows per chunk; otherwise it is chosen so the chunk's
    (rows, N) matrices fit in ``max_bytes``. ``dtype`` (float32 or float64) is the compute and
    result dtype; by default the promoted dtype of the inputs, at least float32.
    """
    import torch

    sigmas, scalar = _as_sigmas(sigma)
    dtype = _compute_dtype(x, centres, dtype)
    device = centres.device
    if centres.ndim < 1 or centres.shape[0] == 0:
        raise ValueError("parzen: no kernel centres")
    n = int(x.shape[0])
    mu = centres.reshape(centres.shape[0], -1).to(dtype)
    m, d = mu.shape
    xs = x.reshape(n, -1) if n else x.reshape(0, math.prod(x.shape[1:]))
    if xs.shape[1] != d:
        raise ValueError(f"parzen: points have {xs.shape[1]} values each, centres have {d}")
    out = torch.empty(len(sigmas), n, dtype=dtype, device=device)
    if n == 0:
        return out[0] if scalar else out

    itemsize = torch.finfo(dtype).bits // 8
    rows = int(batch_size) if batch_size else chunk_rows(m, itemsize, max_bytes)
    if rows < 1:
        raise ValueError(f"parzen: batch_size must be >= 1, got {batch_size}")
    rows = min(rows, n)
    log_n = math.log(m)
    coefs = [-0.5 / (s * s) for s in sigmas]
    consts = [-log_n - 0.5 * d * math.log(2.0 * math.pi * s * s) for s in sigmas]
    floor = -(log_n + _NEGLIGIBLE_NATS)

    # The first sigma's scale is folded into the matmul: e_ij = c0 (||mu_j||^2 - 2 x_i.mu_j),
    # c0 = -1/(2 sigma_0^2). ||x_i||^2 is constant along a row, so it only enters through the
    # nearest centre's squared distance d_min (the row's largest term for every sigma, which
    # the logsumexp is shifted by): log p = c d_min + log sum_j exp(c (d_ij - d_min)) + const.
    c0 = coefs[0]
    order = list(range(1, len(sigmas))) + [0]  # sigma 0 last: it may scale e in place
    with torch.no_grad(), _exact_matmul():
        shift = mu.mean(dim=0)
        mu = mu - shift  # distances are shift-invariant; centring shrinks the norms
        mu_sq = (mu * mu).sum(dim=1).mul_(c0).unsqueeze(0)  # (1, N), scaled by c0
        mu_t = mu.t()
        e_buf = torch.empty(rows, m, dtype=dtype, device=device)
        s_buf = torch.empty(rows, m, dtype=dtype, device=device) if len(sigmas) > 1 else None
        for start in range(0, n, rows):
            xc = xs[start : start + rows].to(device=device, dtype=dtype) - shift
            k = xc.shape[0]
            e = torch.addmm(mu_sq, xc, mu_t, beta=1.0, alpha=-2.0 * c0, out=e_buf[:k])
            e_max = e.amax(dim=1)
            e.sub_(e_max.unsqueeze(1))  # c0 (d_ij - d_min): <= 0, 0 at the nearest centre
            # rounding can take d_min a little below 0; a distance is not
            d_min = (xc * xc).sum(dim=1).add_(e_max, alpha=1.0 / c0).clamp_(min=0.0)
            for j in order:
                c = coefs[j]
                sk = e if j == 0 else torch.mul(e, c / c0, out=s_buf[:k])
                # terms below exp(floor) add < exp(-_NEGLIGIBLE_NATS) to a sum >= 1; flooring
                # them keeps exp off its slow underflow path (10x slower on CPU)
                sums = sk.clamp_(min=floor).exp_().sum(dim=1)
                out[j, start : start + k] = sums.log_().add_(d_min, alpha=c).add_(consts[j])
    return out[0] if scalar else out


def select_sigma(
    val: torch.Tensor,
    centres: torch.Tensor,
    sigmas: Sequence[float],
    **kwargs: Any,
) -> tuple[float, dict[float, float]]:
    """Pick sigma by the mean log-likelihood of ``val`` (first of equal maxima).

    Returns ``(best_sigma, {sigma: mean log-likelihood})``; ``kwargs`` go to
    :func:`parzen_log_likelihood` (``batch_size``, ``max_bytes``, ``dtype``).
    """
    grid, _ = _as_sigmas(list(sigmas))
    ll = parzen_log_likelihood(val, centres, grid, **kwargs)  # (n_sigmas, n_val)
    means = [float(v) for v in ll.mean(dim=1).tolist()]
    table = dict(zip(grid, means, strict=True))
    finite = [(v, i) for i, v in enumerate(means) if math.isfinite(v)]
    if not finite:
        raise ValueError(f"parzen: no sigma gives a finite validation log-likelihood: {table}")
    best = max(finite, key=lambda t: (t[0], -t[1]))[1]
    return grid[best], table


def sigma_at_edge(sigma: float, grid: Sequence[float]) -> float:
    """-1.0 if ``sigma`` is the smallest value of ``grid``, +1.0 if the largest, else 0.0.

    At an edge the likelihood's maximum may lie outside the grid. A one-value grid is -1.
    """
    if sigma <= min(grid):
        return -1.0
    return 1.0 if sigma >= max(grid) else 0.0


# ------------------------------------------------------------------ the metric
class ParzenParams(BaseModel):
    """Parzen-window log-likelihood (Goodfellow et al. 2014)."""

    model_config = ConfigDict(extra="forbid")

    n_samples: int = Field(
        10000, gt=0, description="number of generator samples used as kernel centres"
    )
    sigmas: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=lambda: list(DEFAULT_SIGMAS),
        min_length=1,
        description="sigma grid searched on the validation rows (default logspace(-1, 0, 10))",
    )
    sigma: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="fixed kernel width; skips the search (no validation split needed)",
    )
    n_val: int = Field(1000, gt=0, description="at most this many validation rows choose sigma")
    n_test: int = Field(10000, gt=0, description="at most this many test rows are scored")
    batch_size: int | None = Field(
        None, gt=0, description="rows per distance chunk (default: sized to about 256 MiB)"
    )
    dtype: Literal["float32", "float64"] = Field("float32", description="compute precision")
    seed: int = Field(
        0,
        ge=0,
        description="which val/test subset when a split is larger than n_val/n_test: "
        "0 takes the first rows (as parzen_ll.py does), any other value a random subset",
    )


def _subset(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Seed 0 takes the first rows, as the official parzen_ll.py does; others draw at random."""
    from gan_pipe.plugins.metrics.sampling import random_rows

    return x[:n] if seed == 0 else random_rows(x, n, seed)


class ParzenMetric:
    """Parzen-window log-likelihood of the test split under the generator's samples (nats)."""

    def __init__(self, params: ParzenParams | None = None):
        self.params = params if params is not None else ParzenParams()

    def _unit_rows(self, ctx: Any, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows mapped to [0, 1] in float64 first, then cast to the compute dtype (a float32
        cast before the mapping would round data far from 0 to a few values)."""
        import torch

        wide = torch.float64 if ctx.device.type != "mps" else torch.float32  # MPS has no fp64
        x = ctx.dataset.to_unit(x.to(device=ctx.device, dtype=wide)).to(dtype)
        return x.reshape(x.shape[0], -1)

    def compute(self, ctx: Any) -> dict[str, float]:
        import torch

        from gan_pipe.errors import UserError

        p = self.params
        ds = ctx.dataset
        if ds is None:
            raise UserError("parzen: the run has no dataset")
        name = getattr(ds, "name", "?")
        if ds.test is None or len(ds.test) == 0:
            raise UserError(f"parzen: dataset {name!r} has no test split to score")
        if p.sigma is None and (ds.val is None or len(ds.val) == 0):
            raise UserError(
                f"parzen: dataset {name!r} has no validation split to choose sigma on; "
                "give the dataset a val split or set a fixed `sigma` in the metric's params"
            )
        dtype = torch.float64 if p.dtype == "float64" else torch.float32
        kw: dict[str, Any] = {"batch_size": p.batch_size, "dtype": dtype}

        centres = self._unit_rows(ctx, ctx.generate(p.n_samples), dtype)
        test = self._unit_rows(ctx, _subset(ds.test, p.n_test, p.seed), dtype)
        if centres.shape[1] != test.shape[1]:
            raise UserError(
                f"parzen: generator samples have {centres.shape[1]} values each, "
                f"data rows {test.shape[1]}"
            )

        n_val, at_edge = 0, 0.0
        if p.sigma is not None:
            sigma = float(p.sigma)
        else:
            val = self._unit_rows(ctx, _subset(ds.val, p.n_val, p.seed), dtype)
            n_val = int(val.shape[0])
            sigma, table = select_sigma(val, centres, p.sigmas, **kw)
            at_edge = sigma_at_edge(sigma, p.sigmas)
            tracker = getattr(ctx, "tracker", None)
            if tracker is not None and hasattr(tracker, "log_dict"):
                tracker.log_dict(
                    {
                        "sigma": list(table),
                        "val_mean_ll": list(table.values()),
                        "best_sigma": sigma,
                        "n_samples": int(centres.shape[0]),
                        "n_val": n_val,
                        "dtype": p.dtype,
                    },
                    f"{ctx.eval_dir}/parzen_sigma_search.json",
                )

        ll = parzen_log_likelihood(test, centres, sigma, **kw).double()
        n_test = int(ll.shape[0])
        mean = float(ll.mean())
        se = float(ll.std(correction=0) / math.sqrt(n_test))
        return {
            "parzen_ll": mean,
            "parzen_ll_se": se,
            "parzen_sigma": float(sigma),
            "parzen_n_samples": float(centres.shape[0]),
            "parzen_n_val": float(n_val),
            "parzen_n_test": float(n_test),
            "parzen_sigma_at_edge": at_edge,
        }


@hookimpl
def register_metrics(register: Any) -> None:
    register(
        "parzen",
        ParzenMetric,
        params=ParzenParams,
        description="Parzen-window log-likelihood of the test split (Goodfellow et al. 2014), nats",
    )
