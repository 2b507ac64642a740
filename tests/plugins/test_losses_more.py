"""Wasserstein, hinge, least-squares losses and feature matching against hand computations
and critics whose input gradient is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from gan_pipe.context import LossInputs
from gan_pipe.errors import UserError
from gan_pipe.plugins.losses import feature_matching, other, wasserstein
from gan_pipe.plugins.losses.feature_matching import FeatureMatching, FeatureMatchingParams
from gan_pipe.plugins.losses.other import HingeLoss, LeastSquaresLoss, LeastSquaresParams
from gan_pipe.plugins.losses.wasserstein import (
    WGANGPLoss,
    WGANGPParams,
    WGANLoss,
    WGANParams,
    clip_weights,
    gradient_penalty,
)
from gan_pipe.registry import Register, Registry

REAL = torch.tensor([0.5, 2.0])  # raw outputs: mean 1.25
FAKE = torch.tensor([-1.0, 1.5])  # mean 0.25


def inputs(disc: nn.Module | None = None, real=None, fake=None, d_real=REAL, d_fake=FAKE):
    real = torch.zeros(2, 3) if real is None else real
    fake = torch.zeros(2, 3) if fake is None else fake
    return LossInputs(disc or nn.Identity(), real, fake, d_real, d_fake)


# ---------------------------------------------------------------- hand-computed values
def test_wgan_values_and_extras():
    loss, extras = WGANLoss().discriminator_loss(inputs())
    assert loss.item() == pytest.approx(-1.25 + 0.25)
    assert extras["wasserstein_estimate"].item() == pytest.approx(1.0)
    assert extras["d_real"].item() == pytest.approx(1.25)
    assert extras["d_fake"].item() == pytest.approx(0.25)
    g_loss, _ = WGANLoss().generator_loss(inputs(d_real=None))
    assert g_loss.item() == pytest.approx(-0.25)


def test_hinge_values():
    loss, extras = HingeLoss().discriminator_loss(inputs())
    # real: relu(1 - .5) = .5, relu(1 - 2) = 0; fake: relu(1 - 1) = 0, relu(1 + 1.5) = 2.5
    assert loss.item() == pytest.approx((0.5 + 0.0) / 2 + (0.0 + 2.5) / 2)
    assert set(extras) == {"d_real", "d_fake"}
    g_loss, _ = HingeLoss().generator_loss(inputs(d_real=None))
    assert g_loss.item() == pytest.approx(-0.25)


def test_least_squares_values():
    loss, extras = LeastSquaresLoss().discriminator_loss(inputs())
    # 0.5 mean((.5-1)^2, (2-1)^2) + 0.5 mean((-1-0)^2, (1.5-0)^2)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1) / 2 + 0.5 * (1 + 2.25) / 2)
    assert extras["d_fake"].item() == pytest.approx(0.25)
    g_loss, _ = LeastSquaresLoss().generator_loss(inputs(d_real=None))
    assert g_loss.item() == pytest.approx(0.5 * (4 + 0.25) / 2)


def test_least_squares_custom_labels():
    loss_fn = LeastSquaresLoss(LeastSquaresParams(a=-1, b=1, c=0))
    loss, _ = loss_fn.discriminator_loss(inputs())
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1) / 2 + 0.5 * (0 + 6.25) / 2)
    g_loss, _ = loss_fn.generator_loss(inputs(d_real=None))
    assert g_loss.item() == pytest.approx(0.5 * (1 + 2.25) / 2)


def test_losses_are_float32_under_bf16_outputs():
    x = inputs(d_real=REAL.bfloat16(), d_fake=FAKE.bfloat16())
    for loss_fn in (WGANLoss(), HingeLoss(), LeastSquaresLoss()):
        loss, _ = loss_fn.discriminator_loss(x)
        assert loss.dtype == torch.float32


# ---------------------------------------------------------------- gradient penalty
def linear_critic(w: list[float], b: float = 0.3) -> nn.Module:
    lin = nn.Linear(len(w), 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([w]))
        lin.bias.fill_(b)
    return nn.Sequential(nn.Flatten(), lin, nn.Flatten(0))


class Quadratic(nn.Module):
    """D(x) = 0.5 ||x||^2 per sample: grad_x D = x."""

    def forward(self, x):
        return 0.5 * x.flatten(1).pow(2).sum(1)


def test_penalty_linear_critic_is_exact():
    critic = linear_critic([3.0, 4.0, 0.0])  # ||w|| = 5
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    gp, norms = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx(16.0, rel=1e-6)
    assert norms.tolist() == pytest.approx([5.0] * 4, rel=1e-6)
    # one-sided: norms below 1 are free
    small = linear_critic([0.3, 0.4, 0.0])  # ||w|| = 0.5
    assert gradient_penalty(small, real, fake)[0].item() == pytest.approx(0.25, rel=1e-5)
    assert gradient_penalty(small, real, fake, one_sided=True)[0].item() == 0.0


def test_wgan_gp_loss_linear_critic():
    critic = linear_critic([3.0, 4.0, 0.0])
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    x = LossInputs(critic, real, fake, critic(real), critic(fake))
    loss, extras = WGANGPLoss().discriminator_loss(x)
    w_est = (critic(real).mean() - critic(fake).mean()).item()
    assert loss.item() == pytest.approx(-w_est + 10 * 16, rel=1e-5)
    assert set(extras) >= {"wasserstein_estimate", "gp", "grad_norm", "d_real", "d_fake"}
    assert extras["gp"].item() == pytest.approx(16.0, rel=1e-6)
    assert extras["grad_norm"].item() == pytest.approx(5.0, rel=1e-6)
    assert extras["wasserstein_estimate"].item() == pytest.approx(w_est, rel=1e-5)


def test_penalty_gradient_wrt_critic_weights():
    w = torch.tensor([0.6, -1.2, 2.0])
    critic = linear_critic(w.tolist())
    lam = 7.0
    real, fake = torch.randn(5, 3), torch.randn(5, 3)
    # constant critic values so the only gradient into the weights is the penalty's
    x = LossInputs(critic, real, fake, torch.zeros(5), torch.zeros(5))
    loss, _ = WGANGPLoss(WGANGPParams(lambda_gp=lam)).discriminator_loss(x)
    loss.backward()
    lin = critic[1]
    norm = w.norm()
    expected = 2 * lam * (norm - 1) * w / norm
    assert lin.weight.grad[0].tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert lin.bias.grad is None or lin.bias.grad.abs().item() < 1e-7  # grad D ignores b


def test_penalty_quadratic_critic_explicit_alpha():
    real, fake = torch.randn(6, 2, 3, 3), torch.randn(6, 2, 3, 3)
    alpha = torch.rand(6)
    gp, norms = gradient_penalty(Quadratic(), real, fake, alpha=alpha)
    x_hat = alpha.view(6, 1, 1, 1) * real + (1 - alpha.view(6, 1, 1, 1)) * fake
    expected_norms = x_hat.flatten(1).norm(dim=1)
    assert norms.tolist() == pytest.approx(expected_norms.tolist(), rel=1e-5)
    assert gp.item() == pytest.approx(((expected_norms - 1) ** 2).mean().item(), rel=1e-5)


def test_wgan_gp_loss_quadratic_critic_seeded_alpha():
    real, fake = torch.randn(6, 2, 3, 3), torch.randn(6, 2, 3, 3)
    critic = Quadratic()
    torch.manual_seed(123)
    alpha = torch.rand(6, 1, 1, 1)  # the draw the loss makes: one per sample, broadcast
    x_hat = alpha * real + (1 - alpha) * fake
    expected = ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean().item()
    torch.manual_seed(123)
    x = LossInputs(critic, real, fake, critic(real), critic(fake))
    _, extras = WGANGPLoss().discriminator_loss(x)
    assert extras["gp"].item() == pytest.approx(expected, rel=1e-5)


def test_alpha_is_per_sample_and_uniform():
    # With D(x) = 0.5||x||^2, real = 1-vectors and fake = 0: grad = alpha * 1, norm = alpha sqrt(d)
    d = 16
    real, fake = torch.ones(2000, d), torch.zeros(2000, d)
    torch.manual_seed(0)
    _, norms = gradient_penalty(Quadratic(), real, fake)
    alphas = norms / math.sqrt(d)
    assert alphas.min() >= 0 and alphas.max() <= 1
    assert alphas.mean().item() == pytest.approx(0.5, abs=0.03)
    assert alphas.std().item() == pytest.approx(1 / math.sqrt(12), abs=0.02)


def test_penalty_is_float32_under_autocast():
    # 0.3, 0.4, 1.1 are not exact in bf16: a bf16 penalty would miss by ~1e-3
    w = [0.3, 0.4, 1.1]
    critic = linear_critic(w)
    real, fake = torch.randn(4, 3).bfloat16(), torch.randn(4, 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp, _ = gradient_penalty(critic, real, fake)
    expected = (math.sqrt(sum(v * v for v in w)) - 1) ** 2
    assert gp.dtype == torch.float32
    assert gp.item() == pytest.approx(expected, rel=1e-6)


def test_drift_term():
    critic = linear_critic([0.6, 0.8, 0.0])  # ||w|| = 1: zero penalty
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    x = LossInputs(critic, real, fake, REAL.repeat(2), FAKE.repeat(2))
    base, _ = WGANGPLoss().discriminator_loss(x)
    with_drift, _ = WGANGPLoss(WGANGPParams(drift=0.1)).discriminator_loss(x)
    assert (with_drift - base).item() == pytest.approx(0.1 * (0.25 + 4) / 2, rel=1e-5)


def test_penalty_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="shapes must match"):
        gradient_penalty(Quadratic(), torch.zeros(4, 3), torch.zeros(3, 3))


def test_batchnorm_critic_warns_once():
    critic = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1), nn.Flatten(0))
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    loss_fn = WGANGPLoss()
    x = LossInputs(critic, real, fake, torch.zeros(4), torch.zeros(4))
    with pytest.warns(UserWarning, match="BatchNorm"):
        loss_fn.discriminator_loss(x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn.discriminator_loss(x)


# ---------------------------------------------------------------- weight clipping
def clip_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.linspace(-0.05, 0.05, p.numel()).reshape(p.shape))
        net[1].weight.fill_(1.0)
    return net


def test_weight_clipping_bounds_every_parameter():
    net = clip_net()
    before = [p.detach().clone() for p in net.parameters()]
    WGANLoss().after_discriminator_step(net)
    for old, p in zip(before, net.parameters(), strict=True):
        assert p.abs().max().item() <= 0.01 + 1e-12
        small = old.abs() <= 0.01
        assert torch.equal(p[small], old[small])  # inside the box: untouched
        assert torch.equal(p[~small], 0.01 * old[~small].sign())
    assert net[1].weight.max().item() == pytest.approx(0.01)
    assert torch.equal(net[1].running_var, torch.ones(4))  # buffers are not parameters


def test_weight_clipping_can_spare_norm_params():
    net = clip_net()
    WGANLoss(WGANParams(clip=0.02, clip_norm_params=False)).after_discriminator_step(net)
    assert torch.equal(net[1].weight, torch.ones(4))
    assert net[1].bias.abs().max().item() > 0.02
    for p in (*net[0].parameters(), *net[2].parameters()):
        assert p.abs().max().item() <= 0.02


def test_clip_weights_function():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[5.0, -5.0], [0.1, -0.2]]))
    clip_weights(lin, 0.5)
    assert lin.weight.flatten().tolist() == pytest.approx([0.5, -0.5, 0.1, -0.2])


# ---------------------------------------------------------------- feature matching
class FeatDisc(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.head = nn.Linear(2 * 4 * 4, 1)

    def features(self, x):
        return torch.tanh(self.conv(x))

    def forward(self, x):
        return self.head(self.features(x).flatten(1)).flatten()


def fm_inputs(disc, real, fake):
    return LossInputs(disc, real, fake, None, disc(fake))


def test_feature_matching_direct_computation():
    disc = FeatDisc()
    real, fake = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    reg = FeatureMatching(FeatureMatchingParams(weight=2.5))
    value, extras = reg.generator_term(fm_inputs(disc, real, fake))
    f_r = disc.features(real).reshape(5, -1).mean(0)
    f_f = disc.features(fake).reshape(5, -1).mean(0)
    expected = 2.5 * ((f_r - f_f) ** 2).sum().item()
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert extras["feature_matching"].item() == pytest.approx(expected, rel=1e-5)


def test_feature_matching_zero_when_equal():
    disc = FeatDisc()
    x = torch.randn(3, 1, 4, 4)
    value, _ = FeatureMatching().generator_term(fm_inputs(disc, x, x.clone()))
    assert value.item() == 0.0


def test_feature_matching_gradient_reaches_fake_not_real():
    disc = FeatDisc()
    real = torch.randn(4, 1, 4, 4, requires_grad=True)
    fake = torch.randn(4, 1, 4, 4, requires_grad=True)
    value, _ = FeatureMatching().generator_term(fm_inputs(disc, real, fake))
    value.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert real.grad is None
    # detach_real=False: the real branch is differentiated too
    real.grad = fake.grad = None
    reg = FeatureMatching(FeatureMatchingParams(detach_real=False))
    reg.generator_term(fm_inputs(disc, real, fake))[0].backward()
    assert real.grad is not None and real.grad.abs().sum() > 0


def test_feature_matching_other_layer_and_flat_features():
    class Flat(nn.Module):
        def penultimate(self, x):
            return x.sum(1)  # (N,): one feature per sample

    real, fake = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    reg = FeatureMatching(FeatureMatchingParams(layer="penultimate"))
    value, _ = reg.generator_term(LossInputs(Flat(), real, fake, None, torch.zeros(2)))
    assert value.item() == pytest.approx((5.0 - 1.5) ** 2)


def test_feature_matching_missing_layer_is_clear():
    x = LossInputs(nn.Linear(2, 1), torch.zeros(2, 2), torch.zeros(2, 2), None, torch.zeros(2))
    with pytest.raises(UserError, match="Linear") as err:
        FeatureMatching().generator_term(x)
    assert "params.layer" in str(err.value) and "'features'" in str(err.value)


def test_feature_matching_is_generator_only():
    assert not hasattr(FeatureMatching(), "discriminator_term")


# ---------------------------------------------------------------- registration
def test_registration():
    reg = Registry()
    wasserstein.register_losses(Register(reg, "loss", "t"))
    other.register_losses(Register(reg, "loss", "t"))
    feature_matching.register_regularizers(Register(reg, "regularizer", "t"))
    assert reg.names("loss") == ["hinge", "least-squares", "wgan", "wgan-gp"]
    assert reg.names("regularizer") == ["feature-matching"]
    comp = reg.get("loss", "wgan-gp")
    loss = comp.factory(comp.validate_params({"lambda_gp": 5, "one_sided": True}))
    assert loss.params.lambda_gp == 5 and loss.params.one_sided
    assert reg.get("loss", "wgan").validate_params({}).clip == 0.01
    fm = reg.get("regularizer", "feature-matching")
    assert fm.factory(fm.validate_params({})).params.layer == "features"
    with pytest.raises(ValueError):
        comp.validate_params({"lamda_gp": 5})  # typo caught by extra="forbid"


# ---------------------------------------------------------------- penalty in eval mode
def _bn_dropout_critic() -> nn.Module:
    torch.manual_seed(0)
    critic = nn.Sequential(
        nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 1)
    )
    with torch.no_grad():  # running statistics that differ from any batch's
        critic[1].running_mean.uniform_(-1, 1)
        critic[1].running_var.uniform_(0.5, 2)
    return critic


def _hand_penalty_eval(critic: nn.Module, x_hat: torch.Tensor) -> torch.Tensor:
    """Per sample, one at a time (an eval-mode critic has no batch coupling)."""
    critic.eval()
    gaps = []
    for row in x_hat:
        xi = row.clone().unsqueeze(0).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(xi).sum(), xi)
        gaps.append((g.norm() - 1) ** 2)
    critic.train()
    return torch.stack(gaps).mean()


def test_penalty_in_eval_mode_matches_a_hand_computation():
    critic = _bn_dropout_critic()
    real, fake = torch.randn(6, 3), torch.randn(6, 3)
    alpha = torch.rand(6)
    running = critic[1].running_mean.clone()
    gp_eval, _ = gradient_penalty(critic, real, fake, alpha=alpha, eval_mode=True)
    assert critic.training and all(m.training for m in critic.modules())  # mode restored
    assert torch.equal(critic[1].running_mean, running)  # eval pass leaves statistics alone
    x_hat = alpha[:, None] * real + (1 - alpha[:, None]) * fake
    torch.testing.assert_close(gp_eval, _hand_penalty_eval(critic, x_hat))
    # train mode (batch statistics, dropout on) gives another value and updates the stats
    torch.manual_seed(1)
    gp_train, _ = gradient_penalty(critic, real, fake, alpha=alpha)
    assert abs(gp_train.item() - gp_eval.item()) > 1e-3
    assert not torch.equal(critic[1].running_mean, running)


def test_penalty_in_eval_mode_trains_the_critic():
    critic = _bn_dropout_critic()
    gp, _ = gradient_penalty(critic, torch.randn(4, 3), torch.randn(4, 3), eval_mode=True)
    gp.backward()
    assert critic[0].weight.grad is not None and critic[0].weight.grad.abs().sum() > 0


def test_wgan_gp_loss_passes_eval_mode():
    critic = _bn_dropout_critic()
    real, fake = torch.randn(5, 3), torch.randn(5, 3)
    x = LossInputs(critic, real, fake, torch.zeros(5), torch.zeros(5))
    torch.manual_seed(7)
    with pytest.warns(UserWarning, match="BatchNorm"):
        loss, extras = WGANGPLoss(
            WGANGPParams(lambda_gp=10.0, gp_eval_mode=True)
        ).discriminator_loss(x)
    torch.manual_seed(7)
    alpha = torch.rand(5, 1)
    x_hat = alpha * real + (1 - alpha) * fake
    hand = _hand_penalty_eval(critic, x_hat)
    torch.testing.assert_close(extras["gp"], hand.detach())
    torch.testing.assert_close(loss, 10.0 * hand)  # d_real and d_fake are zero here
