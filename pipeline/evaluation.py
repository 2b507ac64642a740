"""Running the evaluate stage without disturbing the run it measures.

Every evaluation (periodic during training, the final one, ``gan-pipe evaluate``) goes
through :func:`evaluate`:

* **Its own random numbers.** The generator's noise and any metric randomness come from RNG
  states seeded by (experiment seed, step); the training RNG states are restored afterwards.
  So turning ``train.eval_every`` on or off does not change training, and re-evaluating a
  run's final generator with the same settings reproduces its logged values.
* **Its own artifact folder.** Metrics write their files under ``ctx.eval_dir``:
  ``eval/step-0001500`` for the evaluation at step 1,500, ``eval/reevaluate-<time>`` for a
  re-evaluation, so later evaluations never overwrite earlier ones.
* **All or nothing.** Artifacts are written only when every metric succeeded; a failing
  metric leaves no file behind (values are logged by the caller, also only on success).
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .context import RunContext

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
