"""The DCGAN nets against the seed's printed Keras summary (seed 003)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

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


def _glorot_bound(w: torch.Tensor) -> float:
    """Keras' glorot-uniform bound from the Keras kernel layout, computed independently of
    PyTorch's fan rules: Conv2D kernel (kh, kw, in, out), Conv2DTranspose (kh, kw, out, in),
    Dense (in, out); fan_in = receptive field * shape[-2], fan_out = receptive field * shape[-1]."""
    if w.dim() == 2:  # torch Linear (out, in) -> Keras Dense (in, out)
        keras = (w.shape[1], w.shape[0])
    else:  # any conv: (a, b, kh, kw) -> (kh, kw, b, a) for both Conv2d and ConvTranspose2d
        keras = (w.shape[2], w.shape[3], w.shape[1], w.shape[0])
    rf = int(np.prod(keras[:-2]))
    return float(np.sqrt(6.0 / (rf * keras[-2] + rf * keras[-1])))


@pytest.mark.parametrize("role", ["generator", "discriminator"])
def test_glorot_init_is_keras_glorot_uniform(role):
    torch.manual_seed(0)
    if role == "generator":
        net = build_generator(DCGANGeneratorParams(init="glorot"), SPEC)
    else:
        net = build_discriminator(DCGANDiscriminatorParams(init="glorot"), SPEC)
    layers = [
        m
        for m in net.modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    assert len(layers) >= 4
    for m in layers:
        b, w = _glorot_bound(m.weight), m.weight.detach()
        assert w.abs().max().item() <= b
        if w.numel() > 1000:  # U(-b, b): max close to b, variance b^2 / 3
            assert w.abs().max().item() > 0.99 * b
            assert w.var().item() == pytest.approx(b * b / 3, rel=0.1)
        if m.bias is not None:
            assert (m.bias == 0).all()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    # the DCGAN init is different: first layer weights N(0, 0.02)
    torch.manual_seed(0)
    first = build_generator(DCGANGeneratorParams(init="dcgan"), SPEC)[0].weight
    assert first.std().item() == pytest.approx(0.02, rel=0.05)


def test_batchnorm_momentum_and_eps_reach_every_layer():
    g = build_generator(DCGANGeneratorParams(bn_momentum=0.01, bn_eps=1e-3), SPEC)
    d = build_discriminator(DCGANDiscriminatorParams(bn_momentum=0.01, bn_eps=1e-3), SPEC)
    for net, count in ((g, 4), (d, 3)):
        bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert len(bns) == count
        assert all((m.momentum, m.eps) == (0.01, 1e-3) for m in bns)
    # the default stays PyTorch's
    g0 = build_generator(DCGANGeneratorParams(), SPEC)
    assert {(m.momentum, m.eps) for m in g0.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {
        (0.1, 1e-5)
    }


def test_batchnorm_eps_and_momentum_by_hand():
    """One train-mode batch through the generator's first BatchNorm, against the formulas:
    y = (x - mean) / sqrt(var_biased + eps); running = (1 - m) running + m var_unbiased."""
    torch.manual_seed(0)
    g = build_generator(DCGANGeneratorParams(bn_momentum=0.01, bn_eps=0.5, init="glorot"), SPEC)
    z = torch.randn(16, 20)
    h = g[0](z).detach()
    y = g[1](h).detach()
    mean, var = h.mean(0), h.var(0, unbiased=False)
    np.testing.assert_allclose(y, (h - mean) / torch.sqrt(var + 0.5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g[1].running_mean, 0.01 * mean, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        g[1].running_var, 0.99 + 0.01 * h.var(0, unbiased=True), rtol=1e-5, atol=1e-7
    )


def test_bn_settings_without_batchnorm_are_refused():
    with pytest.raises(ValidationError, match="bn_eps only apply with BatchNorm"):
        DCGANDiscriminatorParams(norm="layer", bn_eps=1e-3)
    with pytest.raises(ValidationError, match="bn_momentum"):
        DCGANGeneratorParams(bn_momentum=0.0)
    with pytest.raises(ValidationError, match="init"):
        DCGANGeneratorParams(init="glorot_normal")
    DCGANDiscriminatorParams(norm="batch", bn_eps=1e-3)


@pytest.mark.parametrize("slope", [0.2, 0.3])
def test_leaky_relu_slope_on_negative_input(slope):
    g = build_generator(DCGANGeneratorParams(negative_slope=slope), SPEC)
    d = build_discriminator(DCGANDiscriminatorParams(negative_slope=slope), SPEC)
    x = -torch.arange(1.0, 6.0)
    for net in (g, d):
        acts = [m for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
        assert len(acts) >= 3
        for a in acts:
            np.testing.assert_allclose(a(x), slope * x)
