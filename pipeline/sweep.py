"""``gan-pipe sweep``: plan a study, find what already ran, run the rest, aggregate.

The order matters for the store: the store and the experiment are created (and an sqlite
schema migrated) once, here, before any worker starts; the study's tree (parent and variant
runs) exists before the first seed run nests under it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .host import PluginHost
from .stats import Summary
from .study import (
    KIND_SEED,
    KIND_STUDY,
    KIND_VARIANT,
    PARENT,
    TAG_KIND,
    TAG_SEED,
    TAG_STUDY,
    TAG_STUDY_RUN,
    TAG_VARIANT,
    TAG_VARIANT_KEY,
    StudySpec,
    Variant,
    plan_variants,
)
from .study_aggregate import all_runs, log_variant
from .study_exec import SeedOutcome, SeedTask, engine, resume_points, threads_per_job

DONE = "FINISHED"


@dataclass
class VariantResult:
    label: str
    run_id: str
    counts: Counter
    summaries: dict[str, Summary] = field(default_factory=dict)
    rates: dict[str, Summary] = field(default_factory=dict)


@dataclass
class StudyResult:
    name: str
    run_id: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    variants: list[VariantResult]
    counts: Counter
    skipped: int
    ran: int
    expected: int = 0  # seed runs the study asks for (variants x seeds)

    @property
    def complete(self) -> bool:
        """Every seed run of every variant FINISHED (a worker that died before its run
        existed counts as missing, not as fine)."""
        return self.counts["FINISHED"] >= self.expected


@dataclass
class Options:
    executor: str = "local"
    jobs: int = 1
    address: str | None = None
    gpus_per_run: float = 0.0
    cpus_per_run: float = 1.0
    dry_run: bool = False
    progress: bool = True


# ------------------------------------------------------------------ the tree
def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _find_or_create(
    client: Any, exp_id: str, filter_string: str, name: str, tags: dict[str, str]
) -> tuple[Any, bool]:
    """(run, created): the newest run matching the filter, RUNNING again, or a new one."""
    found = all_runs(client, [exp_id], filter_string)
    if found:
        run = max(found, key=lambda r: r.info.start_time or 0)
        client.update_run(run.info.run_id, status="RUNNING")
        return run, False
    return client.create_run(exp_id, run_name=name, tags=tags), True


def study_run(client: Any, exp_id: str, spec: StudySpec) -> Any:
    tags = {TAG_KIND: KIND_STUDY, TAG_STUDY: spec.name}
    if spec.description:
        tags["mlflow.note.content"] = spec.description
    filt = f"tags.{TAG_KIND} = 'study' and tags.{TAG_STUDY} = {_quote(spec.name)}"
    run, created = _find_or_create(client, exp_id, filt, spec.name, tags)
    if created:
        from mlflow.entities import Param

        params = {
            "study.recipes": ",".join(Path(r).name for r in spec.recipes),
            "study.grid": json.dumps(spec.grid),
            "study.set": json.dumps(spec.set),
        }
        client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
    client.set_tag(run.info.run_id, "gan_pipe.seeds", _seed_text(spec.seeds))
    if spec.metrics:  # gan-pipe compare shows these by default
        client.set_tag(run.info.run_id, "gan_pipe.study_metrics", ",".join(spec.metrics))
    client.log_dict(run.info.run_id, spec.model_dump(mode="json"), "study/study.json")
    return run


def _seed_text(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def variant_run(client: Any, exp_id: str, parent: str, spec: StudySpec, v: Variant) -> Any:
    tags = {
        TAG_KIND: KIND_VARIANT,
        TAG_STUDY: spec.name,
        TAG_VARIANT: v.label,
        TAG_VARIANT_KEY: v.key,
        PARENT: parent,
    }
    filt = f"tags.{PARENT} = {_quote(parent)} and tags.{TAG_VARIANT_KEY} = {_quote(v.key)}"
    run, created = _find_or_create(client, exp_id, filt, v.label, tags)
    if created:
        from mlflow.entities import Param

        from .tracking import _param_value

        items = [Param(k, _param_value(val)) for k, val in v.params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[i : i + 100])
        client.log_text(run.info.run_id, v.resolved.text, f"recipe/{v.recipe_path.name}")
    return run


def newest_seed_runs(client: Any, exp_id: str, study_run_id: str) -> dict[tuple[str, int], Any]:
    """(variant key, seed) -> the newest seed run of this study."""
    newest: dict[tuple[str, int], Any] = {}
    for r in all_runs(client, [exp_id], f"tags.{TAG_STUDY_RUN} = {_quote(study_run_id)}"):
        tags = r.data.tags
        if tags.get(TAG_KIND) != KIND_SEED or TAG_SEED not in tags:
            continue
        key = (tags.get(TAG_VARIANT_KEY, ""), int(tags[TAG_SEED]))
        if key not in newest or (r.info.start_time or 0) > (newest[key].info.start_time or 0):
            newest[key] = r
    return newest


@contextlib.contextmanager
def study_lock(uri: str, name: str) -> Iterator[None]:
    """One process at a time runs a study of a local store (a second would run its seeds
    twice). Servers have no such lock: do not start one study twice against a server."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl
    import hashlib

    db = Path(uri[len("sqlite:///") :])
    tag = hashlib.sha256(name.encode()).hexdigest()[:12]
    with open(db.with_name(f"{db.name}.study-{tag}.lock"), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"study {name!r} is being run by another gan-pipe process on {db}; wait for "
                "it to end (or stop it) and run the study again: finished seeds are kept"
            ) from None
        yield


