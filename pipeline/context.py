"""Typed objects that cross the plugin boundary.

torch is imported lazily by the code that builds these objects; this module only names the
types, so importing it (and listing plugins) stays fast. It imports nothing of gan-pipe at
import time either (``tests/test_context.py`` holds it to that): the other core modules
import it, never the reverse, so it can be read first and alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from .callback_list import CallbackList
    from .dataloading import Rows
    from .recipe import Recipe
    from .registry import Component
    from .tracking import Tracker


@dataclass
class Dataset:
    """A dataset held in memory as tensors (rows are samples).

    ``train`` is what the GAN sees, scaled to ``value_range``. ``val`` and ``test`` are
    held-out splits in the same scale, used by metrics (Parzen chooses sigma on ``val`` and
    scores ``test``). Synthetic datasets that know their distribution expose
    ``log_density`` (log p(x) for a batch) and ``sample`` (n, torch.Generator) -> tensor.

    Mixtures with known components may give their mode centres ``modes`` (K, d) (in data
    space, the sample shape flattened) and the per-axis standard deviation ``mode_std`` of each
    mode: the ``modes`` metric reads them (ring8, grid25 and gaussian-1d set both). None where
    the dataset has no such modes; the metric then falls back to ``info["modes"]`` /
    ``info["mode_std"]``, the older way of giving them.

    ``train`` may instead be a :class:`~gan_pipe.dataloading.Rows` (rows loaded on demand,
    indexed like a tensor), and ``fits_device`` declares whether the training split may sit
    on the device whole: False streams it (``data.stream = "auto"``), True keeps it there,
    None lets the trainer decide by its size (docs/performance.md).
    """

    name: str
    train: torch.Tensor | Rows
    val: torch.Tensor | None = None
    test: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    value_range: tuple[float, float] = (-1.0, 1.0)
    is_image: bool = False
    log_density: Callable[[torch.Tensor], torch.Tensor] | None = None
    sample: Callable[..., torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    modes: torch.Tensor | None = None
    mode_std: float | None = None
    fits_device: bool | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 28, 28)`` or ``(2,)``."""
        return tuple(self.train.shape[1:])

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Map from ``value_range`` to [0, 1] (the scale of the Parzen protocol)."""
        lo, hi = self.value_range
        return (x - lo) / (hi - lo)


@dataclass(frozen=True)
class ModelSpec:
    """What a network factory needs to know about the data and the noise."""

    data_shape: tuple[int, ...]
    z_dim: int


@dataclass
class LossInputs:
    """One step's tensors for a loss or a regularizer term. ``d_real``/``d_fake`` are raw
    discriminator outputs (logits for BCE losses, critic values for Wasserstein losses).

    * ``discriminator``: D itself (a gradient penalty evaluates it at new points); never None.
    * ``real``, ``fake``: the step's real batch and G's samples (with grad in G's step,
      detached in D's); never None.
    * ``d_real``: D(real) in D's step; **None in G's step** (the trainer does not run D on the
      real batch for G's update; a loss that needs it, like the relativistic one, calls
      ``discriminator(real)`` itself).
    * ``d_fake``: D(fake) in both steps; never None.
    """

    discriminator: torch.nn.Module
    real: torch.Tensor
    fake: torch.Tensor
    d_real: torch.Tensor | None
    d_fake: torch.Tensor


class GanLoss(Protocol):
    """An adversarial objective. Each method returns the scalar to minimise and a dict of
    extra scalars to log (tensors; the trainer syncs them only at logging steps)."""

    def discriminator_loss(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def generator_loss(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class Regularizer(Protocol):
    """A term added to a loss (``[[regularizers]]``): it has ``generator_term``,
    ``discriminator_term`` or both (one with neither is refused at build). Each returns the
    term to add, already weighted, and extra scalars to log; ``x.d_real`` is None in the
    generator term (see :class:`LossInputs`)."""

    def generator_term(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def discriminator_term(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class DatasetFactory(Protocol):
    """What ``register_datasets`` registers: ``factory(params) -> Dataset`` (params: the
    validated ``[data.params]`` model)."""

    def __call__(self, params: Any) -> Dataset: ...


class ArchitectureFactory(Protocol):
    """What ``register_architectures`` registers: ``factory(params, spec) -> nn.Module``,
    a generator mapping (n, spec.z_dim) noise to (n, *spec.data_shape) samples, or a
    discriminator mapping samples to (n,) or (n, 1) scores."""

    def __call__(self, params: Any, spec: ModelSpec) -> torch.nn.Module: ...


class Metric(Protocol):
    """A metric (``[[evaluate.metrics]]``): ``compute(ctx)`` returns ``{key: value}``, logged
    as ``eval/<key>``; ``ctx`` is an :class:`EvalContext` (a run's, ``gan-pipe score``'s or
    :func:`gan_pipe.testing.metric_context`'s)."""

    def compute(self, ctx: EvalContext) -> dict[str, float]: ...


class Report(Protocol):
    """A report (``[[report]]``): ``run(ctx)`` logs figures or files through
    ``ctx.tracker``; ``ctx`` is a :class:`ReportContext`."""

    def run(self, ctx: ReportContext) -> None: ...


class EvalTracker(Protocol):
    """What a metric or report may log beside its values: a run's
    :class:`~gan_pipe.tracking.Tracker`; in ``gan-pipe score`` and
    :func:`gan_pipe.testing.metric_context` a :class:`~gan_pipe.testing.MemoryTracker` that
    keeps everything in memory. Paths are artifact paths (``f"{ctx.eval_dir}/x.json"``)."""

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def log_image(self, image: Any, key: str, step: int) -> None: ...


class EvalContext(Protocol):
    """What a metric's ``compute(ctx)`` may use. A run's :class:`RunContext` is one; so are
    the context of ``gan-pipe score`` and :func:`gan_pipe.testing.metric_context`.

    * ``dataset``: the run's data. Never None for a metric (metrics run after the data
      stage). In ``gan-pipe score`` its ``val``/``test`` are the ``--real`` rows, ``sample``
      is None, and ``log_density``/``modes`` come from ``--dataset`` (None without it).
    * ``generate(n)``: n generated samples in data space on ``device``, no grad; may return
      fewer rows than asked for where there are no more (``gan-pipe score``: the fake file's
      rows). Within one evaluation, calls for at most as many rows return the same samples.
    * ``device``: where to compute (``torch.device``).
    * ``step``: the training step being evaluated (0 in ``gan-pipe score``).
    * ``eval_dir``: the artifact folder of this evaluation (``eval/step-0001500``).
    * ``state``: a dict kept for the whole run (``gan-pipe score``: one call), for what does
      not depend on the generator (``fid`` keeps its classifier there).
    * ``tracker``: where to log files (:class:`EvalTracker`).
    """

    dataset: Dataset | None
    device: torch.device
    step: int
    eval_dir: str
    state: dict[str, Any]
    tracker: EvalTracker

    def generate(self, n: int) -> torch.Tensor: ...


class ReportContext(EvalContext, Protocol):
    """What a report's ``run(ctx)`` may use: :class:`EvalContext` plus the trained networks
    and what the run logged. ``generator``, ``noise`` and ``discriminator`` are None before
    the build stage (never for a report); ``discriminator`` is None where a report is tested
    without one (:func:`gan_pipe.testing.metric_context`). ``history`` holds the training and
    periodic-evaluation curves (``{"train/d_loss": [(step, value), ...]}``, empty without
    training); ``results`` the final evaluation's values without the ``eval/`` prefix."""

    generator: torch.nn.Module | None
    discriminator: torch.nn.Module | None
    noise: Callable[..., torch.Tensor] | None
    history: dict[str, list[tuple[int, float]]]
    results: dict[str, float]


class Callback(Protocol):
    """A training callback: a recipe's ``[[callbacks]]`` entry, or one of gan-pipe's own
    duties (sample frames, periodic evaluation, checkpoints, the progress bar).

    Define only what you need: gan-pipe calls each method a callback has and skips the rest
    (a callback with none of them is refused when the run builds it). Events, in the order
    a run fires them:

    * ``setup(ctx)``: once the build stage has built the networks, in every process that
      uses the callback (a run, ``gan-pipe resume``, ``gan-pipe evaluate``), before any
      state is loaded. Allocate state shaped like the networks here.
    * ``on_train_start(ctx)``: before the first step this process trains; ``ctx.step`` is 0,
      or the checkpoint's step on resume (state is loaded by then).
    * ``on_step(ctx, step)``: after every generator step (``step`` counts from 1), after the
      ``gan_pipe_on_train_step`` hook, before the step is logged, drawn, evaluated or
      checkpointed. The hot loop: no host sync, no MLflow call per value.
    * ``on_log(ctx, step, metrics)``: at logging steps, with the ``train/`` values just read
      back (``{"train/d_loss": 0.69, ...}``); a step with a NaN rolls back or stops first.
    * ``before_evaluation(ctx, step)`` and ``after_evaluation(ctx, step, results)``: around
      every evaluation (periodic, final, ``gan-pipe evaluate``), inside its isolated RNG;
      ``results`` are the metric values without the ``eval/`` prefix.
    * ``on_checkpoint(ctx, step)``: just before a checkpoint's state is gathered.
    * ``on_train_end(ctx)``: once training finished, after its last checkpoint, before the
      final evaluation (not after an interrupt or a divergence; what it changes is not
      checkpointed).
    * ``teardown(ctx)``: once this process's training stops, finished or not.

    State: ``state_dict()`` returns tensors and plain values (dicts, lists, numbers,
    strings: checkpoints are read with ``torch.load(weights_only=True)``), stored in every
    checkpoint under the callback's recipe path (``callbacks.0``); ``load_state_dict(state)``
    gets it back on resume, on a rollback and in ``gan-pipe evaluate``, after ``setup``.

    ``generator()`` may return a network (or None, e.g. before averaging started) that
    evaluation, sample frames, reports and the logged model use instead of the trained
    generator (an EMA of its weights); the first callback that returns one wins.
    """

    def setup(self, ctx: RunContext) -> None: ...

    def on_train_start(self, ctx: RunContext) -> None: ...

    def on_step(self, ctx: RunContext, step: int) -> None: ...

    def on_log(self, ctx: RunContext, step: int, metrics: dict[str, float]) -> None: ...

    def before_evaluation(self, ctx: RunContext, step: int) -> None: ...

    def after_evaluation(self, ctx: RunContext, step: int, results: dict[str, float]) -> None: ...

    def on_checkpoint(self, ctx: RunContext, step: int) -> None: ...

    def on_train_end(self, ctx: RunContext) -> None: ...

    def teardown(self, ctx: RunContext) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def generator(self) -> torch.nn.Module | None: ...


class StageHooks(Protocol):
    """The plugin hooks a run calls, typed: ``ctx.hooks``. gan-pipe's
    :class:`~gan_pipe.host.PluginHost` is one; a test may pass a stub.

    ``data``, ``build`` and ``train`` return the first non-None result of their hook (an error
    when no plugin implements the stage); ``evaluate`` merges every ``gan_pipe_evaluate``
    result (a key two of them return is an error); the others call every implementation.
    ``has_step_listeners()`` says whether any plugin implements ``gan_pipe_on_train_step``
    (the trainer skips the call per step when none does)."""

    def data(self, ctx: RunContext) -> Any: ...

    def build(self, ctx: RunContext) -> Any: ...

    def train(self, ctx: RunContext) -> Any: ...

    def evaluate(self, ctx: RunContext) -> dict[str, float]: ...

    def report(self, ctx: RunContext) -> None: ...

    def on_train_step(self, ctx: RunContext, step: int) -> None: ...

    def on_train_end(self, ctx: RunContext) -> None: ...

    def on_stage_error(self, ctx: RunContext, stage: str, error: BaseException) -> None: ...

    def has_step_listeners(self) -> bool: ...


def _no_callbacks() -> CallbackList:
    from .callback_list import CallbackList  # when a context is made: importing stays bare

    return CallbackList()


@dataclass
class RunContext:
    """Everything one run knows; handed to every stage hook, metric and report.

    ``hooks`` makes the typed calls into the plugin hooks (:class:`StageHooks`); the
    components the recipe names are resolved already, in ``components`` and ``params``.
    """

    recipe: Recipe
    hooks: StageHooks
    tracker: Tracker
    device: torch.device
    components: dict[str, Component] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    dataset: Dataset | None = None
    generator: torch.nn.Module | None = None
    discriminator: torch.nn.Module | None = None
    loss: GanLoss | None = None
    regularizers: list[Any] = field(default_factory=list)
    #: The recipe's ``[[callbacks]]``, built and set up by the build stage.
    callbacks: CallbackList = field(default_factory=_no_callbacks)
    noise: Callable[[int], torch.Tensor] | None = None
    step: int = 0
    #: ``{"train/d_loss": [(step, value), ...]}``: what was logged during training.
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    results: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    #: Where metrics log their artifacts during the current evaluation, e.g.
    #: ``f"{ctx.eval_dir}/parzen_sigma_search.json"`` (``eval/step-0001500``; see
    #: :mod:`gan_pipe.evaluation`).
    eval_dir: str = "eval"

    @property
    def plugins(self) -> Any:
        """Deprecated since 1.0 (``DeprecationWarning``), kept for one release: ``ctx.hooks``
        for the typed hook calls; the registry is ``gan_pipe.host.PluginHost.registry``, and a
        stage builds what the recipe names from ``ctx.components`` and ``ctx.params``. In a
        run this is still the plugin host (``ctx.plugins.registry`` works)."""
        warnings.warn(
            "RunContext.plugins is deprecated: use ctx.hooks for the typed hook calls",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.hooks

    def generate(self, n: int, batch_size: int = 1000) -> torch.Tensor:
        """``n`` generator samples in data space (eval mode, no grad), on ``self.device``.

        Within one evaluation (same ``step``), metrics share the samples: the first call draws
        them, later calls for at most as many rows reuse them (Parzen and FID score the same
        10,000 samples instead of running the generator twice).
        """
        from .evaluation import generated

        assert self.generator is not None and self.noise is not None
        return generated(self, n, batch_size)
