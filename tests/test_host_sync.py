"""No host synchronisation in the step loop outside logging steps (issue 11's GPU path).

On a GPU, reading a tensor's value on the host (``.item()``, ``.tolist()``, ``if t:``,
``float(t)``, ``.cpu()``, ``.numpy()``, ``.nonzero()``) waits for every queued kernel: one such
read per step serialises the host and the device. The trainer keeps its running losses, its
finiteness checks and its callbacks' state as device tensors and reads them only at logging
steps. That can be checked on the CPU: every host read made by gan-pipe's own code (the core
and the built-in plugins; PyTorch's internals are not gan-pipe's to change) is recorded with
the step it happened in, and steps that neither log nor sample must have none.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

import gan_pipe
import gan_pipe.plugins
from gan_pipe import hookimpl
from gan_pipe.pytest_plugin import TINY_RECIPE

OURS = tuple(str(Path(m.__file__).resolve().parent) for m in (gan_pipe, gan_pipe.plugins))
READS = ("item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__float__", "__int__")
LOG_EVERY = 5
pytestmark = pytest.mark.slow  # three short runs, about 30 s each on 2 cores


class StepPhase:
    """Which step the loop is in: the ``on_train_step`` hook fires right after a step's
    updates, the last callback's ``on_step`` after every callback of the step."""

    def __init__(self) -> None:
        self.phase: tuple[str, int] = ("setup", 0)
        self.reads: Counter[tuple[str, int, str, str]] = Counter()

    @hookimpl
    def gan_pipe_on_train_step(self, ctx: Any, step: int) -> None:
        self.phase = ("callbacks of step", step)

    @hookimpl
    def register_callbacks(self, register: Any) -> None:
        tracker = self

        class Marker:
            def on_step(self, ctx: Any, step: int) -> None:
                tracker.phase = ("after step", step)

        register("phase-marker", lambda params: Marker())


@pytest.fixture
def record_reads(monkeypatch):
    """Patch the host reads of ``torch.Tensor`` to count those called from gan-pipe's code."""
    phase = StepPhase()

    def wrap(name: str, original: Any) -> Any:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(OURS):
                where = f"{Path(caller.co_filename).name}:{caller.co_name}"
                phase.reads[(*phase.phase, name, where)] += 1
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    return phase


def quiet_steps(phase: StepPhase, steps: int) -> dict[tuple[str, int, str, str], int]:
    """Reads in steps that neither log nor sample: the callbacks of step k, and what runs
    between step k's callbacks and step k+1's updates (the end of step k, the next step)."""
    return {
        key: n
        for key, n in phase.reads.items()
        if key[0] in ("callbacks of step", "after step")
        and key[1] % LOG_EVERY != 0
        and key[1] < steps
    }


CALLBACKS = """
[[callbacks]]
name = "ema"
[callbacks.params]
decay = 0.9

[[callbacks]]
name = "phase-marker"
"""

CASES = {
    "non-saturating + ema + progress": [],
    "wgan-gp, 3 critic steps": ["loss.name=wgan-gp", "train.n_critic=3"],
    "simultaneous updates": ["train.updates=simultaneous"],
}


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_quiet_steps_never_read_a_tensor_on_the_host(record_reads, tiny_run, overrides):
    steps = 23
    settings = [
        f"train.steps={steps}",
        f"train.log_every={LOG_EVERY}",
        f"train.sample_every={LOG_EVERY}",
        "train.progress=true",
        "train.checkpoint_minutes=0",
        *overrides,
    ]
    run = tiny_run(record_reads, set=settings, recipe=TINY_RECIPE + CALLBACKS)
    assert run.status == "FINISHED"
    phase = record_reads
    # the recorder sees reads where they are due: logging steps read the losses
    logged = {k for k in phase.reads if k[0] == "after step" and k[1] % LOG_EVERY == 0}
    assert logged, f"no host read recorded at a logging step: {dict(phase.reads)}"
    assert [s for s, _ in run.history("train/d_loss")] == [5, 10, 15, 20, 23]
    assert quiet_steps(phase, steps) == {}
