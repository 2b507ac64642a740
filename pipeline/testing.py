"""Helpers for testing plugins, built-in or third-party.

from gan_pipe.testing import registry_of, plugins_with

reg = registry_of(my_plugin_module)            # only your components, loaded like any plugin
plugins = plugins_with(my_plugin_module)       # the built-ins plus yours, for a real run
"""

from __future__ import annotations

from typing import Any

from .facade import Plugins
from .manager import PluginSet, load_plugins
from .registry import Registry


def _name(plugin: Any, i: int) -> str:
    return getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"


def registry_of(*plugins: Any) -> Registry:
    """A registry holding only the components of ``plugins``, registered through the same
    path ``gan-pipe`` uses for entry points (so duplicate names and bad params fail the same)."""
    ps = PluginSet()
    for i, plugin in enumerate(plugins):
        ps.add(plugin, _name(plugin, i), _name(plugin, i), "test", builtin=False)
    return ps.registry


def plugins_with(*plugins: Any) -> Plugins:
    """The built-in plugins plus ``plugins``, without installed entry points: pass the result
    to :func:`gan_pipe.runner.run` with a recipe from :func:`gan_pipe.recipe.load_recipe`."""
    extra = [
        (p, getattr(p, "__name__", None) or f"{type(p).__name__}-{i}")
        for i, p in enumerate(plugins)
    ]
    return Plugins(load_plugins(entry_points=False, extra=extra))
