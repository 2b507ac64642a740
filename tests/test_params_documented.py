"""Every registered component documents itself: ``gan-pipe plugins --params`` is the manual.

For each component (built-ins and installed plugins): its description is a complete phrase,
every params field (nested models included) has a description, and every params model
forbids unknown keys so a recipe's typo is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel

from gan_pipe.host import PluginHost

#: A description ending in one of these was cut (e.g. a docstring's first line only).
CUT_ENDINGS = (";", ",", ":", "(")


def _nested_models(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models inside a field's annotation (``Model``, ``Model | None``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_nested_models(arg))
    return out


def _model_failures(model: type[BaseModel], where: str, seen: set[type]) -> list[str]:
    if model in seen:
        return []
    seen.add(model)
    failures: list[str] = []
    if model.model_config.get("extra") != "forbid":
        failures.append(f"{where}: params model {model.__name__} does not forbid extra keys")
    for fname, field in model.model_fields.items():
        path = f"{where}.{fname}"
        if not (field.description or "").strip():
            failures.append(f"{path}: no description")
        for sub in _nested_models(field.annotation):
            failures.extend(_model_failures(sub, path, seen))
    return failures


def _component_failures(comp) -> list[str]:
    where = f"{comp.kind}:{comp.name}"
    failures: list[str] = []
    desc = (comp.description or "").strip()
    if not desc:
        failures.append(f"{where}: empty description")
    elif desc.endswith(CUT_ENDINGS):
        failures.append(f"{where}: description looks cut: {desc!r}")
    failures.extend(_model_failures(comp.params, where, set()))
    return failures


def test_nested_models_are_found():
    class Inner(BaseModel):
        x: int = 0

    assert _nested_models(Inner) == [Inner]
    assert _nested_models(Inner | None) == [Inner]
    assert _nested_models(list[Inner]) == [Inner]
    assert _nested_models(int) == []


def test_checker_flags_undocumented_fields():
    class Inner(BaseModel):
        y: int = 1

    class Outer(BaseModel):
        x: int = 0
        inner: Inner | None = None

    comp = types.SimpleNamespace(kind="loss", name="x", description="cut;", params=Outer)
    failures = _component_failures(comp)
    assert any("description looks cut" in f for f in failures)
    assert any(f.startswith("loss:x.x:") for f in failures)
    assert any(f.startswith("loss:x.inner.y:") for f in failures)
    assert sum("forbid" in f for f in failures) == 2


def test_every_component_and_param_is_documented():
    ps = PluginHost.load()
    components = list(ps.registry)
    assert components, "no components registered"
    failures = [f for comp in components for f in _component_failures(comp)]
    assert not failures, f"{len(failures)} undocumented params or components:\n" + "\n".join(
        failures
    )
