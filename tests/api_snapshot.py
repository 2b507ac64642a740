"""The documented plugin API as data: every hook's name, signature and options, every
Protocol's members, and the fields of the objects that cross the plugin boundary.

    python tests/api_snapshot.py            # print it
    python tests/api_snapshot.py --write    # accept the current API (tests/data/api.json)

``tests/test_api_stability.py`` compares the live API with the accepted one.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import typing
from pathlib import Path

SNAPSHOT = Path(__file__).parent / "data" / "api.json"

#: The classes of gan_pipe.context plugin authors are documented to use.
BOUNDARY = ("Dataset", "ModelSpec", "LossInputs")


def _signature(fn: typing.Any) -> str:
    return str(inspect.signature(fn))


def hooks() -> dict[str, dict[str, typing.Any]]:
    from gan_pipe import PROJECT, hookspecs

    out = {}
    for name, fn in sorted(vars(hookspecs).items()):
        opts = getattr(fn, f"{PROJECT}_spec", None)
        if opts is None:
            continue
        out[name] = {
            "signature": _signature(fn),
            "firstresult": bool(opts.get("firstresult")),
            "historic": bool(opts.get("historic")),
        }
    return out


def protocols() -> dict[str, dict[str, str]]:
    from gan_pipe import context

    out = {}
    for name, cls in sorted(vars(context).items()):
        if not (inspect.isclass(cls) and getattr(cls, "_is_protocol", False)):
            continue
        if cls.__module__ != context.__name__:
            continue
        members = {}
        for attr, kind in sorted(cls.__dict__.get("__annotations__", {}).items()):
            members[attr] = str(kind)
        for attr, fn in sorted(vars(cls).items()):
            if callable(fn) and (not attr.startswith("_") or attr == "__call__"):
                members[attr] = _signature(fn)
        out[name] = members
    return out


def boundary() -> dict[str, dict[str, str]]:
    from gan_pipe import context

    return {
        name: {f.name: str(f.type) for f in dataclasses.fields(getattr(context, name))}
        for name in BOUNDARY
    }


def register() -> str:
    """What a ``register_*`` hook calls: ``register(name, factory, ...)``."""
    from gan_pipe.registry import Register

    return _signature(Register.__call__)


def snapshot() -> dict[str, typing.Any]:
    return {
        "hooks": hooks(),
        "protocols": protocols(),
        "boundary": boundary(),
        "register": register(),
    }


if __name__ == "__main__":
    text = json.dumps(snapshot(), indent=1, sort_keys=True) + "\n"
    if "--write" in sys.argv:
        SNAPSHOT.write_text(text)
        print(f"wrote {SNAPSHOT}")
    else:
        print(text)
