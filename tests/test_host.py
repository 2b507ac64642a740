"""The plugin host: typed stage calls, and the deprecated names code written before 1.0 uses
(``gan_pipe.manager``, ``gan_pipe.facade.Plugins``, ``RunContext.plugins``)."""

from __future__ import annotations

import inspect
import types

import pytest

from gan_pipe import hookimpl
from gan_pipe.context import RunContext, StageHooks
from gan_pipe.errors import PluginError, UserError
from gan_pipe.host import PluginHost


def _plugin(name: str, **hooks):
    mod = types.ModuleType(name)
    for k, v in hooks.items():
        setattr(mod, k, hookimpl(v))
    return mod


def _ctx(hooks) -> RunContext:
    return RunContext(recipe=None, hooks=hooks, tracker=None, device="cpu")


def test_host_makes_every_call_a_context_names_with_the_same_signature():
    protocol = [n for n in vars(StageHooks) if not n.startswith("_")]
    assert {"data", "build", "train", "evaluate", "report", "on_train_step"} <= set(protocol)
    for name in protocol:
        want = inspect.signature(getattr(StageHooks, name))
        assert inspect.signature(getattr(PluginHost, name)) == want, name


def test_context_carries_hooks_not_the_plugin_host():
    fields = RunContext.__dataclass_fields__
    assert "hooks" in fields and "plugins" not in fields and "registry" not in fields


def test_typed_calls_reach_the_hooks():
    seen = []
    extra = _plugin(
        "extra",
        gan_pipe_evaluate=lambda ctx: {"extra_score": 2.0},
        gan_pipe_on_train_step=lambda ctx, step: seen.append(step),
    )
    host = PluginHost.load(entry_points=False, extra=[(extra, "extra")])
    ctx = _ctx(host)
    assert host.has_step_listeners()
    host.on_train_step(ctx, 3)
    assert seen == [3]
    ctx.recipe = types.SimpleNamespace(evaluate=types.SimpleNamespace(metrics=[]))
    assert host.evaluate(ctx) == {"extra_score": 2.0}


def test_a_stage_no_plugin_implements_is_an_error():
    host = PluginHost()  # nothing loaded, not even the built-in stages
    assert not host.has_step_listeners()
    with pytest.raises(PluginError, match="no plugin implements the train stage"):
        host.train(_ctx(host))


def test_two_evaluate_results_with_one_key_are_an_error():
    a = _plugin("a", gan_pipe_evaluate=lambda ctx: {"k": 1.0})
    b = _plugin("b", gan_pipe_evaluate=lambda ctx: {"k": 2.0})
    host = PluginHost()
    host.add(a, "a", "a", "1", builtin=False)
    host.add(b, "b", "b", "1", builtin=False)
    both = "gan_pipe_evaluate #1 and gan_pipe_evaluate #2 both report 'k'"
    with pytest.raises(UserError, match=both):
        host.evaluate(_ctx(host))


# ---------------------------------------------------------------- deprecated names
def test_manager_names_warn_and_are_the_host():
    with pytest.deprecated_call(match="gan_pipe.host.PluginHost.load"):
        from gan_pipe.manager import load_plugins
    with pytest.deprecated_call(match="gan_pipe.host.PluginHost"):
        from gan_pipe.manager import PluginSet
    with pytest.deprecated_call():
        from gan_pipe.manager import DEFAULT_PLUGINS, failure_lines
    import gan_pipe.host

    ps = load_plugins(entry_points=False)
    assert isinstance(ps, PluginSet) and PluginSet is PluginHost
    assert set(ps.infos) == set(DEFAULT_PLUGINS) == set(gan_pipe.host.DEFAULT_PLUGINS)
    assert failure_lines(ps) == [] and "hinge" in ps.registry.names("loss")
    with pytest.raises(ImportError):
        from gan_pipe.manager import no_such_name  # noqa: F401


def test_facade_plugins_warns_and_shares_the_hosts_state():
    host = PluginHost.load(entry_points=False)
    with pytest.deprecated_call(match="gan_pipe.host.PluginHost"):
        from gan_pipe.facade import Plugins

        plugins = Plugins(host)
    assert isinstance(plugins, PluginHost) and plugins.set is plugins
    assert plugins.registry is host.registry and plugins.pm is host.pm
    late = _plugin("late", register_losses=lambda register: register("late-loss", object))
    host.add(late, "late", "late", "1", builtin=False)
    assert plugins.registry.has("loss", "late-loss") and "late" in plugins.infos


def test_ctx_plugins_warns_and_still_reaches_the_registry():
    """A plugin written before 1.0 that reads ``ctx.plugins.registry`` in a hook keeps
    working (with a DeprecationWarning)."""

    def gan_pipe_evaluate(ctx):
        return {"n_losses": float(len(ctx.plugins.registry.names("loss")))}

    old = _plugin("old", gan_pipe_evaluate=gan_pipe_evaluate)
    host = PluginHost.load(entry_points=False, extra=[(old, "old")])
    ctx = _ctx(host)
    ctx.recipe = types.SimpleNamespace(evaluate=types.SimpleNamespace(metrics=[]))
    with pytest.deprecated_call(match="ctx.hooks"):
        values = host.evaluate(ctx)
    assert values == {"n_losses": float(len(host.registry.names("loss")))}
    with pytest.deprecated_call():
        assert ctx.plugins is host


def test_a_context_holds_the_resolved_components_a_stage_builds():
    """What docs/plugins.md promises a stage: ``ctx.components[path]`` and ``ctx.params[path]``
    without the registry."""
    from pathlib import Path

    from gan_pipe.recipe import load_recipe
    from gan_pipe.runner import new_context

    host = PluginHost.load(entry_points=False)
    recipe = Path(__file__).parents[1] / "recipes" / "mlp-gan.toml"
    resolved = load_recipe(recipe, host.registry)
    ctx = new_context(resolved, host, tracker=None, device="cpu")
    assert ctx.hooks is host
    comp = ctx.components["loss"]
    assert comp is host.registry.get("loss", resolved.recipe.loss.name)
    assert isinstance(ctx.params["loss"], comp.params)
