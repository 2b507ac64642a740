"""``gan-pipe compare --html``: one self-contained HTML page (every picture embedded as base64).

* Curves: every ``train/*`` metric and the compared ``eval/*`` metrics against the step, one
  panel per metric, one line per variant: the mean over its FINISHED runs at each step, with a
  band from their minimum to their maximum (with 2-5 seeds a t interval would be wider than the
  data; min-max shows every seed).
* Samples: per variant, the last ``samples`` image of its first FINISHED run that has one,
  else that run's ``plots/samples.png``.
* The variants with their differing params and the metrics table with its marks.

Figures use matplotlib's object API and the Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .compare import Comparison, Row
from .compare_table import LEGEND, _cell, _runs_cell, header_lines

#: one file of an MLflow image series: images/<key>+step+<step>+timestamp+<ms>+<uuid>.png
#: (older MLflow versions separate with %)
_IMAGE = re.compile(r"^images/samples[+%]step[+%](\d+)[+%].*(?<!compressed)\.png$")
_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border-bottom: 1px solid #ccc; padding: 4px 10px; text-align: left; vertical-align: top; }
td.num { font-family: monospace; white-space: nowrap; }
figure { display: inline-block; margin: 0 1em 1em 0; text-align: center; }
figure img { max-width: 360px; border: 1px solid #ddd; }
p.note { color: #555; font-size: 13px; }
"""


# ------------------------------------------------------------------ data from MLflow
def histories(
    c: Any, rows: list[Row], keys_of: Callable[[Any], list[str]], note: Callable[[str], None]
) -> list[dict[str, list[dict[int, float]]]]:
    """Per row, per metric key: one {step: value} per FINISHED run of the row."""
    out = []
    for i, row in enumerate(rows, 1):
        note(f"fetching histories: variant {i}/{len(rows)} {row.label} ({len(row.runs)} runs)")
        per_key: dict[str, list[dict[int, float]]] = {}
        for run in row.runs:
            for key in keys_of(run):
                points = c.get_metric_history(run.info.run_id, key)
                per_key.setdefault(key, []).append({m.step: m.value for m in points})
        out.append(per_key)
    return out


def band(series: list[dict[int, float]]) -> tuple[Any, Any, Any, Any]:
    """(steps, mean, min, max) over the runs at every step some run has a value for."""
    import numpy as np

    steps = sorted({s for one in series for s in one})
    values = np.array([[one.get(s, math.nan) for s in steps] for one in series], dtype=float)
    values[~np.isfinite(values)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where every run is NaN
        return (
            np.array(steps),
            np.nanmean(values, 0),
            np.nanmin(values, 0),
            np.nanmax(values, 0),
        )


def sample_picture(c: Any, row: Row) -> tuple[bytes, str] | None:
    """(PNG bytes, caption) of the variant's final samples, or None when no run has any."""
    for run in row.runs:
        run_id = run.info.run_id
        found = [
            (int(m[1]), f.path)
            for f in c.list_artifacts(run_id, "images")
            if (m := _IMAGE.match(f.path))
        ]
        if found:
            step, path = max(found)
            caption = f"run {run.info.run_name}, step {step}"
        elif any(f.path == "plots/samples.png" for f in c.list_artifacts(run_id, "plots")):
            path, caption = "plots/samples.png", f"run {run.info.run_name}, plots/samples.png"
        else:
            continue
        with tempfile.TemporaryDirectory(prefix="gan-pipe-compare-") as tmp:
            return Path(c.download_artifacts(run_id, path, tmp)).read_bytes(), caption
    return None


# ------------------------------------------------------------------ figures
def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def curves_figure(rows: list[Row], hist: list[dict], keys: list[str], title: str) -> str | None:
    """Base64 PNG: a panel per key, a mean line and min-max band per variant; None if empty."""
    from matplotlib.figure import Figure

    keys = [k for k in keys if any(h.get(k) for h in hist)]
    if not keys:
        return None
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.2 * nrows + 0.6), dpi=90, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for ax, key in zip(axes, keys, strict=False):
        for i, (row, h) in enumerate(zip(rows, hist, strict=True)):
            if not h.get(key):
                continue
            steps, mean, lo, hi = band(h[key])
            label = f"#{i + 1} {row.label}"[:40]
            ax.plot(
                steps, mean, color=colors[i], label=label, marker="." if len(steps) < 12 else None
            )
            ax.fill_between(steps, lo, hi, color=colors[i], alpha=0.2, linewidth=0)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(rows)), fontsize=8)
    fig.suptitle(title)
    return _png(fig)


# ------------------------------------------------------------------ HTML
def _e(text: Any) -> str:
    return html.escape(str(text))


def _html_table(head: list[str], body: list[list[str]], num_from: int) -> str:
    ths = "".join(f"<th>{_e(h)}</th>" for h in head)
    trs = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if j >= num_from else ''}>{_e(v)}</td>" for j, v in enumerate(r)
        )
        + "</tr>"
        for r in body
    )
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>"


def _tables(comp: Comparison) -> str:
    rows = list(enumerate(comp.rows, 1))
    variants = _html_table(
        ["#", "variant", "runs", *comp.differing],
        [
            [str(i), r.label, _runs_cell(r), *(r.params.get(k, "-") for k in comp.differing)]
            for i, r in rows
        ],
        num_from=99,
    )
    metrics = _html_table(
        ["#", "variant", *comp.metrics],
        [[str(i), r.label, *(_cell(r, k) for k in comp.metrics)] for i, r in rows],
        num_from=2,
    )
    return f"<h2>Variants</h2>{variants}<h2>Metrics</h2>{metrics}<p class=note>{_e(LEGEND)}</p>"


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def render_html(c: Any, comp: Comparison, note: Callable[[str], None]) -> str:
    """The whole report; fetches the runs' histories and pictures."""
    evals = [k for k in comp.metrics if k.startswith("eval/")]

    def keys_of(run: Any) -> list[str]:
        return [k for k in run.data.metrics if k.startswith("train/") or k in evals]

    hist = histories(c, comp.rows, keys_of, note)
    train_keys = sorted({k for h in hist for k in h if k.startswith("train/")})
    parts = [f"<h1>gan-pipe compare</h1><p>{'<br>'.join(_e(x) for x in header_lines(comp))}</p>"]
    parts.append(_tables(comp))
    band_note = (
        "<p class=note>Lines: mean over each variant's FINISHED runs at every step; "
        "band: their minimum to maximum.</p>"
    )
    for keys, title in ((train_keys, "Training curves"), (evals, "Evaluation metrics")):
        b64 = curves_figure(comp.rows, hist, keys, title)
        if b64:
            parts.append(f"<h2>{title}</h2>{_img(b64, title)}{band_note}")
    parts.append("<h2>Final samples</h2>")
    for i, row in enumerate(comp.rows, 1):
        pic = sample_picture(c, row)
        body = _img(base64.b64encode(pic[0]).decode("ascii"), row.label) if pic else "(none)"
        caption = f"#{i} {row.label}" + (f" ({pic[1]})" if pic else "")
        parts.append(f"<figure>{body}<figcaption>{_e(caption)}</figcaption></figure>")
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>gan-pipe compare</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )
