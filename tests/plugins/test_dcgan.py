"""The DCGAN nets against the seed's printed Keras summary (seed 003)."""

from __future__ import annotations

import pytest
import torch

from gan_pipe.context import ModelSpec
from gan_pipe.plugins.models.dcgan import (
    DCGANDiscriminatorParams,
    DCGANGeneratorParams,
    build_discriminator,
    build_generator,
)

SPEC = ModelSpec(data_shape=(1, 28, 28), z_dim=20)


def n_params(net, trainable=True):
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable)


def test_generator_parameter_count_matches_seed():
    g = build_generator(DCGANGeneratorParams(), SPEC)
    assert n_params(g) == 804_832
    running = sum(b.numel() for n, b in g.named_buffers() if "running" in n)
    assert n_params(g) + running == 817_824  # Keras counts BN moving stats as parameters


def test_discriminator_layers_match_seed_summary():
    d = build_discriminator(DCGANDiscriminatorParams(), SPEC)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [sum(p.numel() for p in c.parameters()) for c in convs] == [1664, 204928, 819456, 12545]
    bns = [m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [m.num_features for m in bns] == [64, 128, 256]


def test_shapes_and_range():
    g = build_generator(DCGANGeneratorParams(), SPEC).eval()
    d = build_discriminator(DCGANDiscriminatorParams(), SPEC).eval()
    x = g(torch.rand(5, 20) * 2 - 1)
    assert x.shape == (5, 1, 28, 28)
    assert x.abs().max() <= 1.0
    assert d(x).shape == (5,)
    assert d.features(x).shape == (5, 256, 7, 7)


@pytest.mark.parametrize("blocks,size", [(1, 16), (3, 32)])
def test_sizes_are_parameters(blocks, size):
    spec = ModelSpec((3, size, size), 8)
    g = build_generator(DCGANGeneratorParams(n_filters=32, n_blocks=blocks), spec)
    d = build_discriminator(
        DCGANDiscriminatorParams(n_filters=8, n_blocks=blocks, norm="layer"), spec
    )
    out = g(torch.randn(2, 8))
    assert out.shape == (2, 3, size, size)
    assert d(out).shape == (2,)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())


def test_bad_shapes_have_clear_errors():
    with pytest.raises(ValueError, match="flatten = false"):
        build_generator(DCGANGeneratorParams(), ModelSpec((784,), 20))
    with pytest.raises(ValueError, match="divisible by 4"):
        build_discriminator(DCGANDiscriminatorParams(), ModelSpec((1, 30, 30), 20))


def test_dcgan_init_statistics():
    torch.manual_seed(0)
    g = build_generator(DCGANGeneratorParams(), SPEC)
    w = g[0].weight
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
