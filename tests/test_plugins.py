"""Plugin loading: built-ins through the public hooks, entry points, broken packages."""

from __future__ import annotations

import types
from importlib import metadata

import pytest
from pydantic import BaseModel

from gan_pipe import hookimpl
from gan_pipe.errors import PluginError, UserError
from gan_pipe.host import DEFAULT_PLUGINS, PluginHost
from gan_pipe.testing import plugins_with, registry_of


def _plugin(name, hooks):
    mod = types.ModuleType(name)
    for k, v in hooks.items():
        setattr(mod, k, hookimpl(v))
    return mod


def test_builtins_register_through_hooks():
    ps = PluginHost.load(entry_points=False)
    assert set(ps.infos) == set(DEFAULT_PLUGINS)
    reg = ps.registry
    assert reg.get("generator", "dcgan").plugin == "gan_pipe.plugins.models.dcgan"
    assert reg.get("discriminator", "dcgan").plugin == "gan_pipe.plugins.models.dcgan"
    assert {"minimax", "non-saturating"} <= set(reg.names("loss"))
    assert {"digits", "mnist", "fashion-mnist"} <= set(reg.names("dataset"))
    assert "parzen" in reg.names("metric")
    assert {"loss-curves", "sample-grid"} <= set(reg.names("report"))


def test_duplicate_name_names_both_plugins():
    dup = _plugin("dup", {"register_losses": lambda register: register("minimax", object)})
    with pytest.raises(PluginError) as info:
        PluginHost.load(entry_points=False, extra=[(dup, "my-dup-plugin")])
    msg = str(info.value)
    assert "gan_pipe.plugins.losses.bce" in msg and "my-dup-plugin" in msg


def test_architecture_needs_role():
    bad = _plugin("bad", {"register_architectures": lambda register: register("x", object)})
    with pytest.raises(PluginError, match="role"):
        PluginHost.load(entry_points=False, extra=[(bad, "bad")])


def test_params_must_be_pydantic():
    bad = _plugin("bad", {"register_losses": lambda register: register("x", object, params=dict)})
    with pytest.raises(PluginError, match="pydantic"):
        PluginHost.load(entry_points=False, extra=[(bad, "bad")])


def test_unknown_component_error_lists_close_matches():
    reg = PluginHost.load(entry_points=False).registry
    with pytest.raises(UserError, match="did you mean 'minimax'"):
        reg.get("loss", "minmax")


class _EP:
    """A stand-in for importlib.metadata.EntryPoint."""

    def __init__(self, name, load, dist="some-dist"):
        self.name, self._load = name, load
        self.dist = types.SimpleNamespace(name=dist, version="9.9")

    def load(self):
        return self._load()


class P(BaseModel):
    pass


def _broken():
    raise ImportError("No module named 'tensorflow'")


def _good():
    return _plugin(
        "good", {"register_losses": lambda register: register("good-loss", object, params=P)}
    )


def _dup():
    return _plugin("dup", {"register_losses": lambda register: register("minimax", object)})


@pytest.fixture
def fake_eps(monkeypatch):
    eps = [
        _EP("broken", _broken, "broken-gan"),
        _EP("good", _good, "good-gan"),
        _EP("dup", _dup, "dup-gan"),
    ]
    monkeypatch.setattr(
        metadata, "entry_points", lambda group=None: eps if group == "gan_pipe" else []
    )
    monkeypatch.delenv("GAN_PIPE_STRICT_PLUGINS", raising=False)
    return eps


def test_broken_entry_point_is_reported_and_skipped(fake_eps):
    ps = PluginHost.load()
    assert ps.registry.get("loss", "good-loss").plugin == "good"
    assert ps.infos["good"].distribution == "good-gan" and ps.infos["good"].version == "9.9"
    names = {f.name: f for f in ps.failures}
    assert set(names) == {"broken", "dup"}
    assert "tensorflow" in names["broken"].error
    assert "registered by plugin 'gan_pipe.plugins.losses.bce'" in names["dup"].error
    # The duplicate did not replace the built-in; only its one component was refused.
    assert ps.registry.get("loss", "minimax").plugin == "gan_pipe.plugins.losses.bce"
    assert names["broken"].skipped and not names["dup"].skipped
    lines = ps.failure_lines()
    assert any("'broken-gan'" in line and "skipped" in line for line in lines)


