"""Runs are never lost, never misreported: live metrics, heartbeats, stale runs, a second writer
refused, and an error path that closes the run whatever else fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from gan_pipe import hookimpl, liveness
from gan_pipe.cli import app
from gan_pipe.recipe import load_recipe
from gan_pipe.runner import run
from gan_pipe.testing import plugins_with
from gan_pipe.tracking import Tracker, ensure_store

from .conftest import mlp_nets, ring8_recipe, write
from .test_cli import TINY

runner = CliRunner()


def _client(workdir):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def _until(check, timeout=30.0, every=0.1):
    """``check()``'s first truthy value, polled for at most ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > end:
            return value
        time.sleep(every)


def _steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


# ------------------------------------------------------------------ live metrics, heartbeat
def test_metrics_reach_the_store_while_the_run_is_open(workdir, monkeypatch):
    monkeypatch.setenv("GAN_PIPE_FLUSH_SECONDS", "0.2")
    tracker = Tracker.start("live", "r")
    try:
        tracker.log_metrics({"train/loss": 1.0}, 1)
        time.sleep(0.3)
        tracker.log_metrics({"train/loss": 2.0}, 2)  # the interval has passed: both are sent
        other = _client(workdir)  # another reader, as the MLflow UI
        assert _until(lambda: _steps(other, tracker.run_id, "train/loss") == [1, 2], 15)
        assert other.get_run(tracker.run_id).info.status == "RUNNING"
    finally:
        tracker.end()


def test_a_checkpoint_flushes_the_metrics_before_it(workdir, monkeypatch):
    monkeypatch.setenv("GAN_PIPE_FLUSH_SECONDS", "3600")  # only the checkpoint flushes
    tracker = Tracker.start("live", "r")
    try:
        tracker.log_metrics({"train/loss": 1.0}, 7)
        ckpt = write(workdir / "checkpoint-0000007.pt", "weights")
        tracker.log_artifact(ckpt, "checkpoints")
        other = _client(workdir)
        assert _until(lambda: _steps(other, tracker.run_id, "train/loss") == [7], 15)
    finally:
        tracker.end()


def test_heartbeat_is_renewed_while_open_and_removed_at_the_end(workdir, monkeypatch):
    monkeypatch.setenv("GAN_PIPE_FLUSH_SECONDS", "0.2")
    tracker = Tracker.start("live", "r")
    c = _client(workdir)
    tags = c.get_run(tracker.run_id).data.tags
    assert tags[liveness.PID] == str(os.getpid()) and tags[liveness.HOST] == liveness.this_host()
    first = float(tags[liveness.HEARTBEAT])
    beat = lambda: float(c.get_run(tracker.run_id).data.tags[liveness.HEARTBEAT])  # noqa: E731
    assert _until(lambda: beat() > first, 15), "the heartbeat was not renewed"
    tracker.end()
    run_ = c.get_run(tracker.run_id)
    assert run_.info.status == "FINISHED"
    assert liveness.HEARTBEAT not in run_.data.tags
    assert not liveness.liveness(run_).alive


