"""gan-pipe's own periodic duties as callbacks: periodic evaluation, checkpoints and the
progress bar (the sample frames are in :mod:`.frames`).

They are always on, built by the trainer from ``[train]``, and run after the recipe's
callbacks through the same events (:class:`gan_pipe.context.Callback`), in the order of
:func:`duties`. Under torchrun the frames, the periodic evaluation and the progress bar are
rank 0's alone; the checkpoints duty runs on every process, because its check for NaN is a
collective that all must call, and only rank 0 writes the checkpoint.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

from gan_pipe import distributed as dist
from gan_pipe.callback_list import CallbackList

from .frames import SampleFrames

if TYPE_CHECKING:
    from gan_pipe.context import RunContext
    from gan_pipe.plugins.train import Trainer


class PeriodicEvaluation:
    """The metrics every ``train.eval_every`` steps (the last step's evaluation is the
    final one, made by the runner after training)."""

    def __init__(self, every: int, total: int):
        self.every, self.total = every, total

    def on_step(self, ctx: RunContext, step: int) -> None:
        if self.every and step % self.every == 0 and step != self.total:
            from gan_pipe.evaluation import evaluate_and_log

            evaluate_and_log(ctx, final=False)  # own RNG: evaluating does not change training


class PeriodicCheckpoints:
    """A checkpoint every ``train.checkpoint_every`` steps (after a check for NaN, which
    rolls back or stops as ``train.on_nonfinite`` says), and at the first logging step
    ``train.checkpoint_minutes`` after the last one (just checked finite). The end of
    training and an interrupt save theirs in the trainer. Under torchrun the processes
    agree on the minutes in the logging step's all-reduce (any process's clock past them
    saves on all), so they keep the same newest checkpoint step and make the same
    collective checks; a checkpoint at a logging step adds no collective."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self._logged = -1  # the last logging step: its values were found finite

    def on_log(self, ctx: RunContext, step: int, metrics: dict[str, float]) -> None:
        self._logged = step

    def on_step(self, ctx: RunContext, step: int) -> None:
        t = self.trainer
        logged = self._logged == step  # its values were just found finite (on all processes)
        if logged and t.cfg.checkpoint_minutes and t.agreed("clock"):
            t.save_checkpoint(step)
        every = t.cfg.checkpoint_every
        if every and step % every == 0 and t.saved_step != step:
            if logged:  # no second check (under torchrun: no second collective)
                t.save_checkpoint(step)
            else:
                t.checkpoint_if_finite(step)


class ProgressBar:
    """A live bar on a terminal, periodic lines elsewhere (``train.progress``)."""

    def __init__(self, total: int, enabled: bool, title: str):
        self.total, self.enabled, self.title = total, enabled, title
        self._open = ExitStack()
        self.bar = None

    def on_train_start(self, ctx: RunContext) -> None:
        from gan_pipe.plugins.train_progress import progress_bar

        bar = progress_bar(self.total, self.enabled, self.title, start=ctx.step)
        self.bar = self._open.enter_context(bar)

    def on_log(self, ctx: RunContext, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.show(metrics)

    def on_step(self, ctx: RunContext, step: int) -> None:
        if self.bar is not None:
            self.bar.advance()

    def teardown(self, ctx: RunContext) -> None:
        self._open.close()
        self.bar = None


def duties(trainer: Trainer) -> CallbackList:
    """gan-pipe's own callbacks of a trainer, in the order they run (under torchrun, on
    ranks other than 0: the checkpoints duty alone)."""
    ctx, cfg, total = trainer.ctx, trainer.cfg, trainer.steps
    every = cfg.sample_every or max(1, total // 10)
    items = [
        ("frames", SampleFrames(ctx, every, total)),
        ("evaluation", PeriodicEvaluation(cfg.eval_every, total)),
        ("checkpoints", PeriodicCheckpoints(trainer)),
        ("progress", ProgressBar(total, cfg.progress, ctx.recipe.experiment.name)),
    ]
    main = dist.is_main()
    return CallbackList([(key, cb) for key, cb in items if main or key == "checkpoints"])
