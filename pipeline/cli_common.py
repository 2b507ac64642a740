"""What every ``gan-pipe`` command module shares: the typer app, the recipe arguments, loading
a recipe with the plugins, and printing a user's error. :mod:`gan_pipe.cli` adds the training
commands to :data:`app`, :mod:`gan_pipe.cli_tools` the inspecting ones; both import the app
from here, so ``python -m gan_pipe.cli`` (whose module is ``__main__``) has every command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import RecipeError

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
