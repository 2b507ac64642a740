"""One training step's update rules: alternating D and G steps, and simultaneous updates.

:class:`GanUpdates` is a part of :class:`gan_pipe.plugins.train.Trainer`, which provides the
nets (``G``, ``D`` and their DDP wrappers ``G_ddp``, ``D_ddp``), the loss, the noise, the
optimisers and schedules, the batch sampler, the autocast context and the memory format.
Each step method returns the step's detached loss and extras for the log accumulators.
"""

from __future__ import annotations

from typing import Any

import torch

from gan_pipe import distributed as dist
from gan_pipe.context import LossInputs


def _values(key: str, loss: torch.Tensor, extras: dict[str, torch.Tensor]):
    """A step's loss and extras, detached, for the log accumulators."""
    return {key: loss.detach(), **{k: v.detach() for k, v in extras.items()}}


class GanUpdates:
    """The update rules of one step (a part of the Trainer: see the module's docstring)."""

    G: Any
    D: Any
    G_ddp: Any
    D_ddp: Any
    loss: Any
    noise: Any
    cfg: Any
    ctx: Any
    sampler: Any
    autocast: Any
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: Any
    sched_d: Any
    _memory_format: torch.memory_format | None
    _last_real: torch.Tensor

    def _real_batch(self) -> torch.Tensor:
        real = self.sampler.next()
        if self._memory_format is not None and real.dim() == 4:
            real = real.contiguous(memory_format=self._memory_format)
        return real

    def discriminator_step(self) -> dict[str, torch.Tensor]:
        real = self._real_batch()
        with torch.no_grad(), self.autocast:
            fake = self.G(dist.shard(self.noise(self.cfg.batch_size)))
        with self.autocast:
            loss, extras, _ = self._discriminator_loss(real, fake)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        self._after_discriminator_step(real)
        return _values("d_loss", loss, extras)

    def _discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor):
        """D's loss plus its regularisers' terms; also returns D(fake)."""
        d_real = self.D_ddp(real)
        d_fake = self.D_ddp(fake)
        inputs = LossInputs(self.D, real, fake, d_real, d_fake)
        loss, extras = self.loss.discriminator_loss(inputs)
        return self._add_terms(loss, extras, "discriminator_term", inputs), extras, d_fake

    def _generator_loss(self, real: torch.Tensor, fake: torch.Tensor, d_fake: torch.Tensor):
        inputs = LossInputs(self.D, real, fake, None, d_fake)
        loss, extras = self.loss.generator_loss(inputs)
        return self._add_terms(loss, extras, "generator_term", inputs), extras

    def _after_discriminator_step(self, real: torch.Tensor) -> None:
        self.sched_d.step()
        after = getattr(self.loss, "after_discriminator_step", None)
        if after is not None:
            after(self.D)
        self._last_real = real

    def generator_step(self) -> dict[str, torch.Tensor]:
        real = self._last_real
        # D's weight gradients are not needed here (they are zeroed before D's next step):
        # freezing D skips computing them, a third of D's backward pass.
        d_params = [p for p in self.D.parameters() if p.requires_grad]
        for p in d_params:
            p.requires_grad_(False)
        try:
            return self._generator_update(real)
        finally:
            for p in d_params:
                p.requires_grad_(True)

    def _generator_update(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast:
            fake = self.G_ddp(dist.shard(self.noise(self.cfg.batch_size)))
            loss, extras = self._generator_loss(real, fake, self.D(fake))
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.sched_g.step()
        return _values("g_loss", loss, extras)

    def simultaneous_step(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One forward pass of G and D; D's gradient and G's gradient both come from it (G's
        against D before D's update), then both nets are stepped (seeds 002/003)."""
        real = self._real_batch()
        with self.autocast:
            fake = self.G(dist.shard(self.noise(self.cfg.batch_size)))
            d_loss, d_extras, d_fake = self._discriminator_loss(real, fake)
            g_loss, g_extras = self._generator_loss(real, fake, d_fake)
        d_params = [p for p in self.D.parameters() if p.requires_grad]
        g_params = [p for p in self.G.parameters() if p.requires_grad]
        d_grads = torch.autograd.grad(d_loss, d_params, retain_graph=True, allow_unused=True)
        g_grads = torch.autograd.grad(g_loss, g_params, allow_unused=True)
        dist.average_grads([*d_grads, *g_grads])  # what DDP's backward() would do
        for opt, params, grads in (
            (self.opt_d, d_params, d_grads),
            (self.opt_g, g_params, g_grads),
        ):
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()
        self.sched_g.step()
        self._after_discriminator_step(real)
        return _values("d_loss", d_loss, d_extras), _values("g_loss", g_loss, g_extras)

    def _add_terms(self, loss, extras, which: str, inputs: LossInputs):
        """Add every regulariser's term for this network; extras are logged with the loss."""
        for reg in self.ctx.regularizers:
            term = getattr(reg, which, None)
            if term is None:
                continue
            value, more = term(inputs)
            loss = loss + value
            extras.update(more)
        return loss
