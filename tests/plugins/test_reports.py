"""The built-in reports and their drawing helpers, against a fake tracker (no MLflow)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from pydantic import ValidationError

from gan_pipe.context import Dataset, RunContext
from gan_pipe.plugins.reports import plots
from gan_pipe.plugins.reports.grid import (
    histogram_plot,
    image_grid,
    samples_to_images,
    scatter_plot,
)
from gan_pipe.registry import Register, Registry

Z = 8


class FakeTracker:
    """Records what reports log, keeping the objects for inspection."""

    def __init__(self) -> None:
        self.figures: list[tuple[Figure, str]] = []
        self.images: list[tuple[np.ndarray, str, int]] = []
        self.dicts: list[tuple[dict, str]] = []
        self.artifacts: list[tuple[str, str | None]] = []

    def log_figure(self, fig: Figure, artifact_file: str) -> None:
        self.figures.append((fig, artifact_file))

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self.images.append((image, key, step))

    def log_dict(self, d: dict, artifact_file: str) -> None:
        self.dicts.append((d, artifact_file))

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self.artifacts.append((local_path, artifact_path))


def make_ctx(**kw: Any) -> RunContext:
    return RunContext(
        recipe=None, hooks=None, tracker=FakeTracker(), device=torch.device("cpu"), **kw
    )


def plain_noise(n: int) -> torch.Tensor:
    """A noise function without a ``generator=`` keyword (global RNG path)."""
    return torch.randn(n, Z)


def gen_noise(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randn(n, Z, generator=generator)


# ---------------------------------------------------------------- image_grid
def test_grid_shape_arithmetic() -> None:
    g = image_grid(torch.zeros(10, 1, 28, 28), nrow=4, padding=2)
    # 4 columns, ceil(10/4) = 3 rows, each cell 28 + 2 plus the outer padding of 2.
    assert g.shape == (3 * 30 + 2, 4 * 30 + 2)
    assert g.dtype == np.uint8


def test_grid_default_is_square_and_accepts_nhw_numpy() -> None:
    g = image_grid(np.zeros((10, 5, 7)), padding=1)  # ceil(sqrt(10)) = 4 columns
    assert g.shape == (3 * 6 + 1, 4 * 8 + 1)
    assert image_grid(np.zeros((3, 1, 5, 5)), nrow=8, padding=0).shape == (5, 15)  # nrow > N


def test_grid_value_mapping_and_clipping() -> None:
    x = torch.tensor([-1.0, 1.0, 0.0, -5.0, 5.0, float("nan"), float("inf")]).reshape(1, 1, 1, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN must be mapped, not cast (undefined in numpy)
        assert image_grid(x, padding=0).tolist() == [[0, 255, 128, 0, 255, 0, 255]]
    y = torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 1, 3)
    assert image_grid(y, padding=0, value_range=(0, 1)).tolist() == [[0, 128, 255]]


def test_grid_places_image_k_at_its_offset() -> None:
    n, h, w, pad, nrow = 7, 4, 5, 2, 3
    x = torch.stack([torch.full((1, h, w), k / 10) for k in range(n)])  # image k = k/10
    g = image_grid(x, nrow=nrow, padding=pad, value_range=(0, 1), pad_value=77)
    for k in range(n):
        r, c = divmod(k, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        cell = g[top : top + h, left : left + w]
        assert (cell == math.floor(k / 10 * 255 + 0.5)).all(), k
        assert (g[top - 1, left : left + w] == 77).all()  # padding above every cell
    # the two empty cells of the last row are padding
    assert (g[pad + 2 * (h + pad) :, pad + 1 * (w + pad) :] == 77).all()


def test_grid_three_channels() -> None:
    x = -torch.ones(2, 3, 4, 4)
    x[1, 0] = 1.0  # second image pure red
    g = image_grid(x, nrow=2, padding=1)
    assert g.shape == (6, 11, 3)
    assert g[1:5, 6:10].reshape(-1, 3).tolist() == [[255, 0, 0]] * 16
    assert (g[1:5, 1:5] == 0).all()


def test_grid_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        image_grid(torch.zeros(2, 2, 4, 4))  # 2 channels
    with pytest.raises(ValueError):
        image_grid(torch.zeros(2, 16))
    with pytest.raises(ValueError):
        image_grid(torch.zeros(2, 1, 4, 4), value_range=(1, 1))


# ---------------------------------------------------------------- samples_to_images
def test_samples_to_images() -> None:
    flat = torch.arange(2 * 784, dtype=torch.float32).reshape(2, 784)
    img = samples_to_images(flat, (784,))
    assert img.shape == (2, 1, 28, 28) and isinstance(img, torch.Tensor)
    assert torch.equal(img[1, 0, 1], flat[1, 28:56])  # row-major, no shuffling
    assert samples_to_images(np.zeros((3, 3072)), (3072,)).shape == (3, 3, 32, 32)
    assert samples_to_images(torch.zeros(4, 8, 9), (8, 9)).shape == (4, 1, 8, 9)
    assert samples_to_images(torch.zeros(4, 3, 8, 8), (3, 8, 8)).shape == (4, 3, 8, 8)
    with pytest.raises(ValueError):
        samples_to_images(torch.zeros(2, 10), (10,))


# ---------------------------------------------------------------- figures
def test_scatter_and_histogram_figures() -> None:
    fig = scatter_plot(torch.randn(50, 2), torch.randn(40, 2))
    offsets = [c.get_offsets() for c in fig.axes[0].collections]
    assert [len(o) for o in offsets] == [50, 40]
    fig = histogram_plot(torch.randn(500), torch.randn(300), bins=20, range=(-4, 4))
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 2
    xs = torch.linspace(-4, 4, 11)
    fig = histogram_plot(torch.randn(100), torch.randn(100), decision=(xs, torch.sigmoid(xs)))
    assert len(fig.axes) == 2
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), torch.sigmoid(xs).numpy())


# ---------------------------------------------------------------- registration
def test_plugin_registers_both_reports_with_strict_params() -> None:
    registry = Registry()
    plots.register_reports(register=Register(registry, "report", "plots"))
    assert registry.names("report") == ["loss-curves", "sample-grid"]
    comp = registry.get("report", "sample-grid")
    assert comp.validate_params({}).model_dump() == {
        "n": 64,
        "seed": 0,
        "key": "samples_final",
        "n_points": 2000,
    }
    with pytest.raises(ValidationError):
        comp.validate_params({"nn": 3})
    with pytest.raises(ValidationError):
        registry.get("report", "loss-curves").validate_params({"smoothing": 1.0})


# ---------------------------------------------------------------- loss-curves
HISTORY = {
    "train/d_loss": [(10, 1.3), (20, 1.1), (30, 0.9)],
    "train/g_loss": [(10, 0.7), (20, 0.8), (30, 1.0)],
    "train/d_real": [(10, 0.6), (20, 0.5), (30, 0.55)],
    "eval/parzen": [(30, 120.0)],
}


def test_loss_curves_logs_one_figure_with_the_history() -> None:
    ctx = make_ctx(history=HISTORY)
    plots.LossCurves(plots.LossCurvesParams()).run(ctx)
    tr = ctx.tracker
    assert [name for _, name in tr.figures] == ["plots/losses.png"]
    fig = tr.figures[0][0]
    assert len(fig.axes) == 2
    main, other = fig.axes[0].lines, fig.axes[1].lines
    assert [ln.get_label() for ln in main] == ["train/d_loss", "train/g_loss"]
    assert [ln.get_label() for ln in other] == ["train/d_real"]
    for ln in [*main, *other]:
        pts = HISTORY[ln.get_label()]
        assert list(ln.get_xdata()) == [s for s, _ in pts]
        assert list(ln.get_ydata()) == [v for _, v in pts]
    assert tr.dicts == [
        (
            {k: [list(p) for p in v] for k, v in HISTORY.items() if k.startswith("train/")},
            "plots/losses.json",
        )
    ]
    assert tr.images == []


def test_loss_curves_selected_keys_smoothing_and_logy() -> None:
    ctx = make_ctx(history=HISTORY)
    params = plots.LossCurvesParams(keys=["train/g_loss"], smoothing=0.5, logy=True)
    plots.LossCurves(params).run(ctx)
    fig = ctx.tracker.figures[0][0]
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "log"
    # EMA started at the first value: 0.7, 0.5*0.7+0.5*0.8, 0.5*0.75+0.5*1.0
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [0.7, 0.75, 0.875])
    assert ctx.tracker.dicts[0][0] == {"train/g_loss": [[10, 0.7], [20, 0.8], [30, 1.0]]}


def test_loss_curves_only_other_series_use_one_axes_and_symlog() -> None:
    ctx = make_ctx(history={"train/critic": [(1, -2.0), (2, 3.0)]})
    plots.LossCurves(plots.LossCurvesParams(logy=True)).run(ctx)
    fig = ctx.tracker.figures[0][0]
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 1
    assert fig.axes[0].get_yscale() == "symlog"


@pytest.mark.parametrize(
    "history",
    [{}, {"eval/parzen": [(1, 2.0)]}, {"train/d_loss": []}],
    ids=["empty", "no-train", "no-points"],
)
def test_loss_curves_with_nothing_to_plot_logs_nothing(history: dict) -> None:
    ctx = make_ctx(history=history)
    plots.LossCurves(plots.LossCurvesParams()).run(ctx)
    assert ctx.tracker.figures == [] and ctx.tracker.dicts == []


def test_loss_curves_unknown_key_warns_and_is_skipped() -> None:
    ctx = make_ctx(history=HISTORY)
    with pytest.warns(UserWarning, match="train/nope"):
        plots.LossCurves(plots.LossCurvesParams(keys=["train/nope", "train/d_loss"])).run(ctx)
    assert [ln.get_label() for ln in ctx.tracker.figures[0][0].axes[0].lines] == ["train/d_loss"]


def test_ema_keeps_gaps_without_poisoning() -> None:
    out = plots.ema([1.0, float("nan"), 3.0], 0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == 2.0


# ---------------------------------------------------------------- sample-grid
def image_ctx(flat: bool = False, noise: Any = plain_noise, step: int = 123) -> RunContext:
    """A fake run on 1x6x6 images in [-1, 1], flattened to 36 features if ``flat``."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(Z, 36), torch.nn.Tanh()]
    if not flat:
        layers.append(torch.nn.Unflatten(1, (1, 6, 6)))
    gen = torch.nn.Sequential(*layers)
    train = torch.rand(20, 36) * 2 - 1
    ds = Dataset("fake", train if flat else train.reshape(20, 1, 6, 6), is_image=True)
    return make_ctx(dataset=ds, generator=gen, noise=noise, step=step)


