"""What every ``gan-pipe`` command module shares: the typer app, the recipe arguments, loading
a recipe with the plugins, printing a user's error, and running training (``run``, ``resume``,
``sweep``) with its messages and exit codes. :mod:`gan_pipe.cli` adds the training commands to
:data:`app` (``sweep`` from :mod:`gan_pipe.cli_sweep`, ``score`` from :mod:`gan_pipe.cli_score`),
:mod:`gan_pipe.cli_tools` the inspecting ones; all import the app from here, so
``python -m gan_pipe.cli`` (whose module is ``__main__``) has every command."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from . import distributed
from .errors import RecipeError, UserError

app = typer.Typer(
    name="gan-pipe",
    help="Run GAN experiments from TOML recipes; every run is tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RecipeArg = Annotated[
    Path, typer.Argument(help="recipe file, e.g. recipes/dcgan.toml", show_default=False)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="override a key: --set train.lr=1e-4 (repeatable)", show_default=False
    ),
]


def _err(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)


def _plugins():
    """Every command's plugins: built-ins plus installed packages, broken ones warned about."""
    from .host import PluginHost

    host = PluginHost.load()
    for line in host.failure_lines():
        typer.secho(f"warning: {line}", fg=typer.colors.YELLOW, err=True)
    return host


def _load(recipe: Path, overrides: list[str] | None):
    from .recipe import load_recipe

    plugins = _plugins()
    return load_recipe(recipe, plugins.registry, overrides), plugins


def _fail(e: BaseException) -> typer.Exit:
    if isinstance(e, RecipeError):
        _err(str(e))
        typer.echo("Nothing was run and nothing was written to MLflow.", err=True)
    else:
        _err(str(e))
    return typer.Exit(getattr(e, "exit_code", 2))


def _interrupted(e: KeyboardInterrupt) -> str:
    """What Ctrl-C (or SIGTERM) left: the trainer puts the newest checkpoint's step on the
    exception (None: no checkpoint); without it the interrupt came outside training."""
    if not hasattr(e, "checkpoint_step"):
        return "interrupted outside training; the MLflow run is marked KILLED"
    if e.checkpoint_step is None:
        return (
            "interrupted before the first training step; the MLflow run is marked KILLED and "
            "has no checkpoint, so there is nothing to resume: run the recipe again"
        )
    n = distributed.world_size()
    return (
        f"interrupted; the MLflow run is marked KILLED with a checkpoint of step "
        f"{e.checkpoint_step}: continue it with gan-pipe resume {getattr(e, 'run_id', 'RUN_ID')}"
        + (f" --nproc {n}" if n > 1 else "")
    )


def _train(start: Callable[[], Any], interrupted: str | None = None) -> Any:
    """Run or resume training; map what can happen to messages and exit codes."""
    try:
        return start()
    except KeyboardInterrupt as e:
        if distributed.is_main():  # one message for all the processes of a torchrun launch
            _err(interrupted or _interrupted(e))
        raise typer.Exit(130) from None
    except RecipeError as e:
        raise _fail(e) from None
    except UserError as e:  # a missing data file, say: the user's to fix, no traceback
        _err(str(e))
        for note in getattr(e, "__notes__", []):
            typer.echo(f"{note}.", err=True)
        raise typer.Exit(2) from None
    except Exception as e:  # a bug: the traceback (with the run's note) helps its report
        traceback.print_exc()
        _err(f"the run failed: {type(e).__name__}: {e}")
        raise typer.Exit(1) from None
