"""A tracking server that goes away: short outages are ridden out, long ones fail the run fast
with everything unsent kept in a local spool, and ``gan-pipe sync`` uploads it exactly once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from gan_pipe import link as link_mod
from gan_pipe import liveness
from gan_pipe.cli import app
from gan_pipe.link import Link, Sender, TrackingUnavailable, is_outage
from gan_pipe.spool import Spool, missing_points
from gan_pipe.tracking import Tracker, ensure_store

from .conftest import write
from .test_liveness import LONG, _client, _steps, _until, gan_pipe
from .test_ui_browser import _free_port, _stop

runner = CliRunner()


# ------------------------------------------------------------------ the link, no server
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _connection_error() -> Exception:
    """The error MLflow raises when nothing listens at the server's address."""
    from mlflow.exceptions import MlflowException

    return MlflowException("API request to http://127.0.0.1:1/api failed with exception ...")


def test_an_outage_is_ridden_out_below_the_limit_and_fails_fast_past_it(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(link_mod, "time", SimpleNamespace(monotonic=clock.monotonic))
    link = Link("http://tracking.example:5000", limit=30)
    tries = []

    def down():
        tries.append(clock.now)
        raise _connection_error()

    assert not link.call(down) and not link.up
    clock.now += 1  # within the probe interval: not tried again, the caller keeps its data
    assert not link.call(down) and len(tries) == 1
    clock.now += 10
    assert not link.call(down) and len(tries) == 2
    link.check()  # 11 s down, limit 30: ridden out
    clock.now += 20  # 31 s
    with pytest.raises(TrackingUnavailable) as info:
        link.check()
    msg = str(info.value)
    assert "http://tracking.example:5000 has not answered for 31 s" in msg
    assert "limit of 30 s (GAN_PIPE_TRACKING_TIMEOUT)" in msg and "failed with exception" in msg
    clock.now += 5
    assert link.call(lambda: None) and link.up  # back: the outage is over
    link.check()


def test_a_refused_request_is_raised_not_taken_for_an_outage():
    from mlflow.exceptions import MlflowException, RestException

    bad = RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad value"})
    link = Link("http://tracking.example:5000", limit=30)
    with pytest.raises(MlflowException, match="bad value"):
        link.call(lambda: (_ for _ in ()).throw(bad))
    assert link.up
    assert is_outage(_connection_error()) and is_outage(ConnectionRefusedError())
    assert not is_outage(bad) and not is_outage(ValueError("a bug"))


def test_a_call_that_hangs_counts_as_an_outage_after_the_time_left():
    link = Link("http://tracking.example:5000", limit=0.3)
    assert not link.call(lambda: time.sleep(5))  # waited 0.3 s, not 5
    assert not link.up and "no answer within" in link.error


def test_the_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("GAN_PIPE_TRACKING_TIMEOUT", raising=False)
    assert Link("http://x").limit == 180
    monkeypatch.setenv("GAN_PIPE_TRACKING_TIMEOUT", "7.5")
    assert Link("http://x").limit == 7.5
    monkeypatch.setenv("GAN_PIPE_TRACKING_TIMEOUT", "-1")
    with pytest.raises(Exception, match="GAN_PIPE_TRACKING_TIMEOUT='-1'"):
        Link("http://x")


def test_the_sender_keeps_every_point_until_it_landed(monkeypatch):
    monkeypatch.setattr(link_mod, "PROBE_SECONDS", 0.01)
    link = Link("http://tracking.example:5000", limit=60)
    stored, calls = [], []

    def send(chunk, again):
        calls.append(again)
        if len(calls) <= 2:  # the first attempt lands half, then fails; the next fails too
            stored.extend(chunk[:1] if len(calls) == 1 else [])
            raise _connection_error()
        stored.extend(p for p in chunk if not (again and p in stored))

    sender = Sender(link, send)
    sender.put([1, 2, 3])
    sender.drain(link.check)
    assert stored == [1, 2, 3] and calls == [False, True, True]  # sent again: filtered
    sender.put([4])
    sender.drain(link.check)
    assert stored == [1, 2, 3, 4] and calls[-1] is False
    assert sender.close() == []


def test_what_never_landed_is_handed_back_at_close(monkeypatch):
    monkeypatch.setattr(link_mod, "PROBE_SECONDS", 0.01)
    link = Link("http://tracking.example:5000", limit=0.2)

    def send(chunk, again):
        raise _connection_error()

    sender = Sender(link, send)
    sender.put(list(range(5)))
    with pytest.raises(TrackingUnavailable):
        sender.drain(link.check)
    assert sorted(sender.close()) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------ the spool, local store
def _metric(key, value, ts, step):
    from mlflow.entities import Metric

    return Metric(key, value, ts, step)


def test_missing_points_leaves_out_what_the_store_holds(workdir):
    tracker = Tracker.start("spool", "r")
    c = _client(workdir)
    held = [_metric("a", 1.0, 1000, 1), _metric("a", float("nan"), 1000, 2)]
    c.log_batch(tracker.run_id, metrics=held, synchronous=True)
    new = [_metric("a", 1.0, 1001, 1), _metric("a", 2.0, 1000, 1), _metric("b", 1.0, 1000, 1)]
    again = [*held, new[0], new[0], new[1], _metric("a", float("nan"), 1000, 2), new[2]]
    assert missing_points(c, tracker.run_id, again) == new  # each once, held ones left out
    tracker.end()


def _fill(spool: Spool, workdir: Path) -> list:
    """A spool as a run leaves it after an outage; the metric points it holds."""
    points = [_metric("train/loss", float(s), 5000 + s, s) for s in range(0, 50, 10)]
    points.append(_metric("train/loss", float("nan"), 6000, 50))
    spool.add_metrics(points)
    spool.add_params({"train.lr": "0.001"})
    spool.add_tags({"gan_pipe.failed_stage": "train", "gan_pipe.error": "TrackingUnavailable"})
    ckpt = write(workdir / "checkpoint-0000040.pt", "weights of step 40")
    spool.add_artifact(ckpt, "checkpoints")
    ckpt.unlink()  # the trainer's temporary file is gone; the spool has its copy
    spool.add_text("Traceback ...", "error.txt")
    spool.add_image(np.zeros((8, 8, 3), dtype=np.uint8), "samples", 40)
    spool.set_end("FAILED", 7000)
    spool.close()
    return points


def test_a_spool_uploads_once_however_often_it_is_synced(workdir):
    c = ensure_store(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = c.create_experiment("spool")
    # as a run that stopped in an outage leaves it: RUNNING, heartbeat and claim tags left
    tags = {liveness.HEARTBEAT: "1", liveness.CLAIM: "{}"}
    rid = c.create_run(exp, run_name="r", tags=tags).info.run_id
    c.log_batch(rid, metrics=[_metric("train/loss", -1.0, 4000, 0)], synchronous=True)
    spool = Spool(rid, f"sqlite:///{workdir / 'mlflow.db'}", workdir / "spool")
    points = _fill(spool, workdir)
    assert spool.meta()["complete"] and "6 metric values" in spool.summary()
    copy = shutil.copytree(spool.dir, workdir / "copy")

    sent = spool.upload(c)
    assert sent == {"params": 1, "tags": 2, "metrics": 6, "files": 3, "ended": 1}
    assert not spool.dir.exists()
    shutil.copytree(copy, spool.dir)  # a sync cut short before it removed its spool
    sent = spool.upload(c)
    assert sent["metrics"] == 0  # every point is already there

    hist = c.get_metric_history(rid, "train/loss")
    got = sorted((m.step, m.timestamp) for m in hist)
    assert got == sorted([(0, 4000)] + [(m.step, m.timestamp) for m in points])
    run_ = c.get_run(rid)
    assert run_.info.status == "FAILED" and run_.info.end_time == 7000
    assert run_.data.params["train.lr"] == "0.001"
    assert run_.data.tags["gan_pipe.failed_stage"] == "train"
    assert liveness.HEARTBEAT not in run_.data.tags and liveness.CLAIM not in run_.data.tags
    files = {f.path for f in c.list_artifacts(rid)} | {
        f.path for f in c.list_artifacts(rid, "checkpoints")
    }
    assert {"error.txt", "checkpoints/checkpoint-0000040.pt", "images"} <= files
    path = c.download_artifacts(rid, "checkpoints/checkpoint-0000040.pt", str(workdir / "dl"))
    assert Path(path).read_text() == "weights of step 40"


def test_sync_says_what_it_did_and_what_it_cannot(workdir, monkeypatch):
    monkeypatch.setenv("GAN_PIPE_SPOOL_DIR", str(workdir / "spool"))
    res = runner.invoke(app, ["sync"])
    assert res.exit_code == 0 and "nothing spooled for sqlite:///" in res.output, res.output

    tracker = Tracker.start("spool", "r")
    tracker.end()
    elsewhere = Spool("0123abcd", "http://tracking.example:5000", workdir / "spool")
    elsewhere.set_end("FAILED", 1)
    res = runner.invoke(app, ["sync"])
    assert (
        res.exit_code == 0 and "1 spooled run(s)" in res.output and "other tracking" in res.output
    )
    res = runner.invoke(app, ["sync", "0123abcd"])
    assert res.exit_code == 2 and "MLFLOW_TRACKING_URI=http://tracking.example:5000" in res.output

    live = Spool(tracker.run_id, tracker.uri, workdir / "spool")
    live.set_end("KILLED", 1)  # not closed: its writer (this process) is still at it
    meta = live.meta()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (live.dir / "meta.json").write_text(json.dumps({**meta, "pid": child.pid}))
        res = runner.invoke(app, ["sync", tracker.run_id])
        assert res.exit_code == 0 and f"still being written by pid {child.pid}" in res.output
    finally:
        child.kill()
        child.wait()
    res = runner.invoke(app, ["sync", tracker.run_id, "feedbeef"])
    assert res.exit_code == 0, res.output
    assert f"run {tracker.run_id}: synced the end status" in res.output
    assert "run feedbeef: nothing spooled" in res.output
    assert _client(workdir).get_run(tracker.run_id).info.status == "KILLED"


def test_sync_with_the_server_down_says_so_and_keeps_the_spool(workdir, monkeypatch):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    spool = Spool("0123abcd", url)
    spool.add_metrics([_metric("a", 1.0, 1, 1)])
    spool.close()
    res = runner.invoke(app, ["sync"])
    assert res.exit_code == 2, res.output
    assert f"the tracking server {url} does not answer" in res.output
    assert "stays spooled" in res.output and "1 metric values" in res.output
    assert "Traceback" not in res.output and spool.pending()


# ------------------------------------------------------------------ a real server, stopped
def _start_server(tmp_path: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on loopback with its artifacts proxied (uploads need the server),
    on the same backend each time; job execution off (it starts many processes)."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp_path / "server.log", "a")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"),
            *("--artifacts-destination", str(tmp_path / "server-artifacts")),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # stopped with its workers by _stop
    )
    log.close()
    url = f"http://127.0.0.1:{port}"

    def health():
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return True
        except OSError:
            return proc.poll() is not None

    if not _until(health, 180, 0.5) or proc.poll() is not None:
        _stop(proc)
        pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
    return proc


@pytest.fixture
def server(tmp_path):
    """(url, restart): a server that the test may stop; stopped at teardown."""
    port = _free_port()
    procs = [_start_server(tmp_path, port)]

    def restart():
        procs.append(_start_server(tmp_path, port))

    yield f"http://127.0.0.1:{port}", procs, restart
    for p in procs:
        _stop(p)


def _child_env(url: str, limit: float) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": url,
        "GAN_PIPE_TRACKING_TIMEOUT": str(limit),
        "GAN_PIPE_FLUSH_SECONDS": "0.5",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",  # every failed call reaches gan-pipe at once
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        "OMP_NUM_THREADS": "1",
    }


