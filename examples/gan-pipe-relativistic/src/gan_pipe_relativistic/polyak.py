"""``polyak``: the uniform (Polyak) average of the generator's weights, a callback.

Yazici et al. 2019 ("The Unusual Effectiveness of Averaging in GAN Training", ICLR) study
this moving average beside the exponential one (gan-pipe's built-in ``ema``):

    theta_avg(n) = theta_avg(n-1) + (theta(t_n) - theta_avg(n-1)) / n,   n = 1, 2, ...

that is, the plain mean of the weights at steps t_1 = start_step, start_step + update_every,
...; buffers (batch-norm statistics) are copied, not averaged. Evaluation, sample frames,
reports and the logged model use the average once it has started; every checkpoint holds it
(with n), so ``gan-pipe resume`` goes on with it and ``gan-pipe evaluate RUN_ID`` scores it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl

if TYPE_CHECKING:
    import torch


class PolyakParams(BaseModel):
    """Settings of the polyak callback."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error

    start_step: int = Field(
        1, ge=0, description="the generator step whose weights are the first in the average"
    )
    update_every: int = Field(
        1, gt=0, description="add the weights to the average every N steps after start_step"
    )


class PolyakAverage:
    """A copy of the generator holding the mean of its weights since ``start_step``."""

    def __init__(self, params: PolyakParams):
        self.start, self.every = params.start_step, params.update_every
        self.average: torch.nn.Module | None = None
        self.count = 0  # n: the weights averaged so far (0: not started)

    def setup(self, ctx) -> None:
        self.average = copy.deepcopy(ctx.generator).eval().requires_grad_(False)
        self._live = ctx.generator

    def on_train_start(self, ctx) -> None:
        if self.start == 0 and ctx.step == 0 and not self.count:
            self._add()  # start_step 0: the initial weights come first

    def on_step(self, ctx, step: int) -> None:
        if step >= self.start and (step - self.start) % self.every == 0:
            self._add()

    def _add(self) -> None:
        import torch

        self.count += 1
        pairs = zip(self.average.parameters(), self._live.parameters(), strict=True)
        with torch.no_grad():
            for avg, live in pairs:  # avg + (live - avg) / n, on the device: no host sync
                avg.lerp_(live.detach(), 1.0 / self.count)
            for avg, live in zip(self.average.buffers(), self._live.buffers(), strict=True):
                avg.copy_(live)

    def generator(self) -> torch.nn.Module | None:
        return self.average if self.count else None

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "average": self.average.state_dict() if self.count else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        if self.count:
            self.average.load_state_dict(state["average"])


@hookimpl
def register_callbacks(register) -> None:
    register(
        "polyak",
        PolyakAverage,
        params=PolyakParams,
        description="uniform (Polyak) average of the generator's weights since start_step "
        "(Yazici et al. 2019); evaluation, reports and the logged model use it",
    )
