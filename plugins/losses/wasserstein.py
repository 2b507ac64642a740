"""Wasserstein GAN losses on raw critic values.

``wgan`` (Arjovsky et al. 2017): the critic maximises E D(x) - E D(G(z)), which approximates
W1(p_data, p_g) when D is 1-Lipschitz; the Lipschitz bound is enforced crudely by clipping every
critic weight to [-clip, clip] after each critic step. ``wgan-gp`` (Gulrajani et al. 2017)
replaces clipping with a penalty that pushes ||grad_x D(x_hat)||_2 towards 1 on random
interpolates between real and fake samples.

Both log ``wasserstein_estimate`` = mean D(x) - mean D(G(z)): the critic's estimate of W1
(up to the Lipschitz constant, and only as good as the critic is close to optimal; an
estimate, not the distance), plus ``d_real``/``d_fake`` (mean critic values).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import distributed, hookimpl
from gan_pipe.context import LossInputs

if TYPE_CHECKING:
    import torch

Extras = dict[str, "torch.Tensor"]


class WGANParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clip: float = Field(0.01, gt=0, description="clip every critic weight to [-clip, clip]")
    clip_norm_params: bool = Field(
        True, description="also clip norm layers' affine params (the paper clips everything)"
    )


class WGANGPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lambda_gp: float = Field(10.0, ge=0, description="gradient penalty weight (paper: 10)")
    one_sided: bool = Field(False, description="penalise only norms above 1: max(0, |g|-1)^2")
    drift: float = Field(0.0, ge=0, description="E[D(x)^2] weight (Karras et al. 2018: 1e-3)")
    gp_eval_mode: bool = Field(
        False,
        description="run the critic in eval mode for the penalty's pass only (BatchNorm uses "
        "its running statistics and does not update them, dropout is off), as seed 003's "
        "Keras code does by calling the critic without training=True; false: train mode, "
        "like the critic's other passes",
    )


def _critic_terms(x: LossInputs) -> tuple[torch.Tensor, Extras]:
    """-E D(x) + E D(G(z)) and the values worth logging with it (float32 even under AMP)."""
    assert x.d_real is not None, "the critic loss needs D(x)"
    d_real = x.d_real.float().mean()
    d_fake = x.d_fake.float().mean()
    extras = {
        "wasserstein_estimate": (d_real - d_fake).detach(),
        "d_real": d_real.detach(),
        "d_fake": d_fake.detach(),
    }
    return d_fake - d_real, extras


def _generator_term(x: LossInputs) -> tuple[torch.Tensor, Extras]:
    return -x.d_fake.float().mean(), {}


def _norm_types() -> tuple[type, ...]:
    import torch.nn as nn

    # _NormBase covers BatchNorm*, SyncBatchNorm, InstanceNorm* and their lazy variants.
    types: list[type] = [nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm]
    if hasattr(nn, "RMSNorm"):
        types.append(nn.RMSNorm)
    return tuple(types)


def clip_weights(module: torch.nn.Module, clip: float, include_norm: bool = True) -> None:
    """Clamp every parameter of ``module`` to [-clip, clip] in place (WGAN's Lipschitz
    constraint). ``include_norm=False`` leaves normalisation layers' affine params alone."""
    import torch

    skip = () if include_norm else _norm_types()
    with torch.no_grad():
        for sub in module.modules():
            if skip and isinstance(sub, skip):
                continue
            for p in sub.parameters(recurse=False):
                p.clamp_(-clip, clip)


