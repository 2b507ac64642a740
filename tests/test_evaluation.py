"""Evaluations are isolated from the run they measure: their own RNG (turning periodic
evaluation on does not change training; re-evaluating reproduces the logged values), their
own artifact folder per evaluation, nothing written when a metric fails, and no value lost
when two metrics report the same key."""

from __future__ import annotations

import types

import pytest
from typer.testing import CliRunner

from gan_pipe import hookimpl
from gan_pipe.cli import app
from gan_pipe.errors import UserError

from .conftest import write
from .test_cli import TINY, _client, _final_generator

runner = CliRunner()


def _run(workdir, *sets: str) -> str:
    path = write(workdir / "tiny.toml", TINY)
    args = ["run", str(path), "--set", "report=[]"]
    for s in sets:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return next(ln.split()[-1] for ln in res.output.splitlines() if "run id:" in ln)


def _files(client, run_id, path=None):
    for f in client.list_artifacts(run_id, path):
        yield from _files(client, run_id, f.path) if f.is_dir else [f.path]


def test_periodic_evaluation_does_not_change_training(workdir, tmp_path_factory):
    import torch

    plain = _run(workdir, "train.eval_every=0")
    periodic = _run(workdir, "train.eval_every=2")
    client = _client(workdir)
    tmp = tmp_path_factory.mktemp("ckpt")
    a, b = _final_generator(client, plain, tmp / "a"), _final_generator(client, periodic, tmp / "b")
    for key in ("generator", "discriminator"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} changed by eval_every"
    losses = [
        [m.value for m in client.get_metric_history(r, "train/d_loss")] for r in (plain, periodic)
    ]
    assert losses[0] == losses[1]

    # the periodic run has a curve; both final values are the same number (same noise)
    hist = client.get_metric_history(periodic, "eval/parzen_ll")
    assert sorted(m.step for m in hist) == [2, 4, 6]
    final = [client.get_run(r).data.metrics["eval/parzen_ll"] for r in (plain, periodic)]
    assert final[0] == final[1]

    # each evaluation keeps its own artifacts
    files = set(_files(client, periodic))
    for step in (2, 4, 6):
        assert f"eval/step-{step:07d}/parzen_sigma_search.json" in files
    search = client.download_artifacts(
        periodic, "eval/step-0000002/parzen_sigma_search.json", str(tmp)
    )
    assert '"n_samples": 300' in open(search).read()


def test_reevaluation_reproduces_and_a_failed_one_writes_nothing(workdir):
    run_id = _run(workdir)
    client = _client(workdir)
    before = client.get_run(run_id).data.metrics["eval/parzen_ll"]

    res = runner.invoke(app, ["evaluate", run_id])  # same settings, same step: same noise
    assert res.exit_code == 0, res.output
    hist = client.get_metric_history(run_id, "eval/parzen_ll")
    assert [m.value for m in hist] == [before, before]
    reevals = {f.split("/")[1] for f in _files(client, run_id) if "reevaluate-" in f}
    assert len(reevals) == 1
    (folder,) = reevals
    names = {f.rsplit("/", 1)[1] for f in _files(client, run_id, f"eval/{folder}")}
    assert names == {"settings.json", "parzen_sigma_search.json"}

    # parzen succeeds (and would write its sigma search), then modes fails on digits
    res = runner.invoke(app, ["evaluate", run_id, "-m", "parzen", "-m", "modes"])
    assert res.exit_code == 2 and "info['modes']" in res.output
    after = {f.split("/")[1] for f in _files(client, run_id) if "reevaluate-" in f}
    assert after == reevals
    assert len(client.get_metric_history(run_id, "eval/parzen_ll")) == 2


class _Clash:
    """A third-party metric reporting a key the built-in parzen metric also reports."""

    def __init__(self, params=None):
        pass

    def compute(self, ctx):
        return {"parzen_sigma": 1.0, "clash_only": 2.0}


@hookimpl
def _register_clash(register):
    register("clash", _Clash)


def test_two_metrics_reporting_one_key_fail_clearly_unless_prefixed(workdir):
    from gan_pipe.evaluation import evaluate
    from gan_pipe.recipe import load_recipe
    from gan_pipe.runner import new_context, pick_device
    from gan_pipe.testing import plugins_with
    from gan_pipe.tracking import Tracker

    plugin = types.SimpleNamespace(__name__="clash_plugin", register_metrics=_register_clash)
    plugins = plugins_with(plugin)
    path = write(workdir / "tiny.toml", TINY)
    metrics = '[{name="parzen", params={n_samples=100, n_val=20, n_test=30}}, {name="clash"}]'
    resolved = load_recipe(path, plugins.registry, [f"evaluate.metrics={metrics}"])
    tracker = Tracker("clash", "clash-run")
    try:
        ctx = new_context(resolved, plugins, tracker, pick_device("cpu"))
        plugins.data(ctx)
        plugins.build(ctx)
        with pytest.raises(UserError, match=r"both report 'parzen_sigma'.*prefix"):
            evaluate(ctx)
        prefixed = metrics.replace('{name="clash"}', '{name="clash", prefix="mine_"}')
        ctx.recipe = load_recipe(path, plugins.registry, [f"evaluate.metrics={prefixed}"]).recipe
        out = evaluate(ctx)
    finally:
        tracker.end()
    assert out["mine_parzen_sigma"] == 1.0 and out["mine_clash_only"] == 2.0
    assert out["parzen_sigma"] != 1.0 or "parzen_ll" in out  # the built-in value is kept
    assert "parzen_ll" in out and "clash_only" not in out


def test_the_same_metric_twice_needs_a_prefix(workdir):
    path = write(workdir / "tiny.toml", TINY)
    twice = '[{name="parzen"}, {name="parzen"}]'
    res = runner.invoke(app, ["validate", str(path), "--set", f"evaluate.metrics={twice}"])
    assert res.exit_code == 2 and "give one a different `prefix`" in res.output
    ok = '[{name="parzen"}, {name="parzen", prefix="wide_", params={sigma=1.0}}]'
    res = runner.invoke(app, ["validate", str(path), "--set", f"evaluate.metrics={ok}"])
    assert res.exit_code == 0, res.output


def test_deferred_artifacts_are_all_or_nothing(workdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gan_pipe.tracking import Tracker

    tracker = Tracker("deferred", "deferred-run")
    src = workdir / "note.txt"
    try:
        with pytest.raises(RuntimeError), tracker.deferred_artifacts():
            tracker.log_dict({"a": 1}, "eval/x/a.json")
            raise RuntimeError("metric failed")
        data = {"b": [1, 2]}
        with tracker.deferred_artifacts():
            tracker.log_dict(data, "eval/y/b.json")
            data["b"].append(3)  # logged as it was at the call
            fig = plt.figure()
            fig.gca().plot([0, 1])
            tracker.log_figure(fig, "eval/y/fig.png")
            plt.close(fig)
            src.write_text("hello")
            tracker.log_artifact(src, "eval/y")
            src.unlink()  # the caller's temp file is gone before the block ends
            assert list(_files(tracker.client, tracker.run_id)) == []
    finally:
        tracker.end()
    client = _client(workdir)
    files = set(_files(client, tracker.run_id))
    assert files == {"eval/y/b.json", "eval/y/fig.png", "eval/y/note.txt"}
    got = client.download_artifacts(tracker.run_id, "eval/y/b.json", str(workdir / "dl"))
    assert open(got).read().replace(" ", "").replace("\n", "") == '{"b":[1,2]}'