@pytest.mark.parametrize("flat", [False, True], ids=["chw", "flat"])
@pytest.mark.parametrize("noise", [plain_noise, gen_noise], ids=["global-rng", "generator"])
def test_sample_grid_images(flat: bool, noise: Any) -> None:
    ctx = image_ctx(flat=flat, noise=noise)
    ctx.generator.train()
    report = plots.SampleGrid(plots.SampleGridParams(n=10, key="final"))
    report.run(ctx)
    tr = ctx.tracker
    assert [name for _, name in tr.figures] == ["plots/samples.png"]
    assert len(tr.images) == 1
    grid, key, step = tr.images[0]
    assert (key, step) == ("final", 123)
    assert grid.shape == (3 * 8 + 2, 4 * 8 + 2) and grid.dtype == np.uint8  # 4 cols, 3 rows
    # the figure shows exactly the logged grid, without axes
    (ax,) = tr.figures[0][0].axes
    assert np.array_equal(ax.images[0].get_array(), grid) and not ax.axison
    assert ctx.generator.training and all(m.training for m in ctx.generator.modules())

    # Same seed: the same grid, even in a fresh context after the global RNG moved on.
    torch.manual_seed(999)
    again = image_ctx(flat=flat, noise=noise)
    report.run(again)
    assert np.array_equal(again.tracker.images[0][0], grid)
    # A different seed: a different grid.
    other = image_ctx(flat=flat, noise=noise)
    plots.SampleGrid(plots.SampleGridParams(n=10, seed=1)).run(other)
    assert not np.array_equal(other.tracker.images[0][0], grid)