def _start_run(workdir: Path, recipe: str, env: dict[str, str]):
    return gan_pipe(workdir, ["run", str(write(workdir / "long.toml", recipe))], env)


def _training_run(c, proc, workdir: Path, checkpoints: int = 1):
    """The child's run id once it logged ``checkpoints`` checkpoints and a few metrics."""

    def the_run():
        exp = c.get_experiment_by_name("live-ring")
        found = c.search_runs([exp.experiment_id]) if exp else []
        return found[0].info.run_id if found else proc.poll() is not None

    rid = _until(the_run, 180, 0.5)
    assert isinstance(rid, str), (workdir / "child.log").read_text()[-3000:]
    ready = lambda: len(c.list_artifacts(rid, "checkpoints")) >= checkpoints or proc.poll()  # noqa: E731
    assert _until(ready, 180, 0.5) is True, (workdir / "child.log").read_text()[-3000:]
    assert _until(lambda: len(_steps(c, rid, "train/d_loss")) >= 3, 60, 0.2)
    return rid


def _assert_each_point_once(c, rid: str, key: str, last: int | None = None) -> list[int]:
    steps = _steps(c, rid, key)
    assert steps, f"no {key}"
    top = max(steps) if last is None else last
    assert sorted(steps) == list(range(10, top + 1, 10)), f"{key}: lost or duplicated points"
    return steps


