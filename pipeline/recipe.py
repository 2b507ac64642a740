"""Recipes: TOML files validated by pydantic, each component validating its own params.

Loading a recipe is three steps, all before anything is written to MLflow:

1. parse the TOML and apply ``--set a.b=c`` overrides;
2. validate the structure against :class:`Recipe` (unknown keys are errors);
3. resolve every ``name`` against the plugin registry and validate its ``params`` table
   against that component's own model.

Every problem is collected and reported at once, naming the file, the key path, the value,
what was expected and close matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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
from .registry import Component, Registry, strict_validate
from .validation_messages import format_validation_errors


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentRef(_Strict):
    """``name`` picks a registered component; ``params`` is validated by that component."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DataRef(ComponentRef):
    """The dataset, and how its training rows reach the device (docs/performance.md)."""

    stream: Literal["auto"] | bool = Field(
        "auto",
        description="false: the training split sits on the device as one tensor (the fast "
        "path); true: batches stream from host memory or disk through a DataLoader with "
        "workers (same batches, same order); auto: stream when the dataset declares it does "
        "not fit, loads rows on demand (image-folder with lazy decoding), or takes more than "
        "half of the GPU's free memory",
    )
    workers: int | None = Field(
        None,
        ge=0,
        description="loader processes when streaming (0: load in the training process; "
        "default: one per CPU core but one, at most 8)",
    )


class Experiment(_Strict):
    name: Name = Field(description=f"MLflow experiment name; runs are named after it ({NAME_RULE})")
    seed: int = Field(0, description="seed of torch, numpy and Python's random")
    device: str = Field(
        "auto", description="'auto' (GPU when there is one), 'cpu', 'cuda', 'cuda:1'"
    )
    run_name: Name | None = Field(
        None,
        description="MLflow run name (default: the experiment name and a random suffix); "
        f"{NAME_RULE}",
    )
    description: str = Field(
        "",
        max_length=TAG_VALUE_MAX,
        description="the run's MLflow description (mlflow.note.content)",
    )
    tags: dict[TagKey, TagValue] = Field(
        default_factory=dict,
        description="extra MLflow tags; keys starting with 'mlflow.' or 'gan_pipe.' and "
        "'device', 'torch.version', 'git.commit' are reserved; keys up to "
        f"{TAG_KEY_MAX} characters, values up to {TAG_VALUE_MAX}",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        ok = (
            v in ("auto", "cpu", "mps")
            or v == "cuda"
            or (v.startswith("cuda:") and v[5:].isdigit())
        )
        if not ok:
            raise ValueError("expected 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")
        return v


class Model(_Strict):
    generator: ComponentRef
    discriminator: ComponentRef


class Noise(_Strict):
    distribution: Literal["normal", "uniform", "stratified"] = Field(
        "normal",
        description="normal: N(0, I); uniform: U(-1, 1); stratified (seed 001): "
        "linspace(-range, range, n) + U(0, jitter) in every dimension",
    )
    dim: int = Field(100, gt=0, description="size of z")
    range: float = Field(8.0, gt=0, description="stratified noise: half-width of the grid")
    jitter: float = Field(0.01, ge=0, description="stratified noise: width of the uniform jitter")


class OptimizerOverride(_Strict):
    """Per-network optimiser settings; anything left out comes from ``[train]``."""

    optimizer: Literal["adam", "rmsprop", "sgd"] | None = None
    lr: float | None = Field(None, gt=0)
    betas: tuple[float, float] | None = None
    momentum: float | None = Field(None, ge=0)
    weight_decay: float | None = Field(None, ge=0)


class Train(_Strict):
    batch_size: int = Field(128, gt=0)
    epochs: float | None = Field(None, gt=0, description="passes over the training set")
    steps: int | None = Field(None, gt=0, description="generator steps (overrides epochs)")
    n_critic: int = Field(1, gt=0, description="discriminator steps per generator step")
    updates: Literal["alternating", "simultaneous"] = Field(
        "alternating",
        description="alternating: n_critic discriminator steps, then a generator step on fresh "
        "noise against the updated discriminator; simultaneous: one forward pass of G and D "
        "per step, both gradients taken from it and both nets stepped, as the GradientTape "
        "loops of seeds 002 and 003 (needs n_critic = 1)",
    )
    sampling: Literal["epochs", "replacement"] = Field(
        "epochs",
        description="epochs: batches are slices of a fresh shuffle each epoch (every row once "
        "per epoch, the last partial batch dropped); replacement: every batch draws batch_size "
        "rows uniformly with replacement, as np.random.randint in seeds 000/004 (an epoch is "
        "still len(train) // batch_size batches)",
    )
    optimizer: Literal["adam", "rmsprop", "sgd"] = "adam"
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    momentum: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["constant", "exponential"] = Field(
        "constant", description="exponential: lr * decay_rate ** (optimizer steps / decay_steps)"
    )
    decay_rate: float = Field(0.95, gt=0, le=1)
    decay_steps: int = Field(150, gt=0)
    staircase: bool = Field(
        True, description="decay in steps (integer division), as TF's staircase"
    )
    generator: OptimizerOverride = Field(default_factory=OptimizerOverride)
    discriminator: OptimizerOverride = Field(default_factory=OptimizerOverride)
    amp: Literal["auto", "off", "bf16"] = Field(
        "auto", description="mixed precision: auto = bf16 on CUDA, off on CPU"
    )
    compile: bool = Field(
        False,
        description="torch.compile the generator and the discriminator (mode 'default'); the "
        "seconds spent compiling are logged apart as perf/compile_seconds",
    )
    log_every: int = Field(10, gt=0, description="log losses every N generator steps")
    sample_every: int = Field(
        0, ge=0, description="log a sample grid every N steps (0: 10 per run)"
    )
    eval_every: int = Field(
        0, ge=0, description="run the metrics every N steps (0: only at the end)"
    )
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="also save a checkpoint every N steps (0: none by step count); the end "
        "of training and an interrupt always save one",
    )
    checkpoint_minutes: float = Field(
        10.0,
        ge=0,
        description="save a checkpoint when this many minutes have passed since the last one, "
        "checked at logging steps (0: none by time); every checkpoint is kept under "
        "checkpoints/, and gan-pipe resume continues from the newest",
    )
    on_nonfinite: Literal["stop", "rollback", "ignore"] = Field(
        "stop",
        description="what a NaN or infinite loss or weight does, checked at logging steps and "
        "before each checkpoint: stop = the run FAILS naming the step and value (no NaN "
        "checkpoint is saved); rollback = go back to the last logging step whose values were "
        "finite with the learning rates times rollback_lr_factor, at most max_rollbacks times, "
        "then stop; ignore = train on",
    )
    max_abs_value: float = Field(
        1e6,
        ge=0,
        description="a training scalar (a loss, a critic mean, ...) or a weight of G or D "
        "whose magnitude exceeds this counts as diverged, like NaN (train.on_nonfinite "
        "applies); 0 turns this check off and keeps only the NaN/inf check",
    )
    rollback_lr_factor: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="on_nonfinite = 'rollback': learning rates are multiplied "
        "by this at each rollback",
    )
    max_rollbacks: int = Field(
        3, ge=0, description="on_nonfinite = 'rollback': rollbacks before the run stops"
    )
    progress: bool = True

    @model_validator(mode="after")
    def _simultaneous_has_one_critic_step(self) -> Train:
        if self.updates == "simultaneous" and self.n_critic != 1:
            raise ValueError(
                f"updates = 'simultaneous' takes one step of each net from the same forward "
                f"pass, so n_critic must be 1 (got {self.n_critic}); use updates = "
                f"'alternating' for several critic steps per generator step"
            )
        return self

    def optimizer_for(self, net: Literal["generator", "discriminator"]) -> dict[str, Any]:
        """Resolved optimiser settings of one network."""
        override = getattr(self, net)
        keys = ("optimizer", "lr", "betas", "momentum", "weight_decay")
        return {
            k: (getattr(override, k) if getattr(override, k) is not None else getattr(self, k))
            for k in keys
        }


