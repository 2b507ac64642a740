"""Training on several processes: DistributedDataParallel under torchrun.

``torchrun --nproc-per-node N -m gan_pipe run R.toml`` (or ``gan-pipe run R.toml --nproc N``,
which starts torchrun itself) runs the same command in N processes. Each finds its rank and
the world size in torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``); with one process, or outside torchrun, every function here
is the identity and nothing is initialised.

How a run is split (``docs/performance.md``, "Past one GPU"):

* **The global batch is the recipe's** ``train.batch_size``; it must divide by the world
  size, and each rank trains on its own contiguous shard of every global batch.
* **Every rank draws the same random numbers.** All ranks are seeded alike and draw the
  batch order, the noise and the gradient penalty's interpolation weights for the *global*
  batch, then keep their shard (:func:`shard`, :func:`rand`): the random stream is the
  one-process run's, so the result is the one-process run's up to floating-point rounding.
* **Gradients are averaged** by DistributedDataParallel (:func:`wrap`); the losses are means
  over the batch, so the mean of the shards' gradients is the global batch's gradient.
* **BatchNorm uses per-rank statistics**: a BatchNorm layer normalises each shard with that
  shard's own mean and variance (DDP's default; SyncBatchNorm is not offered), and the
  running statistics are rank 0's (DDP broadcasts rank 0's buffers at every forward).
* **Rank 0 alone talks to MLflow** and writes checkpoints; the others get a
  :class:`RankTracker` that drops everything. Evaluation, sample frames and reports run on
  rank 0 only (no metric is distributed).

Backends: gloo for CPU tensors, and NCCL for CUDA tensors where CUDA exists
(``cpu:gloo,cuda:nccl``), so control messages (the stop flag, objects) travel on the CPU.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import UserError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
Rows = TypeVar("Rows", "torch.Tensor", list)

#: the recipe key-like name of the param every run records
WORLD_SIZE_PARAM = "dist.world_size"


# ------------------------------------------------------------------ who am I
def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


def is_main() -> bool:
    """Rank 0, or the only process: the one that tracks, checkpoints, evaluates, reports."""
    return rank() == 0


def enabled() -> bool:
    """Several processes with an initialised process group (collectives do something)."""
    if not launched():
        return False
    import torch.distributed as td

    return td.is_available() and td.is_initialized()


# ------------------------------------------------------------------ lifecycle
#: set by :func:`leave_together`: the processes agreed to end (a stop all of them saw at the
#: same step, a divergence found in an all-reduced value), so :func:`stop` waits for the others
_agreed_end = False


def start() -> None:
    """Join torchrun's process group (once; a no-op outside torchrun)."""
    if not launched() or enabled():
        return
    import torch
    import torch.distributed as td
    import torch.distributed.nn  # noqa: F401  (before the group exists: see below)

    # torch.distributed.nn's functions take ``group=group.WORLD`` as a default argument,
    # bound when the module is first imported (DistributedDataParallel imports it). Imported
    # after the group is made, they would hold it, and gloo's threads with it, past
    # destroy_process_group() until the interpreter tears the module down at exit: the
    # "terminate called without an active exception" abort (exit 134) of issue 11.
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    td.init_process_group(backend)  # env:// rendezvous from torchrun's variables
    atexit.register(stop)


def leave_together() -> None:
    """Every process reached the same end of training (all raise the same way from the same
    step): the final :func:`stop` waits at a barrier, so none leaves (and torchrun stops none)
    before rank 0 has saved its checkpoint and closed the run."""
    global _agreed_end
    _agreed_end = True


def stop(together: bool = False) -> None:
    """Leave the process group (safe to call twice). ``together``: all processes call it at
    the same point (after training, the last collective; or after :func:`leave_together`),
    and leave after a barrier. The group is destroyed whatever the barrier does (a signal, a
    peer gone), and its threads are joined here, while the interpreter is whole."""
    global _agreed_end
    if not enabled():
        return
    import gc

    import torch.distributed as td

    try:
        if together or _agreed_end:
            td.barrier()
    finally:
        _agreed_end = False
        td.destroy_process_group()
        gc.collect()  # a group held only by a reference cycle (a trainer's DDP nets) goes now


