"""Fully connected generator and discriminator, with optional minibatch discrimination.

These cover the MLP seeds: seed 000/004 (z 100 -> 256 -> 512 -> 1024 -> 784, LeakyReLU 0.2,
tanh; D 784 -> 1024 -> 512 -> 256 -> 1 with Dropout 0.3; seed 004 adds BatchNorm to G),
seed 002 (128-128 LeakyReLU nets, sigmoid output) and seed 001 (1-D Gaussian: G
linear(1 -> 4) -> softplus -> linear(4 -> 1); D tanh layers of 8 units, with or without
minibatch discrimination).

Hidden block: Linear -> [BatchNorm1d] -> activation -> [Dropout]. BatchNorm sits between the
Linear and the activation, as in seed 004. The generator's last Linear has prod(data_shape)
outputs and is reshaped to the data shape, so an MLP also works on image datasets (flattened
or not); the discriminator flattens its input and returns one raw logit per sample, shape
(N,): the BCE losses apply the sigmoid, and a Wasserstein critic uses the same output.

torch is imported only when a network is built, so that listing plugins stays fast. The
classes are still importable by name (``from gan_pipe.plugins.models.mlp import
MinibatchDiscrimination``) and pickle by reference, which MLflow's model logging needs.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gan_pipe import hookimpl
from gan_pipe.context import ModelSpec
from gan_pipe.plugins.models.keras_defaults import BatchNormParams

if TYPE_CHECKING:
    from torch import nn


Width = Annotated[int, Field(gt=0)]


class MinibatchParams(BaseModel):
    """Minibatch discrimination (Salimans et al. 2016) settings; seed 001 uses B = 5, C = 3."""

    model_config = ConfigDict(extra="forbid")

    kernels: int = Field(5, gt=0, description="B: number of kernels (features added to h)")
    kernel_dim: int = Field(3, gt=0, description="C: dimension of each kernel's projection")
    init_std: float = Field(0.02, gt=0, description="T is initialised N(0, init_std), as seed 001")


class _MLPParams(BatchNormParams):
    model_config = ConfigDict(extra="forbid")

    activation: Literal["leaky_relu", "relu", "tanh", "softplus", "elu", "sigmoid"] = Field(
        "leaky_relu", description="nonlinearity after every hidden Linear (or its BatchNorm)"
    )
    negative_slope: float = Field(
        0.2, ge=0, description="LeakyReLU slope (seeds 000/002/004: 0.2; Keras' default: 0.3)"
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout probability after each hidden activation"
    )
    batch_norm: bool = Field(
        False, description="BatchNorm1d after each hidden Linear, before the activation (seed 004)"
    )
    init: Literal["default", "glorot", "normal"] = Field(
        "default",
        description="Linear weight init: 'default' is PyTorch's; 'glorot' is Keras/TF's default "
        "(glorot-uniform weights, zero bias); 'normal' is N(0, init_std) weights, zero bias",
    )
    init_std: float = Field(0.02, gt=0, description="std of the 'normal' init")
    init_first_only: bool = Field(
        False,
        description="apply `init` to the first Linear only, the others get `init_rest` "
        "(seed 000: first layer N(0, 0.02), the rest Keras' glorot)",
    )
    init_rest: Literal["default", "glorot"] = Field(
        "default", description="init of the Linear layers after the first when init_first_only"
    )
    bias: bool = Field(True, description="give every Linear a bias")

    @model_validator(mode="after")
    def _init_is_consistent(self) -> _MLPParams:
        self.check_bn_used(self.batch_norm, "batch_norm = true")
        if self.init_first_only and self.init == "default":
            raise ValueError("init_first_only needs init = 'normal' or 'glorot'")
        if self.init_rest != "default" and not self.init_first_only:
            raise ValueError(
                "init_rest only applies with init_first_only = true; to initialise every "
                "layer the same way set init instead"
            )
        return self


class MLPGeneratorParams(_MLPParams):
    hidden: list[Width] = Field(
        default_factory=lambda: [256, 512, 1024],
        description="hidden layer widths, input side first (seed 000: [256, 512, 1024])",
    )
    output: Literal["tanh", "sigmoid", "none"] = Field(
        "tanh", description="output nonlinearity: tanh for data in [-1, 1], sigmoid for [0, 1]"
    )


class MLPDiscriminatorParams(_MLPParams):
    hidden: list[Width] = Field(
        default_factory=lambda: [1024, 512, 256],
        description="hidden layer widths, input side first (seed 000: [1024, 512, 256])",
    )
    minibatch_discrimination: MinibatchParams | None = Field(
        None,
        description="if set, a minibatch-discrimination layer after the last hidden layer; "
        "its B features are concatenated to h before the output Linear",
    )


def _activation(params: _MLPParams) -> nn.Module:
    from torch import nn

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
    from torch import nn

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
    from torch import nn

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


@functools.cache
def _classes() -> dict[str, type]:
    """Define the nn.Module classes on first use (torch is imported here, not at load time)."""
    import torch
    from torch import nn

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

    out: dict[str, type] = {}
    for cls in (MinibatchDiscrimination, MLPGenerator, MLPDiscriminator):
        cls.__qualname__ = cls.__name__  # pickle finds it via the module's __getattr__
        out[cls.__name__] = cls
    return out


def __getattr__(name: str) -> Any:
    if name in ("MinibatchDiscrimination", "MLPGenerator", "MLPDiscriminator"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_generator(params: MLPGeneratorParams, spec: ModelSpec) -> nn.Module:
    """MLP generator (seeds 000, 002, 004 and seed 001's 1-D generator)."""
    return _classes()["MLPGenerator"](params, spec)


def build_discriminator(params: MLPDiscriminatorParams, spec: ModelSpec) -> nn.Module:
    """MLP discriminator returning logits, optionally with minibatch discrimination."""
    return _classes()["MLPDiscriminator"](params, spec)


@hookimpl
def register_architectures(register: Any) -> None:
    register("mlp", build_generator, params=MLPGeneratorParams, role="generator")
    register("mlp", build_discriminator, params=MLPDiscriminatorParams, role="discriminator")
