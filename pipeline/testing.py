"""Helpers for testing plugins, built-in or third-party.

from gan_pipe.testing import registry_of, plugins_with

reg = registry_of(my_plugin_module)            # only your components, loaded like any plugin
plugins = plugins_with(my_plugin_module)       # the built-ins plus yours, for a real run
"""

from __future__ import annotations

from typing import Any

from .errors import PluginError
from .facade import Plugins
from .manager import PluginSet, load_plugins
from .registry import Registry


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
