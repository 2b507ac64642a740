"""DCGAN generator and discriminator, as in seed 003 (Raschka's TF2 DCGAN for MNIST).

Generator: Dense(z -> nf*h*w, no bias) -> BN -> LeakyReLU -> reshape -> ConvT(nf, 5, s1)
-> BN -> LeakyReLU -> n_blocks x [ConvT(nf/2^k, 5, s2) -> BN -> LeakyReLU] -> ConvT(C, 5, s1)
-> tanh. Every ConvT has no bias (BatchNorm's shift makes it redundant). With z = 20,
nf = 128, n_blocks = 2 it has 804,832 trainable parameters, as the seed prints.

Discriminator: Conv(nf, 5, s1) -> norm -> LeakyReLU -> n_blocks x [Conv(2^k nf, 5, s2) -> norm
-> LeakyReLU -> Dropout] -> Conv(1, h x w, valid) -> one logit per sample. ``norm = "none"``
or ``"layer"`` gives the critic WGAN-GP asks for (no BatchNorm with a gradient penalty).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from gan_pipe import hookimpl
from gan_pipe.context import ModelSpec
from gan_pipe.plugins.models.keras_defaults import BatchNormParams, glorot_init

INIT_DESCRIPTION = (
    "dcgan: conv/linear weights N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0 (DCGAN "
    "paper); glorot: Keras' default, which seed 003's code gets: glorot-uniform weights, "
    "biases 0, BatchNorm scales 1; default: PyTorch's init"
)


class DCGANGeneratorParams(BatchNormParams):
    model_config = ConfigDict(extra="forbid")

    n_filters: int = Field(
        128, gt=0, description="channels of the first feature map (halved per block)"
    )
    n_blocks: int = Field(2, ge=0, le=6, description="stride-2 upsampling blocks")
    kernel_size: int = Field(5, gt=0, description="odd kernel size of every transposed conv")
    negative_slope: float = Field(
        0.2,
        ge=0,
        description="LeakyReLU slope (DCGAN paper: 0.2; seed 003 used Keras' default, 0.3)",
    )
    output: Literal["tanh", "sigmoid", "none"] = Field(
        "tanh", description="tanh for data in [-1, 1]"
    )
    init: Literal["dcgan", "glorot", "default"] = Field("dcgan", description=INIT_DESCRIPTION)


class DCGANDiscriminatorParams(BatchNormParams):
    model_config = ConfigDict(extra="forbid")

    n_filters: int = Field(64, gt=0, description="channels of the first conv (doubled per block)")
    n_blocks: int = Field(2, ge=0, le=6, description="stride-2 downsampling blocks")
    kernel_size: int = Field(
        5, gt=0, description="odd kernel size of every conv before the head (seed 003: 5)"
    )
    negative_slope: float = Field(
        0.2,
        ge=0,
        description="LeakyReLU slope (DCGAN paper: 0.2; seed 003 used Keras' default, 0.3)",
    )
    dropout: float = Field(0.3, ge=0, lt=1, description="dropout after each downsampling block")
    norm: Literal["batch", "layer", "none"] = Field(
        "batch", description="'none'/'layer' for WGAN-GP critics"
    )
    init: Literal["dcgan", "glorot", "default"] = Field("dcgan", description=INIT_DESCRIPTION)

    @model_validator(mode="after")
    def _bn_settings_need_batchnorm(self) -> DCGANDiscriminatorParams:
        self.check_bn_used(self.norm == "batch", "norm = 'batch'")
        return self


def _image_shape(spec: ModelSpec, n_blocks: int, who: str) -> tuple[int, int, int]:
    if len(spec.data_shape) != 3:
        raise ValueError(
            f"the dcgan {who} needs image data shaped (channels, height, width), got "
            f"{spec.data_shape}; set the dataset's flatten = false"
        )
    c, h, w = spec.data_shape
    f = 2**n_blocks
    if h % f or w % f:
        raise ValueError(
            f"the dcgan {who} with n_blocks = {n_blocks} needs height and width divisible by "
            f"{f}, got {h}x{w}; change n_blocks or the dataset's image_size"
        )
    return c, h, w


def dcgan_init(module) -> None:
    """DCGAN paper init: conv/linear weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    import torch.nn as nn

    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _initialise(net, init: str) -> None:
    if init == "dcgan":
        net.apply(dcgan_init)
    elif init == "glorot":
        net.apply(glorot_init)


