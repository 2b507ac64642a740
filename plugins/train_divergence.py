"""The divergence policy of ``train.on_nonfinite``: NaN, infinite or too-large losses and
weights found at logging steps (no extra sync per step) stop the run or roll it back to the
last finite state with lower learning rates. A part of :class:`gan_pipe.plugins.train.Trainer`
(a mixin: it uses the trainer's nets, optimisers, accumulators and checkpoint state)."""

from __future__ import annotations

import copy
import math
import sys
from typing import Any

import torch

from gan_pipe import distributed as dist
from gan_pipe.errors import UserError


class TrainingDiverged(UserError):
    """A NaN or infinite loss or weight, with ``train.on_nonfinite = 'stop'`` or rollbacks
    used up: the run is marked FAILED and no checkpoint of the diverged state is saved."""


def _first_nonfinite(
    metrics: dict[str, float], largest_weight: float, limit: float = 0.0
) -> str | None:
    """'train/d_loss = nan' for the first non-finite value (or, with ``limit`` > 0, the first
    whose magnitude exceeds it), or None when all are fine. ``largest_weight`` is the largest
    magnitude of any weight of G or D (NaN if one is NaN)."""
    too_large = f" (beyond train.max_abs_value = {limit:g})"
    for k, v in metrics.items():
        if not math.isfinite(v):
            return f"{k} = {v}"
        if limit and abs(v) > limit:
            return f"{k} = {v:.4g}{too_large}"
    if not math.isfinite(largest_weight):
        return "a weight of G or D is NaN or infinite"
    if limit and largest_weight > limit:
        return f"a weight of G or D reached {largest_weight:.4g}{too_large}"
    return None


class DivergencePolicy:
    """``Trainer``'s checks for non-finite or too-large values, and what it does then."""

    cfg: Any
    ctx: Any

    def _largest_weight(self) -> torch.Tensor:
        """The largest magnitude of any weight or buffer of G and D (on the device, no sync);
        NaN if one is NaN."""
        tops = torch.stack([t.detach().abs().amax().float() for t in self._watched if t.numel()])
        return tops.amax()  # amax propagates NaN

    def _nonfinite_now(self, everywhere: bool = True) -> str | None:
        """The divergence check of a logging step, for a checkpoint between logging steps
        (one sync, which saving the checkpoint makes anyway); the means stay accumulated.
        ``everywhere``: over all processes (all must call it), else this process's own."""
        if self.cfg.on_nonfinite == "ignore":
            return None
        keys = list(self._acc)
        values = torch.stack([*(self._acc[k] for k in keys), self._largest_weight()])
        values = (dist.mean(values) if everywhere else values).tolist()
        largest = values.pop()
        metrics = {f"train/{k}": v for k, v in zip(keys, values, strict=True)}
        return _first_nonfinite(metrics, largest, self.cfg.max_abs_value)

    def _keep_good(self, step: int) -> None:
        """Remember a state found finite, for on_nonfinite = 'rollback' (copies on the device,
        at logging steps and checkpoints only)."""
        if self.cfg.on_nonfinite == "rollback":
            self._good = {**copy.deepcopy(self._training_state()), "step": step}
            self._good["lr_scale"] = self._lr_scale

    def _diverged(self, step: int, what: str) -> int:
        """Apply train.on_nonfinite to a non-finite value found at ``step``: raise
        TrainingDiverged, or roll back and return the step training goes on from."""
        cfg, ctx = self.cfg, self.ctx
        if cfg.on_nonfinite == "rollback" and self._good is not None:
            if self._rollbacks < cfg.max_rollbacks:
                return self._roll_back(step, what)
        tried = f" after {self._rollbacks} rollback(s)" if cfg.on_nonfinite == "rollback" else ""
        kept = (
            f"the newest checkpoint is step {self._saved_step}"
            if self._saved_step > 0
            else "no checkpoint was saved"
        )
        self._acc.clear()
        self._acc_counts.clear()
        ctx.tracker.set_tags({"gan_pipe.diverged": f"step {step}: {what}"})
        dist.leave_together()  # found in all-reduced values: every process stops here
        raise TrainingDiverged(
            f"training diverged at step {step}: {what} (train.on_nonfinite = "
            f"{cfg.on_nonfinite!r}{tried}); the run is marked FAILED and its diverged state is "
            f"not saved ({kept}). Lower train.lr, or set train.on_nonfinite = 'rollback'"
        )

    def _roll_back(self, step: int, what: str) -> int:
        cfg, ctx, good = self.cfg, self.ctx, self._good
        assert good is not None
        rollbacks, scale = self._rollbacks + 1, self._lr_scale * cfg.rollback_lr_factor
        self._restore(good)  # the state's own count and scale: set after
        self._rollbacks, self._lr_scale = rollbacks, scale
        factor = scale / good["lr_scale"]
        for opt, sched in ((self.opt_g, self.sched_g), (self.opt_d, self.sched_d)):
            sched.base_lrs = [lr * factor for lr in sched.base_lrs]
            for group in opt.param_groups:
                group["lr"] *= factor
                if "initial_lr" in group:
                    group["initial_lr"] *= factor
        back = int(good["step"])
        self._acc.clear()
        self._acc_counts.clear()
        for key, points in ctx.history.items():  # the curves of the trajectory kept
            ctx.history[key] = [(s, v) for s, v in points if s <= back]
        note = (
            f"step {step}: {what}; rolled back to step {back} with learning rates "
            f"x{self._lr_scale:g} (rollback {self._rollbacks} of {cfg.max_rollbacks})"
        )
        ctx.tracker.log_metrics({"train/rollbacks": self._rollbacks}, step)
        ctx.tracker.set_tags({f"gan_pipe.rollback.{self._rollbacks}": note})
        if dist.is_main():  # one line for all the processes of a torchrun launch
            print(f"train: {note}", file=sys.stderr, flush=True)
        ctx.step = back
        return back
