"""Typed objects that cross the plugin boundary.

torch is imported lazily by the code that builds these objects; this module only names the
types, so importing it (and listing plugins) stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from .dataloading import Rows
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
