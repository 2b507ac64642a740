"""pydantic validation errors as the lines gan-pipe prints: the key path, the value given,
what was expected, and close matches for a misspelt key."""

from __future__ import annotations

from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .errors import did_you_mean


def _describe_expected(err: dict[str, Any]) -> str:
    msg = err.get("msg", "")
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error" and "expected" in ctx:
        return f"expected one of {ctx['expected']}"
    msg = msg.removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else err["type"]


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model found at ``loc``, for 'did you mean' hints."""
    cls: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return []
        field = cls.model_fields.get(part)
        if field is None:
            return []
        cls = field.annotation
        while get_origin(cls) is not None:
            args = [a for a in get_args(cls) if isinstance(a, type) and issubclass(a, BaseModel)]
            if not args:
                return []
            cls = args[0]
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return []


def _format_loc(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc]
    return ".".join(parts) or "(top level)"


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened when long (a 10,000-character name is not worth echoing)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters"
    return f"{text[: limit - 20]}... ({size})"


def format_validation_errors(
    exc: ValidationError, model: type[BaseModel], prefix: str = ""
) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        value = err.get("input")
        if loc and loc[-1] == "[key]":  # a dict key (a tag's) that is not allowed
            where = _format_loc(prefix, loc[:-2])
            problems.append(f"{where}: key {_shown(value)}: {_describe_expected(err)}")
            continue
        where = _format_loc(prefix, loc)
        if err["type"] == "extra_forbidden":
            known = _fields_at(model, loc[:-1])
            hint = did_you_mean(str(loc[-1]), known)
            msg = f"{where} = {_shown(value)}: unknown key{hint}"
            if not hint and known:
                msg += f"; allowed keys here: {', '.join(known)}"
            problems.append(msg)
        elif err["type"] == "missing":
            problems.append(f"{where}: required key is missing")
        else:
            problems.append(f"{where} = {_shown(value)}: {_describe_expected(err)}")
    return problems
