"""RunContext.generate: eval mode, batching, and sample sharing within one evaluation."""

from __future__ import annotations

import torch

from gan_pipe.context import Dataset, RunContext


class Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.bn = torch.nn.BatchNorm1d(2)

    def forward(self, z):
        self.calls += 1
        assert not self.training
        return self.bn(z)


def _ctx():
    ctx = RunContext(recipe=None, plugins=None, tracker=None, device=torch.device("cpu"))
    ctx.generator = Counting()
    ctx.noise = lambda n, generator=None: torch.randn(n, 2)
    ctx.dataset = Dataset("d", train=torch.zeros(4, 2))
    return ctx


def test_generate_batches_and_restores_mode():
    ctx = _ctx()
    x = ctx.generate(2500, batch_size=1000)
    assert x.shape == (2500, 2) and ctx.generator.calls == 3
    assert ctx.generator.training


def test_samples_are_shared_within_a_step_and_redrawn_after():
    ctx = _ctx()
    a = ctx.generate(100)
    b = ctx.generate(60)
    assert torch.equal(a[:60], b) and ctx.generator.calls == 1
    ctx.generate(200)  # more than cached: drawn again
    assert ctx.generator.calls == 2
    ctx.step = 5
    c = ctx.generate(60)
    assert ctx.generator.calls == 3 and not torch.equal(c, b)
