"""The tables of a recipe as pydantic models: ``[experiment]``, ``[data]``, ``[model]``,
``[noise]``, ``[train]``, ``[evaluate]`` and the bounds of ``[success]``.

Each table forbids unknown keys and checks its own values; :class:`.recipe.Recipe` puts them
together, and :mod:`.recipe` (which re-exports every name here) loads and resolves a recipe.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .names import NAME_RULE, TAG_KEY_MAX, TAG_VALUE_MAX, Name, TagKey, TagValue


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
        "auto",
        description="mixed precision: auto = bf16 autocast on CUDA, off on the CPU; bf16 = bf16 "
        "autocast on every device (the CPU too); off = float32 throughout",
    )
    channels_last: bool = Field(
        False,
        description="keep the nets' 4-D weights and the image batches in channels-last (NHWC) "
        "memory order, which cuDNN's bf16 convolutions prefer; no effect on nets without "
        "convolutions",
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
