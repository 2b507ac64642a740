"""A variant's results over its seeds, as metrics of its MLflow run.

For every final metric ``K`` of the finished seed runs (``eval/*`` results, ``perf/*``):

* ``K`` -- the mean over seeds (the same key as a single run's, so the MLflow UI compares a
  variant with single runs column for column);
* ``K.std`` (sample std, ddof 1), ``K.n`` (seeds with a finite value), ``K.ci95_lo`` and
  ``K.ci95_hi`` (Student-t 95% interval of the mean; absent for n < 2).

For every success criterion ``NAME`` (recipe ``[success]`` tables and the study's own):
``rate/NAME`` (the fraction of seeds where every bound holds), ``rate/NAME.k``, ``rate/NAME.n``,
``rate/NAME.ci95_lo``, ``rate/NAME.ci95_hi`` (Wilson score interval).

The mean curve of every ``train/*`` and aggregated ``eval/*`` metric over the steps all seeds
logged is written under the same key, so the variant's charts overlay in the UI; its last
point is the mean of the final values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from .evaluation import is_setting
from .recipe import Criterion
from .stats import Summary, rate, summarize

SUFFIXES = (".std", ".n", ".ci95_lo", ".ci95_hi")


def all_runs(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    """Every run matching ``filter_string`` (MLflow pages its search results)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def aggregated_keys(runs: Iterable[Any], only: list[str] | None = None) -> list[str]:
    """The final metrics worth a mean: eval results (not sizes or settings) and perf/."""
    keys: set[str] = set()
    for r in runs:
        for k in r.data.metrics:
            if k.startswith("perf/") or (k.startswith("eval/") and not is_setting(k[5:], 1.0)):
                keys.add(k)
    if only:
        wanted = {k if "/" in k else f"eval/{k}" for k in only}
        keys = {k for k in keys if k in wanted or k.startswith("perf/")}
    return sorted(keys)


def summary_metrics(key: str, s: Summary) -> dict[str, float]:
    out = {key: s.mean, f"{key}.n": float(s.n), f"{key}.std": s.std}
    if s.has_interval:
        out[f"{key}.ci95_lo"], out[f"{key}.ci95_hi"] = s.lo, s.hi
    return {k: v for k, v in out.items() if not math.isnan(v)}


def metric_key(name: str) -> str:
    """A criterion's metric as logged: ``modes`` -> ``eval/modes``; ``perf/x`` stays."""
    return name if "/" in name else f"eval/{name}"


def success_rates(finished: list[Any], success: dict[str, Criterion]) -> dict[str, Summary]:
    """Per criterion, the Wilson-interval rate over the seeds that logged its metrics."""
    out = {}
    for name, crit in success.items():
        keys = {metric_key(k): bound for k, bound in crit.items()}
        eligible = [r for r in finished if all(k in r.data.metrics for k in keys)]
        k = sum(all(b.holds(r.data.metrics[key]) for key, b in keys.items()) for r in eligible)
        out[name] = rate(k, len(eligible))
    return out


def rate_metrics(name: str, r: Summary) -> dict[str, float]:
    key = f"rate/{name}"
    out = {key: r.mean, f"{key}.k": float(r.k or 0), f"{key}.n": float(r.n)}
    if r.has_interval:
        out[f"{key}.ci95_lo"], out[f"{key}.ci95_hi"] = r.lo, r.hi
    return {k: v for k, v in out.items() if not math.isnan(v)}


def variant_results(
    finished: list[Any], success: dict[str, Criterion], only: list[str] | None = None
) -> tuple[dict[str, Summary], dict[str, Summary]]:
    """(per-metric summaries, per-criterion rates) over the finished seed runs."""
    summaries = {
        k: summarize(r.data.metrics[k] for r in finished if k in r.data.metrics)
        for k in aggregated_keys(finished, only)
    }
    return summaries, success_rates(finished, success)


def mean_curves(client: Any, finished: list[Any], keys: list[str]) -> dict[str, list[tuple]]:
    """key -> [(step, mean over seeds)] at the steps every seed logged."""
    curves = {}
    for key in keys:
        per_run = [
            {m.step: m.value for m in client.get_metric_history(r.info.run_id, key)}
            for r in finished
        ]
        steps = set.intersection(*(set(h) for h in per_run)) if per_run else set()
        curves[key] = [
            (step, math.fsum(h[step] for h in per_run) / len(per_run)) for step in sorted(steps)
        ]
    return curves


def log_variant(
    client: Any,
    variant_run_id: str,
    finished: list[Any],
    success: dict[str, Criterion],
    only: list[str] | None = None,
) -> tuple[dict[str, Summary], dict[str, Summary]]:
    """Write the variant's aggregates (and mean curves) into its run; returns them."""
    from mlflow.entities import Metric

    summaries, rates = variant_results(finished, success, only)
    final_step = max((_last_step(client, r) for r in finished), default=0)
    ts = int(time.time() * 1000)
    metrics: list[Metric] = []
    train_keys = sorted({k for r in finished for k in r.data.metrics if k.startswith("train/")})
    curve_keys = train_keys + [k for k in summaries if k.startswith("eval/")]
    for key, points in mean_curves(client, finished, curve_keys).items():
        metrics += [Metric(key, v, ts, s) for s, v in points if s < final_step or key in train_keys]
    for key, s in summaries.items():
        metrics += [Metric(k, v, ts, final_step) for k, v in summary_metrics(key, s).items()]
    for name, r in rates.items():
        metrics += [Metric(k, v, ts, final_step) for k, v in rate_metrics(name, r).items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(variant_run_id, metrics=metrics[i : i + 1000], synchronous=True)
    return summaries, rates


def _last_step(client: Any, run: Any) -> int:
    """A finished run's last step: where it logged ``perf/wall_time_s`` (at its end)."""
    history = client.get_metric_history(run.info.run_id, "perf/wall_time_s")
    return max((m.step for m in history), default=0)
