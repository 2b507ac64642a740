"""Re-measure the headline results: run recipes over several seeds, read MLflow, print tables.

Each (recipe, seed) runs as its own ``gan-pipe run`` process, one at a time, in its own
working directory ``<workdir>/<recipe stem>/seed<N>/`` so that every run's ./mlflow.db and
./mlartifacts stay separate (MLFLOW_TRACKING_URI is removed from the child's environment).
The final value of each metric is read back with MLflow's client (``search_runs``, then
``get_metric_history``: the value at the last logged step), and printed as markdown: one
table of mean +- std over seeds (sample std, ddof 1) per recipe family, then the per-seed
values, then (with ``--history``) the metric at every eval step.

    python bench/reproduce.py                                   # the default six recipes, 3 seeds
    python bench/reproduce.py --recipes recipes/ring8-gan.toml --seeds 0 1 2 3 4
    python bench/reproduce.py --set train.steps=1000            # passed to every run
    python bench/reproduce.py --collect-only --workdir /tmp/repro   # re-read, run nothing
    python bench/reproduce.py --history eval/mean_gen eval/std_ratio
    python bench/reproduce.py --threads 1                      # a shared 2-core machine

A directory whose store already holds a FINISHED run of that seed is not run again (unless
``--force``); the newest such run is the one read. Runs are keyed by recipe stem and seed only,
so use a fresh ``--workdir`` whenever ``--set`` changes. Needs gan_pipe and mlflow importable
and the ``gan-pipe`` command next to this Python (or on PATH). Nothing here asserts on the
numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_RECIPES = [
    "recipes/gaussian-1d.toml",
    "recipes/gaussian-1d-mbd.toml",
    "recipes/ring8-gan.toml",
    "recipes/ring8-wgan-gp.toml",
    "recipes/grid25-gan.toml",
    "recipes/grid25-wgan-gp.toml",
]

#: Columns by recipe family, chosen by which metrics a run logged (first family that matches).
FAMILIES = {
    "1-D": ["eval/std_ratio", "eval/w1", "eval/ks", "eval/mean_gen"],
    "modes": ["eval/modes", "eval/hq_fraction", "eval/modes_kl", "eval/w1_assign"],
}
#: Training-time metrics shown per seed next to the eval metrics (last logged window).
#: BCE losses log mean D probabilities there; Wasserstein losses log mean raw critic values.
TRAIN_KEYS = ["train/d_real", "train/d_fake"]


# ------------------------------------------------------------------ running
def gan_pipe_command() -> list[str]:
    here = Path(sys.executable).parent / "gan-pipe"
    if here.exists():
        return [str(here)]
    found = shutil.which("gan-pipe")
    if found:
        return [found]
    return [sys.executable, "-c", "from gan_pipe.cli import main; main()"]


def run_dir(workdir: Path, recipe: Path, seed: int) -> Path:
    return workdir / recipe.stem / f"seed{seed}"


def store_uri(directory: Path) -> str:
    return f"sqlite:///{directory.resolve()}/mlflow.db"


def finished_run(directory: Path, seed: int):
    """The newest FINISHED run of ``seed`` in the directory's store, or None."""
    if not (directory / "mlflow.db").exists():
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store_uri(directory))
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return None
    runs = client.search_runs(
        ids,
        filter_string=f"attributes.status = 'FINISHED' and params.`experiment.seed` = '{seed}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def run_one(
    recipe: Path, seed: int, directory: Path, overrides: list[str], threads: int | None, log
) -> float:
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [*gan_pipe_command(), "run", str(recipe.resolve())]
    for item in [f"experiment.seed={seed}", "train.progress=false", *overrides]:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if threads:
        # Small nets on a shared CPU: OpenMP workers that spin at every barrier cost far more
        # than they save when other processes compete for the cores.
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log(f"[run] {recipe.name} seed {seed} in {directory}")
    start = time.perf_counter()
    with open(directory / "run.log", "w") as out:
        proc = subprocess.run(cmd, cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        log(f"[run] FAILED (exit {proc.returncode}) after {took:.0f} s: see {directory}/run.log")
    else:
        log(f"[run] done in {took:.0f} s")
    return took


# ------------------------------------------------------------------ collecting
def final_metrics(directory: Path, seed: int, history_keys: list[str]) -> dict | None:
    from mlflow.tracking import MlflowClient

    run = finished_run(directory, seed)
    if run is None:
        return None
    client = MlflowClient(store_uri(directory))
    final, history = {}, {}
    for key in run.data.metrics:
        points = client.get_metric_history(run.info.run_id, key)
        if not points:
            continue
        last = max(points, key=lambda m: (m.step, m.timestamp))
        final[key] = last.value
        if key in history_keys:
            history[key] = sorted((m.step, m.value) for m in points)
    seconds = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else math.nan
    return {
        "run_id": run.info.run_id,
        "seed": seed,
        "steps": run.data.params.get("train.total_steps"),
        "wall_s": seconds,
        "final": final,
        "history": history,
    }


def family(metrics: dict) -> str | None:
    for name, keys in FAMILIES.items():
        if keys[0] in metrics:
            return name
    return None


def fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    a = abs(value)
    if a != 0 and (a < 1e-3 or a >= 1e4):
        return f"{value:.3g}"
    return f"{value:.3f}" if a < 100 else f"{value:.1f}"


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.mean(values))} ± {fmt(statistics.stdev(values))}"


