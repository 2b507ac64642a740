"""Settings shared by the built-in nets to match Keras' defaults where a seed relies on them.

The seeds written in Keras/TF use its defaults without saying so: glorot-uniform kernels with
zero biases, BatchNormalization(momentum=0.99, epsilon=1e-3), LeakyReLU(alpha=0.3). PyTorch's
defaults differ (BatchNorm momentum 0.1, eps 1e-5; Linear/Conv kaiming-uniform weights and
uniform biases), so the nets expose these as params; the defaults keep PyTorch's behaviour.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Keras' BatchNormalization defaults, in PyTorch's convention.
KERAS_BN_MOMENTUM = 0.01
KERAS_BN_EPS = 1e-3


class BatchNormParams(BaseModel):
    """BatchNorm running-average momentum and epsilon (mixed into a net's params)."""

    model_config = ConfigDict(extra="forbid")

    bn_momentum: float = Field(
        0.1,
        gt=0,
        le=1,
        description="BatchNorm running-statistics momentum, PyTorch convention: running = "
        "(1 - m) * running + m * batch. Keras' momentum is 1 - m: Keras' default 0.99 (seeds "
        "003/004) is bn_momentum = 0.01 here. The running statistics are what eval-mode "
        "sampling and metrics use",
    )
    bn_eps: float = Field(
        1e-5, gt=0, description="BatchNorm epsilon added to the variance (Keras' default: 1e-3)"
    )

    def check_bn_used(self, used: bool, how: str) -> None:
        """Refuse bn_momentum / bn_eps set to other than their defaults on a net that has no
        BatchNorm. (Defaults pass: a run's resolved recipe, which ``resume`` and ``evaluate``
        validate again, spells every default out.)"""
        fields = type(self).model_fields
        given = sorted(
            k
            for k in {"bn_momentum", "bn_eps"} & self.model_fields_set
            if getattr(self, k) != fields[k].default
        )
        if given and not used:
            raise ValueError(f"{' and '.join(given)} only apply with BatchNorm ({how})")

    def bn_kwargs(self) -> dict[str, Any]:
        return {"momentum": self.bn_momentum, "eps": self.bn_eps}


def glorot_init(module: Any) -> None:
    """Keras' default init: glorot-uniform weights (U(-b, b), b = sqrt(6 / (fan_in +
    fan_out))) on Linear/Conv/ConvTranspose, zero biases, BatchNorm scale 1 and shift 0.

    PyTorch's xavier_uniform_ computes the same fans as Keras for all three layer types.
    """
    import torch.nn as nn

    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
