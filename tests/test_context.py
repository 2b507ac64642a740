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
    ctx = RunContext(recipe=None, hooks=None, tracker=None, device=torch.device("cpu"))
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


def test_importing_context_loads_no_other_core_module():
    """context.py names the types that cross the plugin boundary; the core imports it, never
    the reverse (no circle through the plugin host)."""
    import subprocess
    import sys

    code = (
        "import sys, gan_pipe.context; "
        "print(*sorted(m for m in sys.modules if m.split('.')[0] == 'gan_pipe'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["gan_pipe", "gan_pipe.context"]


def test_context_imports_the_core_only_for_type_checking():
    """Every module-level import of a gan_pipe module in context.py sits under TYPE_CHECKING,
    and none names the plugin host (or its deprecated aliases), even there."""
    import ast
    import inspect

    import gan_pipe.context

    tree = ast.parse(inspect.getsource(gan_pipe.context))
    typing_only, runtime = [], []
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            typing_only += [n for n in node.body if isinstance(n, ast.ImportFrom)]
        elif isinstance(node, ast.ImportFrom | ast.Import):
            runtime.append(node)
    core = [n for n in runtime if isinstance(n, ast.ImportFrom) and n.level > 0]
    core += [n for n in runtime if "gan_pipe" in ast.unparse(n)]
    assert core == [], [ast.unparse(n) for n in core]
    names = {n.module for n in typing_only}
    assert names and not names & {"host", "facade", "manager"}, names
