"""Pipeline and tracking overhead: gan-pipe's Trainer against a bare PyTorch loop.

Three variants of the same training, all in this one process, on the same nets, data, batch
and update rule:

* ``pipeline``: the real path a user runs. The recipe is loaded with
  ``gan_pipe.recipe.load_recipe`` against the plugin registry, data and nets come from the
  ``data`` and ``build`` stage hooks, and training is the ``train`` stage hook
  (``Trainer(ctx).fit()``) with a real :class:`gan_pipe.tracking.Tracker` on a fresh sqlite
  store in a temporary directory (the default ``./mlflow.db`` + ``./mlartifacts`` of that
  directory), losses logged every ``log_every`` steps, a sample grid every ``sample_every``
  steps and the progress display on (a live bar on a terminal, progress lines otherwise).
* ``no-tracking``: the same, with the Tracker replaced by :class:`NullTracker`, an object with
  every public method of ``Tracker`` doing nothing. Everything else is unchanged: losses are
  still read back every ``log_every`` steps and sample grids are still rendered; only what
  MLflow does (metric batches, image files and their rows) is gone. This is the cleanest "MLflow
  off" gan-pipe has: it has no switch for it, and a no-op object cannot leave a store half used.
* ``bare``: a hand-written loop: the data as one device tensor, batches from ``randperm``,
  ``n_critic`` discriminator steps on BCE-with-logits with the recipe's labels (its label
  smoothing) then one generator step on the non-saturating loss, Adam with the recipe's
  settings, bf16 autocast exactly where the Trainer uses it. Like the Trainer it freezes D's
  weights during G's backward pass (an optimisation, not overhead: the bare loop gets it too,
  so the ratio is the pipeline's cost only). No logging, no samples, no progress.

Every variant starts from deep copies of the same freshly built nets (the same initial
weights) and the same RNG seed.

Method: a plugin implementing ``gan_pipe_on_train_step`` (registered like any third-party
plugin, through ``load_plugins(extra=...)``) reads ``time.perf_counter()`` after generator step
K (the end of the warm-up) and after step K + W; the bare loop reads the clock at the same
points. On CUDA the clock is read after ``torch.cuda.synchronize()`` at those two steps only.
The step time is (t[K + W] - t[K]) / W: a mean over a window, not a median of single steps,
because logging and sample frames happen on every 5th and 20th step and a median of single
steps would hide them. The hook runs after a step's update and before that step's logging and
sampling, so a window of W consecutive steps holds exactly W / log_every drains and W /
sample_every frames when W is a multiple of both (the default W = 20 is; a warning is printed
otherwise). The run's last step (a checkpoint, a last frame) lies after the window. The hook
call itself (a few microseconds a step) is counted in the pipeline's time.

Repetitions are interleaved (pipeline, bare, no-tracking, then the reverse order, ...), so
load from other processes falls on all variants alike. Reported: the median step time of each
variant, and the median over repetitions of the ratios taken within one repetition, with their
range, plus the load average before and after. Last, the Tracker calls of a window are
replayed alone (:func:`tracking_calls`) for the absolute cost of tracking per step, a figure
that does not drown in the noise of the training steps. On the CPU the process's CPU time
(``time.process_time()``: every thread of this process, MLflow's logging threads included) is
read at the same marks and reported beside the wall time: on a busy machine wall time mostly
measures the share of the cores this process got, CPU time the work it did. With one torch
thread (``--threads 1``) the CPU time is the cleaner figure; with more, idle OpenMP threads
spinning while they wait count too. No assertions on time.

    python bench/overhead.py                          # 2 reps, 2 warm-up + 20 timed steps
    python bench/overhead.py --reps 7 --window 60     # steadier figures
    python bench/overhead.py --device cuda            # where a GPU exists

Goals (issue 11): pipeline/bare <= 1.05, tracking on/off < 1.02.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gan_pipe import hookimpl
from gan_pipe.facade import Plugins
from gan_pipe.manager import load_plugins
from gan_pipe.recipe import load_recipe
from gan_pipe.runner import new_context, pick_device
from gan_pipe.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
GOAL_PIPELINE = 1.05
GOAL_TRACKING = 1.02


class StepClock:
    """A gan-pipe plugin: timestamps at the window's two ends (hook ``gan_pipe_on_train_step``)."""

    def __init__(self) -> None:
        self.reset(0, 0, torch.device("cpu"))

    def reset(self, start: int, end: int, device: torch.device) -> None:
        self.start, self.end, self.device = start, end, device
        self.marks: dict[int, tuple[float, float]] = {}

    def mark(self, step: int) -> None:
        if step == self.start or step == self.end:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.marks[step] = (time.perf_counter(), time.process_time())

    def step_time(self) -> tuple[float, float]:
        """(wall s, process CPU s) per step over the window."""
        (w0, c0), (w1, c1) = self.marks[self.start], self.marks[self.end]
        n = self.end - self.start
        return (w1 - w0) / n, (c1 - c0) / n

    @hookimpl
    def gan_pipe_on_train_step(self, ctx: Any, step: int) -> None:
        self.mark(step)