def build_generator(params: DCGANGeneratorParams, spec: ModelSpec):
    """DCGAN generator of seed 003, sizes as parameters."""
    import torch.nn as nn

    c, h, w = _image_shape(spec, params.n_blocks, "generator")
    f = 2**params.n_blocks
    h0, w0, nf, k = h // f, w // f, params.n_filters, params.kernel_size
    pad = k // 2
    bn = params.bn_kwargs()
    act = lambda: nn.LeakyReLU(params.negative_slope)  # noqa: E731
    layers: list[nn.Module] = [
        nn.Linear(spec.z_dim, nf * h0 * w0, bias=False),
        nn.BatchNorm1d(nf * h0 * w0, **bn),
        act(),
        nn.Unflatten(1, (nf, h0, w0)),
        nn.ConvTranspose2d(nf, nf, k, stride=1, padding=pad, bias=False),
        nn.BatchNorm2d(nf, **bn),
        act(),
    ]
    for _ in range(params.n_blocks):
        nxt = max(1, nf // 2)
        # padding k//2 and output_padding 1 double the size, like Keras' padding="same".
        layers += [
            nn.ConvTranspose2d(nf, nxt, k, stride=2, padding=pad, output_padding=1, bias=False),
            nn.BatchNorm2d(nxt, **bn),
            act(),
        ]
        nf = nxt
    layers.append(nn.ConvTranspose2d(nf, c, k, stride=1, padding=pad, bias=False))
    if params.output == "tanh":
        layers.append(nn.Tanh())
    elif params.output == "sigmoid":
        layers.append(nn.Sigmoid())
    net = nn.Sequential(*layers)
    _initialise(net, params.init)
    return net


def _discriminator_class():
    import torch.nn as nn

    class DCGANDiscriminator(nn.Module):
        """Conv feature extractor plus a valid conv to one logit; ``features`` is exposed for
        feature matching."""

        def __init__(self, params: DCGANDiscriminatorParams, spec: ModelSpec):
            super().__init__()
            c, h, w = _image_shape(spec, params.n_blocks, "discriminator")
            k, pad, nf = params.kernel_size, params.kernel_size // 2, params.n_filters

            def norm(ch: int, hh: int, ww: int) -> nn.Module:
                if params.norm == "batch":
                    return nn.BatchNorm2d(ch, **params.bn_kwargs())
                if params.norm == "layer":
                    return nn.GroupNorm(1, ch)  # layer norm over (C, H, W)
                return nn.Identity()

            act = lambda: nn.LeakyReLU(params.negative_slope)  # noqa: E731
            layers: list[nn.Module] = [
                nn.Conv2d(c, nf, k, stride=1, padding=pad),
                norm(nf, h, w),
                act(),
            ]
            for _ in range(params.n_blocks):
                h, w = (h + 2 * pad - k) // 2 + 1, (w + 2 * pad - k) // 2 + 1
                layers += [
                    nn.Conv2d(nf, nf * 2, k, stride=2, padding=pad),
                    norm(nf * 2, h, w),
                    act(),
                ]
                if params.dropout > 0:
                    layers.append(nn.Dropout(params.dropout))
                nf *= 2
            self.body = nn.Sequential(*layers)
            self.head = nn.Conv2d(nf, 1, (h, w))
            _initialise(self, params.init)

        def features(self, x):
            return self.body(x)

        def forward(self, x):
            return self.head(self.body(x)).flatten()

    return DCGANDiscriminator


def build_discriminator(params: DCGANDiscriminatorParams, spec: ModelSpec):
    """DCGAN discriminator of seed 003 (logits out), sizes as parameters."""
    return _discriminator_class()(params, spec)


@hookimpl
def register_architectures(register) -> None:
    register("dcgan", build_generator, params=DCGANGeneratorParams, role="generator")
    register("dcgan", build_discriminator, params=DCGANDiscriminatorParams, role="discriminator")
