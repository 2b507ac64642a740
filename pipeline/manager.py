"""Deprecated: the plugin manager is :class:`gan_pipe.host.PluginHost` since 1.0.

Kept for one release so that code written against it keeps working; every name warns
(``DeprecationWarning``) where it is read:

* ``PluginSet`` is ``PluginHost``;
* ``load_plugins(entry_points, extra)`` is ``PluginHost.load(entry_points, extra)``;
* ``failure_lines(ps)`` is ``ps.failure_lines()``;
* ``DEFAULT_PLUGINS``, ``ENTRY_POINT_GROUP``, ``REGISTER_HOOKS``, ``PluginInfo``,
  ``PluginFailure``, ``PluginError`` are the same names in :mod:`gan_pipe.host`.
"""

from __future__ import annotations

import warnings
from typing import Any

from . import host

_MOVED = {
    "PluginSet": ("PluginHost", host.PluginHost),
    "load_plugins": ("PluginHost.load", host.PluginHost.load),
    "failure_lines": ("PluginHost.failure_lines", host.PluginHost.failure_lines),
    **{name: (name, getattr(host, name)) for name in host.__all__ if name != "PluginHost"},
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    new, value = _MOVED[name]
    warnings.warn(
        f"gan_pipe.manager.{name} is deprecated: use gan_pipe.host.{new}",
        DeprecationWarning,
        stacklevel=2,
    )
    return value


__all__ = list(_MOVED)
