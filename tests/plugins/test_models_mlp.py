"""The MLP nets and minibatch discrimination, against the seeds' layer sizes and the formula."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from gan_pipe.context import ModelSpec
from gan_pipe.plugins.models import mlp
from gan_pipe.plugins.models.mlp import (
    MinibatchDiscrimination,
    MLPDiscriminatorParams,
    MLPGeneratorParams,
    build_discriminator,
    build_generator,
)
from gan_pipe.registry import Register, Registry

MNIST = ModelSpec(data_shape=(784,), z_dim=100)
MNIST_IMG = ModelSpec(data_shape=(1, 28, 28), z_dim=100)
GAUSS_1D = ModelSpec(data_shape=(1,), z_dim=1)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def dense(sizes: list[int]) -> int:
    """Parameters of a chain of biased dense layers, counted by hand: in*out + out each."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


# ------------------------------------------------------------ minibatch discrimination
def mbd_reference(x: np.ndarray, t: np.ndarray, b: int, c: int) -> np.ndarray:
    """The formula of seed 001 / Salimans et al., with explicit loops over i, j and b."""
    n = x.shape[0]
    m = (x @ t).reshape(n, b, c)
    o = np.zeros((n, b))
    for i in range(n):
        for j in range(n):
            for k in range(b):
                o[i, k] += np.exp(-np.abs(m[i, k] - m[j, k]).sum())
    return np.concatenate([x, o], axis=1)


def test_minibatch_discrimination_matches_the_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6))
    t = rng.normal(scale=0.5, size=(6, 5 * 3))
    layer = MinibatchDiscrimination(6, kernels=5, kernel_dim=3).double()
    with torch.no_grad():
        layer.T.copy_(torch.from_numpy(t))
    out = layer(torch.from_numpy(x)).detach().numpy()
    assert out.shape == (4, 6 + 5)
    np.testing.assert_allclose(out, mbd_reference(x, t, 5, 3), rtol=1e-12)
    # not a trivial case: every o lies strictly between 1 (all others far) and N (all equal)
    assert ((out[:, 6:] > 1.01) & (out[:, 6:] < 4 - 1e-3)).all()


