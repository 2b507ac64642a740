"""Helpers for testing plugins, built-in or third-party.

from gan_pipe.testing import registry_of, plugins_with, metric_context

reg = registry_of(my_plugin_module)            # only your components, loaded like any plugin
plugins = plugins_with(my_plugin_module)       # the built-ins plus yours, for a real run
ctx = metric_context(real_rows, fake=fake_rows)  # what a metric or report sees, no run
MyMetric(MyParams()).compute(ctx)              # then read ctx.tracker.dicts / .figures
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import PluginError
from .evaluation import MemoryTracker, SampleContext
from .facade import Plugins
from .manager import PluginSet, load_plugins
from .registry import Registry

if TYPE_CHECKING:
    import torch

    from .context import Dataset

__all__ = ["MemoryTracker", "SampleContext", "metric_context", "plugins_with", "registry_of"]


def _name(plugin: Any, i: int) -> str:
    return getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"


def registry_of(*plugins: Any) -> Registry:
    """A registry holding only the components of ``plugins``, registered through the same
    path ``gan-pipe`` uses for entry points, after the built-ins: so a misspelt hook, an
    unknown ``register`` keyword, bad params, a name clash with a built-in (or between
    ``plugins``) and a ``replaces=`` with nothing to replace raise :class:`PluginError`."""
    ps = PluginSet()
    ps.load_builtins()
    names = set()
    for i, plugin in enumerate(plugins):
        if ps.pm.is_registered(plugin):  # a built-in: loaded already
            names.add(ps.pm.get_name(plugin))
            continue
        name = _name(plugin, i)
        refused = ps.add(plugin, name, name, "test", builtin=False)
        if refused:
            raise PluginError("\n".join(refused))
        names.add(name)
    out = Registry()
    for comp in ps.registry:
        if comp.plugin in names:
            out.add(comp)
    return out


def plugins_with(*plugins: Any) -> Plugins:
    """The built-in plugins plus ``plugins``, without installed entry points: pass the result
    to :func:`gan_pipe.runner.run` with a recipe from :func:`gan_pipe.recipe.load_recipe`.
    Any failure of ``plugins`` raises, a refused component included."""
    extra = [(p, _name(p, i)) for i, p in enumerate(plugins)]
    return Plugins(load_plugins(entry_points=False, extra=extra))


def metric_context(
    data: Dataset | torch.Tensor,
    fake: torch.Tensor | None = None,
    *,
    generator: torch.nn.Module | None = None,
    noise: Any = None,
    discriminator: torch.nn.Module | None = None,
    device: str | torch.device = "cpu",
    step: int = 0,
    history: dict[str, list[tuple[int, float]]] | None = None,
    results: dict[str, float] | None = None,
) -> SampleContext:
    """A context for unit-testing a metric (``compute(ctx)``) or a report (``run(ctx)``)
    without a run: it satisfies :class:`gan_pipe.context.EvalContext` and
    :class:`~gan_pipe.context.ReportContext`.

    ``data`` is a :class:`~gan_pipe.context.Dataset`, or a tensor of real rows, which becomes
    a dataset named ``"tensors"`` with those rows as its train, val and test splits. Samples
    are the first n rows of ``fake``, else drawn from ``generator`` on ``noise(n)`` (eval mode,
    no grad, shared within ``step``). What the component logs stays in ``ctx.tracker`` (a
    :class:`MemoryTracker`: ``dicts``, ``figures``, ``images``, ``texts``).
    """
    import torch

    from .context import Dataset

    if not isinstance(data, Dataset):
        rows = torch.as_tensor(data)
        data = Dataset(name="tensors", train=rows, val=rows, test=rows)
    if fake is None and (generator is None or noise is None):
        raise ValueError("metric_context needs fake rows, or a generator and its noise")
    return SampleContext(
        dataset=data,
        device=torch.device(device),
        fake=fake,
        generator=generator,
        noise=noise,
        discriminator=discriminator,
        step=step,
        history=dict(history or {}),
        results=dict(results or {}),
    )
