"""Running the evaluate stage without disturbing the run it measures.

Every evaluation of a run (periodic during training, the final one, ``gan-pipe evaluate``)
goes through :func:`evaluate_and_log` (isolate, compute, prefix ``eval/``, log, record):

* **Its own random numbers.** The generator's noise and any metric randomness come from RNG
  states seeded by (experiment seed, step); the training RNG states are restored afterwards.
  So turning ``train.eval_every`` on or off does not change training, and re-evaluating a
  run's final generator with the same settings reproduces its logged values.
* **Its own artifact folder.** Metrics write their files under ``ctx.eval_dir``:
  ``eval/step-0001500`` for the evaluation at step 1,500, ``eval/reevaluate-<time>`` for a
  re-evaluation, so later evaluations never overwrite earlier ones.
* **All or nothing.** Artifacts are written only when every metric succeeded; a failing
  metric leaves no file behind (values are logged only on success too).

``gan-pipe score`` and :func:`gan_pipe.testing.metric_context` compute metrics on a
:class:`SampleContext` (samples from tensors, a :class:`MemoryTracker`) with the same
:func:`add_values` merge; metric keys are never prefixed there.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .context import Dataset, RunContext

#: Mixed into the seed so evaluation noise differs from the training stream of the same seed.
_EVAL_SALT = 0x5EED_E7A1


def eval_seed(seed: int, step: int) -> int:
    """The seed of the evaluation at ``step`` of a run seeded with ``seed``."""
    return (int(seed) * 1_000_003 + int(step) * 7_919 + _EVAL_SALT) % 2**63


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's CPU generator and every generator of ``device``'s type (all CUDA or MPS
    devices), numpy's and Python's ``random`` with ``seed`` inside the block, and restore
    every one of those states after it, whatever happens inside. Generators of other device
    types are neither seeded nor touched (``torch.manual_seed`` would reseed them all)."""
    import numpy as np
    import torch

    kind = device.type if device is not None else "cpu"
    backend = getattr(torch, kind, None) if kind != "cpu" else None
    devices = list(range(backend.device_count())) if backend is not None else []
    fork = (
        torch.random.fork_rng(devices=devices, device_type=kind)
        if devices
        else torch.random.fork_rng(devices=[])
    )
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with fork:
            torch.random.default_generator.manual_seed(seed)
            if devices:
                seed_all = getattr(backend, "manual_seed_all", None) or backend.manual_seed
                seed_all(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module | None) -> Iterator[torch.nn.Module | None]:
    """Eval mode for the block; afterwards every submodule gets its own mode back
    (``module.train(was)`` would also flip submodules someone froze on purpose)."""
    modes = [(m, m.training) for m in module.modules()] if module is not None else []
    if module is not None:
        module.eval()
    try:
        yield module
    finally:
        for m, was in modes:
            m.training = was


#: Keys that are sizes and settings reported beside the values (``div_bins``, ``kde_n``,
#: ``parzen_n_samples``...): kept in MLflow, left out of the run summary and metric plots.
_SETTING = re.compile(r"(^n_|_n_|_n$|(^|_)div_|bandwidth|cached|nonfinite|_std$)")


def is_setting(key: str, value: float = 0.0) -> bool:
    """Whether metric ``key`` is a size or setting rather than a result; a flag such as
    ``parzen_sigma_at_edge`` counts as one only while it is down (0)."""
    if key.endswith("_at_edge"):
        return value == 0
    return bool(_SETTING.search(key))


def add_values(
    into: dict[str, float], owners: dict[str, str], values: dict[str, float], who: str, fix: str
) -> None:
    """Add the metric ``values`` reported by ``who`` to ``into``; a key another reporter gave
    already is an error naming both (and ``fix``), never a silent overwrite."""
    from .errors import UserError

    clash = sorted(k for k in values if k in into)
    if clash:
        shown = ", ".join(repr(k) for k in clash)
        raise UserError(f"{owners[clash[0]]} and {who} both report {shown}; {fix}")
    into.update(values)
    owners.update(dict.fromkeys(values, who))


def step_dir(step: int) -> str:
    return f"eval/step-{int(step):07d}"


