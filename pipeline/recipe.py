"""Recipes: TOML files validated by pydantic, each component validating its own params.

Loading a recipe is three steps, all before anything is written to MLflow:

1. parse the TOML and apply ``--set a.b=c`` overrides;
2. validate the structure against :class:`Recipe` (unknown keys are errors);
3. resolve every ``name`` against the plugin registry and validate its ``params`` table
   against that component's own model.

Every problem is collected and reported at once, naming the file, the key path, the value,
what was expected and close matches.

The models of the tables (``[experiment]``, ``[train]``, ...) are in :mod:`.recipe_tables`;
every name is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from .errors import RecipeError, did_you_mean
from .names import (  # noqa: F401  (re-exported: gan_pipe.recipe is where they were)
    NAME_MAX,
    NAME_RULE,
    RESERVED_TAG_KEYS,
    RESERVED_TAG_PREFIXES,
    TAG_KEY_MAX,
    TAG_VALUE_MAX,
    Name,
    TagKey,
    TagValue,
    check_name,
    check_tag_key,
    check_tag_value,
)
from .overrides import apply_override, load_toml, parse_override  # noqa: F401
from .recipe_tables import (  # noqa: F401  (re-exported: gan_pipe.recipe is where they were)
    Bound,
    ComponentRef,
    Criterion,
    DataRef,
    Evaluate,
    Experiment,
    MetricRef,
    Model,
    Noise,
    OptimizerOverride,
    Train,
    _Strict,
    prefix_hint,
)
from .registry import Component, Registry, strict_validate
from .validation_messages import format_validation_errors


class Recipe(_Strict):
    """A whole experiment."""

    experiment: Experiment
    data: DataRef
    model: Model
    loss: ComponentRef
    regularizers: list[ComponentRef] = Field(
        default_factory=list, description="extra loss terms, e.g. feature matching"
    )
    callbacks: list[ComponentRef] = Field(
        default_factory=list,
        description="training callbacks, e.g. a generator EMA; they run in this order, "
        "before gan-pipe's own sample frames, evaluations and checkpoints",
    )
    noise: Noise = Field(default_factory=Noise)
    train: Train = Field(default_factory=Train)
    evaluate: Evaluate = Field(default_factory=Evaluate)
    report: list[ComponentRef] = Field(default_factory=list)
    success: dict[str, Criterion] = Field(
        default_factory=dict,
        description="named success criteria over final metrics, e.g. "
        "[success.all_modes] modes = {min = 8}; studies log the rate of each over seeds",
    )

    @field_validator("success")
    @classmethod
    def _criteria(cls, v: dict[str, Criterion]) -> dict[str, Criterion]:
        for name, crit in v.items():
            if not crit:
                raise ValueError(f"success.{name} names no metric, e.g. modes = {{min = 8}}")
            for key, bound in crit.items():
                if bound.min is None and bound.max is None:
                    raise ValueError(f"success.{name}.{key} needs min, max or both")
        return v


@dataclass
class ResolvedRecipe:
    """A validated recipe with every component looked up and its params validated.

    ``data`` is the recipe as run (the file's tables with ``overrides`` applied)."""

    recipe: Recipe
    source: str
    text: str
    components: dict[str, Component]
    params: dict[str, BaseModel]
    overrides: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The recipe with every default filled in, component params included."""
        out = self.recipe.model_dump(mode="json")
        for path, model in self.params.items():
            node: Any = out
            parts = path.split(".")
            for p in parts:
                node = node[int(p)] if isinstance(node, list) else node[p]
            node["params"] = model.model_dump(mode="json")
        return out


# ---------------------------------------------------------------- entry point
def component_refs(recipe: Recipe) -> list[tuple[str, str, ComponentRef]]:
    """(key path, kind, ref) of every component a recipe names."""
    refs = [
        ("data", "dataset", recipe.data),
        ("model.generator", "generator", recipe.model.generator),
        ("model.discriminator", "discriminator", recipe.model.discriminator),
        ("loss", "loss", recipe.loss),
    ]
    refs += [(f"regularizers.{i}", "regularizer", r) for i, r in enumerate(recipe.regularizers)]
    refs += [(f"callbacks.{i}", "callback", c) for i, c in enumerate(recipe.callbacks)]
    refs += [(f"evaluate.metrics.{i}", "metric", m) for i, m in enumerate(recipe.evaluate.metrics)]
    refs += [(f"report.{i}", "report", r) for i, r in enumerate(recipe.report)]
    return refs


def resolve(
    data: dict[str, Any], registry: Registry, source: str, text: str = ""
) -> ResolvedRecipe:
    """Validate a parsed recipe against the schema and the registered components."""
    try:
        recipe = strict_validate(Recipe, data)
    except ValidationError as e:
        raise RecipeError(source, format_validation_errors(e, Recipe)) from None

    problems: list[str] = []
    components: dict[str, Component] = {}
    params: dict[str, BaseModel] = {}
    for path, kind, ref in component_refs(recipe):
        if not registry.has(kind, ref.name):
            known = registry.names(kind)
            msg = f"{path}.name = {ref.name!r}: unknown {kind}{did_you_mean(ref.name, known)}"
            msg += f" (known: {', '.join(known) or 'none'})"
            problems.append(msg)
            continue
        comp = registry.get(kind, ref.name)
        try:
            params[path] = comp.validate_params(ref.params)
            components[path] = comp
        except ValidationError as e:
            problems += format_validation_errors(e, comp.params, prefix=f"{path}.params")
    if problems:
        raise RecipeError(source, problems)
    return ResolvedRecipe(recipe, source, text, components, params, data=data)


def load_recipe(
    path: str | Path, registry: Registry, overrides: list[str] | None = None
) -> ResolvedRecipe:
    """Load, override and validate a recipe file. Raises :class:`RecipeError`."""
    path = Path(path)
    data, text = load_toml(path)
    overridden: list[str] = []
    for item in overrides or []:
        keys, value = parse_override(item)
        try:
            overridden += apply_override(data, keys, value)
        except RecipeError as e:
            raise RecipeError(str(path), e.problems) from None
    try:
        resolved = resolve(data, registry, str(path), text)
        resolved.overrides = list(overrides or [])
        return resolved
    except RecipeError as e:
        # Say which problems come from --set, not from the file.
        problems = [
            p + " (set with --set)"
            if any(p.startswith((k + " ", k + ":", k + ".")) for k in overridden)
            else p
            for p in e.problems
        ]
        raise RecipeError(e.source, problems) from None


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}`` (lists use indices)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and any(isinstance(x, dict | list) for x in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out
