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

The log-density is :func:`gan_pipe.estimators.kde.log_density` (any device, float32 or
float64, chunked to a memory budget); this module declares the protocol's parameters.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl

if TYPE_CHECKING:
    import torch

#: ``numpy.logspace(-1, 0, 10)``: the sigma grid of the protocol.
DEFAULT_SIGMAS: list[float] = [10.0 ** (-1.0 + i / 9.0) for i in range(10)]


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
    from gan_pipe.estimators.rows import random_rows

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
        from gan_pipe.estimators.kde import log_density

        p, ds = self.params, ctx.dataset
        _check(ds, p)
        dtype = torch.float64 if p.dtype == "float64" else torch.float32
        centres = self._unit_rows(ctx, ctx.generate(p.n_samples), dtype)
        test = self._unit_rows(ctx, _subset(ds.test, p.n_test, p.seed), dtype)
        if centres.shape[1] != test.shape[1]:
            raise UserError(
                f"parzen: generator samples have {centres.shape[1]} values each, "
                f"data rows {test.shape[1]}"
            )
        sigma, n_val, at_edge = self._sigma(ctx, centres, dtype)
        ll = log_density(test, centres, sigma, batch_size=p.batch_size, dtype=dtype).double()
        n_test = int(ll.shape[0])
        return {
            "parzen_ll": float(ll.mean()),
            "parzen_ll_se": float(ll.std(correction=0) / math.sqrt(n_test)),
            "parzen_sigma": float(sigma),
            "parzen_n_samples": float(centres.shape[0]),
            "parzen_n_val": float(n_val),
            "parzen_n_test": float(n_test),
            "parzen_sigma_at_edge": at_edge,
        }

    def _sigma(self, ctx: Any, centres: torch.Tensor, dtype: torch.dtype) -> tuple:
        """``(sigma, validation rows used, at grid edge)``: the fixed sigma, or the grid's
        best on the validation rows (the search is logged as ``parzen_sigma_search.json``)."""
        from gan_pipe.estimators.kde import select_sigma, sigma_at_edge

        p = self.params
        if p.sigma is not None:
            return float(p.sigma), 0, 0.0
        val = self._unit_rows(ctx, _subset(ctx.dataset.val, p.n_val, p.seed), dtype)
        n_val = int(val.shape[0])
        sigma, table = select_sigma(val, centres, p.sigmas, batch_size=p.batch_size, dtype=dtype)
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
        return sigma, n_val, sigma_at_edge(sigma, p.sigmas)


def _check(ds: Any, p: ParzenParams) -> None:
    """A dataset with a test split, and a validation split unless sigma is fixed."""
    from gan_pipe.errors import UserError

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


@hookimpl
def register_metrics(register: Any) -> None:
    register(
        "parzen",
        ParzenMetric,
        params=ParzenParams,
        description="Parzen-window log-likelihood of the test split (Goodfellow et al. 2014), nats",
    )
