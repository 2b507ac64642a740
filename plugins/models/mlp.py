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

torch is imported only when a network is built (the networks are in
:mod:`gan_pipe.plugins.models.mlp_nets`), so that listing plugins stays fast. The classes are
still importable by name (``from gan_pipe.plugins.models.mlp import
MinibatchDiscrimination``) and pickle by reference, which MLflow's model logging needs.
"""

from __future__ import annotations

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


def _classes() -> dict[str, type]:
    """The nn.Module classes, from :mod:`.mlp_nets` (torch is imported there, on first use)."""
    from gan_pipe.plugins.models.mlp_nets import CLASSES

    return CLASSES


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