def _fake_run(now, beat_age=None, pid=None, host=None, started_age=600.0):
    tags = {}
    if beat_age is not None:
        tags[liveness.HEARTBEAT] = str(now - beat_age)
    if pid is not None:
        tags[liveness.PID] = str(pid)
    if host is not None:
        tags[liveness.HOST] = host
    return SimpleNamespace(
        info=SimpleNamespace(run_id="abc", status="RUNNING", start_time=(now - started_age) * 1e3),
        data=SimpleNamespace(tags=tags),
    )


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_liveness_rules(monkeypatch):
    monkeypatch.setenv("GAN_PIPE_FLUSH_SECONDS", "5")
    monkeypatch.delenv("GAN_PIPE_STALE_SECONDS", raising=False)
    assert liveness.stale_after() == 45
    now, here = time.time(), liveness.this_host()
    live = lambda **kw: liveness.liveness(_fake_run(now, **kw), now)  # noqa: E731
    # another host: only the heartbeat's age counts
    assert live(beat_age=10, pid=1, host="elsewhere").alive
    old = live(beat_age=720, pid=1, host="elsewhere")
    assert not old.alive and "12 min" in old.why
    # this host: the pid decides, whatever the heartbeat says
    assert not live(beat_age=1, pid=_dead_pid(), host=here).alive
    assert live(beat_age=720, pid=os.getpid(), host=here).alive
    # a heartbeat removed at the end: no live writer, even if the pid lives on
    assert not live(pid=os.getpid(), host=here).alive
    # no identity at all (an older gan-pipe): alive only while young
    assert live(started_age=5).alive and not live(started_age=600).alive
    monkeypatch.setenv("GAN_PIPE_STALE_SECONDS", "1000")
    assert live(beat_age=720, pid=1, host="elsewhere").alive
    monkeypatch.setenv("GAN_PIPE_FLUSH_SECONDS", "soon")
    with pytest.raises(Exception, match="GAN_PIPE_FLUSH_SECONDS='soon'"):
        liveness.flush_interval()


def test_resume_message_names_what_it_found():
    from gan_pipe.reevaluate import _found

    now = time.time()
    dead = _fake_run(now, beat_age=720, pid=4321, host="gpu7")
    assert _found(dead) == (
        "run abc was RUNNING with no heartbeat for 12 min: its process (pid 4321 on host gpu7) died"
    )
    failed = _fake_run(now)
    failed.info.status = "FAILED"
    failed.data.tags["gan_pipe.error"] = "RuntimeError: disk on fire"
    assert _found(failed) == "run abc was FAILED (RuntimeError: disk on fire)"


# ------------------------------------------------------------------ a second writer
def test_a_live_run_cannot_be_resumed_or_evaluated_into(workdir):
    tracker = Tracker.start("live", "r")  # this process writes it: alive
    try:
        for cmd in ("resume", "evaluate"):
            res = runner.invoke(app, [cmd, tracker.run_id])
            assert res.exit_code == 2, res.output
            assert f"pid {os.getpid()} on host {liveness.this_host()}" in res.output
            assert f"kill {os.getpid()}" in res.output and "Traceback" not in res.output
        run_ = _client(workdir).get_run(tracker.run_id)
        assert run_.info.status == "RUNNING" and "gan_pipe.resumed_from_step" not in run_.data.tags
    finally:
        tracker.end()


def test_a_refused_resume_leaves_no_live_writer_behind(workdir):
    tracker = Tracker.start("live", "r")
    tracker.end("KILLED")
    for _ in range(2):  # the first attempt's reading must not look like a live writer
        res = runner.invoke(app, ["resume", tracker.run_id])
        assert res.exit_code == 2 and "has no recipe/resolved.json" in res.output, res.output
    assert liveness.HEARTBEAT not in _client(workdir).get_run(tracker.run_id).data.tags


def test_a_run_beating_on_another_host_is_refused(workdir):
    tracker = Tracker.start("live", "r")
    tracker.end("KILLED")
    c = _client(workdir)
    c.set_tag(tracker.run_id, liveness.HOST, "gpu7")
    c.set_tag(tracker.run_id, liveness.PID, "4321")
    c.set_tag(tracker.run_id, liveness.HEARTBEAT, f"{time.time():.0f}")
    res = runner.invoke(app, ["resume", tracker.run_id])
    assert res.exit_code == 2, res.output
    assert "pid 4321 on host gpu7" in res.output and "stop it on gpu7" in res.output