def gradient_penalty(
    critic: torch.nn.Module | Any,
    real: torch.Tensor,
    fake: torch.Tensor,
    alpha: torch.Tensor | None = None,
    one_sided: bool = False,
    eval_mode: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WGAN-GP penalty: mean((||grad D(x_hat)||_2 - 1)^2), x_hat = a x + (1 - a) G(z).

    ``alpha`` (N,) defaults to U(0, 1) draws from the global RNG, one per sample, broadcast
    over the non-batch dims. The graph is kept (create_graph) so the penalty trains the critic.
    Runs in float32 with autocast off: bf16 gradients of a gradient are too coarse for a
    norm compared against 1. ``eval_mode`` runs this critic pass in eval mode (seed 003) and
    gives every submodule its own mode back after it. Returns (penalty, per-sample gradient norms).
    """
    from contextlib import nullcontext

    import torch

    from gan_pipe.evaluation import eval_mode as modes_restored

    if real.shape != fake.shape:
        raise ValueError(
            f"gradient penalty interpolates real and fake samples, so their shapes must match: "
            f"real {tuple(real.shape)} vs fake {tuple(fake.shape)}"
        )
    n = real.shape[0]
    bshape = (n,) + (1,) * (real.dim() - 1)
    with torch.autocast(real.device.type, enabled=False):
        real, fake = real.detach().float(), fake.detach().float()
        if alpha is None:
            alpha = distributed.rand(bshape, device=real.device)  # torch.rand, or a shard
        else:
            alpha = alpha.detach().to(real).reshape(bshape)
        x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        with modes_restored(critic) if eval_mode and hasattr(critic, "modules") else nullcontext():
            out = critic(x_hat).float()
        # Summing is right because each output depends only on its own sample (no BatchNorm
        # in train mode).
        (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
        norms = torch.linalg.vector_norm(grad.flatten(1), dim=1)
        gap = norms - 1
        if one_sided:
            gap = gap.clamp_min(0)
        return gap.pow(2).mean(), norms


class WGANLoss:
    """Critic: min -E D(x) + E D(G(z)) with weights clipped after every step; G: min -E D(G(z))."""

    #: The extra scalars its methods return, logged as ``train/<key>`` (see docs/metrics.md).
    logs = ("wasserstein_estimate", "d_real", "d_fake")

    def __init__(self, params: WGANParams | None = None):
        self.params = params or WGANParams()

    def discriminator_loss(self, x: LossInputs) -> tuple[torch.Tensor, Extras]:
        return _critic_terms(x)

    def generator_loss(self, x: LossInputs) -> tuple[torch.Tensor, Extras]:
        return _generator_term(x)

    def after_discriminator_step(self, discriminator: torch.nn.Module) -> None:
        clip_weights(discriminator, self.params.clip, self.params.clip_norm_params)


class WGANGPLoss:
    """Critic: -E D(x) + E D(G(z)) + lambda * gradient penalty (+ drift E D(x)^2);
    G: min -E D(G(z)). Use a critic without BatchNorm (layer norm is fine): the penalty is
    per sample, and BatchNorm mixes the samples of a batch."""

    #: The extra scalars its methods return, logged as ``train/<key>`` (see docs/metrics.md).
    logs = ("wasserstein_estimate", "d_real", "d_fake", "gp", "grad_norm")

    def __init__(self, params: WGANGPParams | None = None):
        self.params = params or WGANGPParams()
        self._checked: set[int] = set()

    def _warn_batchnorm(self, critic: Any) -> None:
        if id(critic) in self._checked:
            return
        self._checked.add(id(critic))
        import torch.nn as nn

        if isinstance(critic, nn.Module) and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules()
        ):
            warnings.warn(
                f"wgan-gp: critic {type(critic).__name__} has BatchNorm layers, which make each "
                "output depend on the whole batch, so the per-sample gradient penalty is not "
                "what Gulrajani et al. 2017 penalise; use layer norm or none (dcgan: "
                "norm = 'layer')",
                UserWarning,
                stacklevel=3,
            )

    def discriminator_loss(self, x: LossInputs) -> tuple[torch.Tensor, Extras]:
        p = self.params
        loss, extras = _critic_terms(x)
        self._warn_batchnorm(x.discriminator)
        gp, norms = gradient_penalty(
            x.discriminator, x.real, x.fake, one_sided=p.one_sided, eval_mode=p.gp_eval_mode
        )
        loss = loss + p.lambda_gp * gp
        if p.drift > 0:
            loss = loss + p.drift * x.d_real.float().pow(2).mean()
        extras["gp"] = gp.detach()
        extras["grad_norm"] = norms.detach().mean()
        return loss, extras

    def generator_loss(self, x: LossInputs) -> tuple[torch.Tensor, Extras]:
        return _generator_term(x)


@hookimpl
def register_losses(register) -> None:
    register("wgan", WGANLoss, params=WGANParams)
    register(
        "wgan-gp",
        WGANGPLoss,
        params=WGANGPParams,
        description="Critic: min -E D(x) + E D(G(z)) + lambda_gp * gradient penalty "
        "(+ drift * E D(x)^2); G: min -E D(G(z)). Use a critic without BatchNorm.",
    )
