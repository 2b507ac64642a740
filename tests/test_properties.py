"""Property-based tests (issue 9): random and mutated recipes, ``--set`` strings and sample files.

Every outcome is a valid resolved recipe (or score) or a clean user error (exit 2 at the
command line) -- never another exception. Recipes start from the real ones in ``recipes/``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from typer.testing import CliRunner

from gan_pipe.cli import app
from gan_pipe.errors import RecipeError
from gan_pipe.host import PluginHost
from gan_pipe.recipe import (
    RESERVED_TAG_KEYS,
    RESERVED_TAG_PREFIXES,
    ResolvedRecipe,
    check_name,
    load_recipe,
    resolve,
)

from .conftest import RECIPES

FAST = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SLOW = settings(FAST, max_examples=40)

TEXTS = {p.name: p.read_text(encoding="utf-8") for p in sorted(RECIPES.glob("*.toml"))}
DATA = {name: tomllib.loads(text) for name, text in TEXTS.items()}


@pytest.fixture(scope="module")
def registry():
    return PluginHost.load(entry_points=False).registry


# ---------------------------------------------------------------- strategies
keys = st.text(min_size=1, max_size=12)
scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.booleans(),
    st.dates(),
    st.datetimes(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=6,
)


def nodes(data: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, value) of every table, list and value below ``data`` (not ``data`` itself)."""
    out = []
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for k, v in items:
        out.append(((*path, k), v))
        if isinstance(v, dict | list):
            out += nodes(v, (*path, k))
    return out


def parent(data: Any, path: tuple) -> Any:
    for p in path[:-1]:
        data = data[p]
    return data


@st.composite
def mutated_recipes(draw) -> dict[str, Any]:
    """A real recipe with 1-4 keys deleted, added or given a random value of any type."""
    data = copy.deepcopy(DATA[draw(st.sampled_from(sorted(DATA)))])
    for _ in range(draw(st.integers(1, 4))):
        found = nodes(data)
        kind = draw(st.sampled_from(["delete", "add", "replace", "tweak", "tweak"]))
        if kind == "add":
            tables = [v for _, v in found if isinstance(v, dict)] + [data]
            draw(st.sampled_from(tables))[draw(keys)] = draw(values)
            continue
        path, _ = draw(st.sampled_from(found))
        container = parent(data, path)
        if kind == "delete":
            del container[path[-1]]
        elif kind == "tweak":  # another value of the same type: often still a valid recipe
            container[path[-1]] = draw(same_type(container[path[-1]]))
        else:
            container[path[-1]] = draw(values)
    return data


def same_type(value: Any) -> st.SearchStrategy[Any]:
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-2, 2 * abs(value) + 2)
    if isinstance(value, float):
        return st.floats(-1, 2 * abs(value) + 1)
    if isinstance(value, str):
        return st.text(max_size=12) | st.just(value + "x")
    return st.just(copy.deepcopy(value))


def retyped(value: Any) -> list[Any]:
    """Values of another TOML type than ``value`` that a strict schema must refuse there."""
    if isinstance(value, bool):
        return [int(value), str(value).lower()]
    if isinstance(value, int | float):
        return [str(value), value > 0]
    return []


def check_resolved(r: ResolvedRecipe) -> None:
    """What every recipe that validates guarantees before anything is created."""
    out = r.to_dict()
    json.dumps(out, allow_nan=False)  # no nan or inf anywhere, params included
    e = r.recipe.experiment
    check_name(e.name)
    if e.run_name is not None:
        check_name(e.run_name)
    for key in e.tags:
        low = key.casefold()
        assert not low.startswith(RESERVED_TAG_PREFIXES) and low not in RESERVED_TAG_KEYS


def outcome(data: dict[str, Any], registry) -> ResolvedRecipe | RecipeError:
    try:
        r = resolve(data, registry, "mutant.toml")
    except RecipeError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
        event("refused")
        return e
    event("valid")
    check_resolved(r)
    return r


# ---------------------------------------------------------------- recipes
@FAST
@given(data=mutated_recipes())
def test_mutated_recipes_resolve_or_say_why(registry, data):
    outcome(data, registry)


@FAST
@given(st.data())
def test_a_value_of_another_type_is_refused_at_its_path(registry, draw):
    data = copy.deepcopy(DATA[draw.draw(st.sampled_from(sorted(DATA)))])
    leaves = [(p, v) for p, v in nodes(data) if retyped(v)]
    path, value = draw.draw(st.sampled_from(leaves))
    new = draw.draw(st.sampled_from(retyped(value)))
    parent(data, path)[path[-1]] = new
    result = outcome(data, registry)
    where = ".".join(str(p) for p in path)
    assert isinstance(result, RecipeError), f"{where} = {new!r} (was {value!r}) was accepted"
    assert any(p.startswith(f"{where} = {new!r}") for p in result.problems), result.problems


@FAST
@given(st.data())
def test_non_finite_numbers_are_refused_anywhere(registry, draw):
    data = copy.deepcopy(DATA[draw.draw(st.sampled_from(sorted(DATA)))])
    numbers = [p for p, v in nodes(data) if isinstance(v, float | int) and not isinstance(v, bool)]
    path = draw.draw(st.sampled_from(numbers))
    bad = draw.draw(st.sampled_from([math.inf, -math.inf, math.nan]))
    parent(data, path)[path[-1]] = bad
    result = outcome(data, registry)
    where = ".".join(str(p) for p in path)
    assert isinstance(result, RecipeError)
    assert f"{where} = {bad!r}: expected a finite number" in "\n".join(result.problems)


