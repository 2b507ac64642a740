"""``gan-pipe schema``: the JSON Schema of recipes, with every registered component's params,
for editors that complete and check recipe TOML."""

from __future__ import annotations

from typing import Any

from .recipe import Recipe
from .registry import Registry


def json_schema(registry: Registry) -> dict[str, Any]:
    """The recipe's JSON schema, with each component slot narrowed to the registered names
    and each name's own params schema, so editors catch a typo in ``params`` too."""
    schema = Recipe.model_json_schema()
    defs = schema.setdefault("$defs", {})

    def slot(kind: str) -> dict[str, Any]:
        options = []
        for name in registry.names(kind):
            comp = registry.get(kind, name)
            params = comp.params.model_json_schema(ref_template=f"#/$defs/{kind}.{name}.{{model}}")
            for key, sub in params.pop("$defs", {}).items():
                defs[f"{kind}.{name}.{key}"] = sub
            options.append(
                {
                    "type": "object",
                    "description": comp.description,
                    "properties": {"name": {"const": name}, "params": params},
                    "required": ["name"],
                    "additionalProperties": False,
                }
            )
        return {"oneOf": options} if options else {"$ref": "#/$defs/ComponentRef"}

    props = schema["properties"]
    props["data"] = slot("dataset")
    loading = {
        k: v for k, v in defs["DataRef"]["properties"].items() if k not in ("name", "params")
    }
    for option in props["data"].get("oneOf", []):
        option["properties"].update(loading)
    props["loss"] = slot("loss")
    props["regularizers"]["items"] = slot("regularizer")
    props["callbacks"]["items"] = slot("callback")
    props["report"]["items"] = slot("report")
    defs["Model"]["properties"] = {
        "generator": slot("generator"),
        "discriminator": slot("discriminator"),
    }
    metric = slot("metric")
    prefix = defs["MetricRef"]["properties"]["prefix"]
    for option in metric.get("oneOf", []):
        option["properties"]["prefix"] = prefix
    defs["Evaluate"]["properties"]["metrics"]["items"] = metric
    return schema
