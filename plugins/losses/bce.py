"""Binary cross-entropy GAN losses on discriminator logits (Goodfellow et al. 2014).

``minimax``: the original saturating game, D maximises E log D(x) + E log(1 - D(G(z))) and G
minimises E log(1 - D(G(z))). ``non-saturating``: G maximises E log D(G(z)) instead, and D's
labels can be smoothed one-sidedly (real 0.9, fake 0: Salimans et al. 2016).

Both log ``d_real``/``d_fake`` (mean D probabilities) and ``js_estimate``: with
V(D, G) = E log D(x) + E log(1 - D(G(z))) = -(BCE(d_real, 1) + BCE(d_fake, 0)) and, at D's
optimum, V = 2 JS(p_data || p_g) - log 4, ``js_estimate`` = (log 4 + V) / 2 estimates the JS
divergence in nats (an estimate: D is never optimal). V is always computed with the unsmoothed
labels 1 and 0, so label smoothing changes D's training loss but not the estimate's definition.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl
from gan_pipe.context import LossInputs

LOG4 = math.log(4.0)


class MinimaxParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NonSaturatingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    real_label: float = Field(
        1.0,
        ge=0,
        le=1,
        description="D's target on real samples; 0.9 is one-sided label smoothing "
        "(Salimans et al. 2016)",
    )
    fake_label: float = Field(
        0.0,
        ge=0,
        le=1,
        description="D's target on generated samples; keep 0 (smoothing it rewards G's "
        "bad samples)",
    )
    d_reduction: Literal["sum", "concatenated_mean"] = Field(
        "sum",
        description="sum: D's loss is BCE averaged over the real half plus BCE averaged over "
        "the fake half (-V(D, G) with labels 1 and 0); concatenated_mean: BCE averaged over "
        "the concatenated real + fake batch, as Keras' train_on_batch on "
        "np.concatenate([real, fake]) in seeds 000/004: with equal halves, half of 'sum' (value "
        "and gradient; under Adam only the relative size of its eps changes). js_estimate is "
        "the same either way",
    )


def _bce(logits, target: float):
    import torch.nn.functional as F

    logits = logits.float().reshape(-1)
    return F.binary_cross_entropy_with_logits(logits, logits.new_full(logits.shape, target))


def _d_terms(x: LossInputs, real_label: float, fake_label: float, reduction: str = "sum"):
    import torch

    real, fake = _bce(x.d_real, real_label), _bce(x.d_fake, fake_label)
    if reduction == "sum":
        loss = real + fake
    else:  # the mean of all N_real + N_fake terms
        n_real, n_fake = x.d_real.numel(), x.d_fake.numel()
        loss = (n_real * real + n_fake * fake) / (n_real + n_fake)
    if (real_label, fake_label, reduction) == (1.0, 0.0, "sum"):
        minus_v = loss.detach()
    else:  # D's loss is not -V(D, G): recompute V with labels 1 and 0
        with torch.no_grad():
            minus_v = _bce(x.d_real, 1.0) + _bce(x.d_fake, 0.0)
    extras = {
        "d_real": torch.sigmoid(x.d_real.float()).mean(),
        "d_fake": torch.sigmoid(x.d_fake.float()).mean(),
        "js_estimate": (LOG4 - minus_v) / 2,
    }
    return loss, extras


class MinimaxLoss:
    """min_G max_D E[log D(x)] + E[log(1 - D(G(z)))] (saturating generator loss)."""

    #: The extra scalars its methods return, logged as ``train/<key>`` (see docs/metrics.md).
    logs = ("d_real", "d_fake", "js_estimate")

    def __init__(self, params: MinimaxParams | None = None):
        self.params = params or MinimaxParams()

    def discriminator_loss(self, x: LossInputs):
        return _d_terms(x, 1.0, 0.0)

    def generator_loss(self, x: LossInputs):
        # log(1 - sigmoid(l)) = -BCE(l, 0): G minimises it.
        return -_bce(x.d_fake, 0.0), {}


class NonSaturatingLoss:
    """D: BCE with (optionally smoothed) labels; G: maximise log D(G(z))."""

    #: The extra scalars its methods return, logged as ``train/<key>`` (see docs/metrics.md).
    logs = ("d_real", "d_fake", "js_estimate")

    def __init__(self, params: NonSaturatingParams | None = None):
        self.params = params or NonSaturatingParams()

    def discriminator_loss(self, x: LossInputs):
        p = self.params
        return _d_terms(x, p.real_label, p.fake_label, p.d_reduction)

    def generator_loss(self, x: LossInputs):
        return _bce(x.d_fake, 1.0), {}


@hookimpl
def register_losses(register) -> None:
    register("minimax", MinimaxLoss, params=MinimaxParams)
    register("non-saturating", NonSaturatingLoss, params=NonSaturatingParams)