def evaluate(ctx: RunContext, eval_dir: str | None = None) -> dict[str, float]:
    """Run the evaluate stage on ``ctx`` at ``ctx.step``; returns ``{metric key: value}``.

    ``eval_dir`` is where metrics put their artifacts (default :func:`step_dir`).
    """
    previous = ctx.eval_dir
    ctx.eval_dir = eval_dir or step_dir(ctx.step)
    try:
        with (
            ctx.tracker.deferred_artifacts(),
            isolated_rng(eval_seed(ctx.recipe.experiment.seed, ctx.step), ctx.device),
            ctx.callbacks.evaluating(ctx) as done,  # the generator a callback provides
            eval_mode(ctx.generator),
        ):
            results: Any = ctx.plugins.evaluate(ctx)
            done(dict(results or {}))
    finally:
        ctx.eval_dir = previous
    return dict(results or {})


def evaluate_and_log(
    ctx: RunContext, eval_dir: str | None = None, *, final: bool
) -> dict[str, float]:
    """The one evaluation path of a run: :func:`evaluate` at ``ctx.step``, the values logged
    as ``eval/<key>`` at that step, and recorded: the final (and a re-) evaluation's in
    ``ctx.results``, a periodic one's in ``ctx.history`` (the curves reports draw)."""
    results = evaluate(ctx, eval_dir)
    ctx.tracker.log_metrics({f"eval/{k}": v for k, v in results.items()}, ctx.step)
    if final:
        ctx.results.update(results)
    else:
        for k, v in results.items():
            ctx.history.setdefault(f"eval/{k}", []).append((ctx.step, v))
    return results


def generated(ctx: Any, n: int, batch_size: int = 1000) -> torch.Tensor:
    """``n`` samples of ``ctx.generator`` on ``ctx.noise`` (float32, in batches, eval mode, no
    grad). Within one ``ctx.step`` the first call draws them and later calls for at most as
    many rows reuse them (kept in ``ctx.state``): metrics of one evaluation share samples."""
    import torch

    cached = ctx.state.get("_samples")
    if cached is not None and cached[0] == ctx.step and n <= len(cached[1]):
        return cached[1][:n]
    out = []
    with eval_mode(ctx.generator), torch.no_grad():
        for start in range(0, n, batch_size):
            out.append(ctx.generator(ctx.noise(min(batch_size, n - start))).float())
    samples = torch.cat(out) if out else torch.empty(0, *ctx.dataset.shape)
    ctx.state["_samples"] = (ctx.step, samples)
    return samples


class MemoryTracker:
    """Keeps what metrics and reports log, in memory (an :class:`~gan_pipe.context.EvalTracker`
    where there is no MLflow run): ``dicts``, ``figures`` and ``texts`` by artifact path,
    ``images`` as ``(key, step, image)``, ``metrics`` by key. Other ``log_*`` calls, tags and
    flushes are accepted and dropped."""

    def __init__(self) -> None:
        self.dicts: dict[str, Any] = {}
        self.figures: dict[str, Any] = {}
        self.texts: dict[str, str] = {}
        self.images: list[tuple[str, int, Any]] = []
        self.metrics: dict[str, float] = {}

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.dicts[artifact_file] = data

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.figures[artifact_file] = figure

    def log_text(self, text: str, artifact_file: str) -> None:
        self.texts[artifact_file] = text

    def log_image(self, image: Any, key: str, step: int) -> None:
        self.images.append((key, step, image))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.update(metrics)

    def __getattr__(self, name: str) -> Any:  # artifacts, models, params: dropped
        if name.startswith("log_") or name in ("set_tags", "flush"):
            return lambda *a, **k: None
        raise AttributeError(name)


@dataclass
class SampleContext:
    """An evaluation context from tensors (:class:`~gan_pipe.context.ReportContext`): the
    samples are the first n rows of ``fake``, or drawn from ``generator`` and ``noise``
    (shared within one ``step``, like a run's). Built by ``gan-pipe score`` and by
    :func:`gan_pipe.testing.metric_context`."""

    dataset: Dataset | None
    device: Any
    fake: Any = None
    generator: Any = None
    noise: Callable[..., Any] | None = None
    discriminator: Any = None
    tracker: Any = field(default_factory=MemoryTracker)
    step: int = 0
    eval_dir: str = "eval"
    state: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    results: dict[str, float] = field(default_factory=dict)

    def generate(self, n: int, batch_size: int = 1000) -> Any:
        if self.fake is not None:
            return self.fake[:n].to(self.device)
        if self.generator is None or self.noise is None:
            raise ValueError("this context has neither fake rows nor a generator and noise")
        return generated(self, n, batch_size)
