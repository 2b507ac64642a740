"""The plugin host: the one object that holds the loaded plugins.

:class:`PluginHost` loads plugins (built-ins, installed packages' entry points, extras a test
passes), checks their hook names, owns the :class:`~gan_pipe.registry.Registry` of their
components, records which plugin and distribution gave each (provenance) and which failed, and
makes the typed calls into the stage and event hooks (``host.train(ctx)``). A run's
:class:`~gan_pipe.context.RunContext` gets only the typed calls, as ``ctx.hooks``.

Built-in plugins are ordinary modules registered through the same hooks a third party uses.
Installed packages add plugins with an entry point in the group ``gan_pipe``::

    [project.entry-points.gan_pipe]
    my_gan = "my_gan_package.plugin"

Each entry point is loaded on its own: one that fails to import or breaks the contract (a hook
or ``register`` keyword gan-pipe does not know) is reported with its distribution's name and
skipped, so a broken package never breaks the CLI. A component whose name another plugin
registered first (a clash) is refused alone, naming both providers; the package's other
components load. ``register(name, ..., replaces=name)`` replaces a component on purpose.
``GAN_PIPE_STRICT_PLUGINS=1`` re-raises instead (for plugin authors and CI).
``GAN_PIPE_DISABLE_PLUGINS=name1,name2`` skips the named entry points or distributions.
"""

from __future__ import annotations

import importlib
import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any, Self

import pluggy

from . import PROJECT, __version__, hookspecs
from .errors import PluginError, did_you_mean
from .evaluation import add_values
from .registry import Register, Registry

if TYPE_CHECKING:
    from .context import RunContext

ENTRY_POINT_GROUP = "gan_pipe"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "gan_pipe.plugins.stages",
    "gan_pipe.plugins.data.digits",
    "gan_pipe.plugins.data.idx",
    "gan_pipe.plugins.data.image_folder",
    "gan_pipe.plugins.data.cifar10",
    "gan_pipe.plugins.data.synthetic",
    "gan_pipe.plugins.models.dcgan",
    "gan_pipe.plugins.models.mlp",
    "gan_pipe.plugins.losses.bce",
    "gan_pipe.plugins.losses.wasserstein",
    "gan_pipe.plugins.losses.other",
    "gan_pipe.plugins.losses.feature_matching",
    "gan_pipe.plugins.callbacks.ema",
    "gan_pipe.plugins.metrics.parzen",
    "gan_pipe.plugins.metrics.divergence",
    "gan_pipe.plugins.metrics.frechet",
    "gan_pipe.plugins.reports.plots",
)

#: register_* hook name -> the component kind its ``register`` callback defaults to.
REGISTER_HOOKS: dict[str, str | None] = {
    "register_datasets": "dataset",
    "register_architectures": None,  # the role decides: generator or discriminator
    "register_losses": "loss",
    "register_regularizers": "regularizer",
    "register_callbacks": "callback",
    "register_metrics": "metric",
    "register_reports": "report",
}


@dataclass
class PluginInfo:
    """One loaded plugin, as ``gan-pipe plugins`` shows it."""

    name: str
    distribution: str
    version: str
    builtin: bool
    module: str
    components: list[str] = field(default_factory=list)


@dataclass
class PluginFailure:
    """A plugin that failed to load (``skipped``), or one component of it that was refused."""

    name: str
    distribution: str
    error: str
    detail: str
    skipped: bool = True


def _strict() -> bool:
    return os.environ.get("GAN_PIPE_STRICT_PLUGINS", "").lower() in ("1", "true", "yes")


def _disabled() -> set[str]:
    raw = os.environ.get("GAN_PIPE_DISABLE_PLUGINS", "")
    return {p.strip() for p in raw.split(",") if p.strip()}


