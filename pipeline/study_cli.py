"""What ``gan-pipe sweep`` builds from its arguments and prints when a study ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .errors import RecipeError
from .recipe import parse_override
from .study import (
    is_study_file,
    load_study_file,
    parse_grid_item,
    validate_spec,
)

DEFAULT_SEEDS = 5


def build_spec(
    paths: list[Path],
    seeds: str | None,
    grid: list[str] | None,
    overrides: list[str] | None,
    jobs: int | None,
    name: str | None,
    experiment: str | None,
    metrics: list[str] | None,
) -> Any:
    """A study from one study file and/or recipe files; flags override the file's values
    (``--grid`` and ``--set`` add to its tables)."""
    studies = [p for p in paths if p.suffix == ".toml" and p.exists() and is_study_file(p)]
    if studies and len(paths) > 1:
        raise RecipeError(
            str(studies[0]), ["a study file is given alone: put the recipes in its `recipes`"]
        )
    if studies:
        data = load_study_file(studies[0]).model_dump(exclude_unset=True)
        source = str(studies[0])
    else:
        for p in paths:
            if not p.exists():
                from .recipe import load_toml

                load_toml(p)  # the recipe loader's message, with close matches
        data = {"recipes": [str(p) for p in paths], "name": default_name(paths, grid)}
        source = "gan-pipe sweep"
    if seeds is not None:
        data["seeds"] = seeds
    data.setdefault("seeds", DEFAULT_SEEDS)
    for key, value in (("jobs", jobs), ("name", name), ("experiment", experiment)):
        if value is not None:
            data[key] = value
    if metrics:
        data["metrics"] = list(metrics)
    data["grid"] = dict(data.get("grid", {}))
    for item in grid or []:
        key, values = parse_grid_item(item)
        data["grid"][key] = values
    data["set"] = dict(data.get("set", {}))
    for item in overrides or []:
        keys, value = parse_override(item)
        data["set"][".".join(keys)] = value
    return validate_spec(data, source)


def default_name(paths: list[Path], grid: list[str] | None) -> str:
    """``ring8-gan-vs-ring8-wgan-gp``; with a grid, its keys: ``dcgan-grid-train.lr``."""
    name = "-vs-".join(dict.fromkeys(p.stem for p in paths))
    if grid:
        name += "-grid-" + "-".join(item.partition("=")[0].strip() for item in grid)
    return name[:200]


def print_study(result: Any) -> None:
    from .tracking import ui_command

    counts = result.counts
    typer.echo("")
    status = "finished" if result.complete else "ended"
    typer.secho(f"study {result.name} {status}", fg=typer.colors.GREEN, bold=True)
    typer.echo(f"  study run:  {result.run_id}")
    typer.echo(f"  experiment: {result.experiment} (id {result.experiment_id})")
    typer.echo(
        f"  seed runs:  {counts['FINISHED']} finished, {counts['FAILED']} failed, "
        f"{counts['KILLED']} killed, {result.expected - sum(counts.values())} missing "
        f"({result.ran} run now, {result.skipped} kept from before)"
    )
    for v in result.variants:
        typer.secho(f"  {v.label}", bold=True)
        shown = [k for k in v.summaries if k.startswith("eval/")][:8]
        for key in shown:
            typer.echo(f"    {key:<28} {v.summaries[key].format()}")
        for name, r in v.rates.items():
            typer.echo(f"    rate/{name:<23} {r.format()}")
        if v.counts.get("FAILED") or v.counts.get("KILLED"):
            typer.echo(
                f"    ({v.counts.get('FAILED', 0)} failed, {v.counts.get('KILLED', 0)} killed)"
            )
    typer.echo("means ± half-width of the 95% interval over seeds (n = seeds).")
    typer.echo(f"Compare: gan-pipe compare {result.run_id}")
    typer.echo(f"Open the MLflow UI: {ui_command(result.tracking_uri)}")