def local_device(device: torch.device) -> torch.device:
    """This rank's device: under torchrun a CUDA device is GPU ``LOCAL_RANK`` of the machine
    (one GPU per process); the CPU stays the CPU."""
    if not launched() or device.type not in ("cuda", "mps"):
        return device
    import torch

    if device.type == "mps":
        raise UserError("several processes train on CUDA GPUs or the CPU, not on MPS")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise UserError(
            f"process {rank()} wants GPU {local} but this machine has "
            f"{torch.cuda.device_count()}: start at most one process per GPU "
            "(--nproc-per-node)"
        )
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def check_global_batch(batch_size: int, processes: int | None = None) -> None:
    """The global batch must split evenly among the processes (a user error otherwise)."""
    n = world_size() if processes is None else processes
    if batch_size % n:
        up = -(-batch_size // n) * n
        fits = [k for k in range(2, n + 1) if batch_size % k == 0]
        other = f", or {max(fits)} processes" if fits else ""
        raise UserError(
            f"train.batch_size = {batch_size} is the global batch and must divide by the "
            f"number of processes ({n}); use --set train.batch_size={up}{other}"
        )


# ------------------------------------------------------------------ data and nets
def shard(x: Rows) -> Rows:
    """This rank's contiguous rows of a global batch, a tensor or a list of row indices
    (``x`` itself with one process)."""
    n = world_size()
    if n == 1:
        return x
    if len(x) % n:
        raise ValueError(f"a batch of {len(x)} rows does not split among {n} processes")
    per = len(x) // n
    return x[rank() * per : (rank() + 1) * per]


def rand(shape: Sequence[int], device: Any = None) -> torch.Tensor:
    """U(0, 1) draws for a shard of ``shape[0]`` rows: drawn for the whole global batch from
    the global generator, so every rank's stream stays the one-process run's."""
    import torch

    n = world_size()
    return shard(torch.rand((shape[0] * n, *shape[1:]), device=device))


def wrap(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` in DistributedDataParallel (gradients averaged over ranks in backward); the
    net itself with one process. Its parameters and state dict stay ``net``'s."""
    if not enabled():
        return net
    from torch.nn.parallel import DistributedDataParallel

    p = next(net.parameters())
    ids = [p.device.index] if p.device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)  # buffers: rank 0's, each forward


# ------------------------------------------------------------------ collectives
def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``t`` (a copy; ``t`` itself with one process)."""
    if not enabled():
        return t
    import torch.distributed as td

    out = t.detach().clone()
    td.all_reduce(out)
    return out.div_(world_size())


def average_grads(grads: Sequence[torch.Tensor | None]) -> None:
    """Average gradients in place over ranks (what DDP does for ``backward()``), for updates
    that compute gradients with ``torch.autograd.grad``; ``None`` entries are skipped."""
    if not enabled():
        return
    import torch.distributed as td

    for g in grads:
        if g is not None:
            td.all_reduce(g)
            g.div_(world_size())


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (on the CPU: no device sync)."""
    if not enabled():
        return flag
    import torch
    import torch.distributed as td

    t = torch.tensor([int(flag)])
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return bool(t.item())


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled, sent on the CPU)."""
    if not enabled():
        return obj
    import torch
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def barrier() -> None:
    if enabled():
        import torch.distributed as td

        td.barrier()


class PeerFailed(UserError):
    """Rank 0 failed on something every rank was about to do; the others stop with it."""


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 first, then on the other ranks (a download or a check done once
    before the others read what it left). If rank 0 fails, the others raise
    :class:`PeerFailed` instead of waiting for it."""
    if not enabled():
        return fn()
    if is_main():
        try:
            out = fn()
        except BaseException as e:
            with contextlib.suppress(Exception):
                broadcast(f"{type(e).__name__}: {e}")
            raise
        broadcast(None)
        return out
    failed = broadcast(None)
    if failed is not None:
        raise PeerFailed(f"process {rank()} stops: rank 0 failed ({failed})")
    return fn()


# ------------------------------------------------------------------ launching
def launch(processes: int, argv: list[str]) -> int:
    """``python -m gan_pipe *argv`` in ``processes`` processes on this machine, started by
    torchrun's own launcher (``torch.distributed.run``, ``--standalone``: a free local port);
    returns the exit code to leave with: 0, or the first failed process's (2 for a user
    error, 130 after Ctrl-C)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    args = parse_args(["--standalone", f"--nproc-per-node={processes}", "-m", "gan_pipe", *argv])
    try:
        torchrun(args)
    except ChildFailedError as e:  # the first process that failed by itself, not one stopped
        failures = list(e.failures.values())  # by torchrun after it (-15, SIGTERM)
        own = [f for f in failures if f.exitcode > 0]
        code = min(own or failures, key=lambda f: f.timestamp).exitcode
        return code if code > 0 else 128 - code if code < 0 else 1
    except SignalException as e:  # Ctrl-C: torchrun passed it on to the workers
        return 128 + int(e.sigval)
    return 0


# ------------------------------------------------------------------ tracking
class _Inert:
    """Every public method of the class ``like`` exists here and does nothing (returns
    None: falsy, so ``spool.pending()`` is False)."""

    _like: type

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_") or not callable(getattr(self._like, name, None)):
            raise AttributeError(name)
        return _nothing


class _RankSpool(_Inert):
    """``tracker.spool`` of ranks other than 0: nothing is ever kept."""

    dir = None

    def __init__(self) -> None:
        from .spool import Spool

        self._like = Spool


class RankTracker(_Inert):
    """``ctx.tracker`` of ranks other than 0: every public method of
    :class:`gan_pipe.tracking.Tracker` exists and does nothing, and its public attributes
    are placeholders (rank 0 logs the run)."""

    run_id = experiment_id = "(tracked by rank 0)"
    uri = "(tracked by rank 0)"
    client = run = link = None
    attached = False
    flush_seconds = float("inf")

    def __init__(self) -> None:
        from .tracking import Tracker

        self._like = Tracker
        self.latest: dict[str, Any] = {}
        self.spool = _RankSpool()

    def deferred_artifacts(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def tracker_for_rank(make: Callable[[], Any]) -> Any:
    """``make()`` (the real Tracker) on rank 0, a :class:`RankTracker` elsewhere."""
    return make() if is_main() else RankTracker()
