"""The plugin contract.

Two families of hooks:

* ``register_*(register)``: called once when plugins load. A plugin calls
  ``register(name, factory, params=Model)`` once per component it provides. Names are what
  recipes refer to; ``params`` is the pydantic model the recipe's ``params`` table is
  validated against.
* Stage hooks ``gan_pipe_<stage>(ctx)``: the runner calls them in the order
  data -> build -> train -> evaluate -> report. ``data``, ``build`` and ``train`` are
  ``firstresult`` (one implementation does the work; a plugin can take over a stage by
  returning non-None first, or wrap it with ``wrapper=True``). ``evaluate`` and ``report``
  collect every plugin's contribution.
* Event hooks ``gan_pipe_on_*``: the training loop announces steps and the end of training so
  plugins can join every run without owning the loop (extra logging, profiling). Something
  a recipe turns on, with params and checkpointed state (a generator EMA), is a callback
  instead: ``register_callbacks``.

pluggy passes only the arguments an implementation names, so new arguments can be added to a
hook without breaking any plugin. Arguments are never removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from . import PROJECT

if TYPE_CHECKING:
    from .context import RunContext
    from .registry import Register

hookspec = pluggy.HookspecMarker(PROJECT)


# ---------------------------------------------------------------- components
@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets: ``register(name, factory, params=Model)``.

    ``factory(params)`` returns a :class:`gan_pipe.context.Dataset` (tensors on the CPU;
    the trainer moves them to the device).
    """


@hookspec
def register_architectures(register: Register) -> None:
    """Register networks: ``register(name, factory, params=Model, role="generator")``.

    ``role`` is ``"generator"`` or ``"discriminator"``; the same name may be used for both
    roles (``dcgan`` provides both). ``factory(params, spec)`` returns a ``torch.nn.Module``;
    ``spec`` is a :class:`gan_pipe.context.ModelSpec` (data shape, noise size).
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register adversarial losses: ``factory(params)`` returns a
    :class:`gan_pipe.context.GanLoss`."""


@hookspec
def register_regularizers(register: Register) -> None:
    """Register loss terms added to an adversarial loss: ``factory(params)`` returns an object
    with ``generator_term(x)`` and/or ``discriminator_term(x)``, each taking
    :class:`gan_pipe.context.LossInputs` and returning ``(scalar, extras)`` like a loss does.
    Feature matching is one: a generator-side term on an intermediate discriminator layer."""


@hookspec
def register_callbacks(register: Register) -> None:
    """Register training callbacks: ``factory(params)`` returns an object with any of the
    events of :class:`gan_pipe.context.Callback` (``on_step(ctx, step)``, ...), optionally
    ``state_dict()``/``load_state_dict(state)`` (kept in every checkpoint) and
    ``generator()`` (the network evaluation and reports use, e.g. an EMA). Recipes list
    them under ``[[callbacks]]``; unlike the event hooks below, a callback runs only in the
    runs whose recipe names it, with its own params."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register evaluation metrics: ``factory(params)`` returns an object with
    ``compute(ctx) -> dict[str, float]`` (keys without the ``eval/`` prefix)."""


@hookspec
def register_reports(register: Register) -> None:
    """Register reports: ``factory(params)`` returns an object with ``run(ctx) -> None`` that
    writes plots or tables through ``ctx.tracker``."""


# ---------------------------------------------------------------- stages
@hookspec(firstresult=True)
def gan_pipe_data(ctx: RunContext) -> Any:
    """Load the dataset into ``ctx.dataset``; return it."""


@hookspec(firstresult=True)
def gan_pipe_build(ctx: RunContext) -> Any:
    """Build ``ctx.generator``, ``ctx.discriminator`` and ``ctx.loss``; return the generator."""


@hookspec(firstresult=True)
def gan_pipe_train(ctx: RunContext) -> Any:
    """Train the networks; return the number of generator steps done."""


@hookspec
def gan_pipe_evaluate(ctx: RunContext) -> dict[str, float]:
    """Return metric values (keys without the ``eval/`` prefix); all results are merged."""


@hookspec
def gan_pipe_report(ctx: RunContext) -> None:
    """Write reports (plots, tables) through ``ctx.tracker``."""


# ---------------------------------------------------------------- events
@hookspec
def gan_pipe_on_train_step(ctx: RunContext, step: int) -> None:
    """Called after every generator step (``step`` counts from 1). Keep it cheap: no host sync."""


@hookspec
def gan_pipe_on_train_end(ctx: RunContext) -> None:
    """Called once after training, before evaluation."""


@hookspec
def gan_pipe_on_stage_error(ctx: RunContext, stage: str, error: BaseException) -> None:
    """Called when a stage raises; the error is re-raised afterwards, never swallowed."""
