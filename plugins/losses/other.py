"""Hinge and least-squares GAN losses on raw discriminator outputs.

``hinge`` (Lim & Ye 2017; Miyato et al. 2018): D only pays for samples on the wrong side of
a margin of 1, so it stops pushing outputs once they are confidently right; G uses the
Wasserstein-style -E D(G(z)). ``least-squares`` (Mao et al. 2017, LSGAN): D regresses its
output to label ``b`` on real and ``a`` on fake, G pulls fakes to ``c``; the quadratic
keeps gradients alive for fakes that D already classifies correctly but far from the data.

Both log ``d_real``/``d_fake``: mean raw outputs (not probabilities, unlike the BCE losses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl
from gan_pipe.context import LossInputs

if TYPE_CHECKING:
    import torch


class HingeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LeastSquaresParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: float = Field(0.0, description="target of D on fake samples")
    b: float = Field(1.0, description="target of D on real samples")
    c: float = Field(1.0, description="value G wants D to output on its samples")


def _outputs(x: LossInputs) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Flat float32 outputs (exact means even under bf16 autocast) and their logged means."""
    assert x.d_real is not None, "the discriminator loss needs D(x)"
    d_real, d_fake = x.d_real.float().reshape(-1), x.d_fake.float().reshape(-1)
    extras = {"d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}
    return d_real, d_fake, extras


class HingeLoss:
    """D: E relu(1 - D(x)) + E relu(1 + D(G(z))); G: -E D(G(z))."""

    #: The extra scalars its methods return, logged as ``train/<key>`` (see docs/metrics.md).
    logs = ("d_real", "d_fake")

    def __init__(self, params: HingeParams | None = None):
        self.params = params or HingeParams()

    def discriminator_loss(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        import torch.nn.functional as F

        d_real, d_fake, extras = _outputs(x)
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean(), extras

    def generator_loss(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return -x.d_fake.float().mean(), {}


class LeastSquaresLoss:
    """D: 1/2 E (D(x) - b)^2 + 1/2 E (D(G(z)) - a)^2; G: 1/2 E (D(G(z)) - c)^2."""

    #: The extra scalars its methods return, logged as ``train/<key>`` (see docs/metrics.md).
    logs = ("d_real", "d_fake")

    def __init__(self, params: LeastSquaresParams | None = None):
        self.params = params or LeastSquaresParams()

    def discriminator_loss(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        d_real, d_fake, extras = _outputs(x)
        loss = 0.5 * (d_real - p.b).pow(2).mean() + 0.5 * (d_fake - p.a).pow(2).mean()
        return loss, extras

    def generator_loss(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return 0.5 * (x.d_fake.float() - self.params.c).pow(2).mean(), {}


@hookimpl
def register_losses(register) -> None:
    register("hinge", HingeLoss, params=HingeParams)
    register("least-squares", LeastSquaresLoss, params=LeastSquaresParams)
