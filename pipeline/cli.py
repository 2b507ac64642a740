"""The ``gan-pipe`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from . import __version__, distributed
from .cli_common import (  # noqa: F401  (re-exported: they were here)
    RecipeArg,
    SetOpt,
    _err,
    _fail,
    _interrupted,
    _load,
    _plugins,
    _train,
    app,
)
from .cli_score import _json_values, _score_help, _ScoreCommand, score  # noqa: F401
from .cli_sweep import sweep
from .errors import GanPipeError, UserError
from .evaluation import is_setting

NprocOpt = Annotated[
    int | None,
    typer.Option(
        "--nproc",
        min=1,
        help="train in N processes on this machine with DistributedDataParallel (starts "
        "torchrun; the global batch train.batch_size is split among them)",
        show_default=False,
    ),
]


def _launch(nproc: int, argv: list[str]) -> None:
    """``gan-pipe ... --nproc N``: the same command in N processes through torchrun."""
    if distributed.launched():
        _err("--nproc is for gan-pipe itself; under torchrun, leave it out")
        raise typer.Exit(2)
    raise typer.Exit(distributed.launch(nproc, argv))


def _stage(name: str) -> None:
    typer.secho(f"[{name}]", fg=typer.colors.CYAN, err=True)


@app.command()
def run(recipe: RecipeArg, set_: SetOpt = None, nproc: NprocOpt = None) -> None:
    """Run one experiment: data -> build -> train -> evaluate -> report."""
    try:
        resolved, plugins = _load(recipe, set_)
        if nproc and nproc > 1:
            distributed.check_global_batch(resolved.recipe.train.batch_size, nproc)
    except UserError as e:
        raise _fail(e) from None
    if nproc and nproc > 1:
        _launch(nproc, ["run", str(recipe), *(f"--set={s}" for s in set_ or [])])
    from .runner import run as run_recipe

    name = resolved.recipe.experiment.name
    typer.echo(f"gan-pipe {__version__}: running {name} from {recipe}", err=True)
    result = _train(lambda: run_recipe(resolved, plugins, on_stage=_stage))
    if distributed.is_main():  # the other processes of a torchrun launch say nothing
        _summary(result)


# registered here, after run: --help lists the commands in the order they are added
app.command()(sweep)
app.command(cls=_ScoreCommand)(score)


def _summary(result) -> None:
    """What a finished run prints: id, headline metrics, where to look."""
    from .tracking import ui_command

    typer.echo("")
    typer.secho(f"run {result.run_name} finished", fg=typer.colors.GREEN, bold=True)
    typer.echo(f"  run id:     {result.run_id}")
    typer.echo(f"  experiment: {result.experiment} (id {result.experiment_id})")
    typer.echo(f"  steps:      {result.steps} on {result.device}")
    perf = result.perf
    if "perf/steps_per_s" in perf:
        typer.echo(
            f"  speed:      {perf['perf/steps_per_s']:.3g} steps/s, "
            f"{perf['perf/samples_per_s']:.4g} samples/s "
            f"({perf['perf/train_time_s']:.1f} s training, "
            f"{perf.get('perf/wall_time_s', float('nan')):.1f} s in all)"
        )
    headline = {k: v for k, v in result.results.items() if not is_setting(k, v)}
    for key, value in sorted(headline.items()):
        typer.echo(f"  eval/{key}: {value:.6g}")
    if len(headline) < len(result.results):
        n = len(result.results) - len(headline)
        typer.echo(f"  (and {n} sizes and settings of the metrics, under eval/ in MLflow)")
    typer.echo(f"  store:      {result.tracking_uri}")
    typer.echo(f"Open the MLflow UI: {ui_command(result.tracking_uri)}")


@app.command()
def evaluate(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a gan-pipe run")],
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", "-m", help="evaluate these metrics instead of the recipe's"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="change evaluate.* only: --set evaluate.metrics.0.params.n_samples=20000",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Re-evaluate a run's final generator into the same run (other metrics, more samples).

    The new values are added at the run's last step; MLflow shows the latest. With the run's own settings they equal its logged values (evaluation noise is seeded by the run's seed and step); the settings used are kept in eval/reevaluate-<time>/settings.json.
    """  # noqa: E501
    from .reevaluate import reevaluate

    plugins_ = _plugins()
    try:
        results, step = reevaluate(run_id, plugins_, metric, set_)
    except UserError as e:
        raise _fail(e) from None
    typer.secho(f"run {run_id}: evaluated the generator of step {step}", fg=typer.colors.GREEN)
    for key, value in sorted(results.items()):
        typer.echo(f"  eval/{key}: {value:.6g}")


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a gan-pipe run")],
    steps: Annotated[
        int | None,
        typer.Option("--steps", help="train until this many generator steps in all"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="train.steps, train.epochs or train.progress only"),
    ] = None,
    nproc: NprocOpt = None,
) -> None:
    """Continue a run from its last checkpoint, in the same MLflow run (after Ctrl-C, or for more steps).

    Nets, optimisers, schedules, batch order and RNG states are restored, so the result is the same as one uninterrupted run.
    """  # noqa: E501
    from .reevaluate import resume as resume_run

    if nproc and nproc > 1:
        more = ["--steps", str(steps)] if steps is not None else []
        _launch(nproc, ["resume", run_id, *more, *(f"--set={s}" for s in set_ or [])])
    plugins_ = _plugins()
    note = lambda m: typer.echo(m, err=True)  # noqa: E731
    result = _train(lambda: resume_run(run_id, plugins_, steps, set_, on_stage=_stage, note=note))
    if distributed.is_main():
        _summary(result)


@app.command()
def compare(
    ids: Annotated[
        list[str] | None,
        typer.Argument(
            help="study, variant or run ids (or study names)",
            metavar="STUDY_OR_RUN_ID",
            show_default=False,
        ),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            "-e",
            help="without ids: every study in it (or its top-level runs); with ids: where "
            "study names are looked up",
        ),
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option("--sort", help="order by a metric, highest first; -METRIC: lowest first"),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", "-m", help="show these metrics (repeatable; default: all)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="one Markdown table on stdout (for docs)")
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="also write an HTML report with curves", dir_okay=False),
    ] = None,
) -> None:
    """Compare variants over seeds: mean ± 95% interval (n) per metric, params that differ.

    A study id gives a row per variant (FINISHED seed runs only), a variant id its row, plain run ids are grouped when their params differ only in the seed. --experiment NAME alone compares the studies in NAME (its top-level runs if it has none). ▲/▼ mark the highest/lowest mean when its 95% interval misses the next one's. --html of one study is also logged to it as compare/report.html.
    """  # noqa: E501
    from .compare import main as run_compare

    try:
        note = lambda m: typer.echo(m, err=True)  # noqa: E731
        run_compare(ids or [], experiment, metric, sort, as_json, html, note, markdown)
    except UserError as e:
        raise _fail(e) from None


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"gan-pipe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="print the version"
        ),
    ] = False,
) -> None:
    """gan-pipe: a plugin-based GAN experiment pipeline with MLflow tracking."""


# the inspecting and maintaining commands register themselves on app
from . import cli_tools  # noqa: E402, F401


def main() -> None:
    try:
        app()
    except GanPipeError as e:  # a plugin contract error, not the user's fault
        _err(str(e))
        sys.exit(1)


if __name__ == "__main__":
    main()
