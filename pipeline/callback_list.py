"""Calling callbacks: the ordered list a run holds, its events, state and generator.

A callback (:class:`gan_pipe.context.Callback`) defines only the events it needs; this list
calls each event on every callback that defines it, in order. A recipe's ``[[callbacks]]``
are ``ctx.callbacks`` (built by the build stage, keyed by their recipe path
``callbacks.0``...); the trainer adds gan-pipe's own duties after them (sample frames,
periodic evaluation, checkpoints, the progress bar), so a callback's ``on_step`` has run
before a frame is drawn, an evaluation made or a checkpoint written at that step.

torch-free: importing it (and listing plugins) stays fast.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .context import RunContext

log = logging.getLogger(__name__)

#: Every event a callback may define, in the order a run fires them (see
#: :class:`gan_pipe.context.Callback` for when each fires and what it receives).
EVENTS = (
    "setup",
    "on_train_start",
    "on_step",
    "on_log",
    "before_evaluation",
    "after_evaluation",
    "on_checkpoint",
    "on_train_end",
    "teardown",
)

#: What a callback may define besides events: its state and the generator it provides.
EXTRAS = ("state_dict", "load_state_dict", "generator")


class CallbackList:
    """Callbacks in the order they run, each under a key (``callbacks.0`` for a recipe's,
    a plain name for gan-pipe's own); the keys name their state in a checkpoint."""

    def __init__(self, items: list[tuple[str, Any]] | None = None):
        self.items: list[tuple[str, Any]] = list(items or [])

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return (cb for _, cb in self.items)

    def __add__(self, other: CallbackList) -> CallbackList:
        return CallbackList([*self.items, *other.items])

    def _handlers(self, event: str) -> list[Callable[..., Any]]:
        found = (getattr(cb, event, None) for cb in self)
        return [h for h in found if callable(h)]

    def fire(self, event: str, *args: Any) -> None:
        """Call ``event(*args)`` on every callback that defines it, in order."""
        for handler in self._handlers(event):
            handler(*args)

    def on_step(self, ctx: RunContext, step: int) -> None:
        """``on_step`` in order; when one rolls training back (``ctx.step`` is no longer
        ``step``: a checkpoint found a NaN), the step is gone and the rest skip it."""
        for handler in self._handlers("on_step"):
            handler(ctx, step)
            if ctx.step != step:
                return

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``{key: state}`` of every callback that has state (tensors and plain values: a
        checkpoint is read back with ``torch.load(weights_only=True)``)."""
        out = {}
        for key, cb in self.items:
            get = getattr(cb, "state_dict", None)
            if callable(get):
                out[key] = get()
        return out

    def load_state_dict(self, states: dict[str, Any]) -> None:
        """Give each callback its state back; one the checkpoint has no state for keeps the
        state its ``setup`` gave it (a warning says so)."""
        for key, cb in self.items:
            load = getattr(cb, "load_state_dict", None)
            if not callable(load):
                continue
            if key in states:
                load(states[key])
            else:
                log.warning("the checkpoint holds no state for callback %s; it starts fresh", key)

    # ------------------------------------------------------------ generator
    def provider(self) -> tuple[str, torch.nn.Module] | None:
        """(key, generator) of the first callback whose ``generator()`` returns one."""
        for key, cb in self.items:
            provide = getattr(cb, "generator", None)
            module = provide() if callable(provide) else None
            if module is not None:
                return key, module
        return None

    def generator(self) -> torch.nn.Module | None:
        """The generator a callback provides (an EMA of the weights), or None: evaluation,
        sample frames, reports and the logged model use it instead of the trained one."""
        found = self.provider()
        return found[1] if found is not None else None

    @contextlib.contextmanager
    def evaluating(self, ctx: RunContext) -> Iterator[Callable[[dict[str, float]], None]]:
        """The block of one evaluation at ``ctx.step``: ``before_evaluation`` first, then
        ``ctx.generator`` is the provided generator (samples generated earlier at this step
        by another generator are forgotten), and the yielded ``done(results)`` fires
        ``after_evaluation``. The trained generator is back afterwards."""
        step = ctx.step
        self.fire("before_evaluation", ctx, step)
        trained, provided = ctx.generator, self.generator()
        if provided is not None and provided is not trained:
            ctx.state.pop("_samples", None)
            ctx.generator = provided
        try:
            yield lambda results: self.fire("after_evaluation", ctx, step, results)
        finally:
            if ctx.generator is provided and provided is not trained:
                ctx.state.pop("_samples", None)
                ctx.generator = trained
