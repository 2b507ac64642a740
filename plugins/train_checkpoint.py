"""A trainer's checkpoint: everything a step changes (nets, optimisers, schedules, batch
order, RNG states, callback state), saved by rank 0 as an MLflow artifact and restored
exactly by ``gan-pipe resume``. A part of :class:`gan_pipe.plugins.train.Trainer` (a mixin)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from gan_pipe import distributed as dist


class CheckpointState:
    """``Trainer``'s checkpoint state, its saving and restoring."""

    ctx: Any

    def _training_state(self) -> dict[str, Any]:
        """Everything a step changes (references: copy before keeping)."""
        state = {
            "generator": self.G.state_dict(),
            "discriminator": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "sampler_perm": self.sampler._perm,
            "sampler_i": self.sampler._i,
            "rollbacks": self._rollbacks,
            "lr_scale": self._lr_scale,
            "callbacks": self.ctx.callbacks.state_dict(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def checkpoint_state(self, step: int) -> dict[str, Any]:
        state = {"step": step, **self._training_state()}
        state["sampler_perm"] = self.sampler._perm.cpu()
        state["recipe"] = self._resolved_recipe()
        return state

    def _resolved_recipe(self) -> dict[str, Any]:
        """The recipe with every default filled in, component params included: the same form
        as the run's ``recipe/resolved.json``, which is what ``gan-pipe resume`` runs, so a
        run's checkpoints hold the same recipe before and after a resume."""
        from gan_pipe.recipe import ResolvedRecipe

        ctx = self.ctx
        return ResolvedRecipe(ctx.recipe, "", "", ctx.components, ctx.params).to_dict()

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where a checkpoint left off: nets, optimisers, schedules, batch
        order and RNG states (``gan-pipe resume``)."""
        self._restore(state)
        self.start_step = int(state["step"])
        self._saved_step = self.start_step

    def _restore(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["generator"])
        self.D.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        if "sampler_perm" in state:
            self.sampler._perm = state["sampler_perm"].to(self.device)
            self.sampler._i = int(state["sampler_i"])
        self._rollbacks = int(state.get("rollbacks", 0))
        self._lr_scale = float(state.get("lr_scale", 1.0))
        self.ctx.callbacks.load_state_dict(state.get("callbacks", {}))
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    @property
    def saved_step(self) -> int:
        """The step of the newest checkpoint this process saved (-1: none)."""
        return self._saved_step

    def seconds_since_save(self) -> float:
        return self._clock() - self._last_save

    def checkpoint_if_finite(self, step: int) -> None:
        """Save a checkpoint of ``step`` unless a weight or a loss since the last logging
        step is NaN: then roll back (``ctx.step`` changes) or stop, as for a logging step."""
        bad = self._nonfinite_now()
        if bad is not None:
            self._diverged(step, bad)
            return
        self.save_checkpoint(step)
        self._keep_good(step)

    def save_checkpoint(self, step: int) -> None:
        self.callbacks.fire("on_checkpoint", self.ctx, step)  # on every process
        if dist.is_main():  # rank 0 writes the checkpoints of all processes
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"checkpoint-{step:07d}.pt"
                torch.save(self.checkpoint_state(step), path)
                self.ctx.tracker.log_artifact(path, "checkpoints")
        self._saved_step = step  # only once it is in the store
        self._last_save = self._clock()
