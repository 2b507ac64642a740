"""``train.compile = true``: torch.compile of the generator and the discriminator.

Both nets are compiled in place (as ``nn.Module.compile`` does, mode "default"), so their
state_dict keys, checkpoints and every caller of ``ctx.generator`` are unchanged. A pass whose
input is a leaf tensor that requires grad (a gradient penalty's interpolates) runs eager:
compiled graphs do not support the double backward such a penalty takes. Donated buffers are
turned off (``torch._functorch.config.donated_buffer``) so ``retain_graph`` (simultaneous
updates) works. torch.compile is lazy: graphs are built at the first calls (train mode, then
eval mode for sample grids and metrics, each again when a guard fails). The seconds spent
compiling are counted apart from training by TorchDynamo's compile start/end callbacks and
logged as ``perf/compile_seconds`` (the total so far) at every logging step, so steady-state
step times can be read without them.
"""

from __future__ import annotations

import sys
import time
import weakref
from typing import Any

from gan_pipe.errors import UserError


def compile_unavailable() -> str | None:
    """Why torch.compile cannot run on this platform, or None when it can."""
    import torch

    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version.split()[0]} on {sys.platform}"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - any failure means inductor cannot build kernels
        return f"no C++ compiler for torch.compile's inductor backend ({type(e).__name__}: {e})"
    return None


#: The clocks running now; TorchDynamo's callbacks are registered once and feed them all.
_clocks: weakref.WeakSet[CompileClock] = weakref.WeakSet()


def _on_start(_args: Any) -> None:
    now = time.perf_counter()
    for clock in list(_clocks):
        clock._started = now


def _on_end(_args: Any) -> None:
    now = time.perf_counter()
    for clock in list(_clocks):
        if clock._started is not None:
            clock.seconds += now - clock._started
            clock._started = None


class CompileClock:
    """Seconds TorchDynamo has spent compiling (forward and lazily compiled backward graphs)
    since this clock was made. Clocks are held weakly: one that is gone costs nothing."""

    def __init__(self) -> None:
        from torch._dynamo.callback import callback_handler

        self.seconds = 0.0
        self._started: float | None = None
        # (again after torch._dynamo.reset(), which clears every callback)
        if _on_start not in callback_handler.start_callbacks:
            callback_handler.register_start_callback(_on_start)
        if _on_end not in callback_handler.end_callbacks:
            callback_handler.register_end_callback(_on_end)
        _clocks.add(self)


def compile_nets(*nets: Any) -> CompileClock:
    """Compile ``nets`` in place; the clock of their compile time. A platform where
    torch.compile cannot run is a UserError that says why."""
    reason = compile_unavailable()
    if reason is not None:
        raise UserError(f"train.compile = true: {reason}; set train.compile = false")
    import torch._functorch.config

    # donated buffers forbid retain_graph=True, which train.updates = "simultaneous" uses
    torch._functorch.config.donated_buffer = False
    clock = CompileClock()
    for net in nets:
        compile_in_place(net)
    return clock


def compile_in_place(net: Any) -> None:
    """What ``net.compile()`` does, through a function of this module: TorchDynamo does not
    trace a frame of torch's own code (``nn.Sequential.forward``, ``Module._call_impl``) as
    the compiled entry point, so ``nn.Sequential(...).compile()`` would silently run eager."""
    import torch

    call = net._call_impl
    compiled = torch.compile(call_of(call))

    def net_call(*args: Any, **kwargs: Any) -> Any:
        if any(_wants_input_grad(a) for a in args):
            return call(*args, **kwargs)
        return compiled(*args, **kwargs)

    net._compiled_call_impl = net_call


def call_of(call: Any) -> Any:
    """``call`` wrapped in a function of this module, which TorchDynamo traces."""

    def net_forward(*args: Any, **kwargs: Any) -> Any:
        return call(*args, **kwargs)

    return net_forward


def _wants_input_grad(x: Any) -> bool:
    """A leaf tensor that requires grad: the input of a gradient penalty (WGAN-GP's
    ``x_hat``), whose gradient is taken with ``create_graph``; compiled graphs do not support
    that double backward, so such passes run eager. Training passes never get one: real rows
    and D's fakes require no grad, G's fakes are not leaves."""
    return getattr(x, "requires_grad", False) and getattr(x, "is_leaf", False)
