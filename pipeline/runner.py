"""The core runner: data -> build -> train -> evaluate -> report inside one MLflow run.

The runner knows no GAN variant: every stage is a hook, and the built-in implementations are
a plugin like any other (``gan_pipe.plugins.stages``).
"""

from __future__ import annotations

import json
import platform
import random
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .context import RunContext
from .errors import UserError
from .evaluation import evaluate
from .facade import Plugins
from .recipe import ResolvedRecipe, flatten
from .tracking import Tracker

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


def run_tags(resolved: ResolvedRecipe, plugins: Plugins, device: Any) -> dict[str, str]:
    """Versions, device, commit, and which plugin (and distribution) gave each component."""
    import torch

    tags = {
        "gan_pipe.version": __version__,
        "gan_pipe.recipe": resolved.source,
        "torch.version": torch.__version__,
        "device": device_name(device),
    }
    for path, comp in resolved.components.items():
        tags[f"gan_pipe.component.{path}"] = f"{comp.name} (plugin {comp.plugin})"
        info = plugins.set.infos.get(comp.plugin)
        if info is not None:
            tags[f"gan_pipe.provider.{path}"] = (
                f"{info.distribution}=={info.version} ({comp.plugin})"
            )
    commit = git_commit(Path(resolved.source).resolve().parent) or git_commit(Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.commit"] = commit
    tags.update(resolved.recipe.experiment.tags)
    return tags


def new_context(
    resolved: ResolvedRecipe, plugins: Plugins, tracker: Any, device: Any
) -> RunContext:
    """The context every stage of one run (or one re-evaluation) shares."""
    return RunContext(
        recipe=resolved.recipe,
        plugins=plugins,
        tracker=tracker,
        device=device,
        components=resolved.components,
        params=resolved.params,
    )


def run(
    resolved: ResolvedRecipe,
    plugins: Plugins,
    on_stage: Callable[[str], None] | None = None,
) -> RunResult:
    """Run a validated recipe. The MLflow run ends FINISHED, FAILED or KILLED, never open."""
    recipe = resolved.recipe
    device = pick_device(recipe.experiment.device)  # before the run: a user error writes nothing
    seed_everything(recipe.experiment.seed)
    run_name = f"{recipe.experiment.name}-{secrets.token_hex(3)}"
    tracker = Tracker(recipe.experiment.name, run_name, tags=run_tags(resolved, plugins, device))
    ctx = new_context(resolved, plugins, tracker, device)

    def setup() -> None:
        resolved_dict = resolved.to_dict()
        tracker.log_params(flatten(resolved_dict))
        tracker.log_text(resolved.text or json.dumps(resolved_dict, indent=2), "recipe/recipe.toml")
        tracker.log_dict(resolved_dict, "recipe/resolved.json")

    return execute(ctx, run_name, setup, on_stage)


def execute(
    ctx: RunContext,
    run_name: str,
    setup: Callable[[], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> RunResult:
    """Run the five stages in ``ctx``'s open MLflow run and close it with the true status."""
    plugins, tracker = ctx.plugins, ctx.tracker
    stage = "setup"
    try:
        if setup is not None:
            setup()
        for stage in STAGES:
            if on_stage:
                on_stage(stage)
            if stage == "data":
                plugins.data(ctx)
            elif stage == "build":
                plugins.build(ctx)
            elif stage == "train":
                plugins.train(ctx)
                plugins.on_train_end(ctx)
            elif stage == "evaluate":
                results = evaluate(ctx)
                ctx.results.update(results)
                tracker.log_metrics({f"eval/{k}": v for k, v in results.items()}, ctx.step)
                tracker.flush()
            elif stage == "report":
                plugins.report(ctx)
    except KeyboardInterrupt as e:
        tracker.set_tags({"gan_pipe.stage": stage})
        tracker.end("KILLED", error=e)
        raise
    except BaseException as e:
        tracker.set_tags({"gan_pipe.failed_stage": stage})
        try:
            plugins.on_stage_error(ctx, stage, e)
        finally:
            tracker.end("FAILED", error=e)
            e.add_note(f"MLflow run {tracker.run_id} is marked FAILED with this error")
        raise
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
    )
