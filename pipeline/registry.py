"""Named components: what plugins register and recipes refer to by name.

A plugin registers each component once, through a ``register_*`` hook, with a name, a
factory and its own pydantic params model. The recipe's ``name = "..."`` picks the
component; its ``params`` table is validated against that model.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from .callback_list import EVENTS
from .errors import PluginError, UserError, did_you_mean

#: The kinds of components, in the order the stages use them.
KINDS = (
    "dataset",
    "generator",
    "discriminator",
    "loss",
    "regularizer",
    "callback",
    "metric",
    "report",
)


def _unusable(data: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any, str]]:
    """(loc, value, problem) of every value no recipe setting takes: NaN and infinities (TOML has
    ``nan`` and ``inf``) and TOML dates and times."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _unusable(v, (*loc, k))
    elif isinstance(data, list | tuple):
        for i, v in enumerate(data):
            yield from _unusable(v, (*loc, i))
    elif isinstance(data, float) and not math.isfinite(data):
        yield loc, data, "expected a finite number (nan and inf are not accepted)"
    elif isinstance(data, dt.date | dt.time):
        yield loc, data, "a TOML date or time is not a setting; quote it to make it a string"


#: What a TOML scalar of each type is called in messages: (as expected, as given).
_KINDS = {
    bool: ("boolean", "the boolean"),
    int: ("integer", "the integer"),
    float: ("number", "the float"),
    str: ("string", "the string"),
}


def _coerced(raw: Any, done: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[tuple, Any, str]]:
    """(loc, value, problem) of every scalar of ``raw`` that validation turned into a scalar of
    another type (``done`` is the validated model's dump). An int that became a float is fine;
    keys a validator renamed or dropped, and values that became objects (enums, paths), are
    not compared."""
    if isinstance(raw, dict):
        if isinstance(done, dict):
            for k, v in raw.items():
                if k in done:
                    yield from _coerced(v, done[k], (*loc, k))
    elif isinstance(raw, list | tuple):
        if isinstance(done, list | tuple) and len(done) == len(raw):
            for i, (a, b) in enumerate(zip(raw, done, strict=True)):
                yield from _coerced(a, b, (*loc, i))
    elif type(raw) in _KINDS and type(done) in _KINDS and type(raw) is not type(done):
        if not (type(raw) is int and type(done) is float):
            want, given = _KINDS[type(done)][0], _KINDS[type(raw)][1]
            yield loc, raw, f"input should be a valid {want}, not {given} {raw!r}"


