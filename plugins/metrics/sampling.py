"""Choosing which rows of a split a metric scores, reproducibly."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def random_rows(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` rows of ``x`` drawn without replacement by ``seed`` (all of ``x`` if it has no
    more than ``n``); the global RNG is left alone."""
    import torch

    if x.shape[0] <= n:
        return x
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=g)[:n]
    return x[idx.to(x.device)]
