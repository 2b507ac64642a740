"""Studies: planning (seeds, grid, study files), and a real study read back from MLflow with
its aggregates recomputed independently (scipy) from the seed runs' own metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from gan_pipe.cli import app
from gan_pipe.errors import RecipeError
from gan_pipe.study import parse_grid_item, parse_seeds

from .conftest import write
from .test_resume_exact import assert_same_state

runner = CliRunner()

TINY = """
[experiment]
name = "tiny-ring"

[data]
name = "ring8"
[data.params]
n_train = 2000
n_val = 200
n_test = 500

[model.generator]
name = "mlp"
[model.generator.params]
hidden = [16]

[model.discriminator]
name = "mlp"
[model.discriminator.params]
hidden = [16]

[loss]
name = "non-saturating"

[train]
steps = 12
batch_size = 64
log_every = 4
sample_every = 12

[[evaluate.metrics]]
name = "modes"
[evaluate.metrics.params]
n_samples = 300

[success.some_modes]
modes = {min = 1}
"""


@pytest.mark.parametrize(
    "spec,seeds",
    [
        (3, [0, 1, 2]),
        ("3", [0, 1, 2]),
        ("0-2", [0, 1, 2]),
        ("5,1,1", [1, 5]),
        ("0-1,7", [0, 1, 7]),
        ([4, 2], [2, 4]),
    ],
)
def test_seed_specs(spec, seeds):
    assert parse_seeds(spec) == seeds


@pytest.mark.parametrize("bad", [0, "", "3-1", "a", "1,,2", [], [-1], True])
def test_bad_seed_specs(bad):
    with pytest.raises(ValueError):
        parse_seeds(bad)


def test_grid_values_are_toml_with_bare_words_as_strings():
    assert parse_grid_item("train.lr=1e-4, 2e-4") == ("train.lr", [1e-4, 2e-4])
    assert parse_grid_item("loss.name=non-saturating,hinge") == (
        "loss.name",
        ["non-saturating", "hinge"],
    )
    assert parse_grid_item("train.betas=[0.5,0.9],[0.0,0.9]")[1] == [[0.5, 0.9], [0.0, 0.9]]
    for bad in ("train.lr", "=1,2", "train.lr=1,,2"):
        with pytest.raises(RecipeError):
            parse_grid_item(bad)


def test_bad_grid_key_writes_nothing(workdir):
    path = write(workdir / "tiny.toml", TINY)
    res = runner.invoke(app, ["sweep", str(path), "--grid", "train.lrr=1e-3,1e-4", "--seeds", "2"])
    assert res.exit_code == 2
    assert "train.lrr" in res.output and "train.lr" in res.output  # the close match
    assert not (workdir / "mlflow.db").exists()


def test_study_file_with_relative_recipes_and_flags(workdir):
    from gan_pipe.study_cli import build_spec

    (workdir / "recipes").mkdir()
    write(workdir / "recipes" / "tiny.toml", TINY)
    (workdir / "studies").mkdir()
    study = write(
        workdir / "studies" / "probe.toml",
        'recipes = ["../recipes/tiny.toml"]\nseeds = "0-3"\n[grid]\n"train.lr" = [1e-3, 1e-4]\n'
        '[set]\n"train.steps" = 5\n[success.many]\nmodes = {min = 6}\n',
    )
    spec = build_spec(
        [study],
        "0-1",
        ["loss.name=hinge,non-saturating"],
        ["train.log_every=5"],
        2,
        None,
        None,
        None,
    )
    assert spec.name == "probe" and spec.seeds == [0, 1] and spec.jobs == 2
    assert spec.recipes == [str((workdir / "recipes" / "tiny.toml").resolve())]
    assert spec.grid == {"train.lr": [1e-3, 1e-4], "loss.name": ["hinge", "non-saturating"]}
    assert spec.set == {"train.steps": 5, "train.log_every": 5}
    assert len(spec.grid_points()) == 4
    assert spec.success["many"]["modes"].min == 6


def _tree(workdir):
    from gan_pipe.tracking import ensure_store

    # under gan-pipe's store lock: a study may be creating the store right now, and a plain
    # MlflowClient would race it on the schema migration
    c = ensure_store(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = c.get_experiment_by_name("tiny-ring")  # None while a study is starting
    runs = c.search_runs([exp.experiment_id], max_results=500) if exp else []
    kind = {
        k: [r for r in runs if r.data.tags.get("gan_pipe.kind") == k]
        for k in ("study", "variant", "seed")
    }
    return c, kind


@pytest.mark.slow
def test_study_tree_aggregates_resume_and_extend(workdir):
    path = write(workdir / "tiny.toml", TINY)
    args = ["sweep", str(path), "--grid", "train.lr=1e-3,3e-2", "--jobs", "2", "--name", "probe"]
    res = runner.invoke(app, [*args, "--seeds", "0-2"])
    assert res.exit_code == 0, res.output
    c, kind = _tree(workdir)
    (study,) = kind["study"]
    assert study.info.status == "FINISHED" and study.data.tags["gan_pipe.study"] == "probe"
    assert (
        study.data.metrics["study/n_finished"] == 6 and study.data.metrics["study/n_variants"] == 2
    )
    assert len(kind["variant"]) == 2 and len(kind["seed"]) == 6
    variants = {v.info.run_id: v for v in kind["variant"]}
    for v in variants.values():  # one expandable tree: variants under the study ...
        assert v.data.tags["mlflow.parentRunId"] == study.info.run_id
        assert v.info.status == "FINISHED"
        assert "experiment.seed" not in v.data.params and v.data.params["train.steps"] == "12"
    for s in kind["seed"]:  # ... and seeds under their variant
        assert s.data.tags["mlflow.parentRunId"] in variants
        assert s.info.status == "FINISHED"
    lrs = sorted(v.data.params["train.lr"] for v in variants.values())
    assert lrs == ["0.001", "0.03"]

    # every aggregate recomputed independently from the seed runs
    for vid, v in variants.items():
        seeds = [s for s in kind["seed"] if s.data.tags["mlflow.parentRunId"] == vid]
        assert sorted(int(s.data.tags["gan_pipe.seed"]) for s in seeds) == [0, 1, 2]
        for key in ("eval/modes", "eval/modes_kl", "eval/hq_fraction", "perf/steps_per_s"):
            x = np.array([s.data.metrics[key] for s in seeds])
            m = v.data.metrics
            assert m[key] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
            assert m[f"{key}.n"] == 3
            assert m[f"{key}.std"] == pytest.approx(x.std(ddof=1), rel=1e-9, abs=1e-12)
            if x.std() > 0:
                lo, hi = stats.t.interval(0.95, 2, loc=x.mean(), scale=stats.sem(x))
                assert (m[f"{key}.ci95_lo"], m[f"{key}.ci95_hi"]) == (
                    pytest.approx(lo),
                    pytest.approx(hi),
                )
        k = sum(s.data.metrics["eval/modes"] >= 1 for s in seeds)
        ci = stats.binomtest(k, 3).proportion_ci(method="wilson")
        assert v.data.metrics["rate/some_modes"] == pytest.approx(k / 3)
        assert v.data.metrics["rate/some_modes.ci95_lo"] == pytest.approx(ci.low)
        assert v.data.metrics["rate/some_modes.ci95_hi"] == pytest.approx(ci.high)
        # the mean training curve, step by step
        hist = {m.step: m.value for m in c.get_metric_history(vid, "train/d_loss")}
        per_seed = [
            {m.step: m.value for m in c.get_metric_history(s.info.run_id, "train/d_loss")}
            for s in seeds
        ]
        assert sorted(hist) == [4, 8, 12]
        for step, value in hist.items():
            assert value == pytest.approx(np.mean([h[step] for h in per_seed]))

    # a killed seed is run again, finished ones are kept, a new seed is added
    victim = kind["seed"][0]
    c.set_terminated(victim.info.run_id, status="KILLED")
    res = runner.invoke(app, [*args, "--seeds", "0-3"])
    assert res.exit_code == 0, res.output
    assert "6 finished before" not in res.output and "5 finished before, 3 to run" in res.output
    c, kind = _tree(workdir)
    assert len(kind["study"]) == 1 and len(kind["variant"]) == 2
    assert len(kind["seed"]) == 9  # 6 + the re-run + 2 new
    (study,) = kind["study"]
    assert study.data.metrics["study/n_finished"] == 8
    assert json.loads(json.dumps(study.data.tags["gan_pipe.seeds"])) == "0-3"
    for v in kind["variant"]:
        assert v.data.metrics["eval/modes.n"] == 4


@pytest.mark.slow
def test_a_failing_variant_is_recorded_and_does_not_stop_the_others(workdir):
    path = write(workdir / "tiny.toml", TINY)
    # batch 5000 > 2000 training rows: those runs fail in the train stage
    res = runner.invoke(
        app, ["sweep", str(path), "--grid", "train.batch_size=64,5000", "--seeds", "2"]
    )
    assert res.exit_code == 1, res.output
    assert "FAILED" in res.output and "2 finished, 2 failed" in res.output
    c, kind = _tree(workdir)
    (study,) = kind["study"]
    assert study.info.status == "FAILED"
    assert study.data.metrics["study/n_failed"] == 2 and study.data.metrics["study/n_finished"] == 2
    by_status = sorted(s.info.status for s in kind["seed"])
    assert by_status == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    bad = next(v for v in kind["variant"] if v.data.params["train.batch_size"] == "5000")
    assert bad.info.status == "FAILED" and bad.data.metrics["seeds/n_failed"] == 2
    assert "eval/modes" not in bad.data.metrics


def test_dry_run_lists_the_plan_and_writes_no_run(workdir):
    path = write(workdir / "tiny.toml", TINY)
    res = runner.invoke(
        app, ["sweep", str(path), "--grid", "train.lr=1e-3,1e-4", "--seeds", "0,5", "--dry-run"]
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("would run:") == 4
    assert "tiny train.lr=0.0001 seed 5" in res.output
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert c.get_experiment_by_name("tiny-ring") is None


@pytest.mark.slow
def test_a_seed_run_equals_a_plain_run_of_that_seed(workdir):
    """What the study reports for seed 3 is what `gan-pipe run --set experiment.seed=3` gives:
    a study's results can be checked by re-running any of its seeds."""
    path = write(workdir / "tiny.toml", TINY)
    res = runner.invoke(app, ["sweep", str(path), "--seeds", "3-3", "--name", "check"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["run", str(path), "--set", "experiment.seed=3"])
    assert res.exit_code == 0, res.output
    c, kind = _tree(workdir)
    (seed_run,) = kind["seed"]
    plain = next(
        r
        for r in c.search_runs([seed_run.info.experiment_id])
        if "gan_pipe.kind" not in r.data.tags
    )
    evals = {k: v for k, v in seed_run.data.metrics.items() if k.startswith(("eval/", "train/"))}
    assert evals and evals == {
        k: v for k, v in plain.data.metrics.items() if k.startswith(("eval/", "train/"))
    }


def test_seed_runs_that_never_started_are_missing_and_fail_the_sweep(workdir, monkeypatch):
    """A worker that dies before its run exists (killed, out of memory) leaves no FAILED run
    behind: the study counts it missing and the sweep does not exit 0."""
    from gan_pipe import study_exec

    def died(task):
        return study_exec.SeedOutcome(task.label, task.seed, "FAILED", None, "worker died")

    monkeypatch.setattr(study_exec, "run_seed", died)
    path = write(workdir / "tiny.toml", TINY)
    res = runner.invoke(app, ["sweep", str(path), "--seeds", "2", "--name", "died"])
    assert res.exit_code == 1, res.output
    assert "study died ended" in res.output and "2 missing" in res.output
    c, kind = _tree(workdir)
    (study,) = kind["study"]
    assert study.info.status == "FAILED" and study.data.metrics["study/n_missing"] == 2


@pytest.mark.slow
def test_ctrl_c_stops_a_study_and_running_it_again_finishes_it(workdir):
    """Ctrl-C in a terminal reaches the whole process group: the seeds under way end KILLED
    with a checkpoint, no queued seed starts, the study is KILLED; the same sweep again runs
    what did not finish and ends FINISHED. The killed seeds are resumed from their
    checkpoints in their own runs and end exactly as in an uninterrupted study: the same
    final checkpoint (weights, optimisers, RNG, recipe) and the same metrics."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    path = write(workdir / "tiny.toml", TINY.replace("steps = 12", "steps = 4000"))
    exe = str(Path(sys.executable).parent / "gan-pipe")
    args = [exe, "sweep", str(path), "--seeds", "4", "--jobs", "2", "--name", "intr"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GAN_PIPE_FLUSH_SECONDS": "1"}
    proc = subprocess.Popen(
        args,
        cwd=workdir,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline:  # until both workers are training
        time.sleep(2)
        if (workdir / "mlflow.db").exists():
            _, kind = _tree(workdir)
            training = [s for s in kind["seed"] if "train/d_loss" in s.data.metrics]
            if len(training) >= 2:
                break
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert "Run the same sweep again" in out
    c, kind = _tree(workdir)
    assert kind["study"][0].info.status == "KILLED"
    assert len(kind["seed"]) == 2  # the queued seeds never started
    for s in kind["seed"]:
        assert s.info.status == "KILLED"
        assert [a.path for a in c.list_artifacts(s.info.run_id, "checkpoints")]
    killed = {s.info.run_id: s.data.tags["gan_pipe.seed"] for s in kind["seed"]}
    dry = subprocess.run(
        [*args, "--dry-run"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for rid, seed in killed.items():
        assert re.search(rf"would resume: run {rid} from step \d+: tiny seed {seed}\b", dry.stderr)
    assert dry.stderr.count("would run:") == 2  # the seeds that never started

    res = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 finished before, 4 to run (2 resumed from a checkpoint)" in res.stderr
    c, kind = _tree(workdir)
    assert kind["study"][0].info.status == "FINISHED"
    assert len(kind["seed"]) == 4  # the killed seeds went on in their own runs
    assert all(s.info.status == "FINISHED" for s in kind["seed"])
    resumed = {s.info.run_id: s for s in kind["seed"] if s.info.run_id in killed}
    assert set(resumed) == set(killed)
    for rid, s in resumed.items():
        assert f"(run {rid}) - resumed" in res.stderr
        start = int(s.data.tags["gan_pipe.resumed_from_step"])
        assert 0 < start < 4000
        # perf/* cover the part the re-run trained
        m = s.data.metrics
        assert m["perf/steps_per_s"] * m["perf/train_time_s"] == pytest.approx(4000 - start)

    # an uninterrupted study of the killed seeds ends exactly where the resumed runs did
    seeds = ",".join(sorted(killed.values()))
    ref = [*args[:3], "--seeds", seeds, "--jobs", "2", "--name", "straight"]
    out = subprocess.run(ref, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    c, kind = _tree(workdir)
    straight = {
        s.data.tags["gan_pipe.seed"]: s
        for s in kind["seed"]
        if s.data.tags["gan_pipe.study"] == "straight"
    }
    assert sorted(straight) == sorted(killed.values())
    for rid, s in resumed.items():
        twin = straight[killed[rid]]
        assert_same_state(_final_state(c, twin.info.run_id), _final_state(c, rid))
        assert _results(s) and _results(s) == _results(twin)


def _results(run):
    return {k: v for k, v in run.data.metrics.items() if k.startswith(("eval/", "train/"))}


def _final_state(client, run_id):
    """The run's newest checkpoint, recipe included."""
    import tempfile

    import torch

    names = sorted(f.path for f in client.list_artifacts(run_id, "checkpoints"))
    with tempfile.TemporaryDirectory() as tmp:
        return torch.load(client.download_artifacts(run_id, names[-1], tmp), weights_only=True)


def test_resume_points_are_killed_or_abandoned_runs_with_a_checkpoint():
    """A re-run resumes KILLED seed runs, and RUNNING ones (left by a killed sweep), from
    their newest checkpoint; FAILED ones and runs with no checkpoint are trained again."""
    from types import SimpleNamespace as NS

    from gan_pipe.study_exec import resume_points

    files = {
        "k": ["checkpoints/checkpoint-0000040.pt", "checkpoints/checkpoint-0000120.pt"],
        "r": ["checkpoints/checkpoint-0000007.pt"],
        "f": ["checkpoints/checkpoint-0000050.pt"],
        "d": ["checkpoints/checkpoint-0000300.pt"],
        "n": [],
        "odd": ["checkpoints/notes.txt"],
    }
    status = {"k": "KILLED", "r": "RUNNING", "f": "FAILED", "d": "FINISHED"}
    status |= {"n": "KILLED", "odd": "KILLED"}

    class Client:
        def list_artifacts(self, run_id, path):
            assert path == "checkpoints"
            return [NS(path=p) for p in files[run_id]]

    runs = {(rid, 0): NS(info=NS(run_id=rid, status=s)) for rid, s in status.items()}
    assert resume_points(Client(), runs) == {("k", 0): ("k", 120), ("r", 0): ("r", 7)}


@pytest.mark.slow
def test_a_killed_seed_that_cannot_be_resumed_is_run_again(workdir, monkeypatch):
    """Killed with its training complete (a checkpoint of the last step, e.g. while
    evaluating), a seed is run again from step 0 as a new run; a resume the worker finds
    impossible falls back to the same, saying why; one refused because another process
    writes the run is recorded FAILED, not trained a second time."""
    from gan_pipe import sweep

    path = write(workdir / "tiny.toml", TINY)
    args = ["sweep", str(path), "--seeds", "1", "--name", "again"]
    assert runner.invoke(app, args).exit_code == 0
    c, kind = _tree(workdir)
    (first,) = kind["seed"]
    c.set_terminated(first.info.run_id, status="KILLED")
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "0 finished before, 1 to run" in res.output and "resumed" not in res.output
    c, kind = _tree(workdir)
    assert sorted(s.info.status for s in kind["seed"]) == ["FINISHED", "KILLED"]

    (second,) = [s for s in kind["seed"] if s.info.status == "FINISHED"]
    c.set_terminated(second.info.run_id, status="KILLED")
    planned = {(kind["variant"][0].data.tags["gan_pipe.variant_key"], 0): (second.info.run_id, 12)}
    monkeypatch.setattr(sweep, "_resumes", lambda *a: planned)  # planned despite its step
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "(1 resumed from a checkpoint)" in res.output
    assert (
        f"run {second.info.run_id} could not be resumed (run {second.info.run_id} has "
        "trained 12 steps" in res.output
    )
    assert "trained again from step 0" in res.output
    c, kind = _tree(workdir)
    assert sorted(s.info.status for s in kind["seed"]) == ["FINISHED", "KILLED", "KILLED"]

    # a run that another process writes (here: this one, beating) is not trained twice
    from gan_pipe.liveness import identity

    (third,) = [s for s in kind["seed"] if s.info.status == "FINISHED"]
    c.set_terminated(third.info.run_id, status="KILLED")
    for key, value in identity().items():
        c.set_tag(third.info.run_id, key, value)
    planned[next(iter(planned))] = (third.info.run_id, 12)
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "FAILED" in res.output and "trained again" not in res.output
    c, kind = _tree(workdir)
    assert sorted(s.info.status for s in kind["seed"]) == ["KILLED"] * 3