class PluginHost:
    """The loaded plugins: a pluggy manager, the registry of their components, provenance
    (``infos``), failures, and typed calls into the hooks. :meth:`load` builds the usual one;
    ``PluginHost()`` is empty (add plugins with :meth:`add` or :meth:`load_builtins`)."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []

    # ------------------------------------------------------------ loading
    def add(
        self,
        plugin: ModuleType | object,
        name: str,
        distribution: str,
        version: str,
        builtin: bool,
    ) -> list[str]:
        """Register one plugin object and the components it provides.

        A contract error (a hook that is no gan-pipe hook, an unknown ``register`` keyword)
        raises and leaves nothing behind. A component refused for its name (a clash, or a
        ``replaces=`` with nothing to replace) is left out alone: the returned lines say why.
        """
        module = getattr(plugin, "__name__", type(plugin).__name__)
        info = PluginInfo(name, distribution, version, builtin, module)

        def provider(plugin_name: str) -> str:
            i = info if plugin_name == name else self.infos.get(plugin_name)
            where = f" from package {i.distribution!r}" if i is not None else ""
            return f"plugin {plugin_name!r}{where}"

        self.pm.register(plugin, name=name)
        staged = self.registry.copy()  # so a failing plugin leaves no half registration
        refused: list[str] = []
        try:
            self._check_hooks(plugin, name)
            for hook_name, kind in REGISTER_HOOKS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin_name != name:
                        continue
                    register = Register(staged, kind, name, provider)
                    impl.function(register=register)
                    refused += register.refused
        except BaseException:
            self.pm.unregister(name=name)
            raise
        self.registry = staged
        info.components = [f"{c.kind}:{c.name}" for c in staged if c.plugin == name]
        for comp in staged:
            replaced = self.infos.get(comp.replaces) if comp.plugin == name else None
            if replaced is not None and f"{comp.kind}:{comp.name}" in replaced.components:
                replaced.components.remove(f"{comp.kind}:{comp.name}")
        self.infos[name] = info
        return refused

    def _check_hooks(self, plugin: object, name: str) -> None:
        """A misspelt hook would never be called: name it (pluggy's ``check_pending``, for one
        plugin, with a suggestion). A module function named like a hook but not marked with
        ``@hookimpl`` would not be either."""
        known = [n for n in vars(self.pm.hook) if not n.startswith("_")]
        known = [n for n in known if getattr(self.pm.hook, n).has_spec()]
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not impl.optionalhook:
                    raise PluginError(
                        f"plugin {name!r} implements {caller.name!r}, which is not a gan-pipe "
                        f"hook{did_you_mean(caller.name, known)}"
                    )
        if isinstance(plugin, ModuleType):
            for attr, value in vars(plugin).items():
                if (
                    attr in known
                    and callable(value)
                    and getattr(value, "__module__", None) == plugin.__name__
                    and not hasattr(value, f"{PROJECT}_impl")
                ):
                    raise PluginError(
                        f"plugin {name!r} defines {attr}() without @gan_pipe.hookimpl, so "
                        "gan-pipe would never call it"
                    )

    def load_builtins(self) -> None:
        for modname in DEFAULT_PLUGINS:
            module = importlib.import_module(modname)
            self.add(module, modname, "gan-pipe", __version__, builtin=True)

    def load_entry_points(self) -> None:
        disabled = _disabled()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in disabled or dist in disabled:
                continue
            if ep.name in self.infos or self.pm.has_plugin(ep.name):
                continue
            try:
                obj = ep.load()
                refused = self.add(obj, ep.name, dist, version, builtin=False)
            except Exception as e:  # a third party's bug must not break the CLI
                if _strict():
                    raise
                self.failures.append(
                    PluginFailure(
                        ep.name,
                        dist,
                        f"{type(e).__name__}: {e}",
                        traceback.format_exc(),
                    )
                )
                continue
            if refused and _strict():
                raise PluginError("\n".join(refused))
            for why in refused:
                self.failures.append(PluginFailure(ep.name, dist, why, "", skipped=False))

    def describe(self, include_builtin: bool = True) -> list[PluginInfo]:
        return [i for i in self.infos.values() if include_builtin or not i.builtin]

    def failure_lines(self) -> list[str]:
        """One warning line per plugin that failed to load or component that was refused."""
        return [
            f"plugin {f.name!r} from package {f.distribution!r} failed to load and was "
            f"skipped: {f.error} (set GAN_PIPE_STRICT_PLUGINS=1 to see the traceback)"
            if f.skipped
            else f"{f.error} (the plugin's other components are loaded)"
            for f in self.failures
        ]

    @classmethod
    def load(cls, entry_points: bool = True, extra: list[tuple[Any, str]] | None = None) -> Self:
        """Built-ins, then ``extra`` (object, name) pairs (tests use this), then entry points.

        Built-ins come first so that a third party's ``replaces=`` finds them. An ``extra``
        plugin is strict: any failure, a refused component included, raises."""
        host = cls()
        host.load_builtins()
        for obj, name in extra or []:
            refused = host.add(obj, name, name, "local", builtin=False)
            if refused:
                raise PluginError("\n".join(refused))
        if entry_points:
            host.load_entry_points()
        return host

    # ------------------------------------------------------------ typed hook calls
    # What a run calls (``ctx.hooks``, :class:`gan_pipe.context.StageHooks`).
    def _first(self, stage: str, ctx: RunContext) -> Any:
        result = getattr(self.pm.hook, f"gan_pipe_{stage}")(ctx=ctx)
        if result is None:
            raise PluginError(
                f"no plugin implements the {stage} stage (is the built-in stages plugin disabled?)"
            )
        return result

    def data(self, ctx: RunContext) -> Any:
        return self._first("data", ctx)

    def build(self, ctx: RunContext) -> Any:
        return self._first("build", ctx)

    def train(self, ctx: RunContext) -> Any:
        return self._first("train", ctx)

    def evaluate(self, ctx: RunContext) -> dict[str, float]:
        """Every ``gan_pipe_evaluate`` result merged; a key two of them return is an error."""
        merged: dict[str, float] = {}
        owners: dict[str, str] = {}
        fix = "a plugin that adds metrics this way must use keys of its own"
        for i, part in enumerate(self.pm.hook.gan_pipe_evaluate(ctx=ctx)):
            add_values(merged, owners, dict(part or {}), f"gan_pipe_evaluate #{i + 1}", fix)
        return merged

    def report(self, ctx: RunContext) -> None:
        self.pm.hook.gan_pipe_report(ctx=ctx)

    def on_train_step(self, ctx: RunContext, step: int) -> None:
        self.pm.hook.gan_pipe_on_train_step(ctx=ctx, step=step)

    def on_train_end(self, ctx: RunContext) -> None:
        self.pm.hook.gan_pipe_on_train_end(ctx=ctx)

    def on_stage_error(self, ctx: RunContext, stage: str, error: BaseException) -> None:
        self.pm.hook.gan_pipe_on_stage_error(ctx=ctx, stage=stage, error=error)

    def has_step_listeners(self) -> bool:
        return bool(self.pm.hook.gan_pipe_on_train_step.get_hookimpls())


__all__ = [
    "PluginHost",
    "PluginInfo",
    "PluginFailure",
    "PluginError",
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "REGISTER_HOOKS",
]
