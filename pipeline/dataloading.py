"""Training data that does not live on the device: lazy rows and the streaming batch loader.

A dataset's ``train`` is either a tensor (every row in memory) or a :class:`Rows`: rows loaded
on demand (an image folder decoded file by file, a memory-mapped array). The trainer keeps the
device-resident fast path (:class:`gan_pipe.plugins.train.BatchSampler`: index slices of one
device tensor) for data that fits, and streams the rest through a
``torch.utils.data.DataLoader`` (:class:`StreamSampler`): worker processes load the rows, pinned
host memory and non-blocking copies on CUDA. ``data.stream`` in the recipe picks the path
("auto": :func:`should_stream`).

Both paths draw the same batches in the same order: the per-epoch permutation is drawn by
``torch.randperm`` on the training device at the moment the resident path draws it (the first
batch of each epoch), and the loader is handed that epoch's index lists; the loader's own seed
comes from a private generator, so the global RNG (noise, dropout) sees exactly the draws of a
resident run. A streamed run therefore equals a resident run of the same recipe bit for bit,
and a checkpoint's ``sampler_perm``/``sampler_i`` restore the stream's position.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from gan_pipe.distributed import shard
from gan_pipe.errors import UserError

#: With ``data.stream = "auto"``, a tensor dataset streams on CUDA when its bytes exceed this
#: fraction of the device's free memory (the nets, activations and optimisers need the rest).
FIT_FRACTION = 0.5
#: Rows per loader batch when a lazy dataset is loaded whole (``data.stream = false``).
MATERIALIZE_ROWS = 256


class Rows(TorchDataset):
    """Training rows loaded on demand, indexed like a tensor.

    Subclasses give ``__len__``, ``row_shape`` and ``load(i)`` (row ``i`` as float32).
    ``rows[i]`` is one row; ``rows[idx]`` (a list, slice, array or LongTensor) a stacked
    tensor. ``len``, ``shape``, ``dtype`` and ``device`` read like a CPU tensor's, so code
    that only indexes ``dataset.train`` (sample grids, FID's real rows) works unchanged.
    Instances are pickled to the loader's worker processes: keep them small (paths, not
    pixels)."""

    dtype = torch.float32
    device = torch.device("cpu")
    row_shape: tuple[int, ...] = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.row_shape))

    @property
    def nbytes(self) -> int:
        return len(self) * math.prod(self.row_shape) * self.dtype.itemsize

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, int) or (isinstance(key, torch.Tensor) and key.ndim == 0):
            return self.load(int(key))
        if isinstance(key, slice):
            return self.__getitems__(list(range(*key.indices(len(self)))))
        return self.__getitems__(torch.as_tensor(key).reshape(-1).tolist())

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        out = torch.empty((len(indices), *self.row_shape), dtype=self.dtype)
        for j, i in enumerate(indices):
            out[j] = self.load(i)
        return out

    def materialize(self, workers: int = 0) -> torch.Tensor:
        """Every row in one tensor (loaded by ``workers`` processes)."""
        out = torch.empty(tuple(self.shape), dtype=self.dtype)
        chunks = [
            list(range(s, min(s + MATERIALIZE_ROWS, len(self))))
            for s in range(0, len(self), MATERIALIZE_ROWS)
        ]
        for idx, batch in zip(chunks, _loader(self, chunks, workers, False), strict=True):
            out[idx[0] : idx[-1] + 1] = _checked(batch)
        return out


class TensorRows(Rows):
    """A host tensor's rows, for streaming data that is in host memory but not on the device."""

    def __init__(self, data: torch.Tensor):
        self.data = data.cpu()
        self.row_shape = tuple(data.shape[1:])
        self.dtype = data.dtype

    def __len__(self) -> int:
        return len(self.data)

    def load(self, i: int) -> torch.Tensor:
        return self.data[i]

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        return self.data.index_select(0, torch.as_tensor(indices, dtype=torch.long))


def nbytes(train: torch.Tensor | Rows) -> int:
    """Bytes of the training split (as it would sit on the device)."""
    if isinstance(train, Rows):
        return train.nbytes
    return train.numel() * train.element_size()


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device; None elsewhere (CPU data is in host memory already)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def should_stream(
    dataset: Any, setting: Literal["auto"] | bool, device: torch.device, free: int | None = None
) -> tuple[bool, str]:
    """(stream?, why) for ``data.stream = setting``.

    ``true``/``false`` are obeyed (a lazy dataset with ``false`` is loaded whole). ``"auto"``
    streams a dataset that declares it does not fit (``Dataset.fits_device = False``) or whose
    ``train`` is lazy (:class:`Rows`), keeps one that declares it fits, and otherwise streams
    only when the training split takes more than ``FIT_FRACTION`` of the device's ``free``
    memory (CUDA; on the CPU an in-memory tensor is already where training reads it)."""
    if setting is True or setting is False:
        return setting, f"data.stream = {str(setting).lower()}"
    declared = getattr(dataset, "fits_device", None)
    if declared is not None:
        return not declared, f"the dataset declares fits_device = {declared}"
    if isinstance(dataset.train, Rows):
        return True, "the training rows are loaded on demand"
    size = nbytes(dataset.train)
    free = free_device_bytes(device) if free is None else free
    if free is None:
        return False, f"the training split is in {device.type} memory already"
    big = size > FIT_FRACTION * free
    verdict = "more" if big else "not more"
    return big, (
        f"the training split ({size / 2**20:,.0f} MiB) takes {verdict} than "
        f"{FIT_FRACTION:.0%} of the device's free memory ({free / 2**20:,.0f} MiB)"
    )


