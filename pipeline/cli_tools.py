"""The ``gan-pipe`` commands that inspect and maintain rather than train: ``validate``,
``show``, ``plugins``, ``new-plugin``, ``runs``, ``sync`` and ``schema``. They are added to
the app of :mod:`gan_pipe.cli_common` when :mod:`gan_pipe.cli` is imported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli_common import RecipeArg, SetOpt, _fail, _load, app
from .errors import UserError


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check a recipe (structure, component names, their params) without running it."""
    try:
        resolved, _ = _load(recipe, set_)
    except UserError as e:
        raise _fail(e) from None
    typer.secho(f"{recipe}: valid", fg=typer.colors.GREEN)
    for path, comp in resolved.components.items():
        typer.echo(f"  {path:<22} {comp.kind:<13} {comp.name} (plugin {comp.plugin})")


@app.command()
def show(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Print the fully resolved recipe (every default filled in) as JSON."""
    try:
        resolved, _ = _load(recipe, set_)
    except UserError as e:
        raise _fail(e) from None
    typer.echo(json.dumps(resolved.to_dict(), indent=2))


@app.command()
def plugins(
    builtin: Annotated[
        bool, typer.Option("--builtin/--no-builtin", help="list the built-in plugins too")
    ] = True,
    params: Annotated[bool, typer.Option("--params", help="show each component's params")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List plugins, their versions and the components each provides."""
    from .host import PluginHost

    ps = PluginHost.load()
    infos = ps.describe(include_builtin=builtin)
    if as_json:
        out = [
            {
                "name": i.name,
                "package": i.distribution,
                "version": i.version,
                "builtin": i.builtin,
                "components": i.components,
                "replaces": {
                    f"{c.kind}:{c.name}": c.replaces
                    for c in ps.registry
                    if c.plugin == i.name and c.replaces
                },
            }
            for i in infos
        ]
        typer.echo(
            json.dumps({"plugins": out, "failed": [f.__dict__ for f in ps.failures]}, indent=2)
        )
        return
    by_plugin = ps.registry.by_plugin()
    for info in infos:
        tag = " (built-in)" if info.builtin else ""
        typer.secho(f"{info.name}  {info.distribution} {info.version}{tag}", bold=True)
        for comp in by_plugin.get(info.name, []):
            desc = f"  {comp.description}" if comp.description else ""
            label = comp.name + (f" (replaces {comp.replaces})" if comp.replaces else "")
            typer.echo(f"    {comp.kind:<13} {label:<18}{desc}")
            if params:
                for fname, field in comp.params.model_fields.items():
                    default = field.get_default(call_default_factory=True)
                    help_ = f"  {field.description}" if field.description else ""
                    typer.echo(f"        {fname} = {default!r}{help_}")
    for line in ps.failure_lines():
        typer.secho(f"warning: {line}", fg=typer.colors.YELLOW, err=True)


@app.command("new-plugin")
def new_plugin(
    name: Annotated[str, typer.Argument(help="component name, e.g. my-loss")],
    kind: Annotated[
        str,
        typer.Option(
            help="loss, metric, dataset, regularizer, report, architecture or callback",
        ),
    ] = "loss",
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="where to write the package (default ./gan-pipe-NAME)"),
    ] = None,
) -> None:
    """Write a plugin package: one working component, a recipe using it, tests, pyproject."""
    from .host import PluginHost
    from .scaffold import SCAFFOLD_KINDS, check_name, fields, new_plugin

    try:
        check_name(name, kind)
        target = directory or Path(fields(name, kind)["dist"])
        registered = PluginHost.load().registry.names(SCAFFOLD_KINDS[kind][1])
        files = new_plugin(name, kind, target, registered)
    except UserError as e:
        raise _fail(e) from None
    for path in files:
        typer.echo(str(path))
    typer.echo(
        f"next: pip install -e {target} && gan-pipe run {target}/recipes/{name}.toml", err=True
    )


@app.command()
def runs(
    stale: Annotated[
        bool, typer.Option("--stale", help="only RUNNING runs whose process died")
    ] = False,
    experiment: Annotated[
        str | None, typer.Option("--experiment", "-e", help="only this experiment")
    ] = None,
    mark_killed: Annotated[
        bool,
        typer.Option("--mark-killed", help="end the stale runs as KILLED (implies --stale)"),
    ] = False,
) -> None:
    """List RUNNING gan-pipe runs and whether their process is alive.

    A run is stale when its heartbeat (renewed every GAN_PIPE_FLUSH_SECONDS, default 5) is older than GAN_PIPE_STALE_SECONDS (default 3 x the interval + 30 s), or at once when it ran on this host and its pid is gone. --mark-killed ends stale runs as KILLED with the reason in the tag gan_pipe.killed_reason; continue one with gan-pipe resume RUN_ID.
    """  # noqa: E501
    from .liveness import list_runs
    from .liveness import mark_killed as mark

    try:
        found = list_runs(experiment, stale or mark_killed)
    except UserError as e:
        raise _fail(e) from None
    if not found:
        what = "stale runs" if stale or mark_killed else "RUNNING gan-pipe runs"
        where = f" in experiment {experiment!r}" if experiment else ""
        typer.echo(f"no {what}{where}", err=True)
        return
    for exp_name, run, live in found:
        state = "alive" if live.alive else "STALE"
        name = run.info.run_name or ""
        typer.echo(f"{run.info.run_id}  {state:<5}  {exp_name}/{name}  {live.describe()}")
    if mark_killed:
        for _, run, live in found:
            mark(run, live)
        typer.secho(f"marked {len(found)} run(s) KILLED", fg=typer.colors.GREEN, err=True)


@app.command()
def sync(
    run_ids: Annotated[
        list[str] | None,
        typer.Argument(help="runs to sync (default: every spooled run of the current store)"),
    ] = None,
) -> None:
    """Upload what runs kept in the local spool while the tracking server was down.

    A run whose server does not answer for GAN_PIPE_TRACKING_TIMEOUT seconds (default 180) stops, keeping its unsent metrics, tags, params, files (checkpoints) and end status in ./gan-pipe-spool/RUN_ID (GAN_PIPE_SPOOL_DIR). sync sends them, without duplicating metric points already stored, and ends the run with its recorded status; gan-pipe resume RUN_ID syncs first.
    """  # noqa: E501
    from .spool import sync as sync_runs

    try:
        sync_runs(run_ids or None, lambda m: typer.echo(m, err=True))
    except UserError as e:
        raise _fail(e) from None


@app.command()
def schema() -> None:
    """Print the JSON schema of recipes, component params included (for editors)."""
    from .host import PluginHost
    from .recipe_schema import json_schema

    typer.echo(json.dumps(json_schema(PluginHost.load().registry), indent=2))
