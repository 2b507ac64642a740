"""The outputs of ``gan-pipe compare`` on a terminal: the aligned tables and the JSON document."""

from __future__ import annotations

import math
import shutil
import sys
from typing import Any, TextIO

from .compare import HIGH, LOW, STUDY, Comparison, Row, Source

#: the widest a variant label gets: wrapped in the variants table, cut in the metric tables
LABEL_WIDTH, CUT_WIDTH = 28, 20
LEGEND = (
    f"{HIGH}/{LOW}: the highest/lowest mean, whose 95% interval does not overlap the second "
    "highest/lowest's. Values: mean ± half-width of the 95% interval (n = runs) for means "
    "(Student-t), fraction [Wilson 95% interval] (k/n) for rates."
)


# ------------------------------------------------------------------ text
def _left_out(row: Row) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(row.left_out.items()))


def _runs_cell(row: Row) -> str:
    out = f"{len(row.runs)}"
    return out + (f" ({_left_out(row)} left out)" if row.left_out else "")


def _cell(row: Row, key: str) -> str:
    mark = row.marks.get(key)
    return row.summaries[key].format() + (f" {mark}" if mark else "")


def header_lines(comp: Comparison) -> list[str]:
    """Where the rows come from, and how many runs were left out for not being FINISHED."""
    lines = [
        f"{s.kind} {_name(s)} (run {s.run.info.run_id})" for s in comp.sources if s.kind != "run"
    ]
    n_plain = sum(s.kind == "run" for s in comp.sources)
    if n_plain:
        lines.append(f"{n_plain} run(s), grouped by params apart from experiment.seed")
    used = sum(len(r.runs) for r in comp.rows)
    left: dict[str, int] = {}
    for row in comp.rows:
        for status, n in row.left_out.items():
            left[status] = left.get(status, 0) + n
    line = f"{len(comp.rows)} variant(s), {used} FINISHED run(s) used"
    if left:
        shown = ", ".join(f"{n} {s}" for s, n in sorted(left.items()))
        line += f"; left out: {shown} (only FINISHED runs count)"
    if comp.sort:
        order = "highest" if comp.descending else "lowest"
        line += f"; sorted by {comp.sort}, {order} first"
    return lines + [line]


def _chunks(comp: Comparison, width: int) -> list[list[str]]:
    """Metric keys in groups whose columns fit beside # and the label in ``width``."""
    room = width - CUT_WIDTH - 8  # "#", the label, their padding and rules
    chunks: list[list[str]] = [[]]
    used = 0
    for key in comp.metrics:
        w = max([len(key)] + [len(_cell(r, key)) for r in comp.rows]) + 3
        if chunks[-1] and used + w > room:
            chunks.append([])
            used = 0
        chunks[-1].append(key)
        used += w
    return chunks


def _table(comp: Comparison, columns: list[str], cells: Any, full_label: bool) -> Any:
    """A rich table: #, the label (in full, wrapped; or cut to one line), ``columns``."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("#", justify="right")
    if full_label:
        table.add_column("variant", max_width=LABEL_WIDTH, overflow="fold")
    else:
        table.add_column("variant", max_width=CUT_WIDTH, no_wrap=True, overflow="ellipsis")
    for col in columns:
        table.add_column(col, overflow="fold")
    for i, row in enumerate(comp.rows, 1):
        table.add_row(str(i), row.label, *cells(row))
    return table


def render(comp: Comparison, file: TextIO | None = None, width: int | None = None) -> None:
    """The comparison as aligned tables: variants with their differing params, then the
    metrics (as many tables as it takes to stay within ``width`` columns), then the legend."""
    from rich.console import Console

    width = width or shutil.get_terminal_size((100, 24)).columns
    console = Console(file=file or sys.stdout, width=width, highlight=False, emoji=False)
    for line in header_lines(comp):
        console.print(line, markup=False)

    def params(row: Row) -> list[str]:
        shown = "\n".join(f"{k} = {row.params.get(k, '-')}" for k in comp.differing)
        return [_runs_cell(row), shown]

    console.print(_table(comp, ["runs", "differing params"], params, full_label=True))
    for keys in _chunks(comp, width):
        if keys:
            cells = lambda row, keys=keys: [_cell(row, k) for k in keys]  # noqa: E731
            console.print(_table(comp, keys, cells, full_label=False))
    console.print(LEGEND, markup=False)


def render_markdown(comp: Comparison, file: TextIO | None = None) -> None:
    """The comparison as Markdown (for docs and notebooks): the variants with their runs and
    differing params, then the metrics (cells as on the terminal), then the legend."""
    out = file or sys.stdout

    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    def table(columns: list[str], rows: list[list[str]]) -> None:
        head = [f"`{c}`" if "/" in c or "." in c else c for c in columns]
        print("| " + " | ".join(head) + " |", file=out)
        print("|" + " --- |" * len(columns), file=out)
        for cells in rows:
            print("| " + " | ".join(esc(c) for c in cells) + " |", file=out)
        print("", file=out)

    table(
        ["variant", "runs", *comp.differing],
        [
            [r.label, _runs_cell(r), *(str(r.params.get(k, "-")) for k in comp.differing)]
            for r in comp.rows
        ],
    )
    table(
        ["variant", *comp.metrics],
        [[r.label, *(_cell(r, k) for k in comp.metrics)] for r in comp.rows],
    )
    print(LEGEND, file=out)


# ------------------------------------------------------------------ JSON
def _finite(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _metric_json(row: Row, key: str) -> dict[str, Any]:
    s = row.summaries[key]
    out = {k: _finite(v) for k, v in s.to_dict().items()}
    out["values"] = None if key in row.rates else [_finite(v) for v in row.values(key)]
    out["mark"] = {HIGH: "high", LOW: "low"}.get(row.marks.get(key, ""))
    return out


def to_json(comp: Comparison) -> dict[str, Any]:
    """One document: sources, the metric keys, the differing params and a dict per row."""
    rows = [
        {
            "label": row.label,
            "kind": row.kind,
            "run_id": row.run_id,
            "runs": [r.info.run_id for r in row.runs],
            "seeds": [_seed(r) for r in row.runs],
            "left_out": dict(row.left_out),
            "params": row.params,
            "differing": {k: row.params.get(k) for k in comp.differing},
            "metrics": {k: _metric_json(row, k) for k in comp.metrics},
        }
        for row in comp.rows
    ]
    return {
        "sources": [
            {"kind": s.kind, "run_id": s.run.info.run_id, "name": _name(s)} for s in comp.sources
        ],
        "metrics": comp.metrics,
        "differing_params": comp.differing,
        "sort": comp.sort,
        "descending": comp.descending,
        "rows": rows,
    }


def _seed(run: Any) -> int | None:
    seed = run.data.tags.get("gan_pipe.seed", run.data.params.get("experiment.seed"))
    try:
        return int(seed)
    except (TypeError, ValueError):
        return None


def _name(source: Source) -> str:
    tags = source.run.data.tags
    return tags.get(STUDY if source.kind == "study" else "gan_pipe.variant") or (
        source.run.info.run_name
    )
