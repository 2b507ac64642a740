"""Running a study's seed runs: in this process, in a local process pool, or as Ray tasks.

The same function, :func:`run_seed`, runs one seed in every case; the engines only decide
where. No scheduler of our own: ``concurrent.futures`` locally, Ray on a cluster.

Every worker logs to the same tracking URI. The store (and the experiment) are created once
by the study before any worker starts (an sqlite store's schema migration races otherwise).
"""

from __future__ import annotations

import os
import re
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class SeedTask:
    """Everything a worker needs, as plain data (it may run on another machine)."""

    recipe_name: str  # the file's name, for messages and the run's recipe tag
    recipe_source: str  # the path the study read it from
    recipe_text: str
    overrides: tuple[str, ...]
    seed: int
    label: str
    parent_run_id: str
    tags: tuple[tuple[str, str], ...]
    tracking_uri: str
    threads: int
    progress: bool = False
    resume_run_id: str | None = None  # a KILLED seed run to continue from its checkpoint


@dataclass(frozen=True)
class SeedOutcome:
    label: str
    seed: int
    status: str  # FINISHED, FAILED, KILLED
    run_id: str | None
    error: str = ""
    note: str = ""  # how it ran: resumed, or why a resume was not possible


def run_seed(task: SeedTask) -> SeedOutcome:
    """Run one seed of one variant; never raises for a failed run (it is recorded FAILED).

    A task with ``resume_run_id`` continues that KILLED run from its newest checkpoint, in
    place (as ``gan-pipe resume`` does); if the run cannot be resumed at all (no readable
    checkpoint, its training already complete) the seed is trained again as a new run."""
    import torch

    from .host import PluginHost

    os.environ["MLFLOW_TRACKING_URI"] = task.tracking_uri
    torch.set_num_threads(max(1, task.threads))
    note = ""
    try:
        plugins = PluginHost.load()
        if task.resume_run_id:
            resumed, note = _resume_seed(task, plugins)
            if resumed is not None:
                return resumed
        run_id = _fresh_seed(task, plugins)
        return SeedOutcome(task.label, task.seed, "FINISHED", run_id, note=note)
    except Exception as e:  # noqa: BLE001 - the run is marked FAILED; the study goes on
        error = "".join(traceback.format_exception_only(type(e), e)).strip()
        return SeedOutcome(task.label, task.seed, "FAILED", _failed_run_id(e), error, note)


def _fresh_seed(task: SeedTask, plugins: Any) -> str:
    """A new seed run from step 0; its run id."""
    from .recipe import load_recipe
    from .runner import run
    from .study import toml_value

    overrides = [
        *task.overrides,
        f"experiment.seed={task.seed}",
        f"experiment.run_name={toml_value(f'{task.label} · seed {task.seed}')}",
        f"train.progress={toml_value(task.progress)}",
    ]
    with tempfile.TemporaryDirectory(prefix="gan-pipe-seed-") as tmp:
        path = Path(tmp) / task.recipe_name
        path.write_text(task.recipe_text, encoding="utf-8")
        resolved = load_recipe(path, plugins.registry, overrides)
    resolved.source = task.recipe_source
    result = run(resolved, plugins, parent_run_id=task.parent_run_id, extra_tags=dict(task.tags))
    return result.run_id


def _resume_seed(task: SeedTask, plugins: Any) -> tuple[SeedOutcome | None, str]:
    """(outcome, "") once the KILLED run was resumed and FINISHED; (None, why) when it could
    not be resumed and was left as it was, so the caller trains the seed again. A resumed run
    that fails raises, like a fresh one."""
    from .reevaluate import resume
    from .study import toml_value

    run_id = str(task.resume_run_id)
    try:
        resume(run_id, plugins, overrides=[f"train.progress={toml_value(task.progress)}"])
    except UserError as e:
        if not _left_as_it_was(run_id):  # reopened: the resumed training itself failed
            raise
        why = str(e).splitlines()[0][:300]
        return None, f"run {run_id} could not be resumed ({why}): trained again from step 0"
    return SeedOutcome(task.label, task.seed, "FINISHED", run_id, note="resumed"), ""


def _left_as_it_was(run_id: str) -> bool:
    """True when a refused resume left the run KILLED and no other process writes it (one
    that won the claim to it is resuming it: the seed must not be trained twice)."""
    from .liveness import liveness
    from .tracking import client

    run = client()[0].get_run(run_id)
    return run.info.status == "KILLED" and not liveness(run).alive


_CHECKPOINT = re.compile(r"checkpoint-(\d+)\.pt$")


