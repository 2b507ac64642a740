"""The ``gan-pipe`` command line."""

from __future__ import annotations

import json
import math
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from . import __version__, distributed
from .cli_common import RecipeArg, SetOpt, _err, _fail, _load, _plugins, app  # noqa: F401
from .errors import GanPipeError, RecipeError, UserError
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


@app.command()
def sweep(
    paths: Annotated[
        list[Path],
        typer.Argument(help="recipe files, or one study file (studies/*.toml)", show_default=False),
    ],
    seeds: Annotated[
        str | None,
        typer.Option("--seeds", help="20 (seeds 0-19), 0-19, 1,5,7 or 0-4,10 [default: 5]"),
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid", "-g", help="KEY=V1,V2: one variant per value (repeatable: all combinations)"
        ),
    ] = None,
    set_: SetOpt = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", min=1, help="seed runs at once [default: 1]")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="study name (default: from the file or recipes)")
    ] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="MLflow experiment for the whole study")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", "-m", help="aggregate and show only these eval metrics"),
    ] = None,
    executor: Annotated[
        str, typer.Option("--executor", help="local (process pool) or ray")
    ] = "local",
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (default: start one)")
    ] = None,
    gpus_per_run: Annotated[
        float, typer.Option("--gpus-per-run", min=0, help="GPUs per seed run (Ray)")
    ] = 0.0,
    cpus_per_run: Annotated[
        float,
        typer.Option("--cpus-per-run", min=0.1, help="CPUs (torch threads) per seed run (Ray)"),
    ] = 1.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show what would run, run nothing")
    ] = False,
) -> None:
    """Run a study: recipes and/or a grid of overrides, each over N seeds, as one MLflow tree.

    One parent run per study, one nested run per variant with the mean, std, n and 95% interval of every final metric over its seeds, and the seed runs under it. Running the same study again skips finished seeds, re-runs failed or killed ones and adds new seeds or grid values.
    """  # noqa: E501
    from .study_cli import build_spec, print_study
    from .sweep import Options, run_study

    try:
        spec = build_spec(paths, seeds, grid, set_, jobs, name, experiment, metric)
        plugins_ = _plugins()
        opts = Options(executor, spec.jobs, address, gpus_per_run, cpus_per_run, dry_run)
        result = _train(
            lambda: run_study(spec, plugins_, opts, echo=lambda m: typer.echo(m, err=True)),
            interrupted="interrupted; the study and its unfinished runs are marked KILLED. Run "
            "the same sweep again to finish it: finished seeds are kept and skipped",
        )
    except UserError as e:
        raise _fail(e) from None
    if dry_run:
        return
    print_study(result)
    if not result.complete:
        raise typer.Exit(1)  # scripts see that some seed runs failed or never started


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


class _ScoreCommand(typer.core.TyperCommand):
    """``score``'s help names the registered metrics and datasets, read when it is shown."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.help = _score_help(self.help or "")
        super().format_help(ctx, formatter)


def _score_help(text: str) -> str:
    try:
        from .host import PluginHost

        registry = PluginHost.load().registry
        metrics, datasets = registry.names("metric"), registry.names("dataset")
    except Exception:  # noqa: BLE001 - the help must show even when a plugin is broken
        metrics = datasets = ["(see gan-pipe plugins)"]
    return text.replace("{METRICS}", ", ".join(metrics)).replace("{DATASETS}", ", ".join(datasets))


def _json_values(values: dict[str, float]) -> str:
    """One JSON object; NaN and infinities (not JSON) become null."""
    clean = {k: v if math.isfinite(v) else None for k, v in values.items()}
    return json.dumps(clean, allow_nan=False)


@app.command(cls=_ScoreCommand)
def score(
    real: Annotated[
        Path, typer.Option("--real", help="real samples, .npy with one row per sample")
    ],
    fake: Annotated[Path, typer.Option("--fake", help="generated samples, same layout")],
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric", "-m", help="metric name (repeatable, each runs once); default: parzen"
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="setting of a metric selected with -m: --param parzen.n_val=500 "
            "(keys: gan-pipe plugins --params)",
        ),
    ] = None,
    value_range: Annotated[
        str | None,
        typer.Option(
            "--range",
            help="LO,HI of the sample values, finite, LO < HI; parzen and fid map it to [0,1] "
            "(default 0,1; with --dataset the dataset's range, which --range may only repeat)",
            show_default=False,
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="registered dataset the samples come from (e.g. ring8, digits): adds its mode "
            "centres, density, value range and labelled images; the real rows stay --real's",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object (null for NaN or inf)")
    ] = False,
) -> None:
    """Score two sample files with any metric, e.g. samples of a generator trained elsewhere.

    Metrics (-m): {METRICS}. Their --param keys and defaults: gan-pipe plugins --params.

    A random 10% of the real rows (seed 0) is held out as Parzen's validation split; the rest is the test split the metrics compare with (and draw real samples from).

    --dataset NAME ({DATASETS}) adds what sample files cannot carry: mode centres (modes), the exact density (divergences' KDE KL), labelled training images for fid's classifier (its accuracy is measured on the dataset's own test split) and the value range (--range may only repeat it). It never replaces --real: the real rows are always the file's. Rows must have the dataset's sample shape; flat rows of an image dataset's size are reshaped to its (C, H, W).

    Both files are read as numbers in their own precision: NaN or infinite values (in any row of either file), complex numbers and values whose squared distances would overflow float32 once --range is mapped to [0, 1] are errors; drop or rescale such rows first. Plain output rounds to 6 significant digits, --json keeps full precision.
    """  # noqa: E501 (one line per paragraph: the help renderer keeps line breaks)
    from .scoring import parse_range
    from .scoring import score as run_score

    try:
        lo_hi = parse_range(value_range) if value_range is not None else None
        values, notes = run_score(
            _plugins().registry, real, fake, metric or ["parzen"], param, lo_hi, dataset
        )
    except UserError as e:
        raise _fail(e) from None
    for note in notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    if as_json:
        typer.echo(_json_values(values))
        return
    for key, value in values.items():
        typer.echo(f"{key:<24} {value:.6g}")


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
