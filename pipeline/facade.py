"""Deprecated: the typed hook calls are methods of :class:`gan_pipe.host.PluginHost` since 1.0.

``Plugins(plugin_set)`` still works for one release (it warns, ``DeprecationWarning``): it
returns a view of that host, sharing its state, with the old ``.set`` attribute (the host).
"""

from __future__ import annotations

import warnings

from .host import PluginHost


class Plugins(PluginHost):
    """Deprecated alias of :class:`~gan_pipe.host.PluginHost`, built from a loaded host."""

    def __init__(self, plugin_set: PluginHost):
        warnings.warn(
            "gan_pipe.facade.Plugins is deprecated: gan_pipe.host.PluginHost.load() (or "
            "gan_pipe.testing.plugins_with) gives the plugin host, which makes the typed calls",
            DeprecationWarning,
            stacklevel=2,
        )
        self.__dict__ = plugin_set.__dict__  # the same pm, registry, infos and failures

    @property
    def set(self) -> PluginHost:
        """What ``Plugins`` used to wrap: the host itself."""
        return self
