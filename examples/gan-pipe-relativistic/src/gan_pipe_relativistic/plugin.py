"""The relativistic loss: non-saturating GAN loss with one-sided label smoothing (edit me).

Recipes use it with ``[loss] name = "relativistic"``; ``[loss.params]`` is validated against
:class:`RelativisticParams`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl


class RelativisticParams(BaseModel):
    """Settings of the relativistic loss."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error

    real_label: float = Field(
        1.0, gt=0, le=1, description="D's target for real samples (below 1: label smoothing)"
    )


class RelativisticLoss:
    """Non-saturating GAN loss with one-sided label smoothing."""

    def __init__(self, params: RelativisticParams):
        self.params = params

    def discriminator_loss(self, x):
        # torch is imported here, not at module level: listing plugins must stay fast
        import torch.nn.functional as F

        real = F.binary_cross_entropy_with_logits(
            x.d_real, x.d_real.new_full(x.d_real.shape, self.params.real_label)
        )
        fake = F.binary_cross_entropy_with_logits(x.d_fake, x.d_fake.new_zeros(x.d_fake.shape))
        return real + fake, {}

    def generator_loss(self, x):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(x.d_fake, x.d_fake.new_ones(x.d_fake.shape)), {}


@hookimpl
def register_losses(register) -> None:
    register("relativistic", RelativisticLoss, params=RelativisticParams)
