"""The core runner: data -> build -> train -> evaluate -> report inside one MLflow run.

The runner knows no GAN variant: every stage is a hook, and the built-in implementations are
a plugin like any other (``gan_pipe.plugins.stages``).
"""

from __future__ import annotations

import json
import logging
import platform
import random
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, distributed
from .context import RunContext
from .errors import UserError
from .evaluation import evaluate_and_log
from .host import PluginHost
from .recipe import ResolvedRecipe, flatten
from .tracking import Tracker

log = logging.getLogger(__name__)

STAGES = ("data", "build", "train", "evaluate", "report")


@dataclass
class RunResult:
    run_id: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    run_name: str
    results: dict[str, float]
    steps: int
    device: str
    perf: dict[str, float]


def throughput(ctx: RunContext, start_step: int, seconds: float) -> dict[str, float]:
    """Training speed of this process's part of the run (a resumed run counts from its
    checkpoint): generator steps per second and real samples per second (each generator step
    shows ``n_critic`` batches of real data to D)."""
    train = ctx.recipe.train
    steps = max(0, ctx.step - start_step)
    rate = steps / seconds if seconds > 0 else float("nan")
    return {
        "perf/train_time_s": seconds,
        "perf/steps_per_s": rate,
        "perf/samples_per_s": rate * train.batch_size * train.n_critic,
    }


