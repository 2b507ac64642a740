"""Plugin loading: built-ins through the public hooks, entry points, broken packages."""

from __future__ import annotations

import types
from importlib import metadata

import pytest
from pydantic import BaseModel

from gan_pipe import hookimpl
from gan_pipe.errors import PluginError, UserError
from gan_pipe.manager import DEFAULT_PLUGINS, failure_lines, load_plugins


def _plugin(name, hooks):
    mod = types.ModuleType(name)
    for k, v in hooks.items():
        setattr(mod, k, hookimpl(v))
    return mod


def test_builtins_register_through_hooks():
    ps = load_plugins(entry_points=False)
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
        load_plugins(entry_points=False, extra=[(dup, "my-dup-plugin")])
    msg = str(info.value)
    assert "gan_pipe.plugins.losses.bce" in msg and "my-dup-plugin" in msg


def test_architecture_needs_role():
    bad = _plugin("bad", {"register_architectures": lambda register: register("x", object)})
    with pytest.raises(PluginError, match="role"):
        load_plugins(entry_points=False, extra=[(bad, "bad")])


def test_params_must_be_pydantic():
    bad = _plugin("bad", {"register_losses": lambda register: register("x", object, params=dict)})
    with pytest.raises(PluginError, match="pydantic"):
        load_plugins(entry_points=False, extra=[(bad, "bad")])


def test_unknown_component_error_lists_close_matches():
    reg = load_plugins(entry_points=False).registry
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
    ps = load_plugins()
    assert ps.registry.get("loss", "good-loss").plugin == "good"
    assert ps.infos["good"].distribution == "good-gan" and ps.infos["good"].version == "9.9"
    names = {f.name: f for f in ps.failures}
    assert set(names) == {"broken", "dup"}
    assert "tensorflow" in names["broken"].error
    assert "registered twice" in names["dup"].error
    # The duplicate did not replace the built-in and left no half registration behind.
    assert ps.registry.get("loss", "minimax").plugin == "gan_pipe.plugins.losses.bce"
    assert not ps.pm.has_plugin("dup")
    lines = failure_lines(ps)
    assert any("'broken-gan'" in line and "skipped" in line for line in lines)


def test_strict_mode_reraises(fake_eps, monkeypatch):
    monkeypatch.setenv("GAN_PIPE_STRICT_PLUGINS", "1")
    with pytest.raises(ImportError, match="tensorflow"):
        load_plugins()


def test_disable_list(fake_eps, monkeypatch):
    monkeypatch.setenv("GAN_PIPE_DISABLE_PLUGINS", "broken-gan,dup")
    ps = load_plugins()
    assert ps.failures == [] and "good" in ps.infos


def test_installed_example_package_is_found_by_entry_point():
    """examples/gan-pipe-relativistic is pip-installed by the Makefile, as a user would."""
    eps = {ep.name for ep in metadata.entry_points(group="gan_pipe")}
    assert "relativistic" in eps, "run `make install` (it installs examples/gan-pipe-relativistic)"
    ps = load_plugins()
    comp = ps.registry.get("loss", "relativistic-average")
    assert comp.plugin == "relativistic"
    assert ps.infos["relativistic"].distribution == "gan-pipe-relativistic"
    assert not ps.infos["relativistic"].builtin


def test_listing_plugins_imports_no_heavy_library():
    """`gan-pipe plugins` and `validate` must stay fast and never initialise CUDA."""
    import subprocess
    import sys

    code = (
        "import sys; from gan_pipe.manager import load_plugins; load_plugins(); "
        "print(sorted(m for m in ('torch', 'mlflow', 'matplotlib', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