def prefix_hint(name: str, index: int) -> str:
    """A suggested ``prefix`` for metric ``index`` named ``name``."""
    return f'prefix = "{name.replace("-", "_")}{index}_"'


class MetricRef(ComponentRef):
    """A metric, optionally with a ``prefix`` for its keys: the same metric at two settings
    (``prefix = "fine_"`` logs ``eval/fine_kl``) or two metrics reporting the same key."""

    prefix: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_.-]*$",
        description="put before every key this metric reports (eval/<prefix><key>)",
    )


class Evaluate(_Strict):
    metrics: list[MetricRef] = Field(default_factory=list)

    @field_validator("metrics")
    @classmethod
    def _distinct(cls, metrics: list[MetricRef]) -> list[MetricRef]:
        seen: dict[tuple[str, str], int] = {}
        for i, m in enumerate(metrics):
            if (m.name, m.prefix) in seen:
                raise ValueError(
                    f"metrics {seen[m.name, m.prefix]} and {i} are both {m.name!r} with "
                    f"prefix {m.prefix!r}: their values would overwrite each other; give one a "
                    f"different `prefix` (e.g. {prefix_hint(m.name, i)})"
                )
            seen[m.name, m.prefix] = i
        return metrics


class Bound(_Strict):
    """A range a final metric value must fall in (either end may be open)."""

    min: float | None = Field(None, description="lowest value that counts as success")
    max: float | None = Field(None, description="highest value that counts as success")

    @field_validator("max")
    @classmethod
    def _ordered(cls, v: float | None, info: Any) -> float | None:
        lo = info.data.get("min")
        if v is not None and lo is not None and lo > v:
            raise ValueError(f"min = {lo} is above max = {v}")
        return v

    def holds(self, value: float) -> bool:
        if value != value:  # NaN never succeeds
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


#: A success criterion: metric key (as under ``eval/``, e.g. ``modes``) -> its range; every
#: range must hold. Studies report the fraction of seeds where it holds, with an interval.
Criterion = dict[str, Bound]


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
