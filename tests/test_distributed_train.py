"""Training under DDP, two gloo processes in this machine: what the processes must agree on.

Each test spawns two processes (``torch.multiprocessing``, torchrun's environment set by
hand) that run :func:`gan_pipe.runner.run` or :func:`gan_pipe.reevaluate.resume` in-process,
so a test can act on one process alone (a signal, a clock, a NaN) and count what each does:
the ``torch.distributed.all_reduce`` calls of every step, the checkpoints each saves, the
weights each ends with, the gloo threads left after the group is destroyed.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import write
from .test_compile import needs_compile
from .test_distributed import _client, _final_checkpoint, _free_port
from .test_resume_exact import RECIPE, assert_same_state

SLOW = pytest.mark.slow
#: 12 steps, a logging step every 3 (the RECIPE's log_every)
SHORT = ["train.steps=12"]


def gloo_threads() -> int:
    """How many of gloo's threads this process runs (Linux: their names say gloo)."""
    names = []
    for t in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{t}/comm").read_text())
        except OSError:
            continue
    return sum("gloo" in n for n in names)


def _act(trainer: Any, action: str) -> None:
    """What a test does to one process before one of its steps."""
    if action == "sigterm":
        signal.raise_signal(signal.SIGTERM)
    elif action == "clock":  # this process's clock jumps an hour ahead
        clock = trainer._clock
        trainer._clock = lambda: clock() + 3600.0
    elif action == "nan":  # a weight of D goes NaN on this process only
        with torch.no_grad():
            next(trainer.D.parameters()).view(-1)[0] = math.nan
    elif action == "fail":
        raise RuntimeError("injected failure")


