"""Pure drawing helpers for the report plugins: no tracker, no MLflow, no global state.

Only numpy is imported at module level, so the trainer can log per-step image grids without
loading matplotlib; the functions that draw figures import it themselves. Figures are built
with matplotlib's object API (``Figure``), never pyplot, so nothing depends on (or changes)
the process-wide backend and figures are freed like any other object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REAL_COLOR = "tab:blue"
FAKE_COLOR = "tab:orange"


def to_numpy(x: Any) -> np.ndarray:
    """A float32 array from a tensor (any device or dtype, bf16 included) or an array-like."""
    if hasattr(x, "detach"):  # a torch tensor; checked by duck type so torch is not imported
        x = x.detach().float().cpu().numpy()  # .float() first: numpy has no bfloat16
    return np.asarray(x, dtype=np.float32)


def image_grid(
    images: Any,
    nrow: int | None = None,
    padding: int = 2,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    pad_value: int = 0,
) -> np.ndarray:
    """Tile a batch of images into one uint8 picture, like ``torchvision.utils.make_grid``.

    ``images`` is ``(N, C, H, W)`` with C = 1 or 3, or ``(N, H, W)``, as a tensor or array.
    ``nrow`` is the number of images per row (default ``ceil(sqrt(N))``, a square grid).
    Values are clipped to ``value_range`` and mapped linearly onto 0..255 (``None``: the
    batch's own min..max). Image k sits at row ``k // nrow``, column ``k % nrow``, with
    ``padding`` pixels of ``pad_value`` around every image. Returns ``HxW`` for one channel
    and ``HxWx3`` for three, the layouts ``tracker.log_image`` and ``imshow`` accept.
    NaN maps to the bottom of the range so a diverged generator still gives a picture.
    """
    x = to_numpy(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"image_grid wants (N, C, H, W) or (N, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"image_grid wants 1 or 3 channels, got {c} (shape {x.shape})")
    if n == 0:
        raise ValueError("image_grid got no images")
    if padding < 0 or (nrow is not None and nrow < 1):
        raise ValueError(f"bad grid layout: nrow={nrow}, padding={padding}")

    if value_range is None:
        finite = x[np.isfinite(x)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
    else:
        lo, hi = float(value_range[0]), float(value_range[1])
        if not hi > lo:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    x = np.nan_to_num(x, nan=lo, posinf=hi, neginf=lo)
    unit = (np.clip(x, lo, hi) - lo) / (hi - lo)
    # floor(v * 255 + 0.5): the rounding torchvision's save_image uses.
    pixels = np.floor(unit * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)

    cols = min(nrow or math.ceil(math.sqrt(n)), n)
    rows = math.ceil(n / cols)
    grid = np.full(
        (rows * (h + padding) + padding, cols * (w + padding) + padding, c),
        pad_value,
        dtype=np.uint8,
    )
    for k in range(n):
        r, q = divmod(k, cols)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[top : top + h, left : left + w] = pixels[k]
    return grid[..., 0] if c == 1 else grid


def samples_to_images(x: Any, shape: Sequence[int]) -> Any:
    """Reshape generator samples of per-sample ``shape`` to ``(N, C, H, W)``.

    MLP GANs work on flattened images (``shape == (784,)``): a flat size that is a perfect
    square is one channel (784 -> 1x28x28), three times a perfect square is RGB
    (3072 -> 3x32x32; the two cases never overlap). ``(H, W)`` gains a channel axis and
    ``(C, H, W)`` is kept. Works on tensors and arrays alike and returns the same type.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        target = shape
    elif len(shape) == 2:
        target = (1, *shape)
    elif len(shape) == 1:
        d = shape[0]
        for c in (1, 3):
            side = math.isqrt(d // c)
            if d % c == 0 and side > 0 and c * side * side == d:
                target = (c, side, side)
                break
        else:
            raise ValueError(
                f"cannot view flat samples of size {d} as images: not a perfect square "
                "(one channel) or three times one (RGB)"
            )
    else:
        raise ValueError(f"cannot view samples of shape {shape} as images")
    return x.reshape(x.shape[0], *target)


def scatter_plot(
    real: Any,
    fake: Any,
    *,
    title: str | None = None,
    labels: tuple[str, str] = ("real", "generated"),
    limits: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> Figure:
    """Real vs generated points of 2-D data (the first two coordinates if more).

    Non-finite generated points are dropped; the axes scale to both sets, so samples that
    wander far from the data stay visible instead of being cut off, unless ``limits``
    ((x lo, x hi), (y lo, y hi)) fixes them (frames of a training run stay comparable); then
    the share of generated points outside the view is written in the corner.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for pts, label, color in ((real, labels[0], REAL_COLOR), (fake, labels[1], FAKE_COLOR)):
        p = to_numpy(pts).reshape(len(pts), -1)[:, :2]
        p = p[np.isfinite(p).all(axis=1)]
        ax.scatter(p[:, 0], p[:, 1], s=5, alpha=0.5, color=color, linewidths=0, label=label)
    if limits is None:
        ax.set_aspect("equal", adjustable="datalim")
    else:
        (x0, x1), (y0, y1) = limits
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_aspect("equal", adjustable="box")
        g = to_numpy(fake).reshape(len(fake), -1)[:, :2]
        finite = np.isfinite(g).all(axis=1)
        inside = (g[:, 0] >= x0) & (g[:, 0] <= x1) & (g[:, 1] >= y0) & (g[:, 1] <= y1)
        n = max(len(g), 1)
        out, bad = float((finite & ~inside).sum()) / n, float((~finite).sum()) / n
        words = [f"{out:.1%} outside the view"] if out > 0 else []
        words += [f"{bad:.1%} non-finite"] if bad > 0 else []
        if words:
            ax.text(
                0.02,
                0.02,
                "generated points: " + ", ".join(words),
                transform=ax.transAxes,
                fontsize=8,
                color=FAKE_COLOR,
            )
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", markerscale=3)
    if title:
        ax.set_title(title)
    return fig


def histogram_plot(
    real: Any,
    fake: Any,
    bins: int = 100,
    range: tuple[float, float] = (-8.0, 8.0),  # named as in numpy.histogram
    decision: tuple[Any, Any] | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Real vs generated histograms of 1-D data, optionally with the discriminator's output.

    Heights are densities normalised by *all* samples, so mass outside ``range`` is missing
    from the picture rather than silently rescaled into it. ``decision=(xs, ds)`` draws
    D(x) on a second y axis (raw output: logits or critic values, whatever D returns).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for vals, label, color in ((real, "real", REAL_COLOR), (fake, "generated", FAKE_COLOR)):
        v = to_numpy(vals).ravel()
        v = v[np.isfinite(v)]
        counts, edges = np.histogram(v, bins=bins, range=range)
        dens = counts / (max(len(v), 1) * (edges[1] - edges[0]))
        ax.stairs(dens, edges, fill=True, alpha=0.45, color=color, label=label)
    ax.set_xlim(*range)
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    handles, names = ax.get_legend_handles_labels()
    if decision is not None:
        xs, ds = decision
        ax2 = ax.twinx()
        (line,) = ax2.plot(to_numpy(xs).ravel(), to_numpy(ds).ravel(), color="tab:green", lw=1.5)
        ax2.set_ylabel("D(x)")
        handles.append(line)
        names.append("D(x)")
    ax.legend(handles, names, loc="upper right")
    if title:
        ax.set_title(title)
    return fig


def figure_pixels(fig: Figure) -> np.ndarray:
    """The figure rendered to an (H, W, 3) uint8 picture (for MLflow image series)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