def default_workers() -> int:
    """Loader processes when ``data.workers`` is unset: one per core but one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def batches_per_epoch(n_rows: int, batch_size: int) -> int:
    """Whole batches in one pass (the last partial one dropped); ValueError if none."""
    if n_rows < batch_size:
        raise ValueError(
            f"train.batch_size = {batch_size} is larger than the training set ({n_rows} rows)"
        )
    return n_rows // batch_size


class _Failed:
    """A batch a worker could not load: the clean message of its UserError."""

    def __init__(self, message: str):
        self.message = message


class _Guarded(TorchDataset):
    """``rows`` for the loader: a UserError (a corrupt file) comes back as :class:`_Failed`, so
    the main process raises it with its own message rather than a worker's traceback."""

    def __init__(self, rows: Rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor | _Failed:
        try:
            return self.rows.__getitems__(indices)
        except UserError as e:
            return _Failed(str(e))


def _checked(batch: torch.Tensor | _Failed) -> torch.Tensor:
    if isinstance(batch, _Failed):
        raise UserError(batch.message)
    return batch


def _as_is(batch: Any) -> Any:
    return batch


class _EpochPlan:
    """The loader's batch sampler: the index lists of the rest of one epoch (set per epoch)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _loader(rows: Rows, plan: Any, workers: int, pin: bool, prefetch: int = 2) -> DataLoader:
    return DataLoader(
        _Guarded(rows),
        batch_sampler=plan,
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=pin,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers > 0 else None,
        generator=torch.Generator().manual_seed(0),  # never the global RNG
    )


class StreamSampler:
    """The batches of :class:`~gan_pipe.plugins.train.BatchSampler` (shuffled epochs,
    drop_last), in the same order from the same RNG state, loaded from ``rows`` by a
    DataLoader with ``workers`` processes and copied to ``device`` without blocking (from
    pinned memory on CUDA). Prefetching stays within an epoch: the next epoch's permutation is
    drawn when its first batch is asked for, as the resident path does.

    ``_perm`` and ``_i`` (the epoch's permutation and the next batch's number) are what a
    checkpoint saves; setting either (resume, rollback) restarts the loader there. Under
    torchrun each process loads only its contiguous shard of every global batch
    (:func:`gan_pipe.distributed.shard`), as the resident path keeps it."""

    def __init__(
        self, rows: Rows, batch_size: int, device: torch.device, workers: int, prefetch: int = 2
    ):
        self.rows, self.batch_size, self.device = rows, batch_size, device
        self.per_epoch = batches_per_epoch(len(rows), batch_size)
        self.workers = workers
        self._plan = _EpochPlan()
        self._loader = _loader(rows, self._plan, workers, device.type == "cuda", prefetch)
        self._batches: Iterator[Any] | None = None
        self._order = torch.empty(0, dtype=torch.long, device=device)
        self._pos = self.per_epoch

    @property
    def _perm(self) -> torch.Tensor:
        return self._order

    @_perm.setter
    def _perm(self, value: torch.Tensor) -> None:
        self._order, self._batches = value, None

    @property
    def _i(self) -> int:
        return self._pos

    @_i.setter
    def _i(self, value: int) -> None:
        self._pos, self._batches = value, None

    def next(self) -> torch.Tensor:
        if self._pos >= self.per_epoch:
            self._perm = torch.randperm(len(self.rows), device=self.device)
            self._pos = 0
        if self._batches is None:
            order, bs = self._order.cpu().tolist(), self.batch_size
            self._plan.batches = [  # under torchrun: this process's shard of each batch
                shard(order[k * bs : (k + 1) * bs]) for k in range(self._pos, self.per_epoch)
            ]
            self._batches = iter(self._loader)
        batch = _checked(next(self._batches))
        self._pos += 1
        return batch.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the worker processes (they also stop when the sampler is collected)."""
        self._batches = None
        self._loader._iterator = None  # drops the persistent workers' iterator