# ------------------------------------------------------------------ gan-pipe runs --stale
def test_runs_stale_lists_and_marks_only_dead_training_runs(workdir):
    c = _client(workdir)
    live = Tracker.start("exp-a", "alive")
    try:
        exp_id = live.experiment_id
        # as a SIGKILLed run leaves it: RUNNING, an old heartbeat, a pid that is gone
        tags = {
            "gan_pipe.recipe": "r.toml",
            liveness.PID: str(_dead_pid()),
            liveness.HOST: liveness.this_host(),
            liveness.HEARTBEAT: f"{time.time() - 3600:.0f}",
        }
        dead = c.create_run(exp_id, run_name="dead", tags=tags).info
        study = c.create_run(exp_id, run_name="study", tags={"gan_pipe.kind": "study"})

        res = runner.invoke(app, ["runs"])
        assert res.exit_code == 0, res.output
        assert f"{live.run_id}  alive" in res.output and f"{dead.run_id}  STALE" in res.output
        assert study.info.run_id not in res.output  # not a training run: never stale

        res = runner.invoke(app, ["runs", "--stale", "--experiment", "exp-a"])
        assert res.exit_code == 0, res.output
        assert dead.run_id in res.output and "60 min" in res.output
        assert live.run_id not in res.output

        res = runner.invoke(app, ["runs", "--stale", "--experiment", "exp-b"])
        assert res.exit_code == 2 and "no experiment 'exp-b'" in res.output

        res = runner.invoke(app, ["runs", "--stale", "--mark-killed"])
        assert res.exit_code == 0 and "marked 1 run(s) KILLED" in res.output
        got = c.get_run(dead.run_id)
        assert got.info.status == "KILLED"
        assert "its process died" in got.data.tags[liveness.KILLED_REASON]
        assert c.get_run(live.run_id).info.status == "RUNNING"
        assert c.get_run(study.info.run_id).info.status == "RUNNING"
        res = runner.invoke(app, ["runs", "--stale"])
        assert res.exit_code == 0 and "no stale runs" in res.output
    finally:
        live.end()


# ------------------------------------------------------------------ the error path
class _Boom:
    @hookimpl(tryfirst=True)
    def gan_pipe_data(self, ctx):
        raise RuntimeError("disk on fire")


def _failing_run(workdir, *extra):
    plugins = plugins_with(_Boom(), *extra)
    resolved = load_recipe(write(workdir / "r.toml", TINY), plugins.registry)
    with pytest.raises(RuntimeError, match="disk on fire") as info:
        run(resolved, plugins)
    (run_id,) = [r.info.run_id for r in _client(workdir).search_runs(["1"])]
    return info.value, _client(workdir).get_run(run_id)


def test_a_failing_error_hook_still_ends_the_run_failed_with_the_original_error(workdir):
    class BrokenHook:
        @hookimpl
        def gan_pipe_on_stage_error(self, stage, error):
            raise ValueError("the hook broke too")

    error, run_ = _failing_run(workdir, BrokenHook())
    assert run_.info.status == "FAILED"
    assert run_.data.tags["gan_pipe.error"] == "RuntimeError: disk on fire"
    assert run_.data.tags["gan_pipe.failed_stage"] == "data"
    assert any("on_stage_error hook failed: ValueError" in n for n in error.__notes__)
    assert liveness.HEARTBEAT not in run_.data.tags


def test_a_failing_store_while_closing_still_ends_the_run_failed(workdir, monkeypatch):
    import mlflow

    def down(*args, **kwargs):
        raise OSError("tracking store down")

    log_text = Tracker.log_text

    def error_txt_fails(self, text, artifact_file):
        if artifact_file == "error.txt":
            down()
        log_text(self, text, artifact_file)

    for name in ("set_tags", "flush"):
        monkeypatch.setattr(Tracker, name, down)
    monkeypatch.setattr(Tracker, "log_text", error_txt_fails)
    monkeypatch.setattr(mlflow, "flush_async_logging", down)

    def end_run_fails(status="FINISHED"):
        stack = mlflow.tracking.fluent._active_run_stack.get()
        stack.pop()  # as the real one: the active run is popped, then the write fails
        raise OSError("tracking store down")

    monkeypatch.setattr(mlflow, "end_run", end_run_fails)
    with pytest.raises(RuntimeError, match="disk on fire"):
        plugins = plugins_with(_Boom())
        resolved = load_recipe(write(workdir / "r.toml", TINY), plugins.registry)
        run(resolved, plugins)
    assert mlflow.active_run() is None
    (run_,) = _client(workdir).search_runs(["1"])
    assert run_.info.status == "FAILED"  # set by the fallback after end_run failed


