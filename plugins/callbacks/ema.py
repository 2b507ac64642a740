"""``ema``: an exponential moving average of the generator's weights.

Yazici et al. 2019, "The Unusual Effectiveness of Averaging in GAN Training" (ICLR), eq. 3:

    theta_EMA(t) = beta * theta_EMA(t-1) + (1 - beta) * theta(t),   theta_EMA(0) = theta(0)

Here the average starts as a copy of the generator at step ``start_step`` and is then
updated every ``update_every`` generator steps; buffers (batch-norm statistics, spectral
norm vectors) are copied, not averaged. Evaluation, sample frames, reports and the logged
model use the averaged generator once averaging has started; every checkpoint holds the
average, so ``gan-pipe resume`` continues it and ``gan-pipe evaluate`` scores it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl

if TYPE_CHECKING:
    import torch

    from gan_pipe.context import RunContext


class EMAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decay: float = Field(
        0.999,
        gt=0,
        lt=1,
        description="beta: the weight of the old average at each update (Yazici et al. use "
        "0.9999); the average forgets with a time constant of about 1 / (1 - decay) updates",
    )
    start_step: int = Field(
        0,
        ge=0,
        description="the generator step whose weights start the average (0: the initial "
        "weights, as in the paper); before it, the trained generator is used",
    )
    update_every: int = Field(
        1, gt=0, description="update the average every N generator steps after start_step"
    )


class GeneratorEMA:
    """The ``ema`` callback: a copy of the generator whose weights follow an EMA."""

    def __init__(self, params: EMAParams):
        self.decay, self.start, self.every = params.decay, params.start_step, params.update_every
        self.average: torch.nn.Module | None = None
        self.started_at = -1  # the step the average started at; -1: not yet
        self.updates = 0

    def setup(self, ctx: RunContext) -> None:
        assert ctx.generator is not None
        self.average = copy.deepcopy(ctx.generator).eval().requires_grad_(False)
        self._pairs = [
            (list(self.average.parameters()), list(ctx.generator.parameters())),
            (list(self.average.buffers()), list(ctx.generator.buffers())),
        ]

    def on_train_start(self, ctx: RunContext) -> None:
        self._start_if_due(ctx.step)

    def on_step(self, ctx: RunContext, step: int) -> None:
        if self._start_if_due(step) or self.started_at < 0:
            return
        if (step - self.started_at) % self.every == 0:
            self._update()

    def _start_if_due(self, step: int) -> bool:
        """Start the average as a copy of the generator at ``start_step``; True if it did."""
        if self.started_at >= 0 or step < self.start:
            return False
        self._copy(params=True)
        self.started_at, self.updates = step, 0
        return True

    def _copy(self, params: bool) -> None:
        import torch

        (avg_p, live_p), (avg_b, live_b) = self._pairs
        with torch.no_grad():
            if params:
                torch._foreach_copy_(avg_p, [p.detach() for p in live_p])
            if avg_b:
                torch._foreach_copy_(avg_b, live_b)

    def _update(self) -> None:
        import torch

        (avg_p, live_p), _ = self._pairs
        with torch.no_grad():
            # avg + (1 - beta) * (theta - avg) = beta * avg + (1 - beta) * theta
            torch._foreach_lerp_(avg_p, [p.detach() for p in live_p], 1.0 - self.decay)
        self._copy(params=False)
        self.updates += 1

    def generator(self) -> torch.nn.Module | None:
        return self.average if self.started_at >= 0 else None

    def state_dict(self) -> dict[str, Any]:
        assert self.average is not None
        weights = self.average.state_dict() if self.started_at >= 0 else {}
        return {"started_at": self.started_at, "updates": self.updates, "average": weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.average is not None
        self.started_at, self.updates = int(state["started_at"]), int(state["updates"])
        if self.started_at >= 0:
            self.average.load_state_dict(state["average"])


@hookimpl
def register_callbacks(register) -> None:
    register(
        "ema",
        GeneratorEMA,
        params=EMAParams,
        description="exponential moving average of the generator's weights (Yazici et al. "
        "2019); evaluation, reports and the logged model use it",
    )
