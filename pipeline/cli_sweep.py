"""``gan-pipe sweep``: run a study, recipes and/or a grid of overrides over seeds.

:mod:`gan_pipe.cli` registers :func:`sweep` on the app after ``run``; the study itself is
built by :mod:`.study_cli` and run by :mod:`.sweep`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_common import SetOpt, _fail, _plugins, _train
from .errors import UserError

PathsArg = Annotated[
    list[Path],
    typer.Argument(help="recipe files, or one study file (studies/*.toml)", show_default=False),
]
SeedsOpt = Annotated[
    str | None,
    typer.Option("--seeds", help="20 (seeds 0-19), 0-19, 1,5,7 or 0-4,10 [default: 5]"),
]
GridOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--grid", "-g", help="KEY=V1,V2: one variant per value (repeatable: all combinations)"
    ),
]
JobsOpt = Annotated[
    int | None, typer.Option("--jobs", "-j", min=1, help="seed runs at once [default: 1]")
]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="study name (default: from the file or recipes)")
]
ExperimentOpt = Annotated[
    str | None, typer.Option("--experiment", help="MLflow experiment for the whole study")
]
MetricOpt = Annotated[
    list[str] | None,
    typer.Option("--metric", "-m", help="aggregate and show only these eval metrics"),
]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="local (process pool) or ray")]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default: start one)")
]
GpusOpt = Annotated[float, typer.Option("--gpus-per-run", min=0, help="GPUs per seed run (Ray)")]
CpusOpt = Annotated[
    float,
    typer.Option("--cpus-per-run", min=0.1, help="CPUs (torch threads) per seed run (Ray)"),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="show what would run, run nothing")]


def sweep(
    paths: PathsArg,
    seeds: SeedsOpt = None,
    grid: GridOpt = None,
    set_: SetOpt = None,
    jobs: JobsOpt = None,
    name: NameOpt = None,
    experiment: ExperimentOpt = None,
    metric: MetricOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    gpus_per_run: GpusOpt = 0.0,
    cpus_per_run: CpusOpt = 1.0,
    dry_run: DryRunOpt = False,
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
