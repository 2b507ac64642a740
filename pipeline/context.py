"""Typed objects that cross the plugin boundary.

torch is imported lazily by the code that builds these objects; this module only names the
types, so importing it (and listing plugins) stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .callback_list import CallbackList

if TYPE_CHECKING:
    import torch

    from .facade import Plugins
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
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor | None = None
    test: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    value_range: tuple[float, float] = (-1.0, 1.0)
    is_image: bool = False
    log_density: Callable[[torch.Tensor], torch.Tensor] | None = None
    sample: Callable[..., torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)

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
    """One step's tensors for a loss. ``d_real``/``d_fake`` are raw discriminator outputs
    (logits for BCE losses, critic values for Wasserstein losses)."""

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


@dataclass
class RunContext:
    """Everything one run knows; handed to every stage hook, metric and report."""

    recipe: Recipe
    plugins: Plugins
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
    callbacks: CallbackList = field(default_factory=CallbackList)
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

    def generate(self, n: int, batch_size: int = 1000) -> torch.Tensor:
        """``n`` generator samples in data space (eval mode, no grad), on ``self.device``.

        Within one evaluation (same ``step``), metrics share the samples: the first call draws
        them, later calls for at most as many rows reuse them (Parzen and FID score the same
        10,000 samples instead of running the generator twice).
        """
        import torch

        assert self.generator is not None and self.noise is not None
        cached = self.state.get("_samples")
        if cached is not None and cached[0] == self.step and n <= len(cached[1]):
            return cached[1][:n]
        was_training = self.generator.training
        self.generator.eval()
        out = []
        with torch.no_grad():
            for start in range(0, n, batch_size):
                out.append(self.generator(self.noise(min(batch_size, n - start))).float())
        self.generator.train(was_training)
        samples = torch.cat(out) if out else torch.empty(0, *self.dataset.shape)
        self.state["_samples"] = (self.step, samples)
        return samples
