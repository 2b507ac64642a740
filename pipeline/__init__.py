"""gan-pipe: a plugin-based experiment pipeline for GANs, tracked in MLflow.

The stable public API for plugin authors lives here: the hook markers, the typed
objects that cross the plugin boundary and the error types.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT = "gan_pipe"

#: Decorate a plugin's hook implementations with this marker.
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["__version__", "hookimpl", "PROJECT"]
