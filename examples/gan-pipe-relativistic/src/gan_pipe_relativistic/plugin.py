"""The relativistic-average loss (RaGAN, Jolicoeur-Martineau 2018) and the ``polyak``
callback: the entry point ``relativistic`` names this module.

D estimates how much more real a real sample is than the average fake, and vice versa:
    L_D = BCE(C(x_r) - mean C(x_f), 1) + BCE(C(x_f) - mean C(x_r), 0)
    L_G = BCE(C(x_f) - mean C(x_r), 1) + BCE(C(x_r) - mean C(x_f), 0)

Recipes use it with ``[loss] name = "relativistic-average"``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from gan_pipe import hookimpl

# the callback lives in its own module; importing its hook here registers it with the loss
from .polyak import register_callbacks  # noqa: F401


class RelativisticParams(BaseModel):
    """The relativistic-average loss has no settings."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error


class RelativisticAverageLoss:
    """RaGAN with the standard (BCE) formulation."""

    def __init__(self, params: RelativisticParams):
        self.params = params

    @staticmethod
    def _bce(logits, target: float):
        # torch is imported here, not at module level: listing plugins must stay fast
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(logits, logits.new_full(logits.shape, target))

    def discriminator_loss(self, x):
        r, f = x.d_real.float().reshape(-1), x.d_fake.float().reshape(-1)
        loss = self._bce(r - f.mean(), 1.0) + self._bce(f - r.mean(), 0.0)
        return loss, {}

    def generator_loss(self, x):
        # x.d_real is None in the generator step: score the real batch without a gradient
        import torch

        f = x.d_fake.float().reshape(-1)
        with torch.no_grad():
            r = x.discriminator(x.real).float().reshape(-1)
        loss = self._bce(f - r.mean(), 1.0) + self._bce(r - f.mean(), 0.0)
        return loss, {}


@hookimpl
def register_losses(register) -> None:
    register("relativistic-average", RelativisticAverageLoss, params=RelativisticParams)