def _instrument(plan: dict[int, str], seen: dict[str, Any]) -> None:
    """Count all_reduce calls by step and checkpoints saved; run ``plan``'s actions (step ->
    action, each once) before the steps it names."""
    import torch.distributed as td

    from gan_pipe.plugins.train import Trainer

    now = {"step": 0}
    calls: collections.Counter[int] = collections.Counter()
    real_all_reduce, real_step, real_save = td.all_reduce, Trainer._train_step, torch.save

    def all_reduce(*args: Any, **kwargs: Any) -> Any:
        calls[now["step"]] += 1
        return real_all_reduce(*args, **kwargs)

    def train_step(self: Any) -> None:
        now["step"] = self.ctx.step + 1  # the step about to be trained
        if now["step"] in plan:
            _act(self, plan.pop(now["step"]))
        real_step(self)

    def save(obj: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and "sampler_perm" in obj:
            seen["written"].append(obj["step"])
        real_save(obj, *args, **kwargs)

    td.all_reduce, Trainer._train_step, torch.save = all_reduce, train_step, save
    seen.update(calls=calls, written=[])


def _process(rank: int, port: int, where: str, job: dict[str, Any], out: Any) -> None:
    """One of two processes: ``job`` is a run (``sets``) or a resume (``resume``), with
    ``plans`` (rank -> {step: action})."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GAN_PIPE_STRICT_PLUGINS="0")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(where)
    torch.set_num_threads(1)
    from gan_pipe import distributed
    from gan_pipe.plugins.train import Trainer
    from gan_pipe.recipe import load_recipe
    from gan_pipe.reevaluate import resume
    from gan_pipe.runner import run
    from gan_pipe.testing import plugins_with

    seen: dict[str, Any] = {}
    _instrument(job.get("plans", {}).get(rank, {}), seen)
    kept = {}
    real_fit = Trainer.fit

    def fit(self: Any) -> int:
        kept["trainer"] = self
        return real_fit(self)

    Trainer.fit = fit
    plugins = plugins_with()
    try:
        if "resume" in job:
            result = resume(job["resume"], plugins)
        else:
            result = run(load_recipe(Path("tiny.toml"), plugins.registry, job["sets"]), plugins)
        seen["end"] = ("ok", result.run_id, result.steps)
    except KeyboardInterrupt as e:
        seen["end"] = ("KeyboardInterrupt", e.run_id, e.checkpoint_step)  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001 - reported to the test
        seen["end"] = (type(e).__name__, str(e), None)
    finally:
        distributed.stop()
    t = kept["trainer"]
    # as lists: tensors in a queue live in shared memory that ends with the process
    seen["nets"] = {n: _lists(net.state_dict()) for n, net in (("G", t.G), ("D", t.D))}
    seen.update(step=t.ctx.step, saved=t.saved_step, threads=gloo_threads())
    seen["calls"] = dict(seen["calls"])
    out.put((rank, seen))


def _lists(state: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: v.tolist() for k, v in state.items()}


def _tensors(state: dict[str, list]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in state.items()}


def two_processes(where: Path, job: dict[str, Any]) -> dict[int, dict[str, Any]]:
    import torch.multiprocessing as mp

    out = mp.get_context("spawn").Queue()
    mp.spawn(_process, args=(_free_port(), str(where), job, out), nprocs=2)
    return dict(out.get(timeout=60) for _ in range(2))


@pytest.fixture(scope="module")
def where(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("ddp-train")
    write(where / "tiny.toml", RECIPE)
    return where


@pytest.fixture(scope="module")
def straight(where) -> dict[int, dict[str, Any]]:
    """An uninterrupted 2-process run of 12 steps, a checkpoint every 3."""
    return two_processes(where, {"sets": [*SHORT, "train.checkpoint_every=3"]})


def _checkpoint(where: Path, run_id: str, step: int) -> dict[str, Any]:
    client = _client(where)
    path = client.download_artifacts(
        run_id, f"checkpoints/checkpoint-{step:07d}.pt", str(where / f"dl-{run_id}-{step}")
    )
    state = torch.load(path, weights_only=True)
    state.pop("recipe")
    return state


def _checkpoints(where: Path, run_id: str) -> list[str]:
    return sorted(Path(f.path).name for f in _client(where).list_artifacts(run_id, "checkpoints"))


# ------------------------------------------------------------------ one process
def test_one_process_makes_no_collective(workdir, monkeypatch):
    """A run with checkpoints by steps and by minutes, and a stop asked by a signal, calls no
    torch.distributed function at all in one process."""
    import torch.distributed as td

    from gan_pipe.recipe import load_recipe
    from gan_pipe.runner import run
    from gan_pipe.testing import plugins_with

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a collective in one process")

    for name in ("all_reduce", "broadcast", "barrier", "broadcast_object_list"):
        monkeypatch.setattr(td, name, refuse)
    from .test_resume_exact import _signal_at

    _signal_at(monkeypatch, "_train_step", 8, "before", signal.SIGTERM)
    plugins = plugins_with()
    sets = [*SHORT, "train.checkpoint_minutes=0.0001"]
    recipe = load_recipe(write(workdir / "tiny.toml", RECIPE), plugins.registry, sets)
    with pytest.raises(KeyboardInterrupt) as e:
        run(recipe, plugins)
    assert e.value.checkpoint_step == 8  # type: ignore[attr-defined]  # the step it was in


# ------------------------------------------------------------------ two processes
@SLOW
def test_the_only_collectives_are_at_logging_steps_and_off_log_checkpoints(where, straight):
    """Per step, outside DDP's own gradient all-reduce: one all_reduce at each logging step
    (losses, NaN check, stop and clock flags together) and one at a checkpoint between
    logging steps (its NaN check); none at the other steps. The group is gone after stop()."""
    got = two_processes(where, {"sets": [*SHORT, "train.checkpoint_every=4"]})
    for rank in (0, 1):
        g = got[rank]
        assert g["end"][0] == "ok" and g["step"] == 12, g["end"]
        assert g["calls"] == {3: 1, 4: 1, 6: 1, 8: 1, 9: 1, 12: 1}, (rank, g["calls"])
        assert g["threads"] == 0  # gloo's threads joined by destroy_process_group
    # checkpoint_every = 3: every checkpoint at a logging step, no collective of its own
    assert straight[0]["calls"] == straight[1]["calls"] == {3: 1, 6: 1, 9: 1, 12: 1}
    assert straight[0]["written"] == [3, 6, 9, 12] and straight[1]["written"] == []


@SLOW
def test_a_signal_to_one_process_stops_both_after_the_same_step_and_resumes_exactly(
    where, straight
):
    """SIGTERM to rank 1 alone before step 4: both stop after logging step 6 (the next
    agreement), rank 0 checkpoints it, the run is KILLED; resumed on 2 processes it ends
    bit-identical to the uninterrupted run."""
    got = two_processes(where, {"sets": SHORT, "plans": {1: {4: "sigterm"}}})
    for rank in (0, 1):
        assert got[rank]["end"][0] == "KeyboardInterrupt" and got[rank]["end"][2] == 6
        assert got[rank]["step"] == 6 and got[rank]["threads"] == 0
    run_id = got[0]["end"][1]
    assert got[0]["written"] == [5, 6] and got[1]["written"] == []  # checkpoint_every = 5
    assert _client(where).get_run(run_id).info.status == "KILLED"
    resumed = two_processes(where, {"resume": run_id})
    assert resumed[0]["end"] == ("ok", run_id, 12) and resumed[1]["end"][0] == "ok"
    assert_same_state(
        _final_checkpoint(where, straight[0]["end"][1]), _final_checkpoint(where, run_id)
    )


@SLOW
def test_checkpoint_minutes_passed_on_one_process_saves_on_rank_0_and_resumes_exactly(
    where, straight
):
    """train.checkpoint_minutes with rank 1's clock an hour ahead from step 5: rank 0 alone
    writes a checkpoint at logging step 6, both count it as saved; it equals the
    uninterrupted run's step 6. Rank 0 then fails at step 8 (rank 1 fails with it, no
    hang); resumed from step 6 on 2 processes the run ends bit-identical."""
    sets = [*SHORT, "train.checkpoint_every=0", "train.checkpoint_minutes=1"]
    plans = {1: {5: "clock"}, 0: {8: "fail"}}
    got = two_processes(where, {"sets": sets, "plans": plans})
    assert got[0]["end"][:2] == ("RuntimeError", "injected failure")
    assert got[1]["end"][0] == "RuntimeError"  # its peer went away in a collective
    assert got[0]["written"] == [6] and got[1]["written"] == []
    assert got[0]["saved"] == got[1]["saved"] == 6
    assert got[0]["threads"] == got[1]["threads"] == 0
    run_id = (
        _client(where)
        .search_runs(
            [_client(where).get_experiment_by_name("exact").experiment_id],
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )[0]
        .info.run_id
    )
    assert _checkpoints(where, run_id) == ["checkpoint-0000006.pt"]
    base = straight[0]["end"][1]
    assert_same_state(_checkpoint(where, base, 6), _checkpoint(where, run_id, 6))
    resumed = two_processes(where, {"resume": run_id})
    assert resumed[0]["end"] == ("ok", run_id, 12)
    assert_same_state(_final_checkpoint(where, base), _final_checkpoint(where, run_id))


@SLOW
def test_a_nan_on_one_process_rolls_both_back_and_they_end_alike(where, workdir):
    """A NaN in rank 1's D before step 5, train.on_nonfinite = 'rollback': the NaN spreads
    through the averaged gradients, logging step 6 finds it on both, both roll back to step
    3 and finish bit-identical to each other, and within rounding of one process given the
    same NaN at the same step."""
    sets = [*SHORT, 'train.on_nonfinite="rollback"', "train.checkpoint_every=0"]
    got = two_processes(where, {"sets": sets, "plans": {1: {5: "nan"}}})
    for rank in (0, 1):
        assert got[rank]["end"][0] == "ok" and got[rank]["step"] == 12, got[rank]["end"]
    assert_same_state(got[0]["nets"], got[1]["nets"])
    tags = _client(where).get_run(got[0]["end"][1]).data.tags
    assert "rolled back to step 3" in tags["gan_pipe.rollback.1"]
    one = _one_process_with_nan(workdir, sets)
    for net in ("G", "D"):
        two = _tensors(got[0]["nets"][net])
        torch.testing.assert_close(two, one[net], rtol=1e-5, atol=1e-5)


@SLOW
@needs_compile
def test_compiled_nets_train_under_ddp_as_eager_ones(where, straight):
    """train.compile = true on 2 processes: the compiled nets in DDP end as the eager 2-process
    run's within the tolerance of test_compile (the generated kernels reassociate sums), the
    two processes bit-identical to each other, with the same collectives per step."""
    got = two_processes(where, {"sets": [*SHORT, "train.compile=true", "train.checkpoint_every=3"]})
    for rank in (0, 1):
        assert got[rank]["end"][0] == "ok" and got[rank]["step"] == 12, got[rank]["end"]
        assert got[rank]["calls"] == {3: 1, 6: 1, 9: 1, 12: 1} and got[rank]["threads"] == 0
    assert_same_state(got[0]["nets"], got[1]["nets"])
    for net in ("G", "D"):
        eager, compiled = _tensors(straight[0]["nets"][net]), _tensors(got[0]["nets"][net])
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    logged = _client(where).get_run(got[0]["end"][1]).data.metrics
    assert logged["perf/compile_seconds"] > 0


def _one_process_with_nan(workdir: Path, sets: list[str]) -> dict[str, Any]:
    from gan_pipe.plugins.train import Trainer
    from gan_pipe.recipe import load_recipe
    from gan_pipe.runner import run
    from gan_pipe.testing import plugins_with

    seen: dict[str, Any] = {}
    real = Trainer._train_step
    plan = {5: "nan"}

    def step(self: Any) -> None:
        seen["trainer"] = self
        if self.ctx.step + 1 in plan:
            _act(self, plan.pop(self.ctx.step + 1))
        real(self)

    Trainer._train_step = step  # type: ignore[method-assign]
    try:
        plugins = plugins_with()
        run(load_recipe(write(workdir / "tiny.toml", RECIPE), plugins.registry, sets), plugins)
    finally:
        Trainer._train_step = real  # type: ignore[method-assign]
    t = seen["trainer"]
    return {"G": t.G.state_dict(), "D": t.D.state_dict()}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
