"""Reading recipe TOML and applying ``--set KEY=VALUE`` overrides: each value is one TOML
value (a bare word is a string), applied whole or not at all."""

from __future__ import annotations

import re
import tomllib
import unicodedata
from pathlib import Path
from typing import Any

from .errors import RecipeError, did_you_mean
from .validation_messages import _shown


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> (["train", "lr"], 1e-4). The value is one TOML value; a bare word
    (no quotes, spaces or brackets, not valid TOML) is a string: ``loss.name=minimax``.

    Anything else is an error, never half applied: a value followed by more TOML (``1\nx = 2``,
    a ``[table]`` header), text with control characters, an unclosed list or string."""
    if "=" not in item:
        raise RecipeError("--set", [f"{item!r}: expected KEY=VALUE, e.g. train.lr=1e-4"])
    key, _, raw = item.partition("=")
    key, raw = key.strip(), raw.strip()
    if not key or any(not p.strip() for p in key.split(".")):
        raise RecipeError(
            "--set", [f"{item!r}: the key path {key!r} is empty or has an empty part"]
        )
    odd = next((c for c in key if unicodedata.category(c).startswith("C")), None)
    if odd is not None:
        raise RecipeError(
            "--set", [f"{item!r}: the key path contains the control character U+{ord(odd):04X}"]
        )
    try:
        doc = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError as e:
        why = str(e).split(" (at ")[0]  # its line and column are those of "v = ..."
        if not _BARE_WORD.fullmatch(raw):
            # Meant as a list, table or string, or more than one word: not a bare word.
            raise RecipeError(
                "--set",
                [
                    f"{item!r}: the value is not valid TOML ({why}); quote a string "
                    f"({key}='\"...\"'), or give one number, boolean, [list] or {{table}}"
                ],
            ) from None
        value: Any = raw
    else:
        if list(doc) != ["v"]:
            raise RecipeError(
                "--set",
                [
                    f"{item!r}: the value is more than one TOML value (it goes on with "
                    f"{', '.join(repr(k) for k in doc if k != 'v')}); give one value per --set"
                ],
            )
        value = doc["v"]
    return [p.strip() for p in key.split(".")], value


#: A value ``--set`` takes as a string although it is not TOML: one word of letters, digits
#: and ``_ - . : / + @ ,`` (``minimax``, ``wgan-gp``, ``cuda:1``, ``data/mnist``). A typo in a
#: number (``2e-4x``) is such a word too; strict validation refuses it where a number belongs.
_BARE_WORD = re.compile(r"[\w\-.:/+@,]+")


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> list[str]:
    """Set ``path`` to ``value`` in ``data``; returns the key paths set.

    An inline table merges into the table already there, key by key (``--set
    train={lr=1e-4, n_critic=5}`` is ``train.lr`` and ``train.n_critic``), so it never drops
    the table's other keys; a list, or a table where there was none, replaces what was there."""
    node: Any = data
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(
                    "--set", [f"{where}: no list item {part!r} (list has {len(node)})"]
                )
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise RecipeError("--set", [f"{where} is a value ({_shown(node)}), not a table"])
    last = path[-1]
    dotted = ".".join(path)
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError("--set", [f"{dotted}: no list item {last!r} (list has {len(node)})"])
        index: Any = int(last)
        current = node[index]
    else:
        index = last
        current = node.get(last)
    if isinstance(value, dict) and isinstance(current, dict) and value:
        done = []
        for k, v in value.items():
            done += apply_override(current, [k], v)
        return [f"{dotted}.{k}" for k in done]
    node[index] = value
    return [dotted]


def load_toml(path: Path) -> tuple[dict[str, Any], str]:
    if not path.exists():
        where = path.resolve().parent
        near = [p.name for p in where.glob("*.toml")] if where.is_dir() else []
        hint = did_you_mean(path.name, near)
        raise RecipeError(str(path), [f"file not found (looked in {where}){hint}"])
    if path.is_dir():
        raise RecipeError(str(path), ["is a directory; give a recipe .toml file"])
    text = path.read_text(encoding="utf-8")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(str(path), [f"not valid TOML: {e}"]) from None