@FAST
@given(
    name=st.sampled_from(sorted(TEXTS)),
    cut=st.integers(0, 4000),
    length=st.integers(0, 40),
    insert=st.text(max_size=20),
)
def test_edited_recipe_text_loads_or_says_why(
    registry, tmp_path_factory, name, cut, length, insert
):
    text = TEXTS[name]
    cut = min(cut, len(text))
    path = tmp_path_factory.mktemp("edit") / "r.toml"
    path.write_text(text[:cut] + insert + text[cut + length :], encoding="utf-8")
    try:
        check_resolved(load_recipe(path, registry))
    except RecipeError as e:
        assert e.source == str(path) and e.problems


# ---------------------------------------------------------------- --set
def leaf_paths(data: dict[str, Any]) -> list[str]:
    return [".".join(str(p) for p in path) for path, v in nodes(data) if not isinstance(v, dict)]


toml_literals = st.one_of(
    st.integers(-5, 10_000).map(str),
    st.floats(-1, 1e4).map(repr),
    st.booleans().map(lambda b: str(b).lower()),
    st.sampled_from(
        ["1", "1e-4", "2e-4x", "inf", "nan", "true", "[0.5, 0.9]", "{lr = 1e-4}", '"x"', "'x'"]
    ),
    st.text(max_size=30),
    st.text(alphabet="[]{}=\"'.,\n#0123456789abe-+ ", max_size=30),
)


@FAST
@given(
    name=st.sampled_from(sorted(TEXTS)),
    draw=st.data(),
    value=toml_literals,
)
def test_set_applies_whole_or_is_an_error(registry, name, draw, value):
    key = draw.draw(st.sampled_from(leaf_paths(DATA[name])) | st.text(max_size=20))
    item = f"{key}={value}"
    try:
        r = load_recipe(RECIPES / name, registry, [item])
    except RecipeError as e:
        assert e.problems
        event("refused")
        return
    event("applied")
    check_resolved(r)
    assert r.overrides == [item]
    parsed = _toml_value(value)
    if parsed is not None and not isinstance(parsed, dict):
        node: Any = r.data  # the recipe as run holds exactly the value given
        for part in key.strip().split("."):
            part = part.strip()
            node = node[int(part)] if isinstance(node, list) else node[part]
        assert node == parsed


def _toml_value(raw: str) -> Any:
    try:
        doc = tomllib.loads(f"v = {raw.strip()}")
    except tomllib.TOMLDecodeError:
        return None
    return doc["v"] if list(doc) == ["v"] else None


# ---------------------------------------------------------------- command line
runner = CliRunner()


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """A fresh empty working directory (where MLflow would create its store)."""
    with tempfile.TemporaryDirectory() as where, contextlib.chdir(where):
        yield


@SLOW
@given(data=mutated_recipes(), sets=st.lists(st.text(max_size=25), max_size=2))
def test_validate_exits_0_or_2_and_writes_nothing(data, sets):
    import tomli_w

    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):  # keys or values TOML cannot write (e.g. a nan key)
        return
    with isolated():
        Path("r.toml").write_text(text, encoding="utf-8")
        args = ["validate", "r.toml"] + [a for s in sets for a in ("--set", s)]
        res = runner.invoke(app, args)
        event(f"exit {res.exit_code}")
        assert res.exit_code in (0, 2), res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        assert "Traceback" not in res.output
        if res.exit_code == 2:
            assert "error:" in res.output and "Nothing was run" in res.output
        assert sorted(p.name for p in Path.cwd().iterdir()) == ["r.toml"]


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype == object)
    return buf.getvalue()


dtypes = st.sampled_from(["float64", "float32", "float16", "int64", "uint8", "bool", "complex64"])
arrays = hnp.arrays(
    dtype=dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12)
)


def good_arrays(d: int) -> st.SearchStrategy[np.ndarray]:
    """Arrays that score as they are: rows of ``d`` values in [0, 1]."""
    return hnp.arrays(
        dtype=st.sampled_from(["float64", "float32"]),
        shape=st.tuples(st.integers(4, 40), st.just(d)),
        elements=st.floats(0, 1, width=32),
    )


@st.composite
def sample_files(draw, d: int) -> bytes:
    """A .npy file: a good array (rows of ``d`` values), or a random or good one with bytes
    cut, flipped or appended, or a pickle of Python objects."""
    kind = draw(st.sampled_from(["good", "good", "as is", "cut", "flip", "append", "pickle"]))
    if kind == "good":
        return npy_bytes(draw(good_arrays(d)))
    raw = npy_bytes(draw(arrays | good_arrays(d)))
    if kind == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif kind == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1 :]
    elif kind == "append":
        raw += draw(st.binary(min_size=1, max_size=16))
    elif kind == "pickle":
        raw = npy_bytes(np.array([{"a": 1}, None], dtype=object))
    return raw


@st.composite
def sample_pairs(draw) -> tuple[bytes, bytes]:
    d = draw(st.integers(1, 3))
    return draw(sample_files(d)), draw(sample_files(d))


@SLOW
@given(files=sample_pairs(), metric=st.sampled_from(["parzen", "divergences"]))
def test_score_gives_numbers_or_exit_2(files, metric):
    real, fake = files
    with isolated():
        Path("r.npy").write_bytes(real)
        Path("f.npy").write_bytes(fake)
        res = runner.invoke(
            app, ["score", "--real", "r.npy", "--fake", "f.npy", "-m", metric, "--json"]
        )
        event(f"exit {res.exit_code}")
        assert res.exit_code in (0, 2), res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        assert "Traceback" not in res.output
        if res.exit_code == 0:
            values = json.loads(res.stdout.strip().splitlines()[-1])
            assert values and all(v is None or isinstance(v, int | float) for v in values.values())
        else:
            assert "error:" in res.output