# ------------------------------------------------------------------ a real process, killed
def gan_pipe(workdir, args, env, log_name="child.log"):
    """``gan-pipe ARGS`` in a child process, its output in ``workdir / log_name``."""
    with open(workdir / log_name, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gan_pipe.cli", *args],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


# batch_norm: without it resolved.json's bn_* defaults fail validation on resume
BN_NETS = mlp_nets(params="batch_norm = true")
LONG = (
    ring8_recipe("live-ring", n_train=2000, n_val=200, n_test=500, nets=BN_NETS)
    + """
[train]
steps = 1000000
batch_size = 64
log_every = 10
checkpoint_every = 200
progress = false

[[evaluate.metrics]]
name = "modes"
[evaluate.metrics.params]
n_samples = 300
"""
)


@pytest.mark.slow
def test_a_sigkilled_run_keeps_its_metrics_is_found_stale_and_resumes(workdir):
    path = write(workdir / "long.toml", LONG)
    env = {**os.environ, "GAN_PIPE_FLUSH_SECONDS": "0.5", "OMP_NUM_THREADS": "1"}
    c = ensure_store(f"sqlite:///{workdir / 'mlflow.db'}")  # before the child: no race
    proc = gan_pipe(workdir, ["run", str(path)], env)
    try:

        def the_run():
            exp = c.get_experiment_by_name("live-ring")
            found = c.search_runs([exp.experiment_id]) if exp else []
            return found[0] if found else proc.poll() is not None

        run_ = _until(the_run, 120, 0.5)
        assert hasattr(run_, "info"), (workdir / "child.log").read_text()
        rid = run_.info.run_id

        def checkpoints():
            return [f.path for f in c.list_artifacts(rid, "checkpoints")]

        assert _until(checkpoints, 120, 0.5), "no checkpoint was logged"
        seen = _steps(c, rid, "train/d_loss")
        # the curve grows while the run trains: flushed by time, not by 1,000 values
        assert _until(lambda: len(_steps(c, rid, "train/d_loss")) > len(seen) + 2, 60, 0.2)
        assert c.get_run(rid).data.tags[liveness.PID] == str(proc.pid)

        for cmd in ("resume", "evaluate"):  # a second writer is refused
            res = runner.invoke(app, [cmd, rid])
            assert res.exit_code == 2 and f"pid {proc.pid}" in res.output, res.output

        proc.send_signal(signal.SIGKILL)
        killed_ms = time.time() * 1000
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

    hist = c.get_metric_history(rid, "train/d_loss")
    assert hist, "a SIGKILL lost every metric"
    lag = (killed_ms - max(m.timestamp for m in hist)) / 1000
    assert lag < 15, f"the newest stored metric is {lag:.1f} s older than the kill"
    assert c.get_run(rid).info.status == "RUNNING"

    res = runner.invoke(app, ["runs", "--stale"])
    assert res.exit_code == 0 and f"{rid}  STALE" in res.output, res.output
    assert f"pid {proc.pid}" in res.output and "process gone" in res.output
    res = runner.invoke(app, ["runs", "--stale", "--mark-killed"])
    assert res.exit_code == 0, res.output
    killed = c.get_run(rid)
    assert killed.info.status == "KILLED" and liveness.KILLED_REASON in killed.data.tags

    step = int(sorted(checkpoints())[-1].split("-")[-1].split(".")[0])
    res = runner.invoke(app, ["resume", rid, "--steps", str(step + 20)])
    assert res.exit_code == 0, res.output
    assert f"run {rid} was KILLED; resuming from step {step}" in res.output
    done = c.get_run(rid)
    assert done.info.status == "FINISHED"
    assert liveness.KILLED_REASON not in done.data.tags
    assert done.data.tags["gan_pipe.resumed_from_step"] == str(step)
    assert _steps(c, rid, "train/d_loss")[-1] == step + 20


# ------------------------------------------------------------------ two claimants at once
def _claim_in_child(uri: str, store: str, run_id: str, start: float, q) -> None:
    from mlflow import MlflowClient

    from gan_pipe.errors import UserError

    time.sleep(max(0.0, start - time.time()))  # both claim at the same moment
    try:
        held = liveness.claim(MlflowClient(store), uri, run_id, "resumed", "resume")
    except UserError as e:
        q.put(str(e))
        return
    q.put(f"won {os.getpid()}")
    time.sleep(3)  # holds the run a while, as a resume that trains
    held.release()


@pytest.mark.parametrize("how", ["file lock", "claim token"])
def test_two_claims_at_the_same_moment_exactly_one_wins(workdir, monkeypatch, how):
    import multiprocessing as mp

    store = f"sqlite:///{workdir / 'mlflow.db'}"
    c = ensure_store(store)
    dead = {liveness.PID: str(_dead_pid()), liveness.HOST: liveness.this_host()}
    rid = c.create_run(c.create_experiment("claims"), run_name="killed", tags=dead).info.run_id
    c.set_terminated(rid, "KILLED")
    # a server has no file lock beside it: the token is written, read back after 1 s
    uri = store if how == "file lock" else "http://tracking.example:5000"
    monkeypatch.setenv("GAN_PIPE_CLAIM_SECONDS", "1")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start = time.time() + 8  # after both children imported mlflow
    procs = [
        ctx.Process(target=_claim_in_child, args=(uri, store, rid, start, q)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    answers = sorted(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    loser, winner = answers
    assert winner.startswith("won "), answers
    assert loser.startswith(f"run {rid} is being resumed by ")
    assert f"(pid {winner.split()[1]} on host {liveness.this_host()})" in loser
    if how == "claim token":
        held = json.loads(c.get_run(rid).data.tags[liveness.CLAIM])
        assert str(held["pid"]) == winner.split()[1]  # the last token written won


@pytest.mark.slow
def test_two_resumes_started_together_one_trains_the_other_is_refused(workdir):
    path = write(workdir / "short.toml", LONG.replace("steps = 1000000", "steps = 40"))
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    c = _client(workdir)
    (run_,) = c.search_runs([c.get_experiment_by_name("live-ring").experiment_id])
    rid = run_.info.run_id
    c.set_terminated(rid, "KILLED")  # as a killed run: both resumes find it dead
    env = {**os.environ, "GAN_PIPE_FLUSH_SECONDS": "0.5", "OMP_NUM_THREADS": "1"}
    args = ["resume", rid, "--steps", "1000000"]
    procs = [gan_pipe(workdir, args, env, f"resume{i}.log") for i in range(2)]
    try:
        ended = _until(lambda: [p for p in procs if p.poll() is not None], 240, 0.5)
        assert len(ended) == 1, "both resumes ended"
        (loser,) = ended
        (winner,) = [p for p in procs if p is not loser]
        out = (workdir / f"resume{procs.index(loser)}.log").read_text()
        assert loser.returncode == 2, out
        assert f"run {rid} is being resumed by" in out and f"pid {winner.pid}" in out
        assert "[train]" not in out and "Traceback" not in out
        # the winner trains on: new points past the run's 40 steps, its pid on the run
        assert _until(lambda: max(_steps(c, rid, "train/d_loss")) > 100, 120, 0.5)
        assert c.get_run(rid).data.tags[liveness.PID] == str(winner.pid)
        winner.send_signal(signal.SIGINT)
        assert winner.wait(120) == 130
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    assert c.get_run(rid).info.status == "KILLED"
