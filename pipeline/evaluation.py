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
    """Seed torch (CPU and ``device``), numpy and Python's ``random`` with ``seed`` inside the
    block and restore every state after it, whatever happens inside."""
    import numpy as np
    import torch

    devices = [device] if device is not None and device.type == "cuda" else []
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # also seeds every CUDA device
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def step_dir(step: int) -> str:
    return f"eval/step-{int(step):07d}"


def evaluate(ctx: RunContext, eval_dir: str | None = None) -> dict[str, float]:
    """Run the evaluate stage on ``ctx`` at ``ctx.step``; returns ``{metric key: value}``.

    ``eval_dir`` is where metrics put their artifacts (default :func:`step_dir`).
    """
    previous = ctx.eval_dir
    ctx.eval_dir = eval_dir or step_dir(ctx.step)
    generator = ctx.generator
    was_training = generator.training if generator is not None else False
    try:
        with (
            ctx.tracker.deferred_artifacts(),
            isolated_rng(eval_seed(ctx.recipe.experiment.seed, ctx.step), ctx.device),
        ):
            if generator is not None:
                generator.eval()
            results: Any = ctx.plugins.evaluate(ctx)
    finally:
        ctx.eval_dir = previous
        if generator is not None:
            generator.train(was_training)
    return dict(results or {})
