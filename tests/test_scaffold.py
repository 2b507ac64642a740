"""gan-pipe new-plugin: the package it writes installs, passes its own tests and runs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gan_pipe.cli import app
from gan_pipe.recipe import load_recipe
from gan_pipe.scaffold import SCAFFOLD_KINDS
from gan_pipe.testing import plugins_with

runner = CliRunner()


def _new(tmp_path: Path, name: str, kind: str) -> Path:
    target = tmp_path / name
    res = runner.invoke(app, ["new-plugin", name, "--kind", kind, "--dir", str(target)])
    assert res.exit_code == 0, res.output
    return target


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", list(SCAFFOLD_KINDS))
def test_every_kind_writes_a_package_whose_recipe_validates(tmp_path, kind):
    name = f"tiny-{kind}"
    target = _new(tmp_path, name, kind)
    pkg = f"gan_pipe_tiny_{kind}"
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        f"recipes/{name}.toml",
        f"src/{pkg}/__init__.py",
        f"src/{pkg}/plugin.py",
        f"tests/test_tiny_{kind}.py",
    ]
    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["gan_pipe"] == {name: f"{pkg}.plugin"}
    compile((target / f"tests/test_tiny_{kind}.py").read_text(), "test", "exec")
    plugin = _import(target / f"src/{pkg}/plugin.py", f"{pkg}.plugin")
    plugins = plugins_with(plugin)  # no clash, no misspelt hook
    resolved = load_recipe(target / f"recipes/{name}.toml", plugins.registry)
    path = SCAFFOLD_KINDS[kind][2]
    assert resolved.components[path].plugin == f"{pkg}.plugin"
    assert resolved.components[path].name == name


@pytest.mark.parametrize(
    "args, message",
    [
        (["My_Loss"], "invalid plugin name 'My_Loss'"),
        (["-x"], "No such option"),
        (["ok", "--kind", "optimizer"], "unknown kind 'optimizer'"),
        (["hinge"], "a loss named 'hinge' is registered already"),
        (["divergences", "--kind", "metric"], "a metric named 'divergences'"),
    ],
)
def test_bad_names_and_kinds_exit_2(tmp_path, args, message):
    res = runner.invoke(app, ["new-plugin", *args, "--dir", str(tmp_path / "pkg")])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "pkg").exists()


def test_a_non_empty_target_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["new-plugin", "my-loss", "--dir", str(tmp_path)])
    assert res.exit_code == 2 and "not an empty directory" in res.output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["new-plugin", "my-loss", "--dir", str(empty)]).exit_code == 0


def _isolated_venv(where: Path) -> Path:
    """A venv that sees this environment's packages (gan-pipe, torch, pytest) through a .pth,
    so installing into it leaves this environment untouched."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "_gan_pipe_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


def _pip_install(python: Path, package: Path) -> None:
    """Without build isolation where this environment's setuptools builds editable wheels on
    its own (>= 77), else with it (pip fetches setuptools)."""
    check = "import setuptools; print(int(setuptools.__version__.split('.')[0]) >= 77)"
    new = subprocess.run([python, "-c", check], capture_output=True, text=True)
    isolation = [] if new.stdout.strip() != "True" else ["--no-build-isolation"]
    cmd = [python, "-m", "pip", "install", "-q", "--no-deps", *isolation, "-e", str(package)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.mark.slow
def test_generated_packages_install_pass_their_tests_and_run(tmp_path):
    python = _isolated_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTEST_"))}
    env |= {"GAN_PIPE_STRICT_PLUGINS": "1", "OMP_NUM_THREADS": "1"}
    # (name, kind, tests it writes): a callback's add a resume test to the usual three
    for name, kind, n_tests in (
        ("my-loss", "loss", 3),
        ("my-metric", "metric", 3),
        ("my-callback", "callback", 4),
    ):
        package = _new(tmp_path, name, kind)
        _pip_install(python, package)
        tests = subprocess.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=package,
            env=env,
            capture_output=True,
            text=True,
        )
        assert tests.returncode == 0, tests.stdout + tests.stderr
        assert f"{n_tests} passed" in tests.stdout
        # installed: gan-pipe finds it by its entry point, and runs its recipe
        listed = subprocess.run(
            [python, "-m", "gan_pipe.cli", "plugins", "--no-builtin"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert f"{name}  gan-pipe-{name} 0.1.0" in listed.stdout
        workdir = tmp_path / f"run-{name}"
        workdir.mkdir()
        recipe = package / "recipes" / f"{name}.toml"
        run = subprocess.run(
            [python, "-m", "gan_pipe.cli", "run", str(recipe)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert (workdir / "mlflow.db").exists()
    # nothing was installed into this environment
    assert not any(
        "gan_pipe_my_" in p.name for p in Path(sysconfig.get_paths()["purelib"]).iterdir()
    )
