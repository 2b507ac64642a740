"""Relativistic average GAN loss (RaGAN, Jolicoeur-Martineau 2018) as a gan-pipe plugin.

D estimates how much more real a real sample is than the average fake, and vice versa:
    L_D = BCE(C(x_r) - mean C(x_f), 1) + BCE(C(x_f) - mean C(x_r), 0)
    L_G = BCE(C(x_f) - mean C(x_r), 1) + BCE(C(x_r) - mean C(x_f), 0)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from gan_pipe import hookimpl


class RelativisticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RelativisticAverageLoss:
    """RaGAN with the standard (BCE) formulation."""

    def __init__(self, params: RelativisticParams):
        self.params = params

    @staticmethod
    def _bce(logits, target: float):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(logits, logits.new_full(logits.shape, target))

    def discriminator_loss(self, x):
        r, f = x.d_real.float().reshape(-1), x.d_fake.float().reshape(-1)
        loss = self._bce(r - f.mean(), 1.0) + self._bce(f - r.mean(), 0.0)
        return loss, {}

    def generator_loss(self, x):
        import torch

        f = x.d_fake.float().reshape(-1)
        with torch.no_grad():
            r = x.discriminator(x.real).float().reshape(-1)
        loss = self._bce(f - r.mean(), 1.0) + self._bce(r - f.mean(), 0.0)
        return loss, {}


@hookimpl
def register_losses(register) -> None:
    register("relativistic-average", RelativisticAverageLoss, params=RelativisticParams)
