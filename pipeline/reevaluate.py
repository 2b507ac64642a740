"""Working on logged runs: ``gan-pipe evaluate RUN_ID`` runs metrics again on a run's
generator, ``gan-pipe resume RUN_ID`` continues its training; both write into that run.

The run's own resolved recipe (artifact ``recipe/resolved.json``) rebuilds the dataset and
the networks through the same stage hooks a run uses; the last checkpoint supplies the
weights. evaluate may change only ``evaluate.*`` (other metrics, more samples), resume only
the length of training: anything else would describe a different experiment than the one
the run records.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import distributed
from .errors import RecipeError, UserError
from .evaluation import evaluate_and_log
from .host import PluginHost
from .liveness import ERROR_TAGS, liveness, refuse_if_alive, stale_message
from .recipe import ResolvedRecipe, apply_override, parse_override, resolve
from .runner import (
    RunResult,
    execute,
    new_context,
    pick_device,
    rank_device,
    seed_everything,
)
from .spool import sync_before_resume
from .tracking import Tracker

log = logging.getLogger(__name__)


def _checkpoints(tracker: Tracker) -> list[str]:
    files = [f.path for f in tracker.client.list_artifacts(tracker.run_id, "checkpoints")]
    files = sorted(f for f in files if f.endswith(".pt"))
    if not files:
        raise UserError(
            f"run {tracker.run_id} has no checkpoint artifact to load the generator from"
        )
    return files


def load_checkpoint(tracker: Tracker, tmp: str) -> dict[str, Any]:
    """The newest checkpoint of the run that loads; a corrupt or empty one (a process killed
    while writing, a damaged store) falls back to the one before, saying so. A pickle that
    holds more than tensors and plain values is refused outright: it could run code, and
    something other than gan-pipe put it there."""
    import pickle

    import torch

    run_id = tracker.run_id
    unreadable: list[str] = []
    for name in reversed(_checkpoints(tracker)):
        path = tracker.client.download_artifacts(run_id, name, tmp)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            called = re.search(r"GLOBAL ([\w.]+)", str(e))
            if called is None:  # damaged, not dangerous: fall back below
                unreadable.append(f"{name} (UnpicklingError: not a readable checkpoint)")
                continue
            raise UserError(
                f"run {run_id}: artifact {name} is a pickle that calls {called[1]}, not a "
                "checkpoint of tensors (torch.load(weights_only=True) refused it); it is not "
                "loaded because it could run code, nor replaced by an older checkpoint. "
                "gan-pipe never writes such a file: delete the artifact and check who can "
                "write to the store"
            ) from None
        except Exception as e:  # noqa: BLE001 - torch raises EOFError, RuntimeError, KeyError...
            first = (str(e).splitlines() or [""])[0][:120]
            unreadable.append(f"{name} ({type(e).__name__}: {first})")
            continue
        if not (isinstance(state, dict) and "generator" in state and "step" in state):
            unreadable.append(f"{name} (not a gan-pipe checkpoint: no generator and step)")
            continue
        if unreadable:
            log.warning(
                "run %s: the newest checkpoint could not be read, using %s instead: %s",
                run_id,
                name,
                "; ".join(unreadable),
            )
        return state
    raise UserError(f"run {run_id}: no checkpoint could be read: {'; '.join(unreadable)}")


def load_logged_run(
    run_id: str, plugins: PluginHost, edit: Callable[[dict[str, Any]], None], command: str
) -> tuple[Tracker, ResolvedRecipe, dict[str, Any]]:
    """(attached tracker, the run's resolved recipe after ``edit``, its last checkpoint)."""
    from mlflow.exceptions import MlflowException

    try:
        tracker = Tracker.attach(run_id)
    except MlflowException:
        raise UserError(
            f"no run {run_id!r} in the store {_store()}; "
            f"run gan-pipe {command} from the directory that holds mlflow.db, or set "
            "MLFLOW_TRACKING_URI"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.client.download_artifacts(run_id, "recipe/resolved.json", tmp)
        except (MlflowException, OSError):
            raise UserError(
                f"run {run_id} has no recipe/resolved.json: not a gan-pipe run?"
            ) from None
        data: dict[str, Any] = json.loads(Path(path).read_text())
        edit(data)
        resolved = resolve(data, plugins.registry, f"run {run_id}")
        state = load_checkpoint(tracker, tmp)
    return tracker, resolved, state


def _overrides(items: list[str] | None, allowed: tuple[str, ...], command: str):
    """An ``edit`` that applies ``--set`` items, refusing keys outside ``allowed``."""

    def edit(data: dict[str, Any]) -> None:
        for item in items or []:
            keys, value = parse_override(item)
            if not ".".join(keys).startswith(allowed):
                raise RecipeError(
                    "--set",
                    [
                        f"{item!r}: only {', '.join(a + '*' for a in allowed)} can change "
                        f"in gan-pipe {command}"
                    ],
                )
            apply_override(data, keys, value)

    return edit


def reevaluate(
    run_id: str,
    plugins: PluginHost,
    metrics: list[str] | None = None,
    overrides: list[str] | None = None,
) -> tuple[dict[str, float], int]:
    """Evaluate the run's final generator again; returns (results, step)."""
    apply = _overrides(overrides, ("evaluate.",), "evaluate")

    def edit(data: dict[str, Any]) -> None:
        if metrics:  # each once, in the order given
            names = list(dict.fromkeys(metrics))
            data["evaluate"]["metrics"] = [{"name": m, "params": {}} for m in names]
        apply(data)

    refuse_if_alive(run_id, "evaluate")
    tracker, resolved, state = load_logged_run(run_id, plugins, edit, "evaluate")
    recipe = resolved.recipe
    device = pick_device(recipe.experiment.device)
    seed_everything(recipe.experiment.seed)
    ctx = new_context(resolved, plugins, tracker, device)
    plugins.data(ctx)
    plugins.build(ctx)
    assert ctx.generator is not None
    ctx.generator.load_state_dict(state["generator"])
    if ctx.discriminator is not None and "discriminator" in state:
        ctx.discriminator.load_state_dict(state["discriminator"])
    ctx.callbacks.load_state_dict(state.get("callbacks", {}))  # an EMA: what the run scored
    ctx.step = int(state["step"])
    ctx.generator.eval()
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{secrets.token_hex(2)}"  # unique per call
    where = f"eval/reevaluate-{stamp}"
    try:
        tracker.claim("evaluated")
        results = evaluate_and_log(ctx, where, final=True)
        tracker.log_dict(
            {"evaluate": resolved.to_dict()["evaluate"], "results": results, "step": ctx.step},
            f"{where}/settings.json",
        )
        tracker.set_tags({"gan_pipe.reevaluated": stamp})
    finally:
        tracker.end()
    return results, ctx.step


def _store() -> str:
    from .tracking import default_store

    return default_store()[0]


def resume(
    run_id: str,
    plugins: PluginHost,
    steps: int | None = None,
    overrides: list[str] | None = None,
    on_stage: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> RunResult:
    """Continue training a run from its last checkpoint, in the same MLflow run.

    The checkpoint restores both nets, both optimisers and schedules, the step, the batch
    order and the RNG states, so the continued run trains exactly as an uninterrupted one.
    A run that a live process still writes is refused; ``note`` hears what was found (a
    RUNNING run whose process died, a FAILED or KILLED one) and from which step it goes on.
    """
    items = list(overrides or [])
    if steps is not None:
        items.append(f"train.steps={steps}")
    edit = _overrides(items, ("train.steps", "train.epochs", "train.progress"), "resume")
    distributed.start()
    # under torchrun rank 0 checks the run first; then every rank loads the same checkpoint
    check = (note or log.info) if distributed.is_main() else None
    found, resolved, state = distributed.main_first(
        lambda: _resumable(run_id, plugins, edit, check)
    )
    device = rank_device(resolved.recipe.experiment.device)
    if note is not None and found is not None:
        note(f"{_found(found)}; resuming from step {state['step']}")
    if not distributed.is_main():
        tracker: Any = distributed.RankTracker()
    else:  # checked: only now is the run reopened (a refused resume leaves it as it was)
        tracker = Tracker.reopen(run_id)
        for key in ERROR_TAGS:  # the failed or killed attempt's tags describe it no more
            if found is not None and key in found.data.tags:
                tracker.client.delete_tag(run_id, key)
        tracker.set_tags(
            {
                "gan_pipe.resumed_from_step": state["step"],
                "gan_pipe.resumed_world_size": distributed.world_size(),
            }
        )
    seed_everything(resolved.recipe.experiment.seed)
    ctx = new_context(resolved, plugins, tracker, device)
    ctx.state["resume"] = state
    name = tracker.run.info.run_name if distributed.is_main() else ""
    return execute(ctx, name, None, on_stage)


def _resumable(
    run_id: str,
    plugins: PluginHost,
    edit: Callable[[dict[str, Any]], None],
    check: Callable[[str], None] | None,
) -> tuple[Any, ResolvedRecipe, dict[str, Any]]:
    """(the run as found, its resolved recipe, its last checkpoint), once the run is checked
    resumable: with ``check`` (rank 0; it hears what a spool sync did), the run's spool is
    uploaded and no live process writes it; training is left to do and the global batch
    splits among the processes."""
    found = None
    if check is not None:
        sync_before_resume(run_id, check)
        found = refuse_if_alive(run_id, "resume")
    _, resolved, state = load_logged_run(run_id, plugins, edit, "resume")
    total = resolved.recipe.train.steps
    if total is not None and total <= int(state["step"]):
        raise UserError(
            f"run {run_id} has trained {state['step']} steps and its recipe asks for "
            f"{total}; ask for more with --steps N"
        )
    distributed.check_global_batch(resolved.recipe.train.batch_size)
    return found, resolved, state


def _found(run: Any) -> str:
    """The state a resumed run was found in, in words."""
    status, tags = run.info.status, run.data.tags
    if status == "RUNNING":
        return stale_message(run, liveness(run))
    error = tags.get("gan_pipe.error")
    if status in ("FAILED", "KILLED") and error:
        return f"run {run.info.run_id} was {status} ({error[:200]})"
    return f"run {run.info.run_id} was {status}"
