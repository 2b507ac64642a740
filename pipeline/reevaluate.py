"""``gan-pipe evaluate RUN_ID``: run metrics again on a logged generator, into the same run.

The run's own resolved recipe (artifact ``recipe/resolved.json``) rebuilds the dataset and
the networks through the same stage hooks a run uses; the last checkpoint supplies the
weights. Only ``evaluate.*`` may be changed (other metrics, more samples): anything else
would describe a different experiment than the one the run records.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import RecipeError, UserError
from .facade import Plugins
from .recipe import apply_override, parse_override, resolve
from .runner import new_context, pick_device, seed_everything
from .tracking import Tracker


def _latest_checkpoint(tracker: Tracker) -> str:
    files = [f.path for f in tracker.client.list_artifacts(tracker.run_id, "checkpoints")]
    files = sorted(f for f in files if f.endswith(".pt"))
    if not files:
        raise UserError(
            f"run {tracker.run_id} has no checkpoint artifact to load the generator from"
        )
    return files[-1]


def reevaluate(
    run_id: str,
    plugins: Plugins,
    metrics: list[str] | None = None,
    overrides: list[str] | None = None,
) -> tuple[dict[str, float], int]:
    """Evaluate the run's final generator again; returns (results, step)."""
    import torch
    from mlflow.exceptions import MlflowException

    try:
        tracker = Tracker("", "", attach_to=run_id)
    except MlflowException:
        raise UserError(
            f"no run {run_id!r} in the store {_store()}; "
            "run gan-pipe evaluate from the directory that holds mlflow.db, or set "
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
        source = f"run {run_id}"
        if metrics:
            data["evaluate"]["metrics"] = [{"name": m, "params": {}} for m in metrics]
        for item in overrides or []:
            keys, value = parse_override(item)
            if keys[0] != "evaluate":
                raise RecipeError(
                    "--set",
                    [f"{item!r}: only evaluate.* can change when re-evaluating a run"],
                )
            apply_override(data, keys, value)
        resolved = resolve(data, plugins.registry, source)
        ckpt_path = tracker.client.download_artifacts(run_id, _latest_checkpoint(tracker), tmp)
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)

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
    ctx.step = int(state["step"])
    ctx.generator.eval()
    try:
        results = plugins.evaluate(ctx)
        tracker.log_metrics({f"eval/{k}": v for k, v in results.items()}, ctx.step)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        tracker.log_dict(
            {"evaluate": resolved.to_dict()["evaluate"], "results": results, "step": ctx.step},
            f"eval/reevaluate-{stamp}.json",
        )
        tracker.set_tags({"gan_pipe.reevaluated": stamp})
    finally:
        tracker.end()
    return results, ctx.step


def _store() -> str:
    from .tracking import default_store

    return default_store()[0]
