"""``gan-pipe compare``: variants side by side, each a mean over seeds with its 95% interval.

What an id on the command line becomes:

* a **study** run (tag ``gan_pipe.kind = study``): one row per variant run under it, its values
  recomputed from the final metrics of the variant's FINISHED seed runs (the others are left out
  and counted by status); success rates ``rate/<name>`` come from the variant run's ``.k`` and
  ``.n``, with a Wilson interval;
* a **variant** run: that variant's row;
* any other gan-pipe run: runs whose params are identical apart from the seed (and the naming
  keys ``experiment.run_name``, ``experiment.description``) form one row, n = their count;
* not a run id: a **study name**, its newest study run (in ``--experiment`` when given).

``--experiment NAME`` without ids compares every study in that experiment, or, with no study
in it, its top-level runs (grouped as above).

Marks (direction-free: whether higher is better depends on the metric): per metric, the row
with the highest mean gets ``▲`` when its 95% interval does not overlap the second highest's,
the row with the lowest mean gets ``▼`` when its interval does not overlap the second lowest's.
A row without an interval (fewer than two finite values) blocks the mark of its neighbour.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError
from .evaluation import is_setting
from .stats import Summary, overlap, rate, summarize
from .study import PARENT
from .study import TAG_KIND as KIND
from .study import TAG_STUDY as STUDY

HIGH, LOW = "▲", "▼"
#: params that name a run rather than set it up: never a reason to tell rows apart
NAMING = ("experiment.seed", "experiment.run_name", "experiment.description")
#: a variant's derived values next to each mean or rate (not metrics of their own)
DERIVED = (".std", ".n", ".k", ".ci95_lo", ".ci95_hi")


@dataclass
class Source:
    """What one id (or ``--experiment``) named: kind is study, variant or run."""

    kind: str
    run: Any


@dataclass
class Row:
    """One variant: its params, the FINISHED runs behind it and their summaries."""

    label: str
    kind: str  # "variant" (a study's variant run) or "runs" (plain runs grouped by params)
    params: dict[str, str]
    runs: list[Any]
    left_out: Counter = field(default_factory=Counter)
    rates: dict[str, Summary] = field(default_factory=dict)
    run_id: str | None = None
    summaries: dict[str, Summary] = field(default_factory=dict)
    marks: dict[str, str] = field(default_factory=dict)

    def values(self, key: str) -> list[float]:
        """The final value of ``key`` per run (NaN where a run has none)."""
        return [r.data.metrics.get(key, math.nan) for r in self.runs]


@dataclass
class Comparison:
    sources: list[Source]
    rows: list[Row]
    metrics: list[str]
    differing: list[str]
    sort: str | None = None
    descending: bool = True


# ------------------------------------------------------------------ finding the runs
def _search(c: Any, exp_ids: list[str], filter_string: str = "") -> list[Any]:
    """Every active run matching ``filter_string``, oldest first (all pages)."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = c.search_runs(
            exp_ids,
            filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _quote(value: str) -> str:
    for q in ("'", '"'):
        if q not in value:
            return f"{q}{value}{q}"
    raise UserError(f"cannot search for {value!r}: it contains both kinds of quotes")