def test_sample_grid_grid_is_the_generator_output() -> None:
    ctx = image_ctx(noise=gen_noise)
    plots.SampleGrid(plots.SampleGridParams(n=4, seed=5)).run(ctx)
    z = gen_noise(4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = image_grid(ctx.generator(z), nrow=2)
    assert np.array_equal(ctx.tracker.images[0][0], expected)


def test_sample_grid_hands_noise_its_own_generator() -> None:
    seen: list[Any] = []

    def noise(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        seen.append(generator)
        return gen_noise(n, generator=generator)

    plots.SampleGrid(plots.SampleGridParams(n=4, seed=3)).run(image_ctx(noise=noise))
    assert len(seen) == 1 and isinstance(seen[0], torch.Generator)
    assert seen[0].initial_seed() == 3


def test_sample_grid_leaves_global_rng_alone() -> None:
    ctx = image_ctx(noise=plain_noise)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    plots.SampleGrid(plots.SampleGridParams(n=4)).run(ctx)
    assert torch.equal(torch.rand(3), expected)


def test_sample_grid_restores_eval_mode_and_frozen_submodules() -> None:
    ctx = image_ctx()
    ctx.generator.eval()
    plots.SampleGrid(plots.SampleGridParams(n=4)).run(ctx)
    assert not ctx.generator.training
    ctx.generator.train()
    ctx.generator[1].eval()  # a submodule frozen on purpose stays frozen
    plots.SampleGrid(plots.SampleGridParams(n=4)).run(ctx)
    assert ctx.generator.training and ctx.generator[0].training and not ctx.generator[1].training


def test_sample_grid_2d_scatter() -> None:
    gen = torch.nn.Linear(Z, 2)
    ds = Dataset("ring", torch.randn(500, 2), is_image=False)
    ctx = make_ctx(dataset=ds, generator=gen, noise=gen_noise, step=9)
    plots.SampleGrid(plots.SampleGridParams(n_points=300)).run(ctx)
    ((fig, name),) = ctx.tracker.figures
    assert name == "plots/samples.png" and ctx.tracker.images == []
    real, fake = (np.asarray(c.get_offsets()) for c in fig.axes[0].collections)
    assert len(real) == len(fake) == 300
    # real points: a random subset of the data, not its first rows
    dist = np.abs(real[:, None, :] - ds.train.numpy()[None]).max(axis=2).min(axis=1)
    assert dist.max() < 1e-6
    assert not np.allclose(real, ds.train[:300].numpy())


def test_sample_grid_1d_histogram_with_decision() -> None:
    gen = torch.nn.Linear(Z, 1)
    disc = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1))
    ds = Dataset("gauss", torch.randn(400, 1) + 4, is_image=False)
    ctx = make_ctx(dataset=ds, generator=gen, discriminator=disc, noise=plain_noise)
    plots.SampleGrid(plots.SampleGridParams(n_points=200)).run(ctx)
    ((fig, name),) = ctx.tracker.figures
    assert name == "plots/samples.png"
    assert len(fig.axes) == 2  # histograms + D(x) on a twin axis
    assert disc.training and gen.training  # modes restored
    xs, ds_ = fig.axes[1].lines[0].get_data()
    with torch.no_grad():
        disc.eval()
        expected = disc(torch.as_tensor(xs, dtype=torch.float32).reshape(-1, 1)).ravel().numpy()
    np.testing.assert_allclose(ds_, expected, rtol=1e-5, atol=1e-6)  # eval mode: no dropout