def test_strict_mode_reraises(fake_eps, monkeypatch):
    fake_eps.remove(fake_eps[0])
    monkeypatch.setenv("GAN_PIPE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="registered by plugin 'gan_pipe.plugins.losses.bce'"):
        PluginHost.load()


def test_strict_mode_reraises_import_errors(fake_eps, monkeypatch):
    monkeypatch.setenv("GAN_PIPE_STRICT_PLUGINS", "1")
    with pytest.raises(ImportError, match="tensorflow"):
        PluginHost.load()


def test_disable_list(fake_eps, monkeypatch):
    monkeypatch.setenv("GAN_PIPE_DISABLE_PLUGINS", "broken-gan,dup")
    ps = PluginHost.load()
    assert ps.failures == [] and "good" in ps.infos


def test_installed_example_package_is_found_by_entry_point():
    """examples/gan-pipe-relativistic is pip-installed by the Makefile, as a user would."""
    eps = {ep.name for ep in metadata.entry_points(group="gan_pipe")}
    assert "relativistic" in eps, "run `make install` (it installs examples/gan-pipe-relativistic)"
    ps = PluginHost.load()
    comp = ps.registry.get("loss", "relativistic-average")
    assert comp.plugin == "relativistic"
    assert ps.infos["relativistic"].distribution == "gan-pipe-relativistic"
    assert not ps.infos["relativistic"].builtin


def test_listing_plugins_imports_no_heavy_library():
    """`gan-pipe plugins` and `validate` must stay fast and never initialise CUDA."""
    import subprocess
    import sys

    code = (
        "import sys; from gan_pipe.host import PluginHost; PluginHost.load(); "
        "print(sorted(m for m in ('torch', 'mlflow', 'matplotlib', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- clashes and replacements
def _clashy():
    def register_losses(register):
        register("hinge", object, params=P)  # a built-in's name
        register("clashy-loss", object, params=P)

    return _plugin("clashy_gan.plugin", {"register_losses": register_losses})


def _replacing():
    from gan_pipe.plugins.losses.other import HingeLoss, HingeParams

    class LoudHinge(HingeLoss):
        """Hinge loss that counts its calls."""

        calls = 0

        def generator_loss(self, x):
            LoudHinge.calls += 1
            return super().generator_loss(x)

    mod = _plugin(
        "better_hinge.plugin",
        {
            "register_losses": lambda register: register(
                "hinge", LoudHinge, params=HingeParams, replaces="hinge"
            )
        },
    )
    mod.LoudHinge = LoudHinge
    return mod


def _entry_points(monkeypatch, *eps):
    monkeypatch.setattr(
        metadata, "entry_points", lambda group=None: list(eps) if group == "gan_pipe" else []
    )
    monkeypatch.delenv("GAN_PIPE_STRICT_PLUGINS", raising=False)


def test_a_clash_refuses_only_that_component_and_names_both_providers(monkeypatch):
    _entry_points(monkeypatch, _EP("clashy", _clashy, "clashy-gan"))
    ps = PluginHost.load()
    assert ps.registry.get("loss", "clashy-loss").plugin == "clashy"
    assert ps.registry.get("loss", "hinge").plugin == "gan_pipe.plugins.losses.other"
    assert ps.infos["clashy"].components == ["loss:clashy-loss"]
    (failure,) = ps.failures
    assert not failure.skipped
    for provider in (
        "plugin 'gan_pipe.plugins.losses.other' from package 'gan-pipe'",
        "plugin 'clashy' from package 'clashy-gan'",
        "replaces='hinge'",
    ):
        assert provider in failure.error
    (line,) = ps.failure_lines()
    assert "other components are loaded" in line and "skipped" not in line


def test_registry_of_detects_a_clash_with_a_builtin():
    with pytest.raises(PluginError, match="gan_pipe.plugins.losses.other.*clashy_gan.plugin"):
        registry_of(_clashy())
    with pytest.raises(PluginError, match="gan_pipe.plugins.losses.other"):
        plugins_with(_clashy())


def test_replaces_swaps_a_builtin_and_gan_pipe_plugins_shows_it(monkeypatch):
    from typer.testing import CliRunner

    from gan_pipe.cli import app

    _entry_points(monkeypatch, _EP("better-hinge", _replacing, "better-hinge-gan"))
    ps = PluginHost.load()
    assert ps.failures == []
    comp = ps.registry.get("loss", "hinge")
    assert comp.plugin == "better-hinge" and comp.replaces == "gan_pipe.plugins.losses.other"
    assert "loss:hinge" not in ps.infos["gan_pipe.plugins.losses.other"].components
    assert ps.infos["better-hinge"].components == ["loss:hinge"]
    res = CliRunner().invoke(app, ["plugins", "--no-builtin"])
    assert res.exit_code == 0, res.output
    assert "hinge (replaces gan_pipe.plugins.losses.other)" in res.output
    # registry_of keeps only the plugin's components, the replacement included
    reg = registry_of(_replacing())
    assert reg.names("loss") == ["hinge"] and reg.names("metric") == []


def test_a_replacement_is_used_and_recorded_in_the_run(workdir):
    from mlflow import MlflowClient

    from gan_pipe.recipe import load_recipe
    from gan_pipe.runner import run

    from .conftest import write
    from .test_cli import TINY

    mod = _replacing()
    plugins = plugins_with(mod)
    text = TINY.replace(
        'name = "non-saturating"\n[loss.params]\nreal_label = 0.9', 'name = "hinge"'
    )
    text = text.split("[[evaluate.metrics]]")[0]
    result = run(load_recipe(write(workdir / "r.toml", text), plugins.registry), plugins)
    assert mod.LoudHinge.calls == 6
    tags = MlflowClient(result.tracking_uri).get_run(result.run_id).data.tags
    assert tags["gan_pipe.component.loss"] == (
        "hinge (plugin better_hinge.plugin, replaces gan_pipe.plugins.losses.other)"
    )


def test_replacing_a_missing_component_is_an_error(monkeypatch):
    def missing():
        return _plugin(
            "m", {"register_losses": lambda register: register("hinj", object, replaces="hinj")}
        )

    _entry_points(monkeypatch, _EP("missing", missing, "missing-gan"))
    ps = PluginHost.load()
    (failure,) = ps.failures
    assert "replaces a loss 'hinj', but no plugin registered one; did you mean 'hinge'" in (
        failure.error
    )
    assert not ps.registry.has("loss", "hinj")
    with pytest.raises(PluginError, match="no plugin registered one"):
        plugins_with(missing())
    with pytest.raises(PluginError, match="takes the name it replaces"):
        plugins_with(
            _plugin(
                "x", {"register_losses": lambda register: register("a", object, replaces="hinge")}
            )
        )


# ---------------------------------------------------------------- typos fail at load time
def test_a_misspelt_register_hook_fails_naming_the_plugin(monkeypatch):
    def typo():
        return _plugin("typo", {"register_loss": lambda register: register("t", object)})

    _entry_points(monkeypatch, _EP("typo", typo, "typo-gan"))
    ps = PluginHost.load()
    (failure,) = ps.failures
    assert failure.skipped and failure.distribution == "typo-gan"
    assert "plugin 'typo' implements 'register_loss', which is not a gan-pipe hook" in failure.error
    assert "did you mean 'register_losses'" in failure.error
    assert "typo" not in ps.infos and not ps.pm.has_plugin("typo")


def test_a_misspelt_event_hook_fails_naming_the_plugin():
    class Stepper:
        @hookimpl
        def gan_pipe_on_train_stepp(self, step):
            pass

    with pytest.raises(PluginError, match="'gan_pipe_on_train_stepp'.*'gan_pipe_on_train_step'"):
        plugins_with(Stepper())


def test_a_hook_without_hookimpl_fails():
    mod = types.ModuleType("undecorated")

    def register_losses(register):
        register("never", object)

    register_losses.__module__ = "undecorated"
    mod.register_losses = register_losses
    with pytest.raises(PluginError, match="register_losses.. without @gan_pipe.hookimpl"):
        registry_of(mod)


def test_an_unknown_register_keyword_fails_naming_it():
    bad = _plugin(
        "kw", {"register_losses": lambda register: register("x", object, descrption="oops")}
    )
    with pytest.raises(PluginError) as info:
        registry_of(bad)
    msg = str(info.value)
    assert "plugin 'kw'" in msg and "'descrption'" in msg and "did you mean 'description'" in msg


def test_a_component_missing_its_methods_fails_at_build(workdir):
    from gan_pipe.recipe import load_recipe
    from gan_pipe.runner import run

    from .conftest import write
    from .test_cli import TINY

    class NoTerms:
        def __init__(self, params):
            pass

    plugins = plugins_with(
        _plugin("lazy", {"register_regularizers": lambda register: register("noop", NoTerms)})
    )
    text = TINY.replace("[train]", '[[regularizers]]\nname = "noop"\n\n[train]')
    resolved = load_recipe(write(workdir / "r.toml", text), plugins.registry)
    with pytest.raises(PluginError) as info:
        run(resolved, plugins)
    msg = str(info.value)
    assert "regularizer 'noop' of plugin 'lazy'" in msg
    assert "generator_term(...) or discriminator_term(...)" in msg