def _get_run(c: Any, run_id: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return c.get_run(run_id)
    except MlflowException:
        return None


def _experiment_ids(c: Any, experiment: str | None) -> list[str]:
    if experiment is None:
        return [e.experiment_id for e in c.search_experiments()]
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(sorted(e.name for e in c.search_experiments())) or "none"
        raise UserError(f"no experiment named {experiment!r} in this store (experiments: {names})")
    return [exp.experiment_id]


def _source(run: Any) -> Source:
    kind = run.data.tags.get(KIND)
    return Source(kind if kind in ("study", "variant") else "run", run)


def resolve(c: Any, ids: list[str], experiment: str | None) -> list[Source]:
    """The runs the ids (or, without ids, ``experiment``) name; unknown ones are user errors."""
    if not ids and experiment is None:
        raise UserError("name study or run ids, or an experiment with --experiment NAME")
    exp_ids = _experiment_ids(c, experiment)
    if not ids:
        studies = _search(c, exp_ids, f"tags.{KIND} = 'study'")
        if studies:
            return [Source("study", r) for r in studies]
        top = [r for r in _search(c, exp_ids) if PARENT not in r.data.tags]
        if not top:
            raise UserError(f"experiment {experiment!r} has no runs")
        return [Source("run", r) for r in top]
    sources = []
    for id_ in ids:
        run = _get_run(c, id_)
        if run is None:
            found = _search(c, exp_ids, f"tags.{KIND} = 'study' and tags.{STUDY} = {_quote(id_)}")
            if not found:
                where = f"experiment {experiment!r}" if experiment else "this store"
                raise UserError(f"{id_!r} is neither a run id nor a study name in {where}")
            run = found[-1]
        sources.append(_source(run))
    return sources


# ------------------------------------------------------------------ rows
def _split(runs: list[Any]) -> tuple[list[Any], Counter]:
    """(FINISHED runs, how many of the others per status)."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return finished, Counter(r.info.status for r in runs if r.info.status != "FINISHED")


def _rates(run: Any) -> dict[str, Summary]:
    """``rate/<name>`` of a variant run, from its ``.k`` and ``.n``, with the Wilson interval."""
    m = run.data.metrics
    names = {k for k in m if k.startswith("rate/") and not k.endswith(DERIVED)}
    out = {}
    for name in sorted(names):
        k, n = m.get(f"{name}.k"), m.get(f"{name}.n")
        if k is not None and n is not None and math.isfinite(k) and math.isfinite(n):
            out[name] = rate(int(k), int(n))
    return out


def _own_params(run: Any) -> dict[str, str]:
    return {k: v for k, v in run.data.params.items() if k not in NAMING}


def variant_row(variant: Any, seeds: list[Any]) -> Row:
    finished, left_out = _split(seeds)
    params = _own_params(variant) or (_own_params(seeds[0]) if seeds else {})
    label = variant.data.tags.get("gan_pipe.variant") or variant.info.run_name
    return Row(label, "variant", params, finished, left_out, _rates(variant), variant.info.run_id)


def study_rows(c: Any, study: Any) -> list[Row]:
    """A study's variants with their seed runs: one search for the whole tree."""
    name = study.data.tags.get(STUDY)
    if name is None:
        raise UserError(f"study run {study.info.run_id} has no {STUDY} tag")
    tree = _search(c, [study.info.experiment_id], f"tags.{STUDY} = {_quote(name)}")
    children = defaultdict(list)
    for r in tree:
        children[r.data.tags.get(PARENT)].append(r)
    variants = children[study.info.run_id]
    return [variant_row(v, children[v.info.run_id]) for v in variants]


def plain_rows(runs: list[Any]) -> list[Row]:
    """Runs with identical params apart from the seed and naming keys share a row."""
    groups: dict[tuple, list[Any]] = {}
    for r in runs:
        groups.setdefault(tuple(sorted(_own_params(r).items())), []).append(r)
    rows = []
    for group in groups.values():
        finished, left_out = _split(group)
        first = group[0]
        label = first.info.run_name + (f" (+{len(group) - 1})" if len(group) > 1 else "")
        rows.append(Row(label, "runs", _own_params(first), finished, left_out))
    return rows


def collect(c: Any, sources: list[Source]) -> list[Row]:
    rows, plain = [], []
    for s in sources:
        if s.kind == "study":
            rows.extend(study_rows(c, s.run))
        elif s.kind == "variant":
            seeds = _search(c, [s.run.info.experiment_id], f"tags.{PARENT} = '{s.run.info.run_id}'")
            rows.append(variant_row(s.run, seeds))
        else:
            plain.append(s.run)
    return rows + plain_rows(plain)


# ------------------------------------------------------------------ metrics, marks, order
def headline_metrics(rows: list[Row]) -> list[str]:
    """Every ``eval/`` result (not a size or setting) some run has, then every ``rate/``."""
    evals = set()
    for row in rows:
        for run in row.runs:
            for k, v in run.data.metrics.items():
                if k.startswith("eval/") and not is_setting(k.removeprefix("eval/"), v):
                    evals.add(k)
    rates = {k for row in rows for k in row.rates}
    return sorted(evals) + sorted(rates)


def _study_metrics(sources: list[Source], available: set[str]) -> list[str]:
    """The metrics the compared studies name (``metrics`` in a study file), and their rates:
    the default columns when every source is such a study."""
    named = [s.run.data.tags.get("gan_pipe.study_metrics", "") for s in sources]
    if not sources or any(s.kind != "study" for s in sources) or not all(named):
        return []
    keys = [k for text in named for k in text.split(",")]
    keys = [k for k in dict.fromkeys(keys) if any(a in available for a in (k, f"eval/{k}"))]
    return keys + sorted(k for k in available if k.startswith("rate/") and "." not in k)


def _available(rows: list[Row]) -> set[str]:
    keys = {k for row in rows for run in row.runs for k in run.data.metrics}
    return {k for k in keys if not k.endswith(DERIVED)} | {k for row in rows for k in row.rates}


def pick_metric(name: str, available: set[str]) -> str:
    """``name`` as a metric key; ``modes`` may stand for ``eval/modes`` (or ``rate/modes``)."""
    for key in (name, f"eval/{name}", f"rate/{name}"):
        if key in available:
            return key
    shown = ", ".join(sorted(available)) or "none"
    raise UserError(f"no metric {name!r} in these runs (metrics: {shown})")


def summarize_rows(rows: list[Row], metrics: list[str]) -> None:
    for row in rows:
        row.summaries = {
            k: row.rates[k] if k in row.rates else summarize(row.values(k)) for k in metrics
        }


def mark(rows: list[Row], metrics: list[str]) -> None:
    """▲ on the highest mean whose interval misses the second highest's, ▼ likewise lowest."""
    for key in metrics:
        ranked = [r for r in rows if math.isfinite(r.summaries[key].mean)]
        ranked.sort(key=lambda r: r.summaries[key].mean)
        if len(ranked) < 2:
            continue
        ends = ((ranked[-1], ranked[-2], HIGH), (ranked[0], ranked[1], LOW))
        for extreme, neighbour, sign in ends:
            a, b = extreme.summaries[key], neighbour.summaries[key]
            if a.mean != b.mean and not overlap(a, b):
                extreme.marks[key] = sign


def sort_rows(rows: list[Row], key: str, descending: bool) -> list[Row]:
    """By mean of ``key``; rows without a value last whichever the direction."""

    def order(row: Row) -> tuple[bool, float]:
        mean = row.summaries[key].mean
        if not math.isfinite(mean):
            return True, 0.0
        return False, -mean if descending else mean

    return sorted(rows, key=order)


def differing_params(rows: list[Row]) -> list[str]:
    keys = sorted({k for row in rows for k in row.params})
    return [k for k in keys if len({row.params.get(k) for row in rows}) > 1]


def build(
    c: Any,
    ids: list[str],
    experiment: str | None = None,
    metrics: list[str] | None = None,
    sort: str | None = None,
) -> Comparison:
    """Resolve, collect, summarize, mark and order: everything but the output."""
    sources = resolve(c, ids, experiment)
    rows = collect(c, sources)
    if not rows:
        raise UserError("these studies have no variant runs yet")
    available = _available(rows)
    metrics = metrics or _study_metrics(sources, available)
    chosen = [pick_metric(m, available) for m in metrics] if metrics else headline_metrics(rows)
    descending = not (sort or "").startswith("-")
    sort_key = pick_metric(sort.removeprefix("-"), available) if sort else None
    if sort_key is not None and sort_key not in chosen:
        chosen.append(sort_key)
    chosen = list(dict.fromkeys(chosen))
    summarize_rows(rows, chosen)
    mark(rows, chosen)
    if sort_key is not None:
        rows = sort_rows(rows, sort_key, descending)
    return Comparison(sources, rows, chosen, differing_params(rows), sort_key, descending)


# ------------------------------------------------------------------ the command
def _store() -> Any:
    """An MlflowClient on gan-pipe's store; the default sqlite file must exist already."""
    from pathlib import Path

    from .tracking import client, default_store

    uri, ours = default_store()
    if ours is not None and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(
            f"no MLflow store here ({uri}); run gan-pipe compare in the folder of your runs "
            "or set MLFLOW_TRACKING_URI"
        )
    return client()[0]


def main(
    ids: list[str],
    experiment: str | None = None,
    metrics: list[str] | None = None,
    sort: str | None = None,
    as_json: bool = False,
    html: Any = None,
    note: Callable[[str], None] = print,
    markdown: bool = False,
) -> Comparison:
    """``gan-pipe compare``: the table (or JSON) on stdout, notes and progress via ``note``."""
    import json
    from pathlib import Path

    from .compare_table import render, render_markdown, to_json

    c = _store()
    comp = build(c, ids, experiment, metrics, sort)
    if html is not None:
        from .compare_report import render_html

        out = Path(html)
        if not out.parent.is_dir():
            raise UserError(f"--html {out}: folder {out.parent} does not exist")
        page = render_html(c, comp, note)
        out.write_text(page, encoding="utf-8")
        note(f"report written to {out}")
        if len(comp.sources) == 1 and comp.sources[0].kind == "study":
            study_id = comp.sources[0].run.info.run_id
            c.log_text(study_id, page, "compare/report.html")
            note(f"and logged to study run {study_id} as artifact compare/report.html")
    if as_json:
        print(json.dumps(to_json(comp), indent=2, allow_nan=False))
    elif markdown:
        render_markdown(comp)
    else:
        render(comp)
    return comp