class NullTracker:
    """Every public method of :class:`Tracker`, doing nothing: tracking off."""

    run_id = experiment_id = "none"
    uri = "none"
    attached = False

    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    log_metrics = flush = log_params = set_tags = log_figure = _nothing

    def log_image(self, image: Any, key: str, step: int) -> None:
        self.last_image = image  # kept: the tracking-calls replay logs this very frame

    log_dict = log_text = log_artifact = log_model = end = claim = _nothing

    def deferred_artifacts(self):
        import contextlib

        return contextlib.nullcontext()


def _check_null_tracker() -> None:
    public = {n for n in vars(Tracker) if not n.startswith("_") and callable(vars(Tracker)[n])}
    missing = sorted(n for n in public if not hasattr(NullTracker, n))
    if missing:
        raise SystemExit(f"NullTracker lacks Tracker methods {missing}: update bench/overhead.py")


def check_supported(resolved: Any) -> None:
    """The bare loop writes out one update rule; refuse recipes it does not reproduce."""
    r = resolved.recipe
    t = r.train
    problems = []
    if r.loss.name != "non-saturating":
        problems.append(f"loss {r.loss.name!r} (the bare loop has non-saturating BCE)")
    for net in ("generator", "discriminator"):
        if t.optimizer_for(net)["optimizer"] != "adam":
            problems.append(f"{net} optimizer is not adam")
    if t.updates != "alternating" or t.lr_schedule != "constant" or t.sampling != "epochs":
        problems.append("needs updates = alternating, lr_schedule = constant, sampling = epochs")
    if r.regularizers:
        problems.append("regularizers are not in the bare loop")
    if r.noise.distribution != "uniform":
        problems.append("noise must be uniform")
    if problems:
        raise SystemExit("bench/overhead.py: unsupported recipe: " + "; ".join(problems))


def bare_loop(
    G: torch.nn.Module,
    D: torch.nn.Module,
    data: torch.Tensor,
    settings: dict[str, Any],
    clock: StepClock,
    steps: int,
) -> None:
    """The hand-written loop: ``steps`` generator steps, the clock read after each."""
    device = data.device
    batch, n_critic, z_dim = settings["batch"], settings["n_critic"], settings["z_dim"]
    real_label, fake_label = settings["real_label"], settings["fake_label"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings["amp"])

    def adam(params, s):
        return torch.optim.Adam(
            params, lr=s["lr"], betas=tuple(s["betas"]), weight_decay=s["weight_decay"]
        )

    opt_g, opt_d = adam(G.parameters(), settings["opt_g"]), adam(D.parameters(), settings["opt_d"])

    def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
        logits = logits.float().reshape(-1)
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))

    def z(n: int) -> torch.Tensor:
        return torch.rand(n, z_dim, device=device).mul_(2).sub_(1)

    per_epoch = len(data) // batch
    perm, i = None, per_epoch
    G.train()
    D.train()
    d_params = [p for p in D.parameters() if p.requires_grad]
    for step in range(1, steps + 1):
        for _ in range(n_critic):
            if i >= per_epoch:
                perm, i = torch.randperm(len(data), device=device), 0
            real = data.index_select(0, perm[i * batch : (i + 1) * batch])
            i += 1
            with torch.no_grad(), autocast:
                fake = G(z(batch))
            with autocast:
                d_loss = bce(D(real), real_label) + bce(D(fake), fake_label)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        for p in d_params:
            p.requires_grad_(False)
        with autocast:
            g_loss = bce(D(G(z(batch))), 1.0)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        for p in d_params:
            p.requires_grad_(True)
        clock.mark(step)


