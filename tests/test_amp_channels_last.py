"""The GPU path's precision and memory-order settings, exercised on the CPU.

``train.amp = "bf16"`` turns bf16 autocast on for every device, so the autocast code path
(gradient penalties' double backward included) runs in CI, which has no GPU; ``"auto"``
keeps float32 on the CPU. ``train.channels_last = true`` moves the convolution weights and
the real batches to NHWC order; it changes the memory layout, not the arithmetic, so the run
ends where the default run does (up to float rounding)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from gan_pipe import hookimpl

from .test_cli import TINY

# test_cli's tiny DCGAN on 16x16 digits, without D's dropout (whose masks follow the
# memory layout), and no checkpoint by the clock
CONV = TINY
SETTINGS = (
    "model.discriminator.params.dropout=0.0",
    "train.steps=4",
    "train.log_every=2",
    "train.checkpoint_minutes=0",
)


class Probe:
    """Records, from step 2 on, what a convolution of D sees and returns, and keeps the
    generator's final weights."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.final: dict[str, torch.Tensor] = {}
        self._hooked = False

    @hookimpl
    def gan_pipe_on_train_step(self, ctx: Any, step: int) -> None:
        if self._hooked:
            return
        self._hooked = True
        # the second convolution: the first one's single input channel is trivially NHWC
        convs = [m for m in ctx.discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
        conv = convs[1]

        def record(module: Any, inputs: Any, output: torch.Tensor) -> None:
            x = inputs[0]
            self.seen.append(
                {
                    "input_nhwc": x.is_contiguous(memory_format=torch.channels_last),
                    "weight_nhwc": module.weight.is_contiguous(memory_format=torch.channels_last),
                    "weight_dtype": module.weight.dtype,
                    "output_dtype": output.dtype,
                }
            )

        conv.register_forward_hook(record)

    @hookimpl
    def gan_pipe_on_train_end(self, ctx: Any) -> None:
        self.final = {k: v.detach().float().clone() for k, v in ctx.generator.state_dict().items()}


def train(tiny_run, *settings: str, recipe: str = CONV) -> tuple[Any, Probe]:
    probe = Probe()
    run = tiny_run(probe, set=[*SETTINGS, *settings], recipe=recipe)
    assert run.status == "FINISHED"
    assert probe.seen, "the probe saw no forward pass of D"
    return run, probe


def test_bf16_autocasts_on_the_cpu_and_stays_near_float32(tiny_run):
    run32, probe32 = train(tiny_run)  # amp = "auto": float32 on the CPU
    run16, probe16 = train(tiny_run, "train.amp=bf16")
    assert run32.params["train.amp_enabled"] == "False"
    assert run16.params["train.amp_enabled"] == "True"
    assert {s["output_dtype"] for s in probe32.seen} == {torch.float32}
    assert {s["output_dtype"] for s in probe16.seen} == {torch.bfloat16}
    # autocast computes in bf16; the weights and optimiser state stay float32
    assert {s["weight_dtype"] for s in probe16.seen} == {torch.float32}
    for key in ("train/d_loss", "train/g_loss"):
        h32, h16 = run32.history(key), run16.history(key)
        assert [s for s, _ in h16] == [s for s, _ in h32] == [2, 4]
        for (_, a), (_, b) in zip(h32, h16, strict=True):
            # bf16 keeps 8 bits of mantissa: the same losses to about 1%, not bit for bit
            assert math.isfinite(b) and b == pytest.approx(a, rel=0.03), (key, a, b)


def test_bf16_autocast_runs_the_gradient_penalty(tiny_run):
    run, _ = train(
        tiny_run,
        "train.amp=bf16",
        "loss.name=wgan-gp",
        "loss.params={}",  # test_cli's real_label is the BCE loss's
        "train.n_critic=2",
        "model.discriminator.params.norm=layer",  # WGAN-GP refuses BatchNorm critics
    )
    gp = run.history("train/gp")
    assert [s for s, _ in gp] == [2, 4]
    assert all(math.isfinite(v) and v >= 0 for _, v in gp), gp


def test_channels_last_changes_the_layout_not_the_result(tiny_run):
    # One intra-op thread: with two, the CPU's channels-last kernels split their sums
    # differently from the NCHW ones, and the runs drift apart by about 1% of a step's update
    # after one step (each layer alone agrees with float64 to 1e-6 in both layouts).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # plain SGD: Adam's first steps move every weight by about lr whatever the
        # gradient's size, so a rounding-level difference would show as lr
        sgd = ("train.optimizer=sgd", "train.lr=0.01")
        _, default = train(tiny_run, *sgd)
        run, nhwc = train(tiny_run, *sgd, "train.channels_last=true")
    finally:
        torch.set_num_threads(threads)
    assert run.params["train.channels_last"] == "True"
    assert not any(s["weight_nhwc"] or s["input_nhwc"] for s in default.seen)
    assert all(s["weight_nhwc"] for s in nhwc.seen)
    assert all(s["input_nhwc"] for s in nhwc.seen)  # from real batches and G's images alike
    assert nhwc.final.keys() == default.final.keys()
    for key, want in default.final.items():
        torch.testing.assert_close(nhwc.final[key], want, rtol=1e-4, atol=1e-5, msg=key)
