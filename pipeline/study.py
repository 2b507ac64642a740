"""Studies: several recipes and/or a grid of overrides, each over N seeds, as one MLflow tree.

A study is one MLflow *parent run* (tag ``gan_pipe.kind = study``) in one experiment. Under it
hangs one *variant run* per (recipe, grid point) and under each variant one *seed run* per
seed (``mlflow.parentRunId`` links them, so the MLflow UI shows one expandable tree). Seed runs
are ordinary gan-pipe runs; a variant run carries the variant's params and, for every final
``eval/`` metric, the mean over its finished seeds under the metric's own key plus
``<key>.std``, ``<key>.n``, ``<key>.ci95_lo`` and ``<key>.ci95_hi`` (see
:mod:`gan_pipe.study_aggregate`).

Running the same study again (same name in the same experiment) reuses its tree: seeds whose
newest run FINISHED are skipped, killed ones with a checkpoint are resumed in their own run,
failed, other killed and missing ones are run from step 0, new seeds and new grid points are
added. This module plans a study; :mod:`gan_pipe.study_exec` runs it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import RecipeError, UserError
from .recipe import Criterion, ResolvedRecipe, format_validation_errors, load_recipe
from .registry import Registry

# The tree's tags: the contract between sweep, compare and anyone reading the store.
TAG_KIND = "gan_pipe.kind"
TAG_STUDY = "gan_pipe.study"
TAG_STUDY_RUN = "gan_pipe.study_run"
TAG_VARIANT = "gan_pipe.variant"
TAG_VARIANT_KEY = "gan_pipe.variant_key"
TAG_SEED = "gan_pipe.seed"
PARENT = "mlflow.parentRunId"
KIND_STUDY, KIND_VARIANT, KIND_SEED = "study", "variant", "seed"

#: Recipe keys that name or describe a run rather than define the experiment.
IDENTITY_FREE = ("experiment.seed", "experiment.name", "experiment.run_name")


def parse_seeds(spec: int | str | list[int]) -> list[int]:
    """``20`` -> 0..19, ``"0-19"``, ``"1,5,7"``, ``"0-4,10"`` or a list; sorted, unique."""
    if isinstance(spec, bool):
        raise ValueError("seeds: expected a count, a range like '0-19' or a list of seeds")
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"seeds = {spec}: a count must be at least 1")
        return list(range(spec))
    if isinstance(spec, list):
        if not spec or not all(isinstance(s, int) and not isinstance(s, bool) for s in spec):
            raise ValueError(f"seeds = {spec!r}: expected a non-empty list of integers")
        seeds = spec
    else:
        text = str(spec).strip()
        if text.isdigit():
            return parse_seeds(int(text))
        seeds = []
        for part in text.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m:
                raise ValueError(
                    f"seeds = {spec!r}: expected a count (20), a range (0-19), a list (1,5,7) "
                    "or ranges and seeds mixed (0-4,10)"
                )
            lo, hi = int(m[1]), int(m[2] or m[1])
            if hi < lo:
                raise ValueError(f"seeds = {spec!r}: the range {lo}-{hi} is empty")
            seeds += range(lo, hi + 1)
    if any(s < 0 for s in seeds):
        raise ValueError(f"seeds = {spec!r}: seeds are non-negative integers")
    return sorted(set(seeds))


def parse_grid_item(item: str) -> tuple[str, list[Any]]:
    """``"train.lr=1e-4,2e-4"`` -> ("train.lr", [1e-4, 2e-4]). Values are TOML (so
    ``train.betas=[0.5,0.9],[0.0,0.9]`` works); bare words are strings."""
    if "=" not in item:
        raise RecipeError("--grid", [f"{item!r}: expected KEY=V1,V2,..., e.g. train.lr=1e-4,2e-4"])
    key, _, raw = item.partition("=")
    key, raw = key.strip(), raw.strip()
    if not key or not raw:
        raise RecipeError("--grid", [f"{item!r}: needs a key and at least one value"])
    try:
        values = tomllib.loads(f"v = [{raw}]")["v"]
    except tomllib.TOMLDecodeError:
        values = []
        for word in raw.split(","):
            try:
                values.append(tomllib.loads(f"v = {word.strip()}")["v"])
            except tomllib.TOMLDecodeError:
                values.append(word.strip())
    if any(v == "" for v in values):
        raise RecipeError("--grid", [f"{item!r}: an empty value between commas"])
    return key, values


def toml_value(value: Any) -> str:
    """A value as TOML text for a ``--set`` override."""
    import tomli_w

    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


class StudySpec(BaseModel):
    """A study: what ``studies/*.toml`` holds, and what ``gan-pipe sweep`` flags build."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the study's name: its MLflow parent run, found again on re-runs")
    experiment: str | None = Field(
        None, description="MLflow experiment (default: the recipes' shared one, else the name)"
    )
    description: str = Field("", description="the study run's MLflow description")
    recipes: list[str] = Field(
        min_length=1, description="recipe files (relative to the study file)"
    )
    seeds: list[int] = Field(description="a count (20), a range ('0-19') or a list")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="override key -> values; every combination is a variant"
    )
    set: dict[str, Any] = Field(
        default_factory=dict, description="overrides shared by every run, e.g. 'train.steps' = 2000"
    )
    metrics: list[str] = Field(
        default_factory=list, description="eval metrics to aggregate and show (default: all)"
    )
    success: dict[str, Criterion] = Field(
        default_factory=dict,
        description="success criteria added to the recipes' own: [success.all_modes] modes = "
        "{min = 8}; each variant logs the rate of seeds where it holds",
    )
    jobs: int = Field(1, ge=1, description="seed runs at once (local processes)")

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: Any) -> list[int]:
        return parse_seeds(v)

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid.{key} has no values")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[\w.+-][\w .+-]{0,199}", v) or set(v) <= {"."}:
            raise ValueError(
                "a study name is 1-200 letters, digits, spaces and . _ + - (no slashes)"
            )
        return v

    def overrides(self) -> list[str]:
        return [f"{k}={toml_value(v)}" for k, v in self.set.items()]

    def grid_points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [
            dict(zip(keys, combo, strict=True)) for combo in itertools.product(*self.grid.values())
        ]


def load_study_file(path: Path) -> StudySpec:
    """A ``studies/*.toml`` file; recipe paths are taken relative to the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: study file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(str(path), [f"not valid TOML: {e}"]) from None
    data.setdefault("name", path.stem)
    if isinstance(data.get("recipes"), list):
        data["recipes"] = [
            str((path.parent / r).resolve()) if isinstance(r, str) else r for r in data["recipes"]
        ]
    return validate_spec(data, str(path))


def validate_spec(data: dict[str, Any], source: str) -> StudySpec:
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        raise RecipeError(source, format_validation_errors(e, StudySpec)) from None


def is_study_file(path: Path) -> bool:
    """A TOML file with a top-level ``recipes`` list is a study, not a recipe."""
    try:
        return "recipes" in tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False


# ------------------------------------------------------------------ the plan
@dataclass
class Variant:
    """One recipe at one grid point; ``key`` identifies its experiment across re-runs."""

    label: str
    recipe_path: Path
    overrides: list[str]
    resolved: ResolvedRecipe
    key: str
    success: dict[str, Criterion]
    params: dict[str, Any] = field(default_factory=dict)


def variant_key(resolved: ResolvedRecipe) -> str:
    """A hash of everything that defines the experiment (the resolved recipe without its seed
    and names): the same settings find the same variant run again."""
    from .recipe import flatten

    flat = {k: v for k, v in flatten(resolved.to_dict()).items() if k not in IDENTITY_FREE}
    flat.pop("experiment.description", None)
    flat.pop("experiment.tags", None)
    blob = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_experiment(spec: StudySpec, resolved: list[ResolvedRecipe]) -> str:
    names = {r.recipe.experiment.name for r in resolved}
    if spec.experiment:
        return spec.experiment
    return names.pop() if len(names) == 1 else spec.name


def plan_variants(spec: StudySpec, registry: Registry) -> tuple[str, list[Variant]]:
    """(experiment, variants): every recipe at every grid point, validated before anything
    is written, so a typo in a grid key costs nothing."""
    from .runner import run_params

    base = spec.overrides()
    bare = [load_recipe(p, registry, base) for p in spec.recipes]
    experiment = default_experiment(spec, bare)
    variants: list[Variant] = []
    stems = [Path(p).stem for p in spec.recipes]
    for path, stem in zip(spec.recipes, stems, strict=True):
        for point in spec.grid_points():
            grid = [f"{k}={toml_value(v)}" for k, v in point.items()]
            overrides = base + grid + [f"experiment.name={toml_value(experiment)}"]
            resolved = load_recipe(path, registry, overrides)
            label = " ".join([stem, *grid]) if grid else stem
            params = {k: v for k, v in run_params(resolved.to_dict()).items()}
            for k in IDENTITY_FREE:
                params.pop(k, None)
            success = {**resolved.recipe.success, **spec.success}
            variants.append(
                Variant(
                    label, Path(path), overrides, resolved, variant_key(resolved), success, params
                )
            )
    keys = [v.key for v in variants]
    dupes = {v.label for v in variants if keys.count(v.key) > 1}
    if dupes:
        raise UserError(
            f"variants {sorted(dupes)} are the same experiment (identical settings): "
            "a grid value that changes nothing, or a recipe listed twice"
        )
    return experiment, variants
