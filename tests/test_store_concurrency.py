"""Several processes opening a fresh store at once: MLflow's sqlite schema migration races
unless gan-pipe serialises it, and creating one experiment twice must not fail either."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from gan_pipe.tracking import Tracker
    start = float(sys.argv[1])
    time.sleep(max(0.0, start - time.time()))   # all children open the store together
    t = Tracker.start("shared-experiment", f"run-{os.getpid()}")
    t.log_metrics({"x": 1.0}, 0)
    t.end("FINISHED")
    print(t.experiment_id)
    """
)


def test_concurrent_first_runs_in_a_fresh_directory_all_succeed(tmp_path):
    import time

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    start = time.time() + 6.0  # imports take a few seconds; then all start at once
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(start)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert len({out.strip() for out, _ in outs}) == 1  # one experiment, shared

    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.get_experiment_by_name("shared-experiment")
    runs = c.search_runs([exp.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 5
    # and the store still works for a later process
    later = subprocess.run(
        [sys.executable, "-c", CHILD, "0"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert later.returncode == 0, later.stderr[-3000:]


def _create(uri: str, q) -> None:
    from mlflow import MlflowClient

    from gan_pipe.tracking import get_or_create_experiment

    q.put(get_or_create_experiment(MlflowClient(uri), "same-name", None))


def test_get_or_create_experiment_when_another_process_creates_it_first(tmp_path, monkeypatch):
    """The loser of the creation race gets the winner's id instead of RESOURCE_ALREADY_EXISTS."""
    from mlflow import MlflowClient

    from gan_pipe.tracking import ensure_store, get_or_create_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = ensure_store(uri)
    real_get = MlflowClient.get_experiment_by_name
    calls = []

    def racing_get(self, name):
        calls.append(name)
        if len(calls) == 1:  # first look: not there yet; meanwhile another process creates it
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            p = ctx.Process(target=_create, args=(uri, q))
            p.start()
            p.join(120)
            q.get(timeout=5)
            return None
        return real_get(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", racing_get)
    exp_id = get_or_create_experiment(c, "same-name", None)
    assert exp_id == real_get(c, "same-name").experiment_id
    assert len(calls) == 2