@pytest.mark.slow
def test_a_server_gone_for_good_fails_the_run_fast_and_sync_uploads_its_spool(
    workdir, server, monkeypatch
):
    url, procs, restart = server
    limit = 6.0
    env = _child_env(url, limit)
    recipe = LONG.replace("checkpoint_every = 200", "checkpoint_every = 100")
    proc = _start_run(workdir, recipe, env)
    from mlflow import MlflowClient

    c = MlflowClient(url)
    try:
        rid = _training_run(c, proc, workdir)
        before = {f.path for f in c.list_artifacts(rid, "checkpoints")}
        stopped = time.time()
        _stop(procs[0])
        proc.wait(limit + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    out = (workdir / "child.log").read_text()
    took = time.time() - stopped
    print(f"stopped the server; the run exited {took:.1f} s later (limit {limit:g} s)")
    assert proc.returncode == 2, out[-3000:]
    assert f"the tracking server {url} has not answered for" in out
    assert f"limit of {limit:g} s (GAN_PIPE_TRACKING_TIMEOUT)" in out
    assert f"gan-pipe sync {rid}" in out and "Traceback" not in out
    assert took < limit + 60, f"the run took {took:.0f} s to stop"  # no 2-minute hangs

    spool = workdir / "gan-pipe-spool" / rid
    assert json.loads((spool / "end.json").read_text())["status"] == "FAILED"
    kept = (spool / "items.jsonl").read_text()
    assert "checkpoint-" in kept, "no checkpoint was kept while the server was down"
    assert (spool / "metrics.jsonl").stat().st_size > 0

    restart()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    for key, value in env.items():
        if key.startswith(("GAN_PIPE_", "MLFLOW_HTTP")):
            monkeypatch.setenv(key, value)
    res = runner.invoke(app, ["sync"])
    assert res.exit_code == 0 and f"run {rid}: synced" in res.output, res.output
    assert not spool.exists()
    run_ = c.get_run(rid)
    assert run_.info.status == "FAILED" and liveness.HEARTBEAT not in run_.data.tags
    assert "TrackingUnavailable" in run_.data.tags["gan_pipe.error"]
    for key in ("train/d_loss", "train/g_loss"):
        steps = _assert_each_point_once(c, rid, key)
    hist = c.get_metric_history(rid, "train/d_loss")
    assert max(m.timestamp for m in hist) / 1000 > stopped, "nothing logged in the outage landed"
    after = {f.path for f in c.list_artifacts(rid, "checkpoints")}
    assert after > before  # the checkpoints written in the outage

    res = runner.invoke(app, ["sync"])  # again: nothing left, nothing duplicated
    assert res.exit_code == 0 and "nothing spooled" in res.output, res.output
    assert _steps(c, rid, "train/d_loss") == steps

    last = max(int(p.split("-")[-1].split(".")[0]) for p in after)
    res = runner.invoke(app, ["resume", rid, "--steps", str(last + 20)])
    assert res.exit_code == 0, res.output
    assert f"resuming from step {last}" in res.output
    assert c.get_run(rid).info.status == "FINISHED"


@pytest.mark.slow
def test_a_short_outage_is_ridden_out_and_no_point_is_lost(workdir, server):
    url, procs, restart = server
    env = _child_env(url, 150)
    steps = 1500
    recipe = LONG.replace("steps = 1000000", f"steps = {steps}").replace(
        "checkpoint_every = 200", "checkpoint_every = 300"
    )
    proc = _start_run(workdir, recipe, env)
    from mlflow import MlflowClient

    c = MlflowClient(url)
    try:
        rid = _training_run(c, proc, workdir)
        _stop(procs[0])
        time.sleep(3)
        restart()  # down for the 3 s and the server's start
        proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    out = (workdir / "child.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    assert f"the tracking server {url} does not answer" in out  # the outage was seen
    assert f"the tracking server {url} answers again" in out
    assert c.get_run(rid).info.status == "FINISHED"
    for key in ("train/d_loss", "train/g_loss"):
        _assert_each_point_once(c, rid, key, last=steps)
    ckpts = sorted(f.path for f in c.list_artifacts(rid, "checkpoints"))
    assert ckpts == [f"checkpoints/checkpoint-{s:07d}.pt" for s in range(300, steps + 1, 300)]
    assert not (workdir / "gan-pipe-spool" / rid).exists()