def tables(results: dict[str, list[dict]], history_keys: list[str]) -> str:
    lines: list[str] = []
    by_family: dict[str, list[str]] = {}
    for recipe, runs in results.items():
        if runs:
            by_family.setdefault(family(runs[0]["final"]) or "other", []).append(recipe)
    for fam, recipes in by_family.items():
        keys = FAMILIES.get(fam, sorted({k for r in recipes for k in results[r][0]["final"]}))
        lines += [f"### {fam}: mean ± std over seeds (sample std)", ""]
        lines.append("| recipe | seeds | " + " | ".join(f"`{k}`" for k in keys) + " |")
        lines.append("| --- | --- |" + " --- |" * len(keys))
        for recipe in recipes:
            runs = results[recipe]
            cells = [mean_std([r["final"].get(k, math.nan) for r in runs]) for k in keys]
            seeds = ",".join(str(r["seed"]) for r in runs)
            lines.append(f"| {recipe} | {seeds} | " + " | ".join(cells) + " |")
        lines += ["", f"### {fam}: per seed", ""]
        cols = keys + TRAIN_KEYS
        lines.append(
            "| recipe | seed | " + " | ".join(f"`{k}`" for k in cols) + " | steps | wall s |"
        )
        lines.append("| --- | --- |" + " --- |" * (len(cols) + 2))
        for recipe in recipes:
            for r in results[recipe]:
                cells = [fmt(r["final"].get(k, math.nan)) for k in cols]
                lines.append(
                    f"| {recipe} | {r['seed']} | "
                    + " | ".join(cells)
                    + f" | {r['steps']} | {fmt(r['wall_s'])} |"
                )
        lines.append("")
    for key in history_keys:
        rows = [(rec, r) for rec, runs in results.items() for r in runs if key in r["history"]]
        if not rows:
            continue
        steps = sorted({s for _, r in rows for s, _ in r["history"][key]})
        lines += [f"### `{key}` at every logged step", ""]
        lines.append("| recipe | seed | " + " | ".join(str(s) for s in steps) + " |")
        lines.append("| --- | --- |" + " --- |" * len(steps))
        for rec, r in rows:
            h = dict(r["history"][key])
            cells = " | ".join(fmt(h.get(s, math.nan)) for s in steps)
            lines.append(f"| {rec} | {r['seed']} | {cells} |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, help="recipe files")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="experiment.seed")
    ap.add_argument(
        "--workdir", type=Path, default=Path("/tmp/gan-pipe-reproduce"), help="one dir per run"
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to every run as --set (repeatable)",
    )
    ap.add_argument("--collect-only", action="store_true", help="run nothing, read the stores")
    ap.add_argument("--force", action="store_true", help="run even if a finished run exists")
    ap.add_argument(
        "--history", nargs="*", default=[], metavar="KEY", help="also tabulate KEY per step"
    )
    ap.add_argument(
        "--threads", type=int, help="OMP/MKL threads of each run (1 on a busy, small CPU)"
    )
    ap.add_argument("--json", type=Path, help="also write every value read to this JSON file")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # relative to the current directory, else to the repository root
    recipes = [Path(a) if Path(a).exists() else ROOT / a for a in args.recipes]
    for r in recipes:
        if not r.exists():
            ap.error(f"recipe not found: {r}")

    if not args.collect_only:
        for recipe in recipes:
            for seed in args.seeds:
                directory = run_dir(args.workdir, recipe, seed)
                if not args.force and finished_run(directory, seed) is not None:
                    log(f"[skip] {recipe.name} seed {seed}: finished run in {directory}")
                    continue
                run_one(recipe, seed, directory, args.overrides, args.threads, log)

    results: dict[str, list[dict]] = {}
    for recipe in recipes:
        runs = []
        for seed in args.seeds:
            got = final_metrics(run_dir(args.workdir, recipe, seed), seed, args.history)
            if got is None:
                log(f"[collect] no finished run: {recipe.name} seed {seed}")
            else:
                runs.append(got)
        results[recipe.stem] = runs

    print(tables(results, args.history))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