def test_minibatch_discrimination_has_gradients():
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(8, kernels=5, kernel_dim=3, init_std=0.3)
    x = torch.randn(6, 8, requires_grad=True)
    layer(x)[:, 8:].sum().backward()
    for g in (layer.T.grad, x.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_minibatch_discrimination_is_permutation_equivariant():
    torch.manual_seed(1)
    layer = MinibatchDiscrimination(5, kernels=4, kernel_dim=2, init_std=0.5)
    x = torch.randn(7, 5)
    perm = torch.randperm(7)
    torch.testing.assert_close(layer(x[perm]), layer(x)[perm])


@pytest.mark.parametrize("n", [1, 3, 12])
def test_identical_samples_give_batch_size(n):
    layer = MinibatchDiscrimination(4, kernels=5, kernel_dim=3)
    x = torch.randn(1, 4).repeat(n, 1)
    o = layer(x)[:, 4:]
    torch.testing.assert_close(o, torch.full((n, 5), float(n)))


def test_minibatch_init_like_the_seed():
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(200, kernels=50, kernel_dim=4)
    assert layer.T.shape == (200, 200)
    assert abs(layer.T.std().item() - 0.02) < 0.001
    assert layer.out_features == 250


# ------------------------------------------------------------ the seeds' parameter counts
def test_seed_000_parameter_counts():
    g = build_generator(MLPGeneratorParams(hidden=[256, 512, 1024]), MNIST)
    d = build_discriminator(MLPDiscriminatorParams(hidden=[1024, 512, 256], dropout=0.3), MNIST)
    # (100*256+256) + (256*512+512) + (512*1024+1024) + (1024*784+784)
    assert n_params(g) == dense([100, 256, 512, 1024, 784]) == 1_486_352
    # (784*1024+1024) + (1024*512+512) + (512*256+256) + (256+1)
    assert n_params(d) == dense([784, 1024, 512, 256, 1]) == 1_460_225


def test_seed_004_batch_norm_parameter_count():
    g = build_generator(MLPGeneratorParams(batch_norm=True), MNIST)
    bn = 2 * (256 + 512 + 1024)  # gamma and beta per feature
    assert n_params(g) == 1_486_352 + bn
    running = sum(b.numel() for n, b in g.named_buffers() if "running" in n)
    assert running == bn  # Keras would count these as non-trainable parameters


def test_seed_002_parameter_counts():
    g = build_generator(MLPGeneratorParams(hidden=[128, 128], output="sigmoid"), MNIST)
    d = build_discriminator(MLPDiscriminatorParams(hidden=[128, 128]), MNIST)
    assert n_params(g) == dense([100, 128, 128, 784]) == 130_576
    assert n_params(d) == dense([784, 128, 128, 1]) == 117_121


def test_seed_001_parameter_counts():
    g = build_generator(
        MLPGeneratorParams(hidden=[4], activation="softplus", output="none"), GAUSS_1D
    )
    assert n_params(g) == (1 * 4 + 4) + (4 * 1 + 1) == 13
    d = build_discriminator(MLPDiscriminatorParams(hidden=[8, 8, 8], activation="tanh"), GAUSS_1D)
    assert n_params(d) == 16 + 72 + 72 + 9 == 169
    d_mb = build_discriminator(
        MLPDiscriminatorParams(hidden=[8, 8], activation="tanh", minibatch_discrimination={}),
        GAUSS_1D,
    )
    # two hidden layers, T (8 x 5*3), output Linear over 8 + 5 features; the seed's graph has
    # 15 more (T's bias), which cancel in the differences and are left out
    assert n_params(d_mb) == 16 + 72 + 8 * 15 + (13 + 1) == 222
    x = torch.randn(12, 1)
    assert g(torch.randn(12, 1)).shape == (12, 1)
    assert d(x).shape == d_mb(x).shape == (12,)
    assert d_mb.features(x).shape == (12, 8)


# ------------------------------------------------------------ shapes, options
@pytest.mark.parametrize("spec", [MNIST, MNIST_IMG, ModelSpec((3, 8, 8), 16), ModelSpec((2,), 2)])
def test_shapes_and_tanh_range(spec):
    torch.manual_seed(0)
    g = build_generator(MLPGeneratorParams(hidden=[32, 64]), spec)
    d = build_discriminator(MLPDiscriminatorParams(hidden=[64, 16]), spec)
    x = g(torch.randn(5, spec.z_dim) * 50)  # large inputs saturate, tanh still bounds them
    assert x.shape == (5, *spec.data_shape)
    assert x.abs().max() <= 1.0 and x.abs().max() > 0.9
    assert d(x).shape == (5,)
    assert d.features(x).shape == (5, 16)


def test_discriminator_outputs_raw_logits():
    torch.manual_seed(0)
    d = build_discriminator(MLPDiscriminatorParams(hidden=[16], init="normal", init_std=5.0), MNIST)
    out = d(torch.randn(64, 784))
    assert out.min() < 0 or out.max() > 1  # no sigmoid at the end


def test_sigmoid_and_no_output_nonlinearity():
    torch.manual_seed(0)
    z = torch.randn(32, 100) * 50
    g = build_generator(MLPGeneratorParams(hidden=[8], output="sigmoid"), MNIST)
    assert 0 <= g(z).min() and g(z).max() <= 1
    g = build_generator(MLPGeneratorParams(hidden=[8], output="none", init="normal"), MNIST)
    assert g(z).abs().max() > 1
    assert not any(isinstance(m, torch.nn.Tanh | torch.nn.Sigmoid) for m in g.modules())


def test_batch_norm_and_dropout_when_asked():
    def count(net, kind):
        return sum(isinstance(m, kind) for m in net.modules())

    g = build_generator(MLPGeneratorParams(hidden=[8, 8, 8], batch_norm=True), MNIST)
    assert count(g, torch.nn.BatchNorm1d) == 3 and count(g, torch.nn.Dropout) == 0
    # BN sits between each hidden Linear and its activation (seed 004)
    kinds = [type(m).__name__ for m in g.net]
    assert kinds[:3] == ["Linear", "BatchNorm1d", "LeakyReLU"]
    d = build_discriminator(MLPDiscriminatorParams(hidden=[8, 8, 8], dropout=0.3), MNIST)
    assert count(d, torch.nn.Dropout) == 3 and count(d, torch.nn.BatchNorm1d) == 0
    plain = build_discriminator(MLPDiscriminatorParams(hidden=[8, 8]), MNIST)
    assert count(plain, torch.nn.Dropout) == count(plain, torch.nn.BatchNorm1d) == 0


def test_features_come_before_dropout_and_minibatch():
    torch.manual_seed(0)
    params = MLPDiscriminatorParams(hidden=[32, 16], dropout=0.5, minibatch_discrimination={})
    d = build_discriminator(params, MNIST).train()
    x = torch.randn(8, 784)
    assert d.features(x).shape == (8, 16)
    # dropout is only in between layers, so the last activation has no zeros from it
    assert (d.features(x) != 0).float().mean() > 0.99
    assert d(x).shape == (8,)


@pytest.mark.parametrize(
    "name,cls",
    [("leaky_relu", torch.nn.LeakyReLU), ("relu", torch.nn.ReLU), ("tanh", torch.nn.Tanh)]
    + [("softplus", torch.nn.Softplus), ("elu", torch.nn.ELU), ("sigmoid", torch.nn.Sigmoid)],
)
def test_activations(name, cls):
    g = build_generator(MLPGeneratorParams(hidden=[4, 4], activation=name, output="none"), MNIST)
    assert sum(isinstance(m, cls) for m in g.modules()) == 2


def test_leaky_relu_slope_and_no_bias():
    g = build_generator(MLPGeneratorParams(hidden=[4], negative_slope=0.3, bias=False), MNIST)
    assert g.net[1].negative_slope == 0.3
    assert all(m.bias is None for m in g.modules() if isinstance(m, torch.nn.Linear))


def test_init_normal_everywhere_or_first_only():
    def stds(net):
        return [m.weight.std().item() for m in net.modules() if isinstance(m, torch.nn.Linear)]

    torch.manual_seed(0)
    g = build_generator(MLPGeneratorParams(init="normal"), MNIST)
    assert all(abs(s - 0.02) < 0.002 for s in stds(g))
    assert all((m.bias == 0).all() for m in g.modules() if isinstance(m, torch.nn.Linear))
    d = build_discriminator(MLPDiscriminatorParams(init="normal", init_first_only=True), MNIST)
    s = stds(d)
    assert abs(s[0] - 0.02) < 0.001
    # PyTorch's default for the rest: U(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in)
    assert abs(s[1] - 1 / np.sqrt(3 * 1024)) < 0.002
    d = build_discriminator(
        MLPDiscriminatorParams(init="normal", init_first_only=True, init_rest="glorot"), MNIST
    )
    s = stds(d)
    assert abs(s[0] - 0.02) < 0.001
    assert abs(s[1] - np.sqrt(2 / (1024 + 512))) < 0.002  # glorot-uniform: 2/(in+out)


def test_init_settings_are_checked():
    with pytest.raises(ValidationError, match="init_first_only needs"):
        MLPGeneratorParams(init_first_only=True)
    with pytest.raises(ValidationError, match="init_rest only applies"):
        MLPGeneratorParams(init="normal", init_rest="glorot")
    with pytest.raises(ValidationError):
        MLPGeneratorParams(hiden=[4])  # typo: extra="forbid"
    with pytest.raises(ValidationError):
        MLPDiscriminatorParams(hidden=[0])
    with pytest.raises(ValidationError):
        MLPDiscriminatorParams(minibatch_discrimination={"kernel": 5})


def test_no_hidden_layers():
    g = build_generator(MLPGeneratorParams(hidden=[], output="none"), GAUSS_1D)
    d = build_discriminator(MLPDiscriminatorParams(hidden=[], minibatch_discrimination={}), MNIST)
    assert n_params(g) == 2
    x = torch.randn(3, 784)
    assert d(x).shape == (3,) and d.features(x).shape == (3, 784)


def test_networks_pickle_by_reference():
    # MLflow logs the generator with pickle: the classes must be found by module and name.
    d = build_discriminator(MLPDiscriminatorParams(hidden=[4], minibatch_discrimination={}), MNIST)
    g = build_generator(MLPGeneratorParams(hidden=[4]), MNIST)
    for net in (g, d):
        blob = pickle.dumps(net)
        assert b"gan_pipe.plugins.models.mlp" in blob
        assert type(pickle.loads(blob)) is type(net)
    assert mlp.MLPDiscriminator is type(d)
    with pytest.raises(AttributeError):
        mlp.NoSuchThing  # noqa: B018


def test_import_does_not_import_torch():
    code = "import sys, gan_pipe.plugins.models.mlp; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_for_both_roles():
    reg = Registry()
    mlp.register_architectures(Register(reg, None, "t"))
    gen = reg.get("generator", "mlp")
    disc = reg.get("discriminator", "mlp")
    assert gen.params is MLPGeneratorParams and disc.params is MLPDiscriminatorParams
    assert gen.plugin == "t" and gen.description
    p = disc.validate_params({"hidden": [8, 8], "minibatch_discrimination": {"kernels": 3}})
    net = disc.factory(p, GAUSS_1D)
    assert net(torch.randn(4, 1)).shape == (4,)
    assert net.minibatch.out_features == 8 + 3


def test_batch_norm_momentum_and_eps():
    """Keras' BatchNormalization(momentum=0.99, epsilon=1e-3) is bn_momentum 0.01 here."""
    params = MLPGeneratorParams(hidden=[6, 5], batch_norm=True, bn_momentum=0.01, bn_eps=0.25)
    g = build_generator(params, ModelSpec((3,), 4))
    bns = [m for m in g.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert [(m.momentum, m.eps) for m in bns] == [(0.01, 0.25)] * 2
    torch.manual_seed(0)
    h = g.net[0](torch.randn(10, 4)).detach()
    y = g.net[1](h).detach()
    mean, var = h.mean(0), h.var(0, unbiased=False)
    np.testing.assert_allclose(y, (h - mean) / torch.sqrt(var + 0.25), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bns[0].running_mean, 0.01 * mean, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValidationError, match="only apply with BatchNorm"):
        MLPDiscriminatorParams(bn_momentum=0.01)  # no batch_norm: the setting would do nothing


def test_leaky_relu_slope_by_output():
    g = build_generator(MLPGeneratorParams(hidden=[4, 4], negative_slope=0.3), MNIST)
    acts = [m for m in g.modules() if isinstance(m, torch.nn.LeakyReLU)]
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5])
    assert len(acts) == 2
    for a in acts:
        np.testing.assert_allclose(a(x), [-0.6, -0.15, 0.0, 1.5], rtol=1e-6)


def test_bn_defaults_spelled_out_pass_without_batchnorm():
    # a run's resolved recipe lists every default; resume and evaluate validate it again
    MLPDiscriminatorParams(bn_momentum=0.1, bn_eps=1e-5)
    with pytest.raises(ValidationError, match="bn_eps only apply"):
        MLPDiscriminatorParams(bn_momentum=0.1, bn_eps=1e-3)