# ------------------------------------------------------------------ running
def seed_tasks(
    spec: StudySpec,
    variants: list[Variant],
    variant_ids: dict[str, str],
    study_run_id: str,
    todo: list[tuple[Variant, int]],
    uri: str,
    opts: Options,
    resumes: dict[tuple[str, int], tuple[str, int]] | None = None,
) -> list[SeedTask]:
    threads = threads_per_job(opts.jobs) if opts.executor == "local" else int(opts.cpus_per_run)
    tasks = []
    for v, seed in todo:
        tags = {
            TAG_KIND: KIND_SEED,
            TAG_STUDY: spec.name,
            TAG_STUDY_RUN: study_run_id,
            TAG_VARIANT: v.label,
            TAG_VARIANT_KEY: v.key,
            TAG_SEED: str(seed),
        }
        tasks.append(
            SeedTask(
                recipe_name=v.recipe_path.name,
                recipe_source=str(v.recipe_path),
                recipe_text=v.resolved.text,
                overrides=tuple(v.overrides),
                seed=seed,
                label=v.label,
                parent_run_id=variant_ids[v.key],
                tags=tuple(tags.items()),
                tracking_uri=uri,
                threads=max(1, threads),
                progress=opts.progress and opts.jobs == 1 and opts.executor == "local",
                resume_run_id=(resumes or {}).get((v.key, seed), (None, 0))[0],
            )
        )
    return tasks


def run_study(
    spec: StudySpec,
    plugins: PluginHost,
    opts: Options,
    echo: Callable[[str], None] = print,
) -> StudyResult:
    import mlflow

    from .tracking import client as tracking_client
    from .tracking import get_or_create_experiment

    experiment, variants = plan_variants(spec, plugins.registry)
    client, artifact_location = tracking_client()
    uri = mlflow.get_tracking_uri()
    if opts.dry_run:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else None
    else:
        exp_id = get_or_create_experiment(client, experiment, artifact_location)
    with study_lock(uri, spec.name):
        return _run_locked(spec, variants, client, uri, experiment, exp_id, opts, echo)


def _run_locked(spec, variants, client, uri, experiment, exp_id, opts, echo) -> StudyResult:
    if opts.dry_run:
        return _dry_run(spec, variants, client, uri, experiment, exp_id, echo)
    run = engine(opts.executor, opts.jobs, opts.address, opts.gpus_per_run, opts.cpus_per_run)
    parent = study_run(client, exp_id, spec)
    parent_id = parent.info.run_id
    vruns = {v.key: variant_run(client, exp_id, parent_id, spec, v) for v in variants}
    variant_ids = {k: r.info.run_id for k, r in vruns.items()}
    newest = newest_seed_runs(client, exp_id, parent_id)
    todo = _todo(spec, variants, newest)
    resumes = _resumes(client, newest, todo)
    skipped = len(variants) * len(spec.seeds) - len(todo)
    echo(_plan_line(spec, experiment, variants, skipped, todo, resumes))
    for (key, _seed), r in newest.items():  # a RUNNING seed run here was left by a killed study
        if r.info.status == "RUNNING" and key in variant_ids:
            client.set_terminated(r.info.run_id, status="KILLED")
    tasks = seed_tasks(spec, variants, variant_ids, parent_id, todo, uri, opts, resumes)
    try:
        _follow(run(tasks), len(tasks), echo)
    except KeyboardInterrupt:
        _close(client, [parent_id, *variant_ids.values()], "KILLED")
        raise
    return _finish(
        spec,
        variants,
        client,
        exp_id,
        experiment,
        uri,
        parent_id,
        variant_ids,
        skipped,
        len(tasks),
        echo,
    )


