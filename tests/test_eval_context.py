"""The narrow context metrics and reports see (``gan_pipe.context.EvalContext`` /
``ReportContext``), the test kit's ``metric_context`` that builds one from tensors, the one
evaluation path of a run (``evaluation.evaluate_and_log``) and the one "eval mode, then
restore" (``evaluation.eval_mode``) used wherever a network is evaluated."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gan_pipe.context import EvalContext, ReportContext, RunContext
from gan_pipe.estimators.features import extract_features
from gan_pipe.estimators.kde import log_density
from gan_pipe.evaluation import evaluate_and_log
from gan_pipe.plugins.data import synthetic as S
from gan_pipe.plugins.metrics.divergence import DivergenceMetric, DivergenceParams, ModesMetric
from gan_pipe.plugins.metrics.parzen import ParzenMetric, ParzenParams
from gan_pipe.plugins.reports.plots import SampleGrid, SampleGridParams
from gan_pipe.scoring import ScoreContext
from gan_pipe.testing import MemoryTracker, metric_context


def _fields(protocol) -> set[str]:
    names = set()
    for klass in protocol.__mro__:
        if klass in (object,) or not getattr(klass, "_is_protocol", False):
            continue
        names |= set(getattr(klass, "__annotations__", {}))
        names |= {k for k, v in vars(klass).items() if callable(v) and not k.startswith("_")}
    return names


class Gen(nn.Module):
    """A generator with a frozen (eval-mode) submodule inside a train-mode network."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.frozen = nn.Dropout(0.5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.frozen(self.lin(z))


def _gen() -> Gen:
    torch.manual_seed(0)
    g = Gen().train()
    g.frozen.eval()  # someone froze it on purpose
    return g


def test_every_context_provides_what_the_protocols_list():
    want = _fields(ReportContext)
    assert {"dataset", "generate", "device", "step", "eval_dir", "state", "tracker"} <= want
    assert _fields(EvalContext) < want
    ds = S.ring(S.RingParams(n_train=50, n_val=10, n_test=10))
    contexts = [
        RunContext(recipe=None, plugins=None, tracker=MemoryTracker(), device="cpu"),
        ScoreContext(dataset=ds, device=torch.device("cpu"), fake=ds.train),
        metric_context(ds, fake=ds.train),
    ]
    for ctx in contexts:
        missing = {name for name in want if not hasattr(ctx, name)}
        assert not missing, (type(ctx).__name__, missing)
    for name in ("log_dict", "log_figure", "log_image"):
        assert callable(getattr(MemoryTracker(), name))


def test_metric_context_from_tensors_runs_built_in_metrics_and_keeps_their_files():
    real = S.ring(S.RingParams(n_train=10, n_val=0, n_test=0)).sample(
        600, torch.Generator().manual_seed(1)
    )
    ctx = metric_context(real, fake=real.flip(0))
    assert ctx.dataset.name == "tensors" and ctx.dataset.test is real
    assert torch.equal(ctx.generate(5), real.flip(0)[:5])
    params = ParzenParams(n_samples=300, n_val=100, n_test=200, dtype="float64")
    out = ParzenMetric(params).compute(ctx)
    unit, wide = ctx.dataset.to_unit, real.double()
    want = log_density(unit(wide[:200]), unit(wide.flip(0)[:300]), out["parzen_sigma"])
    assert out["parzen_ll"] == pytest.approx(float(want.mean()), rel=1e-12)
    assert list(ctx.tracker.dicts) == ["eval/parzen_sigma_search.json"]
    div = DivergenceMetric(DivergenceParams(n_samples=400, n_assign=100)).compute(ctx)
    assert div["div_n_samples"] == 400 and "kl_kde" not in div  # no known density here


def test_metric_context_with_a_generator_restores_every_submodules_mode():
    ds = S.ring(S.RingParams(n_train=100, n_val=10, n_test=10))
    g = _gen()
    ctx = metric_context(ds, generator=g, noise=lambda n: torch.randn(n, 4))
    first = ctx.generate(30)
    assert torch.equal(ctx.generate(20), first[:20])  # shared within one step
    assert g.training and not g.frozen.training
    out = ModesMetric().compute(ctx)
    assert out["n_modes"] == 8
    with pytest.raises(ValueError, match="fake rows, or a generator"):
        metric_context(ds)


def test_run_context_and_feature_extraction_restore_modes_too():
    ds = S.ring(S.RingParams(n_train=20, n_val=0, n_test=0))
    g = _gen()
    ctx = RunContext(recipe=None, plugins=None, tracker=MemoryTracker(), device="cpu")
    ctx.dataset, ctx.generator, ctx.noise = ds, g, lambda n: torch.randn(n, 4)
    assert ctx.generate(7).shape == (7, 2)
    assert g.training and not g.frozen.training

    class Net(Gen):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return self.frozen(x)

    net = Net().train()
    net.frozen.eval()
    extract_features(net, torch.randn(6, 2), torch.device("cpu"), batch_size=4)
    assert net.training and not net.frozen.training


def test_a_report_runs_on_a_test_context_and_its_figure_is_kept():
    ds = S.ring(S.RingParams(n_train=200, n_val=10, n_test=10))
    ctx = metric_context(ds, generator=_gen(), noise=lambda n, generator=None: torch.randn(n, 4))
    SampleGrid(SampleGridParams(n_points=100)).run(ctx)
    assert "plots/samples.png" in ctx.tracker.figures


class _Tracker(MemoryTracker):
    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[dict, int]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((metrics, step))

    @contextlib.contextmanager
    def deferred_artifacts(self):
        yield


@pytest.mark.parametrize("final", [True, False])
def test_evaluate_and_log_prefixes_logs_and_records(final):
    seen = []
    plugins = SimpleNamespace(evaluate=lambda ctx: seen.append(ctx.eval_dir) or {"kl": 0.5})
    recipe = SimpleNamespace(experiment=SimpleNamespace(seed=1))
    ctx = RunContext(recipe, plugins, _Tracker(), torch.device("cpu"), step=7)
    assert evaluate_and_log(ctx, final=final) == {"kl": 0.5}
    assert seen == ["eval/step-0000007"] and ctx.eval_dir == "eval"
    assert ctx.tracker.logged == [({"eval/kl": 0.5}, 7)]
    if final:
        assert ctx.results == {"kl": 0.5} and ctx.history == {}
    else:
        assert ctx.history == {"eval/kl": [(7, 0.5)]} and ctx.results == {}