def test_eval_curves_plot_metrics_evaluated_during_training() -> None:
    """With eval_every, plots/eval.png has one panel per metric, the final evaluation
    appended; settings, *_inf flags and once-evaluated metrics are left out."""
    history = {
        "train/d_loss": [(10, 1.0), (20, 0.9)],
        "eval/kl": [(10, 2.0), (20, 1.5)],
        "eval/div_bins": [(10, 100.0), (20, 100.0)],  # a setting
        "eval/kl_inf": [(10, 1.0), (20, 0.0)],  # a flag
        "eval/modes": [(10, 5.0), (20, 5.0)],  # constant, still a result
    }
    ctx = make_ctx(history=history, results={"kl": 1.2, "modes": 5.0, "div_bins": 100.0})
    ctx.step = 30
    plots.LossCurves(plots.LossCurvesParams()).run(ctx)
    tr = ctx.tracker
    assert [name for _, name in tr.figures] == ["plots/losses.png", "plots/eval.png"]
    fig = tr.figures[1][0]
    panels = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in panels] == ["eval/kl", "eval/modes"]
    assert list(panels[0].lines[0].get_xdata()) == [10, 20, 30]
    assert list(panels[0].lines[0].get_ydata()) == [2.0, 1.5, 1.2]
    assert tr.dicts[1] == (
        {
            "eval/kl": [[10, 2.0], [20, 1.5], [30, 1.2]],
            "eval/modes": [[10, 5.0], [20, 5.0], [30, 5.0]],
        },
        "plots/eval.json",
    )
    # evaluated only at the end: nothing to draw
    ctx = make_ctx(history={"train/d_loss": [(10, 1.0)]}, results={"kl": 1.2})
    plots.LossCurves(plots.LossCurvesParams()).run(ctx)
    assert [name for _, name in ctx.tracker.figures] == ["plots/losses.png"]


def test_scatter_with_fixed_limits_says_how_much_is_outside() -> None:
    real = np.zeros((10, 2))
    fake = np.array([[0.0, 0.0]] * 3 + [[5.0, 0.0]])  # one of four outside
    fig = scatter_plot(real, fake, limits=((-1.0, 1.0), (-2.0, 2.0)))
    ax = fig.axes[0]
    assert ax.get_xlim() == (-1.0, 1.0) and ax.get_ylim() == (-2.0, 2.0)
    assert [t.get_text() for t in ax.texts] == ["generated points: 25.0% outside the view"]
    nan = scatter_plot(real, np.array([[0.0, 0.0], [np.nan, 0.0]]), limits=((-1, 1), (-1, 1)))
    assert [t.get_text() for t in nan.axes[0].texts] == ["generated points: 50.0% non-finite"]
    assert len(scatter_plot(real, fake[:3], limits=((-1.0, 1.0), (-2.0, 2.0))).axes[0].texts) == 0
