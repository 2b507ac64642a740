"""Built-in reports: training curves (``loss-curves``) and generator samples (``sample-grid``).

Only pydantic is imported at module level: torch, matplotlib and the drawing helpers load
inside ``run``, so loading plugins (``gan-pipe plugins``, recipe validation) stays fast.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from gan_pipe.context import RunContext
    from gan_pipe.registry import Register

#: Last key segments drawn in the main axes; every other series goes to a second axes.
LOSS_NAMES = ("d_loss", "g_loss")


# ---------------------------------------------------------------- loss-curves
class LossCurvesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[str] | None = Field(
        None, description="history keys to plot (default: every train/* key)"
    )
    smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="EMA factor: 0 plots raw values, 0.9 smooths heavily"
    )
    logy: bool = Field(False, description="log y axis (symlog for series with values <= 0)")


def ema(values: list[float], factor: float) -> list[float]:
    """Exponential moving average started at the first value, not at 0, so the curve's
    start is not dragged down. A non-finite value is kept in place (a gap in the plot)
    without poisoning the values after it."""
    out: list[float] = []
    s: float | None = None
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        s = v if s is None else factor * s + (1.0 - factor) * v
        out.append(s)
    return out


class LossCurves:
    """One figure of the logged training scalars vs step: D and G losses in the first
    axes, any other ``train/*`` series (gradient penalty, D(x) means...) in a second one,
    because they live on different scales. Logged as ``plots/losses.png``, with the raw
    (unsmoothed) series as ``plots/losses.json`` so the plot can be redrawn elsewhere. With
    ``train.eval_every``, the metric curves too: ``plots/eval.png`` and ``plots/eval.json``
    (see :func:`eval_curves`)."""

    def __init__(self, params: LossCurvesParams):
        self.params = params

    def select(self, history: dict[str, list[tuple[int, float]]]) -> dict[str, list]:
        """The series to plot, in history order; keys asked for but never logged are
        warned about and skipped (a report must not fail a finished run over a typo)."""
        if self.params.keys is None:
            keys = [k for k in history if k.startswith("train/")]
        else:
            missing = [k for k in self.params.keys if k not in history]
            if missing:
                warnings.warn(
                    f"loss-curves: no history for {missing}; logged keys: {sorted(history)}",
                    stacklevel=2,
                )
            keys = [k for k in self.params.keys if k in history]
        return {k: list(history[k]) for k in keys if history[k]}

    def figure(self, series: dict[str, list[tuple[int, float]]]) -> Figure:
        from matplotlib.figure import Figure

        losses = [k for k in series if k.rsplit("/", 1)[-1] in LOSS_NAMES]
        others = [k for k in series if k not in losses]
        groups = [g for g in (losses, others) if g]
        fig = Figure(figsize=(8, 3.2 * len(groups)), dpi=100, layout="constrained")
        axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
        a = self.params.smoothing
        for ax, keys in zip(axes, groups, strict=True):
            finite: list[float] = []
            for k in keys:
                steps = [int(s) for s, _ in series[k]]
                vals = [float(v) for _, v in series[k]]
                finite += [v for v in vals if math.isfinite(v)]
                ax.plot(steps, ema(vals, a) if a > 0 else vals, lw=1.2, label=k)
            if self.params.logy:
                ax.set_yscale("log" if finite and min(finite) > 0 else "symlog")
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
        axes[0].set_title("training curves" + (f" (EMA {a:g})" if a > 0 else ""))
        axes[-1].set_xlabel("step")
        return fig

    def run(self, ctx: RunContext) -> None:
        series = self.select(ctx.history)
        if series:
            ctx.tracker.log_figure(self.figure(series), "plots/losses.png")
            raw = {k: [[int(s), float(v)] for s, v in pts] for k, pts in series.items()}
            ctx.tracker.log_dict(raw, "plots/losses.json")
        curves = eval_curves(ctx.history, ctx.results, ctx.step)
        if curves:
            ctx.tracker.log_figure(eval_figure(curves), "plots/eval.png")
            raw = {k: [[int(s), float(v)] for s, v in pts] for k, pts in curves.items()}
            ctx.tracker.log_dict(raw, "plots/eval.json")


#: At most this many metric curves in ``plots/eval.png`` (the first ones logged).
MAX_EVAL_PANELS = 15


def eval_curves(
    history: dict[str, list[tuple[int, float]]], final: dict[str, float], step: int
) -> dict[str, list[tuple[int, float]]]:
    """The metrics evaluated more than once (``train.eval_every``) with the final evaluation
    appended: ``{"eval/kl": [(step, value), ...]}``. Sizes and settings (``div_bins``,
    ``kde_bandwidth``: :func:`gan_pipe.evaluation.is_setting`) and ``*_inf`` flags are left
    out; at most :data:`MAX_EVAL_PANELS`, in the order the metrics report them."""
    from gan_pipe.evaluation import is_setting

    out: dict[str, list[tuple[int, float]]] = {}
    for key, pts in history.items():
        name = key[len("eval/") :]
        if not key.startswith("eval/") or name.endswith("_inf") or is_setting(name, 0.0):
            continue
        pts = list(pts)
        if name in final and (not pts or pts[-1][0] != step):
            pts.append((step, float(final[name])))
        if len(pts) >= 2:
            out[key] = pts
        if len(out) == MAX_EVAL_PANELS:
            break
    return out


def eval_figure(curves: dict[str, list[tuple[int, float]]]) -> Figure:
    """One small panel per metric (they live on unrelated scales), step on the x axis."""
    from matplotlib.figure import Figure

    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig = Figure(figsize=(4 * cols, 2.6 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (key, pts) in zip(axes, curves.items(), strict=False):
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", ms=3, lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(curves) :]:
        ax.set_axis_off()
    fig.suptitle("evaluation metrics during training")
    return fig


# ---------------------------------------------------------------- sample-grid
class SampleGridParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(64, gt=0, description="images in the grid (ceil(sqrt(n)) per row)")
    seed: int = Field(0, ge=0, description="seed of the fixed noise: grids compare across runs")
    key: str = Field("samples_final", min_length=1, description="image key for log_image")
    n_points: int = Field(
        2000, gt=0, description="samples per set for the 2-D scatter and 1-D histogram"
    )


def _accepts_generator(fn: Any) -> bool:
    """Whether ``fn`` takes a ``generator=`` keyword (the built-in noise sampler does)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("generator")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def fixed_noise(ctx: RunContext, n: int, seed: int) -> torch.Tensor:
    """``n`` noise vectors that depend only on ``seed``: the same grid cells show the same
    z in every run, so grids are comparable across runs and checkpoints. Uses a private
    ``torch.Generator`` on ``ctx.device`` when ``ctx.noise`` takes one, else the seeded and
    restored global RNG."""
    import torch

    assert ctx.noise is not None
    if _accepts_generator(ctx.noise):
        return ctx.noise(n, generator=torch.Generator(device=ctx.device).manual_seed(seed))
    from gan_pipe.evaluation import isolated_rng

    with isolated_rng(seed, torch.device(ctx.device)):
        return ctx.noise(n)


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no grad for the block; every submodule's own mode comes back after."""
    import torch

    from gan_pipe.evaluation import eval_mode as modes_restored

    with modes_restored(module), torch.no_grad():
        yield module


class SampleGrid:
    """What the generator makes at the end of the run, drawn from fixed noise.

    Image data: a grid of ``n`` samples, logged as ``plots/samples.png`` and as an image
    series under ``key`` at ``ctx.step`` (next to the trainer's per-step grids in the MLflow
    image slider). 2-D data: real vs generated scatter; 1-D data: real vs generated
    histograms with the discriminator's output over x. Vector data of more dimensions
    is shown by its first two coordinates.
    """

    def __init__(self, params: SampleGridParams):
        self.params = params

    def _sample(self, ctx: RunContext, n: int) -> torch.Tensor:
        assert ctx.generator is not None
        z = fixed_noise(ctx, n, self.params.seed)
        with eval_mode(ctx.generator) as g:
            return g(z).float().cpu()

    def _real(self, ctx: RunContext, n: int) -> torch.Tensor:
        """A fixed random subset of the training data (same rows in every run)."""
        assert ctx.dataset is not None
        return real_subset(ctx.dataset, n, self.params.seed)

    def _decision(self, ctx: RunContext, lo: float, hi: float) -> tuple[Any, Any] | None:
        """D(x) on a grid of x for 1-D data, or None without a usable discriminator."""
        import torch

        if ctx.discriminator is None:
            return None
        xs = torch.linspace(lo, hi, 400)
        with eval_mode(ctx.discriminator) as d:
            out = d(xs.reshape(-1, *ctx.dataset.shape).to(ctx.device)).float().cpu()
        return (xs, out.ravel()) if out.numel() == len(xs) else None

    def run(self, ctx: RunContext) -> None:
        from gan_pipe.plugins.reports import grid as G

        ds = ctx.dataset
        if ds is None or ctx.generator is None or ctx.noise is None:
            raise RuntimeError("sample-grid needs ctx.dataset, ctx.generator and ctx.noise")
        p = self.params
        if ds.is_image:
            images = G.samples_to_images(self._sample(ctx, p.n), ds.shape)
            cols = math.ceil(math.sqrt(p.n))
            picture = G.image_grid(images, nrow=cols, value_range=ds.value_range)
            ctx.tracker.log_figure(_image_figure(picture), "plots/samples.png")
            ctx.tracker.log_image(picture, key=p.key, step=ctx.step)
            return
        fake = self._sample(ctx, p.n_points).reshape(p.n_points, -1)
        real = self._real(ctx, p.n_points).reshape(-1, fake.shape[1])
        fig = vector_figure(
            real, fake, f"step {ctx.step}", decision=lambda lo, hi: self._decision(ctx, lo, hi)
        )
        ctx.tracker.log_figure(fig, "plots/samples.png")


def real_subset(dataset: Any, n: int, seed: int) -> torch.Tensor:
    """``n`` training rows picked by ``seed`` (the same rows in every run and every frame)."""
    import torch

    train = dataset.train
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return train[idx.to(train.device)].float().cpu()


def vector_figure(
    real: torch.Tensor,
    fake: torch.Tensor,
    title: str,
    span: tuple[float, float] | None = None,
    decision: Any = None,
    limits: Any = None,
) -> Figure:
    """Real vs generated rows of vector data: histograms in 1-D (over ``span``, default the
    bulk of both samples; ``decision(lo, hi)`` may return D(x) to draw), otherwise a scatter
    of the first two coordinates (axes fixed to ``limits`` when given)."""
    from gan_pipe.plugins.reports import grid as G

    if fake.shape[1] == 1:
        if span is None:
            both = G.to_numpy(real).ravel().tolist() + G.to_numpy(fake).ravel().tolist()
            span = _span([v for v in both if math.isfinite(v)])
        d = decision(*span) if decision is not None else None
        return G.histogram_plot(real, fake, range=span, decision=d, title=title)
    if fake.shape[1] > 2:
        title += f" (first 2 of {fake.shape[1]} dimensions)"
    return G.scatter_plot(real, fake, title=title, limits=limits)


def _span(values: list[float]) -> tuple[float, float]:
    """Histogram range: the 0.1%..99.9% quantiles of real and generated values, padded by
    5%, so a few wild samples do not squash the whole picture into one bin."""
    import numpy as np

    if not values:
        return (-1.0, 1.0)
    lo, hi = (float(q) for q in np.quantile(values, [0.001, 0.999]))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    return (lo - pad, hi + pad)


def _image_figure(picture: Any) -> Figure:
    """The grid as a figure with no axes, its longest side about 600 px (grid pixels upscaled,
    nearest-neighbour, so small digits stay sharp and readable in the artifact viewer)."""
    from matplotlib.figure import Figure

    h, w = picture.shape[:2]
    dpi, scale = 100, max(1.0, 600 / max(h, w))
    fig = Figure(figsize=(w * scale / dpi, h * scale / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(
        picture,
        cmap="gray" if picture.ndim == 2 else None,
        vmin=0,
        vmax=255,
        interpolation="nearest",
    )
    ax.set_axis_off()
    return fig


# ---------------------------------------------------------------- registration
@hookimpl
def register_reports(register: Register) -> None:
    register(
        "loss-curves",
        LossCurves,
        params=LossCurvesParams,
        description="training losses and other train/* scalars vs step (plots/losses.png), "
        "and metrics evaluated during training (plots/eval.png)",
    )
    register(
        "sample-grid",
        SampleGrid,
        params=SampleGridParams,
        description="generator samples at fixed noise: image grid, 2-D scatter, 1-D histogram",
    )
