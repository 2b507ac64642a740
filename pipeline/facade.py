"""The one place the core calls hooks: a small typed facade over ``pm.hook``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import PluginError
from .manager import PluginSet
from .registry import Registry

if TYPE_CHECKING:
    from .context import RunContext


class Plugins:
    """Typed calls into the plugin hooks."""

    def __init__(self, plugin_set: PluginSet):
        self.set = plugin_set
        self._hook = plugin_set.pm.hook

    @property
    def registry(self) -> Registry:
        return self.set.registry

    def _first(self, stage: str, ctx: RunContext) -> Any:
        result = getattr(self._hook, f"gan_pipe_{stage}")(ctx=ctx)
        if result is None:
            raise PluginError(
                f"no plugin implements the {stage} stage (is the built-in stages plugin disabled?)"
            )
        return result

    def data(self, ctx: RunContext) -> Any:
        return self._first("data", ctx)

    def build(self, ctx: RunContext) -> Any:
        return self._first("build", ctx)

    def train(self, ctx: RunContext) -> Any:
        return self._first("train", ctx)

    def evaluate(self, ctx: RunContext) -> dict[str, float]:
        from .evaluation import add_values

        merged: dict[str, float] = {}
        owners: dict[str, str] = {}
        fix = "a plugin that adds metrics this way must use keys of its own"
        for i, part in enumerate(self._hook.gan_pipe_evaluate(ctx=ctx)):
            add_values(merged, owners, dict(part or {}), f"gan_pipe_evaluate #{i + 1}", fix)
        return merged

    def report(self, ctx: RunContext) -> None:
        self._hook.gan_pipe_report(ctx=ctx)

    def on_train_step(self, ctx: RunContext, step: int) -> None:
        self._hook.gan_pipe_on_train_step(ctx=ctx, step=step)

    def on_train_end(self, ctx: RunContext) -> None:
        self._hook.gan_pipe_on_train_end(ctx=ctx)

    def on_stage_error(self, ctx: RunContext, stage: str, error: BaseException) -> None:
        self._hook.gan_pipe_on_stage_error(ctx=ctx, stage=stage, error=error)

    def has_step_listeners(self) -> bool:
        return bool(self._hook.gan_pipe_on_train_step.get_hookimpls())
