"""The torch networks of the ``mlp`` architecture: hidden blocks, the generator, the
discriminator and its minibatch-discrimination layer.

This module imports torch; :mod:`gan_pipe.plugins.models.mlp` (the plugin, its params and
builders) imports it only when a network is built, so that listing plugins stays fast. The
classes say they live in that module, where its ``__getattr__`` finds them: pickles (MLflow's
model logging) name ``gan_pipe.plugins.models.mlp.MLPGenerator``, as they always have.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from gan_pipe.context import ModelSpec
    from gan_pipe.plugins.models.mlp import (
        MLPDiscriminatorParams,
        MLPGeneratorParams,
        _MLPParams,
    )


def _activation(params: _MLPParams) -> nn.Module:
    if params.activation == "leaky_relu":
        return nn.LeakyReLU(params.negative_slope)
    return {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "softplus": nn.Softplus,
        "elu": nn.ELU,
        "sigmoid": nn.Sigmoid,
    }[params.activation]()


def _hidden(in_features: int, params: _MLPParams) -> tuple[list[nn.Module], int]:
    """Hidden blocks Linear -> [BN] -> act -> [Dropout]; returns the layers and the last width."""
    layers: list[nn.Module] = []
    width = in_features
    for out in params.hidden:
        layers.append(nn.Linear(width, out, bias=params.bias))
        if params.batch_norm:
            layers.append(nn.BatchNorm1d(out, **params.bn_kwargs()))
        layers.append(_activation(params))
        if params.dropout > 0:
            layers.append(nn.Dropout(params.dropout))
        width = out
    return layers, width


def _init_linears(net: nn.Module, params: _MLPParams) -> None:
    """Initialise the Linear layers of ``net`` in order; the first is the input layer."""

    def apply(layer: nn.Linear, how: str) -> None:
        if how == "default":
            return
        if how == "glorot":
            nn.init.xavier_uniform_(layer.weight)
        else:
            nn.init.normal_(layer.weight, 0.0, params.init_std)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)

    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        apply(layer, params.init if i == 0 or not params.init_first_only else params.init_rest)


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016), as in seed 001.

    ``M = x @ T`` reshaped to (N, B, C); ``c_b(i, j) = exp(-||M_ib - M_jb||_1)``;
    ``o(x_i)_b = sum_j c_b(i, j)``; returns ``concat([x, o], dim=1)`` of width
    ``in_features + kernels``. The sum includes j = i, as the seed's formula does, so
    every o >= 1 (a batch of N identical samples gives o = N). (The blog-era upstream code
    adds an identity matrix to the distances, making the self-term e^-1 instead of 1: a
    constant shift that the next layer's bias absorbs.) The seed's projection also has a bias;
    it cancels in M_i - M_j, so it is left out. Memory is O(N^2 B C): fine for the small
    batches the technique needs (the seed keeps N under ~16), heavy for N in thousands.
    """

    def __init__(
        self, in_features: int, kernels: int = 5, kernel_dim: int = 3, init_std: float = 0.02
    ) -> None:
        super().__init__()
        self.in_features, self.kernels, self.kernel_dim = in_features, kernels, kernel_dim
        self.out_features = in_features + kernels
        self.T = nn.Parameter(torch.empty(in_features, kernels * kernel_dim))
        nn.init.normal_(self.T, 0.0, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = (x @ self.T).view(-1, self.kernels, self.kernel_dim)  # (N, B, C)
        l1 = (m.unsqueeze(1) - m.unsqueeze(0)).abs().sum(-1)  # (N, N, B): [i, j, b]
        o = torch.exp(-l1).sum(1)  # (N, B): sum over j
        return torch.cat([x, o], dim=1)

    def extra_repr(self) -> str:
        return f"{self.in_features}, kernels={self.kernels}, kernel_dim={self.kernel_dim}"


class MLPGenerator(nn.Module):
    """z (N, z_dim) -> hidden blocks -> Linear(prod(data_shape)) -> output -> data shape."""

    def __init__(self, params: MLPGeneratorParams, spec: ModelSpec) -> None:
        super().__init__()
        self.data_shape = tuple(spec.data_shape)
        layers, width = _hidden(spec.z_dim, params)
        layers.append(nn.Linear(width, math.prod(self.data_shape), bias=params.bias))
        if params.output == "tanh":
            layers.append(nn.Tanh())
        elif params.output == "sigmoid":
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)
        _init_linears(self, params)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.flatten(1)).view(-1, *self.data_shape)


class MLPDiscriminator(nn.Module):
    """Flattened x -> hidden blocks -> [minibatch discrimination] -> Linear(1): logits (N,).

    ``features(x)`` is the last hidden activation, before its dropout and before minibatch
    discrimination: the representation feature matching compares, without the dropout
    noise or the batch-coupled features that only serve D's decision.
    """

    def __init__(self, params: MLPDiscriminatorParams, spec: ModelSpec) -> None:
        super().__init__()
        layers, width = _hidden(math.prod(spec.data_shape), params)
        last_dropout = layers.pop() if params.dropout > 0 and params.hidden else None
        self.body = nn.Sequential(*layers)
        self.dropout = last_dropout or nn.Identity()
        mb = params.minibatch_discrimination
        self.minibatch: nn.Module = (
            MinibatchDiscrimination(width, mb.kernels, mb.kernel_dim, mb.init_std)
            if mb is not None
            else nn.Identity()
        )
        self.head = nn.Linear(width + (mb.kernels if mb else 0), 1, bias=params.bias)
        _init_linears(self, params)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.minibatch(self.dropout(self.features(x)))
        return self.head(h).squeeze(1)


#: The classes :mod:`gan_pipe.plugins.models.mlp` serves by name.
CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (MinibatchDiscrimination, MLPGenerator, MLPDiscriminator)
}
for _cls in CLASSES.values():
    _cls.__module__ = "gan_pipe.plugins.models.mlp"  # pickled by reference to the public module