def pick_device(requested: str) -> Any:
    """'auto' is the GPU when there is one; an explicit device that is absent is a user error."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"experiment.device = {requested!r} but this machine has no usable CUDA GPU "
                "(torch.cuda.is_available() is False); use device = 'auto' or 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"experiment.device = {requested!r} but only "
                f"{torch.cuda.device_count()} GPU(s) exist"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("experiment.device = 'mps' but MPS is not available; use 'auto' or 'cpu'")
    return dev


def rank_device(requested: str) -> Any:
    """:func:`pick_device`; under torchrun, after joining the process group, this rank's
    GPU (``LOCAL_RANK``) or the CPU."""
    distributed.start()
    return distributed.local_device(pick_device(requested))


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_tags(resolved: ResolvedRecipe, plugins: PluginHost, device: Any) -> dict[str, str]:
    """Versions, device, commit, and which plugin (and distribution) gave each component."""
    import torch

    tags = {
        "gan_pipe.version": __version__,
        "gan_pipe.recipe": resolved.source,
        "torch.version": torch.__version__,
        "device": device_name(device),
    }
    for path, comp in resolved.components.items():
        replaces = f", replaces {comp.replaces}" if comp.replaces else ""
        tags[f"gan_pipe.component.{path}"] = f"{comp.name} (plugin {comp.plugin}{replaces})"
        info = plugins.infos.get(comp.plugin)
        if info is not None:
            tags[f"gan_pipe.provider.{path}"] = (
                f"{info.distribution}=={info.version} ({comp.plugin})"
            )
    commit = git_commit(Path(resolved.source).resolve().parent) or git_commit(Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.commit"] = commit
    if resolved.recipe.experiment.description:
        tags["mlflow.note.content"] = resolved.recipe.experiment.description
    if resolved.overrides:
        tags["gan_pipe.overrides"] = json.dumps(resolved.overrides)
    tags.update(resolved.recipe.experiment.tags)
    return tags


def _list_keys(items: list[dict[str, Any]], key_of: Callable[[dict[str, Any]], str]) -> list[str]:
    """A name per list entry (``parzen``, ``fine_divergences``), indexed only where two
    entries share one (``hinge#0``, ``hinge#1``)."""
    names = [key_of(item) for item in items]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _not_applicable(d: dict[str, Any]) -> set[str]:
    """Settings that the rest of the recipe makes irrelevant (decay of a constant schedule,
    stratified-noise settings of normal noise, betas of SGD, ...): not worth a param column."""
    train, noise = d["train"], d["noise"]
    drop = set()
    if train["lr_schedule"] == "constant":
        drop |= {"train.decay_rate", "train.decay_steps", "train.staircase"}
    if noise["distribution"] != "stratified":
        drop |= {"noise.range", "noise.jitter"}
    optimizers = {train["optimizer"]}
    for net in ("generator", "discriminator"):
        optimizers.add(train[net].get("optimizer") or train["optimizer"])
    if "adam" not in optimizers:
        drop.add("train.betas")
    if not optimizers & {"sgd", "rmsprop"}:
        drop.add("train.momentum")
    return drop


def run_params(resolved_dict: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe as MLflow params: flattened, list entries keyed by their component
    name (``evaluate.metrics.parzen.n_samples``, not ``evaluate.metrics.0.params.n_samples``),
    unset (None) and inapplicable settings left out."""
    d = dict(resolved_dict)
    lists = {
        "regularizers": (d.pop("regularizers"), lambda r: r["name"]),
        "callbacks": (d.pop("callbacks"), lambda c: c["name"]),
        "report": (d.pop("report"), lambda r: r["name"]),
        "evaluate.metrics": (
            d.pop("evaluate")["metrics"],
            lambda m: (m.get("prefix") or "") + m["name"],
        ),
    }
    params = {k: v for k, v in flatten(d).items() if v is not None}
    for section, (items, key_of) in lists.items():
        if not items:
            continue
        keys = _list_keys(items, key_of)
        params[section] = ",".join(keys)
        for key, item in zip(keys, items, strict=True):
            for name, value in flatten(item.get("params", {})).items():
                if value is not None:
                    params[f"{section}.{key}.{name}"] = value
    for name in _not_applicable(resolved_dict):
        params.pop(name, None)
    return params


def new_context(
    resolved: ResolvedRecipe, plugins: PluginHost, tracker: Any, device: Any
) -> RunContext:
    """The context every stage of one run (or one re-evaluation) shares."""
    return RunContext(
        recipe=resolved.recipe,
        hooks=plugins,
        tracker=tracker,
        device=device,
        components=resolved.components,
        params=resolved.params,
    )


def recipe_as_run(resolved: ResolvedRecipe) -> str:
    """The TOML of the recipe that ran: the file itself, or with ``--set`` overrides applied."""
    if resolved.text and not resolved.overrides:
        return resolved.text
    import tomli_w

    header = "".join(f"#   --set {item}\n" for item in resolved.overrides)
    header = f"# {resolved.source} as run, with these overrides:\n{header}\n" if header else ""
    return header + tomli_w.dumps(resolved.data or resolved.to_dict())


def run(
    resolved: ResolvedRecipe,
    plugins: PluginHost,
    on_stage: Callable[[str], None] | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> RunResult:
    """Run a validated recipe. The MLflow run ends FINISHED, FAILED or KILLED, never open.

    ``parent_run_id`` nests the run under another (a study's variant run); ``extra_tags`` are
    gan-pipe's own tags for it (a study's variant and seed)."""
    recipe = resolved.recipe
    distributed.check_global_batch(recipe.train.batch_size)
    device = rank_device(recipe.experiment.device)  # before the run: a user error writes nothing
    seed_everything(recipe.experiment.seed)
    stem = Path(resolved.source).stem or recipe.experiment.name
    run_name = recipe.experiment.run_name or f"{stem}-{secrets.token_hex(3)}"
    tags = run_tags(resolved, plugins, device)
    tags.update(extra_tags or {})
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tracker = distributed.tracker_for_rank(
        lambda: Tracker.start(recipe.experiment.name, run_name, tags=tags)
    )
    ctx = new_context(resolved, plugins, tracker, device)

    def setup() -> None:
        resolved_dict = resolved.to_dict()
        world = {distributed.WORLD_SIZE_PARAM: distributed.world_size()}
        tracker.log_params(run_params(resolved_dict) | world)
        tracker.log_text(recipe_as_run(resolved), "recipe/recipe.toml")
        if resolved.overrides and resolved.text:
            tracker.log_text(resolved.text, "recipe/original.toml")
        tracker.log_dict(resolved_dict, "recipe/resolved.json")

    return execute(ctx, run_name, setup, on_stage)


def _try(error: BaseException, what: str, step: Callable[[], Any]) -> None:
    """Run one step of the error path; its own failure becomes a note on ``error``."""
    try:
        step()
    except Exception as e:  # noqa: BLE001 - the original error must still be raised
        log.warning(
            "%s failed while handling %s: %s: %s", what, type(error).__name__, type(e).__name__, e
        )
        error.add_note(f"(while handling it, {what} failed: {type(e).__name__}: {e})")


def _closed_note(tracker: Tracker) -> str:
    """Where the run's FAILED status is: in the store, or in its spool for gan-pipe sync."""
    if tracker.spool.pending():
        return (
            f"MLflow run {tracker.run_id} ends FAILED with this error once gan-pipe sync "
            f"{tracker.run_id} uploads what is kept in {tracker.spool.dir}"
        )
    return f"MLflow run {tracker.run_id} is marked FAILED with this error"


def _run_stage(ctx: RunContext, stage: str, perf: dict[str, float]) -> None:
    """One stage through its hook; training also records its throughput in ``perf``."""
    hooks, main = ctx.hooks, distributed.is_main()
    if stage == "data":
        distributed.main_first(lambda: hooks.data(ctx))  # one download, then reads
    elif stage == "build":
        hooks.build(ctx)
    elif stage == "train":
        resume = ctx.state.get("resume")
        start_step = int(resume["step"]) if resume else 0
        t0 = time.perf_counter()
        hooks.train(ctx)
        distributed.stop(together=True)  # the processes communicate no more
        perf.update(throughput(ctx, start_step, time.perf_counter() - t0))
        ctx.tracker.log_metrics(perf, ctx.step)
        if main:
            hooks.on_train_end(ctx)
    elif stage == "evaluate":
        evaluate_and_log(ctx, final=True)
        ctx.tracker.flush()
    elif stage == "report":
        hooks.report(ctx)


def execute(
    ctx: RunContext,
    run_name: str,
    setup: Callable[[], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> RunResult:
    """Run the five stages in ``ctx``'s open MLflow run and close it with the true status."""
    tracker = ctx.tracker
    stage = "setup"
    main = distributed.is_main()
    started = time.perf_counter()
    perf: dict[str, float] = {}
    try:
        if setup is not None:
            setup()
        for stage in STAGES:
            if not main and stage in ("evaluate", "report"):
                break  # rank 0 alone evaluates and reports (no metric is distributed)
            if on_stage and main:
                on_stage(stage)
            _run_stage(ctx, stage, perf)
    except KeyboardInterrupt as e:
        _try(e, "tagging the stage", lambda: tracker.set_tags({"gan_pipe.stage": stage}))
        tracker.end("KILLED", error=e)
        raise
    except BaseException as e:
        # Whatever fails from here on (the store, a plugin's error hook) is noted on ``e``:
        # the run still ends FAILED and the error that failed it is the one raised.
        _try(
            e,
            "tagging the failed stage",
            lambda: tracker.set_tags({"gan_pipe.failed_stage": stage}),
        )
        failed = e  # (``e`` itself is unbound for closures once the block ends)
        _try(e, "the on_stage_error hook", lambda: ctx.hooks.on_stage_error(ctx, stage, failed))
        _try(e, "closing the run", lambda: tracker.end("FAILED", error=failed))
        e.add_note(_closed_note(tracker))
        raise
    perf["perf/wall_time_s"] = time.perf_counter() - started
    tracker.log_metrics({"perf/wall_time_s": perf["perf/wall_time_s"]}, ctx.step)
    tracker.end("FINISHED")
    return RunResult(
        run_id=tracker.run_id,
        experiment=ctx.recipe.experiment.name,
        experiment_id=tracker.experiment_id,
        tracking_uri=tracker.uri,
        run_name=run_name,
        results=dict(ctx.results),
        steps=ctx.step,
        device=str(ctx.device),
        perf=perf,
    )