def _dry_run(spec, variants, client, uri, experiment, exp_id, echo) -> StudyResult:
    """What a sweep would run, from the store as it is; writes nothing."""
    filt = f"tags.{TAG_KIND} = 'study' and tags.{TAG_STUDY} = {_quote(spec.name)}"
    found = all_runs(client, [exp_id], filt) if exp_id else []
    parent_id = max(found, key=lambda r: r.info.start_time or 0).info.run_id if found else ""
    newest = newest_seed_runs(client, exp_id, parent_id) if parent_id else {}
    todo = _todo(spec, variants, newest)
    resumes = _resumes(client, newest, todo)
    skipped = len(variants) * len(spec.seeds) - len(todo)
    plan = _plan_line(spec, experiment, variants, skipped, todo, resumes)
    echo(plan + " (dry run: no run is written)")
    for v, s in todo:
        run_id, step = resumes.get((v.key, s), (None, 0))
        how = f"would resume: run {run_id} from step {step}:" if run_id else "would run:"
        echo(f"  {how} {v.label} seed {s}")
    return _result(spec, parent_id, experiment, exp_id or "", uri, [], Counter(), skipped, 0)


def _todo(spec: StudySpec, variants: list[Variant], newest: dict) -> list[tuple[Variant, int]]:
    return [(v, s) for v in variants for s in spec.seeds if _status(newest, v, s) != DONE]


def _resumes(client: Any, newest: dict, todo: list[tuple[Variant, int]]) -> dict:
    """(variant key, seed) -> (run id, checkpoint step) of the killed seed runs to resume:
    not those whose checkpoint is of the last step (killed while evaluating; run again)."""
    total = {(v.key, s): v.resolved.recipe.train.steps for v, s in todo}
    points = resume_points(client, {k: r for k, r in newest.items() if k in total})
    return {k: p for k, p in points.items() if total[k] is None or p[1] < total[k]}


def _plan_line(spec, experiment, variants, skipped, todo, resumes) -> str:
    line = (
        f"study {spec.name!r} in experiment {experiment!r}: {len(variants)} variant(s) x "
        f"{len(spec.seeds)} seed(s); {skipped} finished before, {len(todo)} to run"
    )
    return line + (f" ({len(resumes)} resumed from a checkpoint)" if resumes else "")


def _status(newest: dict, v: Variant, seed: int) -> str | None:
    r = newest.get((v.key, seed))
    return r.info.status if r is not None else None


def _follow(outcomes: Iterator[SeedOutcome], total: int, echo: Callable[[str], None]) -> None:
    started = time.monotonic()
    for i, o in enumerate(outcomes, 1):
        took = time.monotonic() - started
        eta = f", ~{took / i * (total - i) / 60:.0f} min left" if i < total else ""
        line = f"[{i}/{total} {took:.0f}s{eta}] {o.label} seed {o.seed}: {o.status}"
        if o.run_id:
            line += f" (run {o.run_id})"
        if o.note:
            line += f" - {o.note}"
        if o.error:
            line += f" - {o.error.splitlines()[-1][:300]}"
        echo(line)


def _close(client: Any, run_ids: list[str], status: str) -> None:
    for rid in run_ids:
        client.set_terminated(rid, status=status)


def _finish(
    spec, variants, client, exp_id, experiment, uri, parent_id, variant_ids, skipped, ran, echo
) -> StudyResult:
    newest = newest_seed_runs(client, exp_id, parent_id)
    total: Counter = Counter()
    results = []
    for v in variants:
        runs = [newest[(v.key, s)] for s in spec.seeds if (v.key, s) in newest]
        counts = Counter(r.info.status for r in runs)
        finished = [r for r in runs if r.info.status == DONE]
        summaries, rates = log_variant(
            client, variant_ids[v.key], finished, v.success, spec.metrics
        )
        vid = variant_ids[v.key]
        client.log_batch(vid, metrics=_count_metrics("seeds", counts, len(spec.seeds)))
        client.set_terminated(vid, status=DONE if counts[DONE] == len(spec.seeds) else "FAILED")
        total += counts
        results.append(VariantResult(v.label, vid, counts, summaries, rates))
    expected = len(variants) * len(spec.seeds)
    metrics = _count_metrics("study", total, expected)
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    metrics += [Metric("study/n_variants", len(variants), ts, 0)]
    client.log_batch(parent_id, metrics=metrics)
    client.set_terminated(parent_id, status=DONE if total[DONE] == expected else "FAILED")
    result = _result(spec, parent_id, experiment, exp_id, uri, results, total, skipped, ran)
    result.expected = expected
    return result


def _count_metrics(prefix: str, counts: Counter, expected: int) -> list[Any]:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    values = {
        "n_seeds": expected,
        "n_finished": counts[DONE],
        "n_failed": counts["FAILED"],
        "n_killed": counts["KILLED"],
        "n_missing": expected - sum(counts.values()),
    }
    return [Metric(f"{prefix}/{k}", float(v), ts, 0) for k, v in values.items()]


def _result(spec, parent_id, experiment, exp_id, uri, variants, counts, skipped, ran):
    return StudyResult(
        spec.name, parent_id, experiment, exp_id, uri, variants, counts, skipped, ran
    )
