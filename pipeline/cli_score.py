"""``gan-pipe score``: score two sample files with any metric, outside any run.

:mod:`gan_pipe.cli` registers :func:`score` on the app (with :class:`_ScoreCommand`, whose
help names the registered metrics and datasets) between ``sweep`` and ``evaluate``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from .cli_common import _fail, _plugins
from .errors import UserError

RealOpt = Annotated[Path, typer.Option("--real", help="real samples, .npy with one row per sample")]
FakeOpt = Annotated[Path, typer.Option("--fake", help="generated samples, same layout")]
MetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metric", "-m", help="metric name (repeatable, each runs once); default: parzen"
    ),
]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        help="setting of a metric selected with -m: --param parzen.n_val=500 "
        "(keys: gan-pipe plugins --params)",
    ),
]
RangeOpt = Annotated[
    str | None,
    typer.Option(
        "--range",
        help="LO,HI of the sample values, finite, LO < HI; parzen and fid map it to [0,1] "
        "(default 0,1; with --dataset the dataset's range, which --range may only repeat)",
        show_default=False,
    ),
]
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="registered dataset the samples come from (e.g. ring8, digits): adds its mode "
        "centres, density, value range and labelled images; the real rows stay --real's",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="print one JSON object (null for NaN or inf)")
]


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


def score(
    real: RealOpt,
    fake: FakeOpt,
    metric: MetricOpt = None,
    param: ParamOpt = None,
    value_range: RangeOpt = None,
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
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
