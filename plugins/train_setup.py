"""What the trainer is built from: the optimisers and learning-rate schedules of a recipe, and
the training batches (device-resident index slices of a per-epoch permutation, or the
streaming loader with the same order, :mod:`gan_pipe.dataloading`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from gan_pipe import distributed as dist
from gan_pipe.dataloading import StreamSampler, batches_per_epoch
from gan_pipe.errors import UserError

if TYPE_CHECKING:
    from gan_pipe.context import RunContext


def make_optimizer(
    params: Any, settings: dict[str, Any], fused: bool = False
) -> torch.optim.Optimizer:
    """The optimizer of one net. ``fused`` (the trainer sets it on CUDA): Adam and SGD
    update every tensor in one fused kernel instead of PyTorch's default multi-tensor
    (foreach) path; the same update up to rounding. RMSprop has no fused kernel."""
    name = settings["optimizer"]
    if name == "adam":
        return torch.optim.Adam(
            params,
            lr=settings["lr"],
            betas=tuple(settings["betas"]),
            weight_decay=settings["weight_decay"],
            fused=fused or None,
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=settings["lr"],
            momentum=settings["momentum"],
            weight_decay=settings["weight_decay"],
        )
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=settings["lr"],
            momentum=settings["momentum"],
            weight_decay=settings["weight_decay"],
            fused=fused or None,
        )
    raise ValueError(f"unknown optimizer {name!r}")


def make_schedule(opt: torch.optim.Optimizer, train: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-optimizer-step learning-rate schedule (TF's exponential_decay, staircase or not)."""
    if train.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    rate, every, stair = train.decay_rate, train.decay_steps, train.staircase
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: rate ** (s // every if stair else s / every)
    )


class BatchSampler:
    """Endless shuffled batches from a device-resident tensor (drop_last per epoch), or, with
    ``replacement``, batches of rows drawn uniformly with replacement."""

    def __init__(self, data: torch.Tensor, batch_size: int, replacement: bool = False):
        self.data, self.batch_size, self.replacement = data, batch_size, replacement
        self.per_epoch = batches_per_epoch(len(data), batch_size)
        self._perm = torch.empty(0, dtype=torch.long, device=data.device)
        self._i = self.per_epoch

    def next(self) -> torch.Tensor:
        if self.replacement:
            idx = torch.randint(len(self.data), (self.batch_size,), device=self.data.device)
            return self.data.index_select(0, dist.shard(idx))
        if self._i >= self.per_epoch:
            self._perm = torch.randperm(len(self.data), device=self.data.device)
            self._i = 0
        idx = self._perm[self._i * self.batch_size : (self._i + 1) * self.batch_size]
        self._i += 1
        return self.data.index_select(0, dist.shard(idx))  # this process's rows


def place_data(ctx: RunContext) -> tuple[Any, BatchSampler | StreamSampler, bool]:
    """The training rows and the batch sampler over them, and whether they stream: on the
    device whole (BatchSampler), or streamed from host memory or disk by a DataLoader
    (StreamSampler), as ``data.stream`` and :func:`~gan_pipe.dataloading.should_stream` decide.
    Both give the same batches in the same order."""
    from gan_pipe.dataloading import Rows, TensorRows, default_workers, should_stream

    assert ctx.dataset is not None
    cfg, data_cfg, train = ctx.recipe.train, ctx.recipe.data, ctx.dataset.train
    stream, why = should_stream(ctx.dataset, getattr(data_cfg, "stream", "auto"), ctx.device)
    workers = getattr(data_cfg, "workers", None)
    workers = default_workers() if workers is None else workers
    if stream and cfg.sampling == "replacement":
        raise UserError(
            f"train.sampling = 'replacement' draws each batch's rows between steps, so its "
            f"batches cannot be prefetched by a streaming loader (streaming because {why}); "
            "use train.sampling = 'epochs', or data.stream = false to load the data whole"
        )
    if stream:
        rows = train if isinstance(train, Rows) else TensorRows(train)
        return rows, StreamSampler(rows, cfg.batch_size, ctx.device, workers), True
    if isinstance(train, Rows):
        train = train.materialize(workers)
    data = train.to(ctx.device, non_blocking=True)
    return data, BatchSampler(data, cfg.batch_size, cfg.sampling == "replacement"), False


def memory_format(train: Any, *nets: torch.nn.Module) -> torch.memory_format | None:
    """With ``train.channels_last``: the nets' 4-D weights and buffers moved to channels-last
    order in place (the same Parameter objects, so optimisers built later see them) and the
    format for the real batches; else None."""
    if not getattr(train, "channels_last", False):
        return None
    for net in nets:
        net.to(memory_format=torch.channels_last)
    return torch.channels_last


def total_steps(train: Any, n_rows: int) -> int:
    """Generator steps to run: ``train.steps``, or ``train.epochs`` passes of real batches."""
    if train.steps is not None:
        return int(train.steps)
    epochs = train.epochs if train.epochs is not None else 1.0
    per_epoch = max(1, n_rows // train.batch_size)
    return max(1, math.ceil(epochs * per_epoch / train.n_critic))
