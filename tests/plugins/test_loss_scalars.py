"""Every built-in loss (and regularizer) declares in ``logs`` the training scalars it logs,
and its methods return exactly those: the discriminator step's and the generator step's
extra scalars together (the generator step gets ``d_real = None``, as in training)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_pipe.context import LossInputs
from gan_pipe.plugins.losses import bce, feature_matching, other, wasserstein
from gan_pipe.testing import registry_of


class Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.out = nn.Linear(4, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.body(x)))


def _inputs(d_step: bool) -> LossInputs:
    g = torch.Generator().manual_seed(0)
    critic = Critic()
    real, fake = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    return LossInputs(critic, real, fake, critic(real) if d_step else None, critic(fake))


def _components(kind: str):
    reg = registry_of(bce, other, wasserstein, feature_matching)
    return [c for c in reg if c.kind == kind]


@pytest.mark.parametrize("comp", _components("loss"), ids=lambda c: c.name)
def test_each_loss_returns_the_scalars_it_declares(comp):
    loss = comp.factory(comp.validate_params({}))
    _, d_extra = loss.discriminator_loss(_inputs(d_step=True))
    _, g_extra = loss.generator_loss(_inputs(d_step=False))
    assert set(loss.logs) == set(d_extra) | set(g_extra), comp.name
    assert len(set(loss.logs)) == len(loss.logs)
    for v in {**d_extra, **g_extra}.values():
        assert v.numel() == 1 and torch.isfinite(v)


@pytest.mark.parametrize("comp", _components("regularizer"), ids=lambda c: c.name)
def test_each_regularizer_returns_the_scalars_it_declares(comp):
    reg = comp.factory(comp.validate_params({}))
    got: set[str] = set()
    for method, d_step in (("discriminator_term", True), ("generator_term", False)):
        if hasattr(reg, method):
            got |= set(getattr(reg, method)(_inputs(d_step))[1])
    assert set(reg.logs) == got


def test_every_built_in_loss_is_checked():
    assert {c.name for c in _components("loss")} == {
        "minimax", "non-saturating", "hinge", "least-squares", "wgan", "wgan-gp"
    }  # fmt: skip


def test_gradient_penalty_in_eval_mode_gives_every_submodule_its_mode_back():
    critic = Critic().train()
    critic.out.eval()  # frozen on purpose: must stay so
    seen = []
    critic.body.register_forward_hook(lambda m, i, o: seen.append(m.training))
    wasserstein.gradient_penalty(critic, torch.randn(4, 3), torch.randn(4, 3), eval_mode=True)
    assert seen == [False]  # the penalty's pass ran in eval mode
    assert critic.training and critic.body.training and not critic.out.training
