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
    assert res.exit_code == 2 and "Dataset.modes" in res.output
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
    tracker = Tracker.start("clash", "clash-run")
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

    tracker = Tracker.start("deferred", "deferred-run")
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


def test_prefixed_metrics_keep_their_own_files_and_m_twice_runs_once(workdir):
    two = (
        '[{name="parzen", params={n_samples=300, n_val=50, n_test=80, sigmas=[0.1, 0.2]}}, '
        '{name="parzen", prefix="wide_", params={n_samples=300, n_val=50, n_test=80, '
        "sigmas=[0.5, 1.0]}}]"
    )
    run_id = _run(workdir, f"evaluate.metrics={two}")
    client = _client(workdir)
    m = client.get_run(run_id).data.metrics
    assert m["eval/parzen_sigma"] in (0.1, 0.2) and m["eval/wide_parzen_sigma"] in (0.5, 1.0)
    (workdir / "a").mkdir()
    (workdir / "b").mkdir()
    path = "eval/step-0000006/parzen_sigma_search.json"
    narrow = client.download_artifacts(run_id, path, str(workdir / "a"))
    wide_path = "eval/step-0000006/wide/parzen_sigma_search.json"
    wide = client.download_artifacts(run_id, wide_path, str(workdir / "b"))
    import json

    assert json.load(open(narrow))["sigma"] == [0.1, 0.2]
    assert json.load(open(wide))["sigma"] == [0.5, 1.0]

    res = runner.invoke(app, ["evaluate", run_id, "-m", "modes", "-m", "parzen", "-m", "parzen"])
    assert res.exit_code == 2 and "Dataset.modes" in res.output  # not a prefix complaint
    res = runner.invoke(app, ["evaluate", run_id, "-m", "parzen", "-m", "parzen"])
    assert res.exit_code == 0, res.output


def test_nested_deferred_blocks_and_images(workdir):
    import numpy as np

    from gan_pipe.tracking import Tracker

    tracker = Tracker.start("nested", "nested-run")
    try:
        with tracker.deferred_artifacts():
            tracker.log_dict({"a": 1}, "eval/outer.json")
            with pytest.raises(RuntimeError), tracker.deferred_artifacts():
                tracker.log_dict({"b": 1}, "eval/failed_inner.json")
                tracker.log_image(np.zeros((4, 4, 3), np.uint8), key="inner", step=1)
                raise RuntimeError("inner metric failed")
            with tracker.deferred_artifacts():
                tracker.log_dict({"c": 1}, "eval/good_inner.json")
            picture = np.zeros((4, 4, 3), np.uint8)
            tracker.log_image(picture, key="kept", step=2)
            picture[:] = 255  # logged as it was at the call
            assert list(_files(tracker.client, tracker.run_id)) == []
        tracker.flush()
    finally:
        tracker.end()
    import mlflow

    mlflow.flush_async_logging()
    files = set(_files(_client(workdir), tracker.run_id))
    assert {"eval/outer.json", "eval/good_inner.json"} <= files
    assert "eval/failed_inner.json" not in files
    assert not any("inner" in f and f.startswith("images/") for f in files)
    assert any(f.startswith("images/kept") for f in files)


def test_isolated_rng_restores_every_state_and_is_reproducible():
    import random

    import numpy as np
    import torch

    from gan_pipe.evaluation import isolated_rng

    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    draws = []
    for _ in range(2):
        with isolated_rng(123, torch.device("cpu")):
            draws.append((torch.rand(2), np.random.rand(2), random.random()))
    assert torch.equal(draws[0][0], draws[1][0]) and np.array_equal(draws[0][1], draws[1][1])
    assert draws[0][2] == draws[1][2]
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1])
    assert after[2] == expected[2]
    with pytest.raises(ValueError), isolated_rng(1, torch.device("cpu")):
        torch.rand(1)
        raise ValueError
    assert not torch.equal(torch.rand(3), after[0])  # the stream went on from where it was


class _NoisyMetric:
    """Draws from numpy's global RNG, as metrics are told they may."""

    def __init__(self, params=None):
        pass

    def compute(self, ctx):
        import numpy as np

        return {"noisy": float(np.random.rand())}


@hookimpl
def _register_noisy(register):
    register("noisy", _NoisyMetric)


@hookimpl
def _evaluate_parzen_ll(ctx):
    return {"parzen_ll": 1.0}


def test_score_is_reproducible_and_evaluate_hooks_may_not_clash(tmp_path):
    import numpy as np

    from gan_pipe.scoring import score
    from gan_pipe.testing import plugins_with

    plugin = types.SimpleNamespace(__name__="noisy_plugin", register_metrics=_register_noisy)
    registry = plugins_with(plugin).registry
    np.save(tmp_path / "r.npy", np.random.default_rng(0).random((50, 2)))
    args = (registry, tmp_path / "r.npy", tmp_path / "r.npy", ["noisy"])
    assert score(*args)[0]["noisy"] == score(*args)[0]["noisy"]

    clash = types.SimpleNamespace(__name__="clash_hook", gan_pipe_evaluate=_evaluate_parzen_ll)
    plugins = plugins_with(clash)
    ctx = types.SimpleNamespace(
        recipe=types.SimpleNamespace(
            evaluate=types.SimpleNamespace(metrics=[]),
        ),
        eval_dir="eval",
    )
    assert plugins.evaluate(ctx) == {"parzen_ll": 1.0}  # the built-in stage reports nothing
    twice = plugins_with(
        clash, types.SimpleNamespace(__name__="again", gan_pipe_evaluate=_evaluate_parzen_ll)
    )
    with pytest.raises(UserError, match=r"both report 'parzen_ll'"):
        twice.evaluate(ctx)