def resume_points(client: Any, runs: dict[Any, Any]) -> dict[Any, tuple[str, int]]:
    """key -> (run id, step of its newest checkpoint) for the seed runs a re-run of a study
    resumes: KILLED (Ctrl-C, SIGTERM, ``gan-pipe runs --mark-killed``) or RUNNING (left by a
    study that was itself killed; it marks them KILLED before it starts) with a checkpoint.
    FAILED runs are not resumed: a divergence would recur exactly, and a crash may have been
    fixed in code the checkpoint does not capture, so they are trained again from step 0."""
    out = {}
    for key, r in runs.items():
        if r.info.status not in ("KILLED", "RUNNING"):
            continue
        names = [f.path for f in client.list_artifacts(r.info.run_id, "checkpoints")]
        steps = [int(m[1]) for n in names if (m := _CHECKPOINT.search(n))]
        if steps:
            out[key] = (r.info.run_id, max(steps))
    return out


def _failed_run_id(e: BaseException) -> str | None:
    for note in getattr(e, "__notes__", []):
        if note.startswith("MLflow run "):
            return note.split()[2]
    return None


def _init_worker(threads: int) -> None:
    import signal

    import torch

    torch.set_num_threads(max(1, threads))
    # Ctrl-C goes to the whole process group: the study decides, workers finish their
    # bookkeeping (the runner marks an interrupted run KILLED) when told to stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)


# ------------------------------------------------------------------ engines
def threads_per_job(jobs: int) -> int:
    """Cores shared out between ``jobs`` processes, so N jobs do not oversubscribe them."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def run_local(tasks: list[SeedTask], jobs: int) -> Iterator[SeedOutcome]:
    """Outcomes as they complete: in this process for one job, else a spawn process pool.

    At most ``jobs`` tasks are handed to the pool at a time, so that after Ctrl-C no queued
    seed starts; running seeds get the interrupt (a terminal sends it to the whole process
    group; it is passed on if they did not), end their step, checkpoint and end KILLED."""
    if jobs <= 1:
        for task in tasks:
            yield run_seed(task)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(tasks[0].threads if tasks else 1,),
    )
    todo = iter(tasks)
    in_flight: dict[Any, SeedTask] = {}
    try:
        while True:
            while len(in_flight) < jobs and (task := next(todo, None)) is not None:
                in_flight[pool.submit(run_seed, task)] = task
            if not in_flight:
                return
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in done:
                yield _outcome(fut, in_flight.pop(fut))
    except (KeyboardInterrupt, GeneratorExit):
        _stop_workers(pool, in_flight)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_workers(pool: Any, in_flight: dict[Any, SeedTask], grace: float = 20.0) -> None:
    """Let interrupted seeds end KILLED with their checkpoint; pass the interrupt on to
    workers that did not get it, and terminate what still runs after that."""
    import signal
    from concurrent.futures import wait

    _, running = wait(in_flight, timeout=grace)
    procs = list(getattr(pool, "_processes", {}).values())
    if running:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        _, running = wait(running, timeout=3 * grace)
    if running:
        for p in procs:
            if p.is_alive():
                p.terminate()


def _outcome(fut: Any, task: SeedTask) -> SeedOutcome:
    try:
        return fut.result()
    except Exception as e:  # noqa: BLE001 - a worker that died (killed, out of memory)
        return SeedOutcome(task.label, task.seed, "FAILED", None, f"worker died: {e!r}")


def run_ray(
    tasks: list[SeedTask],
    address: str | None,
    gpus_per_run: float,
    cpus_per_run: float,
) -> Iterator[SeedOutcome]:
    """Seed runs as Ray tasks on an existing cluster (``address``) or a local Ray instance.
    gan-pipe and the study's plugins must be installed where the tasks run, and the tracking
    URI must be reachable from there (an ``mlflow server``, not a local sqlite file, on a
    multi-machine cluster)."""
    ray = _import_ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address} if address else {}
        ray.init(log_to_driver=False, include_dashboard=False, **kwargs)
    remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(run_seed)
    refs = {remote.remote(t): t for t in tasks}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a task whose worker died
                    t = refs[ref]
                    yield SeedOutcome(t.label, t.seed, "FAILED", None, f"Ray task failed: {e}")
    finally:
        for ref in pending:
            ray.cancel(ref)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(
            "--executor ray needs Ray: pip install 'gan-pipe[ray]' (or pip install ray)"
        ) from None
    return ray


def engine(
    executor: str, jobs: int, address: str | None, gpus_per_run: float, cpus_per_run: float
) -> Callable[[list[SeedTask]], Iterator[SeedOutcome]]:
    """The engine that runs seed tasks; checked before the study writes anything."""
    if executor == "local":
        return lambda tasks: run_local(tasks, jobs)
    if executor == "ray":
        _import_ray()
        return lambda tasks: run_ray(tasks, address, gpus_per_run, cpus_per_run)
    raise UserError(f"--executor {executor!r}: expected 'local' or 'ray'")