def strict_validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate recipe data against ``model`` with no type coercion.

    TOML values have explicit types, so a string is never read as a number (``lr = "2e-4"``),
    a number never as a string or a boolean, a boolean never as a number, and a float never as
    an int; an integer is a fine float (``lr = 1``), an array a fine tuple (``betas``).
    pydantic validates as usual (its strict mode would refuse arrays for tuples, and its strict
    JSON mode falls back to that behind any ``mode="before"`` validator), then every value that
    changed type is an error. NaN, infinities and TOML dates are errors wherever they appear,
    ``Any``-typed settings included. Raises :class:`pydantic.ValidationError`."""
    bad = list(_unusable(data))
    errors: list[Any] = []
    try:
        validated = model.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
    else:
        bad += [
            c for c in _coerced(data, validated.model_dump()) if c[0] not in {b[0] for b in bad}
        ]
        if not bad:
            return validated
    # Report the unusable values with every other problem (not at the values themselves: an
    # int setting given nan would also say "expected an integer").
    locs = {loc for loc, _, _ in bad}
    details: list[Any] = [
        {"type": PydanticCustomError("strict_type", why), "loc": loc, "input": value}
        for loc, value, why in bad
    ]
    for err in errors:
        if tuple(err["loc"]) not in locs:
            ctx = {k: v for k, v in (err.get("ctx") or {}).items() if k != "error"}
            details.append(
                {
                    "type": PydanticCustomError(err["type"], err["msg"], ctx or None),
                    "loc": tuple(err["loc"]),
                    "input": err.get("input"),
                }
            )
    raise ValidationError.from_exception_data(model.__name__, details)


class NoParams(BaseModel):
    """Params model of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Component:
    """A registered component.

    ``factory(params)`` builds it; ``params`` is the pydantic model its recipe table is
    validated against (``extra="forbid"`` is recommended so typos are caught). ``replaces`` is
    the plugin whose component of the same kind and name this one replaced on purpose
    (``register(..., replaces=name)``), None for most.
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[BaseModel] = NoParams
    description: str = ""
    plugin: str = "?"
    replaces: str | None = None

    def validate_params(self, raw: dict[str, Any] | None) -> BaseModel:
        """Validate a recipe's params table strictly (see :func:`strict_validate`; raises
        pydantic.ValidationError)."""
        return strict_validate(self.params, raw or {})


class Registry:
    """All components, by kind and name."""

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[str, Component]] = {k: {} for k in KINDS}

    def add(self, component: Component, replace: bool = False) -> None:
        """Add ``component``; one of the same kind and name is an error unless ``replace``."""
        if component.kind not in self._by_kind:
            raise PluginError(
                f"plugin {component.plugin!r} registered {component.name!r} as unknown kind "
                f"{component.kind!r}; kinds are {', '.join(KINDS)}"
            )
        if not component.name or not isinstance(component.name, str):
            raise PluginError(
                f"plugin {component.plugin!r} registered a {component.kind} without a name"
            )
        table = self._by_kind[component.kind]
        if component.name in table and not replace:
            other = table[component.name]
            raise PluginError(
                f"{component.kind} {component.name!r} is registered twice: by plugin "
                f"{other.plugin!r} and by plugin {component.plugin!r}; uninstall one of them"
            )
        table[component.name] = component

    def get(self, kind: str, name: str) -> Component:
        table = self._by_kind[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise UserError(f"unknown {kind} {name!r}{did_you_mean(name, table)} (known: {known})")
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def has(self, kind: str, name: str) -> bool:
        return name in self._by_kind[kind]

    def find(self, kind: str, name: str) -> Component | None:
        return self._by_kind[kind].get(name)

    def copy(self) -> Registry:
        out = Registry()
        for kind, table in self._by_kind.items():
            out._by_kind[kind] = dict(table)
        return out

    def __iter__(self) -> Iterator[Component]:
        for kind in KINDS:
            yield from self._by_kind[kind].values()

    def by_plugin(self) -> dict[str, list[Component]]:
        out: dict[str, list[Component]] = {}
        for comp in self:
            out.setdefault(comp.plugin, []).append(comp)
        return out


#: The keywords ``register`` takes after ``name`` and ``factory``.
REGISTER_KEYWORDS = ("params", "description", "role", "replaces")


def _plain(plugin: str) -> str:
    return f"plugin {plugin!r}"


class Register:
    """The ``register`` callback handed to a ``register_*`` hook.

    Call it once per component::

        register("dcgan", DCGANGenerator, params=DCGANGeneratorParams, role="generator")

    A contract error (an unknown keyword, params that are not a pydantic model) raises. A name
    another plugin registered already (a clash), or ``replaces=`` naming nothing registered,
    refuses that component alone: ``refused`` collects why, naming both providers.
    """

    def __init__(
        self,
        registry: Registry,
        kind: str | None,
        plugin: str,
        provider: Callable[[str], str] = _plain,
    ):
        self._registry = registry
        self._kind = kind
        self._plugin = plugin
        self._provider = provider
        self.refused: list[str] = []

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        params: type[BaseModel] = NoParams,
        description: str = "",
        role: str | None = None,
        replaces: str | None = None,
        **unknown: Any,
    ) -> None:
        for key in unknown:
            raise PluginError(
                f"plugin {self._plugin!r}: register({name!r}, ...) got an unknown keyword "
                f"{key!r}{did_you_mean(key, REGISTER_KEYWORDS)} (register takes "
                f"{', '.join(REGISTER_KEYWORDS)})"
            )
        kind = role or self._kind
        if kind is None:
            raise PluginError(
                f"plugin {self._plugin!r}: architectures need role='generator' or "
                f"role='discriminator' when registering {name!r}"
            )
        if self._kind is None and role not in ("generator", "discriminator"):
            raise PluginError(
                f"plugin {self._plugin!r}: role of architecture {name!r} must be "
                f"'generator' or 'discriminator', not {role!r}"
            )
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise PluginError(
                f"plugin {self._plugin!r}: params of {name!r} must be a pydantic model class"
            )
        if replaces is not None and replaces != name:
            raise PluginError(
                f"plugin {self._plugin!r}: register({name!r}, ..., replaces={replaces!r}): "
                f"a replacement takes the name it replaces (register({replaces!r}, ..., "
                f"replaces={replaces!r})), so recipes naming it get yours"
            )
        doc = description or (factory.__doc__ or "").strip().split("\n")[0]
        if kind not in KINDS:  # the registry's error names the kinds
            self._registry.add(Component(kind, name, factory, params, doc, self._plugin))
        mine, old = self._provider(self._plugin), self._registry.find(kind, name)
        if replaces is not None and old is None:
            self.refused.append(
                f"{kind} {name!r} of {mine} replaces a {kind} {name!r}, but no plugin "
                f"registered one{did_you_mean(name, self._registry.names(kind))}; it was refused"
            )
            return
        if replaces is None and old is not None:
            self.refused.append(
                f"{kind} {name!r} is registered by {self._provider(old.plugin)} and again by "
                f"{mine}: the second was refused; rename it, or pass replaces={name!r} to "
                "replace the first on purpose"
            )
            return
        comp = Component(
            kind, name, factory, params, doc, self._plugin, old.plugin if old else None
        )
        self._registry.add(comp, replace=replaces is not None)


_CONTRACTS: dict[str, tuple[tuple[str, ...], Callable[[Any], bool]]] = {
    "loss": (("discriminator_loss", "generator_loss"), all),
    "regularizer": (("generator_term", "discriminator_term"), any),
    "metric": (("compute",), all),
    "report": (("run",), all),
    "callback": ((*EVENTS, "generator"), any),
}


def check_contract(component: Component, obj: Any) -> Any:
    """``obj`` (what ``component``'s factory built) if it has the methods its kind needs
    (a loss both losses, a regularizer at least one term, a metric ``compute``, a report
    ``run``, a callback at least one event or ``generator``); a :class:`PluginError`
    naming the component and its plugin otherwise."""
    need = _CONTRACTS.get(component.kind)
    if need is not None:
        methods, how = need
        has = [callable(getattr(obj, m, None)) for m in methods]
        if not how(has):
            lacks = [m for m, ok in zip(methods, has, strict=True) if not ok]
            wants = (" and " if how is all else " or ").join(f"{m}(...)" for m in methods)
            raise PluginError(
                f"{component.kind} {component.name!r} of plugin {component.plugin!r} built a "
                f"{type(obj).__name__} without {', '.join(lacks)}: a {component.kind} needs "
                f"{wants}"
            )
    return obj
