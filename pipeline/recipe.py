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

import posixpath
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import RecipeError, did_you_mean
from .registry import Component, Registry, strict_validate

# ---------------------------------------------------------------- names and tags
#: Longest experiment or run name. MLflow allows 500 characters for an experiment, but the
#: name is also a folder (``mlartifacts/<name>``) and file systems stop at 255 bytes.
NAME_MAX = 200
NAME_RULE = (
    f"1 to {NAME_MAX} printable characters (letters of any script, digits, spaces, punctuation), "
    "no / or \\, no control characters, not only dots, no space at either end"
)
#: MLflow's limits on run tags (mlflow/utils/validation.py: MAX_ENTITY_KEY_LENGTH,
#: MAX_TAG_VAL_LENGTH) and its rule for tag keys (validate_param_and_metric_name).
TAG_KEY_MAX = 250
TAG_VALUE_MAX = 8000
_TAG_KEY = re.compile(r"[\w./\- :]+")
#: Tags that MLflow (``mlflow.*``) and gan-pipe (``gan_pipe.*`` and the keys below) set on
#: every run; a user tag must not replace them.
RESERVED_TAG_PREFIXES = ("mlflow.", "gan_pipe.")
RESERVED_TAG_KEYS = ("device", "torch.version", "git.commit")
_TAG_HINTS = {
    "mlflow.runname": "; set the run name with experiment.run_name",
    "mlflow.note.content": "; set the run description with experiment.description",
}


def check_name(v: str) -> str:
    """An experiment or run name that MLflow stores and a folder can carry (:data:`NAME_RULE`)."""
    if not v:
        raise ValueError(f"a name cannot be empty; expected {NAME_RULE}")
    if len(v) > NAME_MAX:
        raise ValueError(f"the name is {len(v)} characters long; at most {NAME_MAX} are allowed")
    sep = [c for c in "/\\" if c in v]
    if sep:
        raise ValueError(
            f"the name contains {sep[0]!r}, a path separator (artifacts would go to another "
            "folder); use - or _ instead"
        )
    odd = next((c for c in v if unicodedata.category(c).startswith("C")), None)
    if odd is not None:
        raise ValueError(
            f"the name contains the control or invisible character U+{ord(odd):04X}; "
            "use printable characters only"
        )
    if set(v) == {"."}:
        raise ValueError("a name of only dots is a folder ('.' or '..'); use letters or digits")
    if v != v.strip():
        raise ValueError("the name starts or ends with white space; remove it")
    return v


def check_tag_key(key: str) -> str:
    low = key.casefold()
    if low.startswith(RESERVED_TAG_PREFIXES) or low in RESERVED_TAG_KEYS:
        raise ValueError(
            f"tags starting with {' or '.join(repr(p) for p in RESERVED_TAG_PREFIXES)} (and "
            f"{', '.join(repr(k) for k in RESERVED_TAG_KEYS)}) are MLflow's and gan-pipe's own, "
            f"set on every run; use another key{_TAG_HINTS.get(low, '')}"
        )
    if len(key) > TAG_KEY_MAX:
        raise ValueError(f"a tag key is at most {TAG_KEY_MAX} characters (this has {len(key)})")
    if not _TAG_KEY.fullmatch(key):
        raise ValueError(
            "a tag key may only contain letters, digits, _ - . / : and spaces (MLflow's rule)"
        )
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith(("..", "/")):
        raise ValueError(f"MLflow refuses tag keys that read as another path ({norm!r})")
    return key


def check_tag_value(value: str) -> str:
    if len(value) > TAG_VALUE_MAX:
        raise ValueError(
            f"a tag value is at most {TAG_VALUE_MAX} characters (this has {len(value)})"
        )
    return value


Name = Annotated[str, AfterValidator(check_name)]
TagKey = Annotated[str, AfterValidator(check_tag_key)]
TagValue = Annotated[str, AfterValidator(check_tag_value)]


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


# ---------------------------------------------------------------- TOML + overrides
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


# ---------------------------------------------------------------- error messages
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
