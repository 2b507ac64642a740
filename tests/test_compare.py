"""gan-pipe compare on study trees built directly in MLflow: the numbers are checked against
scipy on the values logged, not against gan_pipe.stats."""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from gan_pipe.cli import app

from .conftest import ring8_recipe

runner = CliRunner()
PARENT = "mlflow.parentRunId"


@pytest.fixture(scope="module")
def _empty_store(tmp_path_factory):
    """A migrated, empty sqlite store made once: creating one costs seconds."""
    from gan_pipe.tracking import ensure_store

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    ensure_store(f"sqlite:///{db}")
    return db


@pytest.fixture
def store(workdir, _empty_store):
    """``workdir`` with a copy of the empty store as its ./mlflow.db."""
    shutil.copy(_empty_store, workdir / "mlflow.db")
    return workdir


def _client():
    from gan_pipe.tracking import default_store, ensure_store, get_or_create_experiment

    uri, artifacts = default_store()
    c = ensure_store(uri)
    return c, lambda name: get_or_create_experiment(c, name, artifacts)


def _log(c, run_id, params=None, metrics=None, step=10):
    from mlflow.entities import Metric, Param

    ts = int(time.time() * 1000)
    c.log_batch(
        run_id,
        metrics=[Metric(k, float(v), ts, step) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
    )


def make_study(name, variants, experiment="cmp"):
    """A study run, a variant run per entry of ``variants`` ({label, params, seeds: [(metrics,
    status)], rates: {name: (k, n)}}) and its seed runs; returns (study id, variant ids)."""
    c, exp_of = _client()
    exp = exp_of(experiment)
    study = c.create_run(
        exp, run_name=name, tags={"gan_pipe.kind": "study", "gan_pipe.study": name}
    )
    sid, vids = study.info.run_id, []
    for i, v in enumerate(variants):
        common = {"gan_pipe.study": name, "gan_pipe.variant_key": f"key{i}"}
        tags = {PARENT: sid, "gan_pipe.kind": "variant", "gan_pipe.variant": v["label"], **common}
        vid = c.create_run(exp, run_name=f"{name}-v{i}", tags=tags).info.run_id
        vids.append(vid)
        rates = {f"rate/{r}.k": k for r, (k, n) in v.get("rates", {}).items()}
        rates.update({f"rate/{r}.n": n for r, (k, n) in v.get("rates", {}).items()})
        rates.update({f"rate/{r}": k / n for r, (k, n) in v.get("rates", {}).items()})
        # the variant's own means include every seed: compare must recompute from FINISHED ones
        keys = {k for m, _ in v["seeds"] for k in m}
        means = {k: np.mean([m[k] for m, _ in v["seeds"] if k in m]) for k in keys}
        _log(c, vid, v["params"], {**rates, **means})
        for seed, (metrics, status) in enumerate(v["seeds"]):
            tags = {PARENT: vid, "gan_pipe.kind": "seed", "gan_pipe.seed": str(seed), **common}
            rid = c.create_run(exp, run_name=f"{name}-v{i}-s{seed}", tags=tags).info.run_id
            _log(c, rid, {**v["params"], "experiment.seed": seed}, metrics)
            c.set_terminated(rid, status)
        c.set_terminated(vid)
    c.set_terminated(sid)
    return sid, vids


def _seeds(values, key="eval/score", status="FINISHED"):
    return [({key: float(x), "eval/parzen_n_samples": 300.0}, status) for x in values]


def _t_interval(values):
    """mean and the Student-t 95% interval, from scipy alone."""
    x = np.asarray(values, dtype=float)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return x.mean(), x.std(ddof=1), lo, hi


def compare(*args):
    return runner.invoke(app, ["compare", *args])


def compare_json(*args):
    res = compare(*args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_means_and_intervals_match_scipy(store):
    rng = np.random.default_rng(7)
    draws = {"a": rng.normal(5, 1, size=4), "b": rng.normal(6, 2, size=5)}
    sid, _ = make_study(
        "s1",
        [{"label": k, "params": {"train.lr": 0.1}, "seeds": _seeds(v)} for k, v in draws.items()],
    )
    doc = compare_json(sid)
    table = compare(sid)
    assert table.exit_code == 0, table.output
    assert [r["label"] for r in doc["rows"]] == ["a", "b"]
    assert doc["metrics"] == ["eval/score"]  # the setting parzen_n_samples is not a headline
    for row in doc["rows"]:
        mean, std, lo, hi = _t_interval(draws[row["label"]])
        got = row["metrics"]["eval/score"]
        assert got["values"] == pytest.approx(list(draws[row["label"]]))
        assert (got["mean"], got["std"], got["lo"], got["hi"]) == pytest.approx((mean, std, lo, hi))
        assert got["n"] == len(draws[row["label"]])
        shown = f"{mean:.4g} ± {(hi - lo) / 2:.3g} (n={got['n']})"
        assert shown in table.stdout


def test_only_differing_params_shown(store):
    seeds = _seeds([1.0, 2.0])
    same = {"loss.name": "hinge", "train.batch_size": 64}
    sid, _ = make_study(
        "s2",
        [
            {"label": "slow", "params": {**same, "train.lr": 0.0001}, "seeds": seeds},
            {"label": "fast", "params": {**same, "train.lr": 0.001}, "seeds": seeds},
        ],
    )
    res = compare(sid)
    assert res.exit_code == 0, res.output
    assert "train.lr = 0.0001" in res.stdout and "train.lr = 0.001" in res.stdout
    assert "loss.name" not in res.stdout and "batch_size" not in res.stdout
    doc = compare_json(sid)
    assert doc["differing_params"] == ["train.lr"]
    assert doc["rows"][0]["params"]["loss.name"] == "hinge"  # all params are in the JSON
    assert "experiment.seed" not in doc["rows"][0]["params"]


def _expected_marks(groups):
    """'high'/'low' per group from scipy intervals: the extreme mean whose interval is disjoint
    from the next one's."""
    iv = {k: _t_interval(v) for k, v in groups.items()}
    order = sorted(iv, key=lambda k: iv[k][0])
    marks = dict.fromkeys(groups)
    for end, nxt, name in ((order[-1], order[-2], "high"), (order[0], order[1], "low")):
        (_, _, lo_a, hi_a), (_, _, lo_b, hi_b) = iv[end], iv[nxt]
        if hi_a < lo_b or hi_b < lo_a:
            marks[end] = name
    return marks


# both ends apart, only the top apart, nothing apart (seeded draws; expectations from scipy)
@pytest.mark.parametrize(
    ("case", "centres", "spread"),
    [(0, [0, 2, 3, 7], 0.2), (1, [0, 0.3, 3, 9], 0.5), (2, [0, 2, 3, 7], 3.0)],
)
def test_marks_exactly_when_intervals_are_disjoint(store, case, centres, spread):
    rng = np.random.default_rng(case)
    groups = {f"v{i}": rng.normal(c, spread, size=3) for i, c in enumerate(centres)}
    variants = [{"label": k, "params": {"i": k}, "seeds": _seeds(v)} for k, v in groups.items()]
    sid, _ = make_study("marks", variants)
    doc = compare_json(sid)
    got = {r["label"]: r["metrics"]["eval/score"]["mark"] for r in doc["rows"]}
    assert got == _expected_marks(groups)
    table = compare(sid).stdout
    for label, m in got.items():
        line = next(x for x in table.splitlines() if f" {label} " in x and "±" in x)
        assert ("▲" in line) == (m == "high") and ("▼" in line) == (m == "low")


def test_marks_overlap_and_single_seed(store):
    # clearly separated, but one side has a single seed: no interval, so no mark either side
    sid, _ = make_study(
        "one",
        [
            {"label": "many", "params": {"i": 1}, "seeds": _seeds([10.0, 10.1, 9.9])},
            {"label": "single", "params": {"i": 2}, "seeds": _seeds([0.0])},
        ],
    )
    doc = compare_json(sid)
    assert [r["metrics"]["eval/score"]["mark"] for r in doc["rows"]] == [None, None]
    assert doc["rows"][1]["metrics"]["eval/score"]["lo"] is None


def test_unfinished_seed_runs_left_out_and_counted(store):
    good = [1.0, 2.0, 4.0]
    seeds = _seeds(good) + _seeds([1e9], status="FAILED") + _seeds([-1e9], status="KILLED")
    seeds += _seeds([5.0], status="RUNNING")
    sid, _ = make_study("fail", [{"label": "x", "params": {"i": 1}, "seeds": seeds}])
    doc = compare_json(sid)
    row = doc["rows"][0]
    assert row["left_out"] == {"FAILED": 1, "KILLED": 1, "RUNNING": 1}
    assert row["metrics"]["eval/score"]["mean"] == pytest.approx(np.mean(good))
    assert row["metrics"]["eval/score"]["n"] == 3 and len(row["runs"]) == 3
    out = compare(sid).stdout
    assert "left out: 1 FAILED, 1 KILLED, 1 RUNNING" in out


def test_json_round_trips_with_nan_as_null_and_rates(store):
    seeds = _seeds([1.0, 3.0]) + [({"eval/score": math.nan}, "FINISHED")]
    sid, _ = make_study(
        "json", [{"label": "x", "params": {"i": 1}, "seeds": seeds, "rates": {"modes8": (3, 7)}}]
    )
    res = compare(sid, "--json")
    doc = json.loads(res.stdout)  # strict: NaN would not be JSON
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    score = doc["rows"][0]["metrics"]["eval/score"]
    assert score["values"] == [1.0, 3.0, None] and score["n"] == 2 and score["n_dropped"] == 1
    assert doc["metrics"] == ["eval/score", "rate/modes8"]
    r = doc["rows"][0]["metrics"]["rate/modes8"]
    lo, hi = stats.binomtest(3, 7).proportion_ci(0.95, method="wilson")
    assert (r["mean"], r["lo"], r["hi"], r["k"], r["n"]) == pytest.approx((3 / 7, lo, hi, 3, 7))
    assert doc["sources"] == [{"kind": "study", "run_id": sid, "name": "json"}]


def test_sort_orders_rows(store):
    rng = np.random.default_rng(3)
    means = rng.permutation([1.0, 5.0, 3.0, 4.0])
    variants = [
        {"label": f"v{i}", "params": {"i": i}, "seeds": _seeds([m, m + 0.5])}
        for i, m in enumerate(means)
    ]
    sid, _ = make_study("sort", variants)

    def order(*args):
        return [r["metrics"]["eval/score"]["mean"] for r in compare_json(sid, *args)["rows"]]

    assert order("--sort", "eval/score") == sorted(order(), reverse=True)
    assert order("--sort", "-score") == sorted(order())
    assert order() == pytest.approx([m + 0.25 for m in means])  # as logged without --sort
    table = compare(sid, "--sort", "-eval/score").stdout
    labels = [f"v{i}" for i in np.argsort(means)]
    positions = [table.index(f" {label} ") for label in labels]
    assert positions == sorted(positions)


def test_variant_ids_and_plain_runs_grouped_by_params(store):
    _, vids = make_study(
        "mix",
        [
            {"label": "first", "params": {"i": 1}, "seeds": _seeds([1.0, 2.0])},
            {"label": "second", "params": {"i": 2}, "seeds": _seeds([3.0, 4.0])},
        ],
    )
    c, exp_of = _client()
    exp = exp_of("plain")
    plain = []
    for seed, (lr, value) in enumerate([(0.1, 1.0), (0.1, 3.0), (0.2, 7.0)]):
        rid = c.create_run(exp, run_name=f"p{seed}").info.run_id
        _log(c, rid, {"train.lr": lr, "experiment.seed": seed, "experiment.run_name": f"p{seed}"})
        _log(c, rid, metrics={"eval/score": value})
        c.set_terminated(rid)
        plain.append(rid)
    doc = compare_json(vids[1], *plain)
    rows = {r["label"]: r for r in doc["rows"]}
    assert set(rows) == {"second", "p0 (+1)", "p2"}
    assert rows["second"]["kind"] == "variant" and rows["second"]["runs"] != []
    assert rows["p0 (+1)"]["metrics"]["eval/score"]["values"] == [1.0, 3.0]
    assert rows["p0 (+1)"]["seeds"] == [0, 1]
    assert rows["p2"]["metrics"]["eval/score"]["n"] == 1


def test_experiment_option_studies_or_top_level_runs(store):
    make_study("e1", [{"label": "a", "params": {"i": 1}, "seeds": _seeds([1.0, 2.0])}], "exp")
    make_study("e2", [{"label": "b", "params": {"i": 2}, "seeds": _seeds([3.0, 4.0])}], "exp")
    doc = compare_json("--experiment", "exp")
    assert [r["label"] for r in doc["rows"]] == ["a", "b"]
    assert [s["name"] for s in doc["sources"]] == ["e1", "e2"]
    assert [r["label"] for r in compare_json("e2", "-e", "exp")["rows"]] == ["b"]  # study name
    c, exp_of = _client()
    exp = exp_of("flat")
    for seed in range(2):
        rid = c.create_run(exp, run_name=f"r{seed}").info.run_id
        _log(c, rid, {"train.lr": 0.1, "experiment.seed": seed}, {"eval/score": seed})
        c.set_terminated(rid)
    doc = compare_json("--experiment", "flat")
    assert len(doc["rows"]) == 1 and doc["rows"][0]["metrics"]["eval/score"]["n"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name study or run ids"),
        (["0123456789abcdef0123456789abcdef"], "neither a run id nor a study name"),
        (["--experiment", "nope"], "no experiment named 'nope'"),
        (["STUDY", "--metric", "eval/nope"], "no metric 'eval/nope'"),
        (["STUDY", "--sort", "-nope"], "no metric 'nope'"),
        (["STUDY", "--html", "missing/dir/r.html"], "does not exist"),
    ],
)
def test_user_errors_exit_2(store, args, message):
    sid, _ = make_study("err", [{"label": "a", "params": {}, "seeds": _seeds([1.0, 2.0])}])
    res = compare(*[sid if a == "STUDY" else a for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_no_store_is_a_user_error(workdir):
    res = compare("abc")
    assert res.exit_code == 2 and "no MLflow store here" in res.output
    assert not (workdir / "mlflow.db").exists()


def test_table_fits_100_columns_with_long_labels_and_many_metrics(store):
    keys = [f"eval/metric_number_{i}" for i in range(7)]
    label = "dcgan train.lr=0.0001 loss.name=hinge train.n_critic=5 noise.dim=128"
    seeds = [({k: 1000.123 + i * j for j, k in enumerate(keys)}, "FINISHED") for i in range(3)]
    variants = [{"label": f"{label} #{i}", "params": {"i": i}, "seeds": seeds} for i in range(2)]
    sid, _ = make_study("wide", variants)
    res = runner.invoke(app, ["compare", sid], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in res.stdout.splitlines()) <= 100
    for k in keys:  # every metric is shown, in as many tables as it takes
        assert k in res.stdout


def test_html_of_two_studies_is_not_logged_to_either(store):
    a, _ = make_study("ha", [{"label": "left", "params": {"i": 1}, "seeds": _seeds([1, 2])}])
    b, _ = make_study("hb", [{"label": "right", "params": {"i": 2}, "seeds": _seeds([3, 4])}])
    res = compare(a, b, "--html", "two.html")
    assert res.exit_code == 0, res.output
    page = (store / "two.html").read_text()
    assert "left" in page and "right" in page and "data:image/png;base64," in page
    assert "logged to study run" not in res.output
    c, _ = _client()
    assert c.list_artifacts(a, "compare") == [] and c.list_artifacts(b, "compare") == []


TINY_RING = (
    ring8_recipe("tiny-ring", n_train=1000, n_val=100, n_test=300)
    + """
[noise]
dim = 4

[train]
batch_size = 32
steps = 6
log_every = 2
sample_every = 3
eval_every = 3
progress = false

[[evaluate.metrics]]
name = "modes"
[evaluate.metrics.params]
n_samples = 200

[[report]]
name = "loss-curves"

[[report]]
name = "sample-grid"
[report.params]
n_points = 200
"""
)


def _real_study(recipe, lrs, seeds):
    """A study of real tiny runs: a variant run per lr, a seed run per seed under each."""
    from gan_pipe.host import PluginHost
    from gan_pipe.recipe import load_recipe
    from gan_pipe.runner import run

    c, exp_of = _client()
    exp = exp_of("tiny-ring")  # the recipe's experiment: the whole tree lives in one
    tags = {"gan_pipe.kind": "study", "gan_pipe.study": "real"}
    sid = c.create_run(exp, run_name="real", tags=tags).info.run_id
    plugins = PluginHost.load()
    for lr in lrs:
        common = {"gan_pipe.study": "real", "gan_pipe.variant_key": f"lr{lr}"}
        tags = {PARENT: sid, "gan_pipe.kind": "variant", "gan_pipe.variant": f"lr={lr}", **common}
        vid = c.create_run(exp, run_name=f"lr{lr}", tags=tags).info.run_id
        for seed in seeds:
            sets = [f"train.lr={lr}", f"experiment.seed={seed}"]
            resolved = load_recipe(recipe, plugins.registry, sets)
            tags = {"gan_pipe.kind": "seed", "gan_pipe.seed": str(seed), **common}
            run(resolved, plugins, parent_run_id=vid, extra_tags=tags)
        c.set_terminated(vid)
    c.set_terminated(sid)
    return c, sid


@pytest.mark.slow
def test_html_report_of_real_runs(store):
    import base64
    import re

    recipe = store / "tiny-ring.toml"
    recipe.write_text(TINY_RING)
    c, sid = _real_study(recipe, [0.001, 0.01], [1, 2])
    res = compare(sid, "--html", "report.html")
    assert res.exit_code == 0, res.output
    assert "fetching histories: variant 2/2 lr=0.01 (2 runs)" in res.output
    assert "logged to study run" in res.output
    page = (store / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # training curves, eval curves, one final sample picture per variant
    assert len(images) == 4
    assert all(base64.b64decode(b).startswith(b"\x89PNG") for b in images)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("step 6)") == 2  # the last samples image of each variant
    for text in ("lr=0.001", "lr=0.01", "<h2>Metrics</h2>", "eval/modes", "train.lr"):
        assert text in page
    assert [f.path for f in c.list_artifacts(sid, "compare")] == ["compare/report.html"]
    logged = c.download_artifacts(sid, "compare/report.html", str(store))
    assert open(logged, encoding="utf-8").read() == page


def test_markdown_table_has_a_row_per_variant_with_the_same_cells(store):
    sid, _ = make_study(
        "md",
        [
            {"label": "a|b", "params": {"lr": 1}, "seeds": _seeds([1.0, 2.0, 3.0])},
            {"label": "c", "params": {"lr": 2}, "seeds": _seeds([10.0, 11.0, 12.0])},
        ],
    )
    lines = compare(sid, "--markdown").stdout.splitlines()
    assert lines[:4] == [
        "| variant | runs | lr |",
        "| --- | --- | --- |",
        "| a\\|b | 3 | 1 |",  # a | in a label is escaped
        "| c | 3 | 2 |",
    ]
    assert lines[5:7] == ["| variant | `eval/score` |", "| --- | --- |"]
    _, _, lo, hi = _t_interval([1.0, 2.0, 3.0])
    assert lines[7].startswith("| a\\|b | 2 ± ")
    assert f"{(hi - lo) / 2:.3g}" in lines[7] and "(n=3)" in lines[7]
    assert lines[8].startswith("| c | 11 ± ") and "▲" in lines[8]