def tracking_calls(
    keys: list[str], image: Any, window: int, log_every: int, sample_every: int, reps: int
) -> list[tuple[float, float]]:
    """(wall s, CPU s) per step of the Tracker calls a window makes (the same metric keys every
    ``log_every`` steps, the same sample frame every ``sample_every``), with nothing else
    running: the absolute cost of tracking, free of the noise of a training step. Each window
    waits for MLflow's asynchronous writes, so their cost is counted (a real run waits once,
    at its end: this over-counts slightly)."""
    import mlflow

    tracker = Tracker.start("bench-overhead", "tracking-calls")
    out = []
    try:
        for r in range(max(reps, 3)):
            w0, c0 = time.perf_counter(), time.process_time()
            for s in range(r * window + 1, (r + 1) * window + 1):
                if s % log_every == 0:
                    tracker.log_metrics(dict.fromkeys(keys, 1.0), s)
                if s % sample_every == 0:
                    tracker.log_image(image, key="samples", step=s)
            tracker.flush(wait=True)
            mlflow.flush_async_logging()
            out.append(((time.perf_counter() - w0) / window, (time.process_time() - c0) / window))
    finally:
        tracker.end("FINISHED")
    return out


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def spread(xs: list[float]) -> str:
    return f"range {min(xs):.3f}-{max(xs):.3f}" if len(xs) > 1 else "one rep"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "dcgan.toml"))
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto, ...")
    ap.add_argument("--warmup", type=int, default=2, help="generator steps before the window")
    ap.add_argument("--window", type=int, default=20, help="timed generator steps")
    ap.add_argument("--reps", type=int, default=2, help="interleaved repetitions")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe --set")
    args = ap.parse_args()
    if args.warmup < 1 or args.window < 1 or args.reps < 1:
        raise SystemExit("--warmup, --window and --reps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    _check_null_tracker()

    start, end = args.warmup, args.warmup + args.window
    overrides = [
        *args.overrides,
        f"train.steps={end}",
        "train.progress=true",
        f'experiment.device="{args.device}"',
    ]
    clock = StepClock()
    plugins = Plugins(load_plugins(extra=[(clock, "bench-step-clock")]))
    resolved = load_recipe(args.recipe, plugins.registry, overrides)
    check_supported(resolved)
    recipe, cfg = resolved.recipe, resolved.recipe.train
    device = pick_device(recipe.experiment.device)

    # data and nets through the stage hooks, once; every run starts from copies of these
    torch.manual_seed(recipe.experiment.seed)
    base = new_context(resolved, plugins, NullTracker(), device)
    plugins.data(base)
    plugins.build(base)
    assert base.dataset is not None and base.generator is not None
    G0, D0 = copy.deepcopy(base.generator), copy.deepcopy(base.discriminator)
    loss_params = resolved.params["loss"]
    settings = {
        "batch": cfg.batch_size,
        "n_critic": cfg.n_critic,
        "z_dim": recipe.noise.dim,
        "real_label": loss_params.real_label,
        "fake_label": loss_params.fake_label,
        "amp": device.type == "cuda" and cfg.amp in ("auto", "bf16"),
        "opt_g": cfg.optimizer_for("generator"),
        "opt_d": cfg.optimizer_for("discriminator"),
    }
    if loss_params.d_reduction != "sum":
        raise SystemExit("bench/overhead.py: the bare loop has d_reduction = 'sum'")
    data = base.dataset.train.to(device)

    import mlflow

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(
        f"overhead: {Path(args.recipe).name} ({recipe.experiment.name}), batch {cfg.batch_size}, "
        f"n_critic {cfg.n_critic}, label smoothing real={loss_params.real_label} "
        f"fake={loss_params.fake_label}, bf16 autocast {settings['amp']}"
    )
    print(
        f"device  : {device} ({where}), {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), mlflow {mlflow.__version__}, "
        f"Python {platform.python_version()}"
    )
    sample_every = cfg.sample_every or max(1, end // 10)
    print(
        f"window  : steps {start}..{end} ({args.window} timed after {args.warmup} warm-up), "
        f"log_every {cfg.log_every}, sample_every {sample_every}, {args.reps} reps interleaved"
    )
    if args.window % math.lcm(cfg.log_every, sample_every):
        print(
            f"warning : --window {args.window} is not a multiple of "
            f"{math.lcm(cfg.log_every, sample_every)}: the window's share of logging and "
            "sample steps differs from a long run's"
        )
    print(f"load    : {loadavg()} (1, 5, 15 min) at start", flush=True)

    def pipeline(tracked: bool, rep: int) -> tuple[float, float]:
        name = f"pipeline-rep{rep}"
        tracker = Tracker.start("bench-overhead", name) if tracked else NullTracker()
        ctx = new_context(resolved, plugins, tracker, device)
        ctx.dataset = base.dataset
        ctx.generator, ctx.discriminator = copy.deepcopy(G0), copy.deepcopy(D0)
        ctx.loss, ctx.regularizers, ctx.noise = base.loss, base.regularizers, base.noise
        clock.reset(start, end, device)
        try:
            plugins.train(ctx)  # the train stage: Trainer(ctx).fit()
        finally:
            tracker.end("FINISHED")
        seen["keys"] = [k for k in ctx.history if k.startswith("train/")]
        if not tracked:
            seen["image"] = getattr(tracker, "last_image", None)
        return clock.step_time()

    def bare(rep: int) -> tuple[float, float]:
        clock.reset(start, end, device)
        bare_loop(copy.deepcopy(G0), copy.deepcopy(D0), data, settings, clock, end)
        return clock.step_time()

    seen: dict[str, Any] = {}
    variants = {
        "pipeline": lambda rep: pipeline(True, rep),
        "bare": bare,
        "no-tracking": lambda rep: pipeline(False, rep),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    saved_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)  # never log into a user's server
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="gan-pipe-bench-") as tmp:
        os.chdir(tmp)  # the store: tmp/mlflow.db and tmp/mlartifacts
        try:
            for rep in range(1, args.reps + 1):
                order = list(variants) if rep % 2 else list(reversed(variants))
                for name in order:
                    torch.manual_seed(recipe.experiment.seed)
                    wall, used = variants[name](rep)
                    times[name].append(wall)
                    cpu[name].append(used)
                print(
                    f"rep {rep:<4}: "
                    + "  ".join(
                        f"{k} {times[k][-1] * 1e3:.1f} ms ({cpu[k][-1] * 1e3:.1f} CPU)"
                        for k in variants
                    )
                    + f"   (load {loadavg()})",
                    flush=True,
                )
        finally:
            os.chdir(cwd)
            if saved_uri is not None:
                os.environ["MLFLOW_TRACKING_URI"] = saved_uri

    kinds = {"wall": times, "CPU": cpu} if device.type == "cpu" else {"wall": times}
    for kind, per in kinds.items():
        med = {k: statistics.median(v) for k, v in per.items()}
        print(
            f"median  : {kind:<4} "
            + ", ".join(f"{k} {med[k] * 1e3:.1f} ms/step" for k in variants)
            + f" ({cfg.batch_size * cfg.n_critic / med['bare']:.0f} real samples/s bare)"
        )
    for label, num, den, goal, strict in (
        ("pipeline/bare", "pipeline", "bare", GOAL_PIPELINE, False),
        ("tracking on/off", "pipeline", "no-tracking", GOAL_TRACKING, True),
    ):
        for kind, per in kinds.items():
            ratios = [a / b for a, b in zip(per[num], per[den], strict=True)]
            m = statistics.median(ratios)
            met = m < goal if strict else m <= goal
            print(
                f"ratio {label} ({kind}): {m:.3f}  (median of per-rep ratios, {spread(ratios)}; "
                f"goal {'<' if strict else '<='} {goal:.2f}: {'met' if met else 'NOT met'})"
            )
    if seen.get("image") is not None:
        with tempfile.TemporaryDirectory(prefix="gan-pipe-bench-") as tmp:
            os.chdir(tmp)
            try:
                period = math.lcm(cfg.log_every, sample_every)  # at least one of each call
                n = max(args.window, period)
                calls = tracking_calls(
                    seen["keys"], seen["image"], n, cfg.log_every, sample_every, args.reps
                )
            finally:
                os.chdir(cwd)
        for kind, per in kinds.items():
            i = 0 if kind == "wall" else 1
            c = statistics.median(x[i] for x in calls)
            b = statistics.median(per["bare"])
            print(
                f"tracking calls alone ({kind}): {c * 1e3:.2f} ms/step = {c / b:.2%} of the bare "
                f"step (the window's log_metrics and log_image calls replayed without training, "
                f"flushed; median of {len(calls)})"
            )
    print(f"load    : {loadavg()} (1, 5, 15 min) at end")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
