"""The built-in implementations of the five stages.

Each stage looks up the components the recipe names (already validated by the core) and
calls their factories. A third party replaces a stage by implementing the same hook and
returning a result first (``tryfirst=True``), or wraps it with ``wrapper=True``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gan_pipe import hookimpl
from gan_pipe.context import ModelSpec

if TYPE_CHECKING:
    import torch

    from gan_pipe.context import RunContext


def _make(ctx: RunContext, path: str, *args: Any) -> Any:
    """Build the component at ``path``; one that lacks what its kind needs (a loss without
    generator_loss, a regularizer with no term) is an error naming it and its plugin."""
    from gan_pipe.registry import check_contract

    comp = ctx.components[path]
    return check_contract(comp, comp.factory(ctx.params[path], *args))


def make_noise(
    distribution: str, dim: int, device: torch.device, range: float = 8.0, jitter: float = 0.01
):
    """A sampler ``noise(n, generator=None) -> (n, dim)`` on ``device``.

    ``stratified`` is seed 001's: an evenly spaced grid over [-range, range] plus a small
    uniform jitter, the same grid in every dimension.
    """
    import torch

    def noise(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if distribution == "uniform":
            return torch.rand(n, dim, device=device, generator=generator).mul_(2).sub_(1)
        if distribution == "stratified":
            grid = torch.linspace(-range, range, n, device=device).unsqueeze(1).expand(n, dim)
            return grid + torch.rand(n, dim, device=device, generator=generator) * jitter
        return torch.randn(n, dim, device=device, generator=generator)

    return noise


@hookimpl
def gan_pipe_data(ctx: RunContext):
    dataset = _make(ctx, "data")
    ctx.dataset = dataset
    ctx.tracker.log_params(
        {f"data.info.{k}": v for k, v in dataset.info.items() if isinstance(v, int | float | str)}
        | {"data.shape": "x".join(map(str, dataset.shape)), "data.n_train": len(dataset.train)}
    )
    return dataset


@hookimpl
def gan_pipe_build(ctx: RunContext):
    assert ctx.dataset is not None
    spec = ModelSpec(data_shape=ctx.dataset.shape, z_dim=ctx.recipe.noise.dim)
    ctx.generator = _make(ctx, "model.generator", spec).to(ctx.device)
    ctx.discriminator = _make(ctx, "model.discriminator", spec).to(ctx.device)
    ctx.loss = _make(ctx, "loss")
    ctx.regularizers = [
        _make(ctx, f"regularizers.{i}") for i in range(len(ctx.recipe.regularizers))
    ]
    nz = ctx.recipe.noise
    ctx.noise = make_noise(nz.distribution, nz.dim, ctx.device, nz.range, nz.jitter)
    build_callbacks(ctx)
    counts = {}
    for name, net in (("generator", ctx.generator), ("discriminator", ctx.discriminator)):
        counts[f"model.{name}.n_params"] = sum(p.numel() for p in net.parameters())
        counts[f"model.{name}.n_trainable"] = sum(
            p.numel() for p in net.parameters() if p.requires_grad
        )
    ctx.tracker.log_params(counts)
    ctx.state["param_counts"] = counts
    return ctx.generator


def build_callbacks(ctx: RunContext) -> None:
    """The recipe's callbacks, keyed by their recipe path, each set up on the built nets."""
    from gan_pipe.callback_list import CallbackList

    paths = [f"callbacks.{i}" for i in range(len(ctx.recipe.callbacks))]
    ctx.callbacks = CallbackList([(path, _make(ctx, path)) for path in paths])
    ctx.callbacks.fire("setup", ctx)


@hookimpl
def gan_pipe_train(ctx: RunContext):
    from gan_pipe.plugins.train import Trainer

    return Trainer(ctx).fit()


@hookimpl
def gan_pipe_evaluate(ctx: RunContext) -> dict[str, float]:
    from gan_pipe.evaluation import add_values
    from gan_pipe.recipe import prefix_hint

    results: dict[str, float] = {}
    owner: dict[str, str] = {}
    base = ctx.eval_dir
    for i, ref in enumerate(ctx.recipe.evaluate.metrics):
        metric = _make(ctx, f"evaluate.metrics.{i}")
        here = f"evaluate.metrics.{i} ({ref.name})"
        # a prefixed metric's files go to their own folder, as its keys get their own names
        ctx.eval_dir = f"{base}/{ref.prefix.strip('_.-')}" if ref.prefix.strip("_.-") else base
        try:
            values = metric.compute(ctx)
        finally:
            ctx.eval_dir = base
        fix = f"give one of them a `prefix` (e.g. {prefix_hint(ref.name, i)})"
        add_values(results, owner, {ref.prefix + k: v for k, v in values.items()}, here, fix)
    return results


@hookimpl
def gan_pipe_report(ctx: RunContext) -> None:
    for i in range(len(ctx.recipe.report)):
        _make(ctx, f"report.{i}").run(ctx)
    _log_generator(ctx)


def _log_generator(ctx: RunContext) -> None:
    """The trained generator as an MLflow model: ``mlflow.pytorch.load_model(uri)(z)``."""
    assert ctx.generator is not None and ctx.noise is not None
    gen = ctx.generator.eval().to("cpu")
    try:
        example = ctx.noise(2).cpu().numpy()
        ctx.tracker.log_model(gen, name="generator", input_example=example, step=ctx.step)
    finally:
        ctx.generator.to(ctx.device)
