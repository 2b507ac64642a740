"""``gan-pipe new-plugin``: write a plugin package that installs, runs and passes its tests.

The package has one working component of the chosen kind, a tiny recipe that uses it on
embedded data (ring8) and tests through :mod:`gan_pipe.testing`. The file templates live in
``gan_pipe/templates``; ``$name``-style fields are filled in with :class:`string.Template`.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template

from .errors import UserError

#: The kinds a scaffold can hold -> (register hook, registry kind, recipe path of the component).
SCAFFOLD_KINDS: dict[str, tuple[str, str, str]] = {
    "loss": ("register_losses", "loss", "loss"),
    "metric": ("register_metrics", "metric", "evaluate.metrics.0"),
    "dataset": ("register_datasets", "dataset", "data"),
    "regularizer": ("register_regularizers", "regularizer", "regularizers.0"),
    "report": ("register_reports", "report", "report.0"),
    "architecture": ("register_architectures", "generator", "model.generator"),
    "callback": ("register_callbacks", "callback", "callbacks.0"),
}

_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")

_RING8 = '[data]\nname = "ring8"\n[data.params]\nn_train = 2000\nn_val = 200\nn_test = 500'
_MLP = (
    '[model.generator]\nname = "mlp"\n[model.generator.params]\nhidden = [32, 32]\n'
    'output = "none"\n\n[model.discriminator]\nname = "mlp"\n'
    "[model.discriminator.params]\nhidden = [32, 32]"
)
_LOSS = '[loss]\nname = "non-saturating"\n'

#: kind -> recipe sections (data, model, loss, extra) that differ from the defaults above.
_SECTIONS: dict[str, dict[str, str]] = {
    "loss": {"loss": '[loss]\nname = "$name"\n[loss.params]\nreal_label = 0.9\n'},
    "metric": {
        "extra": '[[evaluate.metrics]]\nname = "$name"\n[evaluate.metrics.params]\n'
        "n_samples = 500\n"
    },
    "dataset": {"data": '[data]\nname = "$name"\n[data.params]\nn_train = 1000'},
    "regularizer": {
        "extra": '[[regularizers]]\nname = "$name"\n[regularizers.params]\nweight = 0.01\n'
    },
    "report": {"extra": '[[report]]\nname = "$name"\n'},
    "architecture": {
        "model": '[model.generator]\nname = "$name"\n[model.generator.params]\nhidden = 32\n\n'
        '[model.discriminator]\nname = "$name"\n[model.discriminator.params]\nhidden = 32'
    },
    "callback": {"extra": '[[callbacks]]\nname = "$name"\n[callbacks.params]\ndecay = 0.8\n'},
}

#: kind -> the end of the generated run test: what the run must show besides its tag.
_RUN_CHECKS = {
    "loss": '    assert "train/g_loss" in data.metrics',
    "metric": '    assert "eval/${key}_mean_gap" in data.metrics',
    "dataset": '    assert data.params["data.n_train"] == "1000"',
    "regularizer": '    assert "train/${key}_penalty" in data.metrics',
    "report": '    assert "reports/$name.json" in {\n'
    '        f.path for f in client.list_artifacts(result.run_id, "reports")\n    }',
    # hidden = 32 on 2-D data: (2 * 32 + 32) + (32 + 1)
    "architecture": '    assert data.params["model.discriminator.n_params"] == "129"',
    "callback": '    assert data.params["callbacks.$name.decay"] == "0.8"\n'
    '    history = client.get_metric_history(result.run_id, "train/${key}_avg")\n'
    "    assert [m.step for m in history] == [5, 10, 15, 20]",
}


def _template(name: str) -> str:
    return resources.files("gan_pipe").joinpath("templates", name).read_text(encoding="utf-8")


def check_name(name: str, kind: str) -> None:
    """A UserError unless ``name`` can name the component, its package and its module."""
    if kind not in SCAFFOLD_KINDS:
        raise UserError(f"unknown kind {kind!r}; kinds are {', '.join(SCAFFOLD_KINDS)}")
    if not _NAME.fullmatch(name):
        raise UserError(
            f"invalid plugin name {name!r}: use lowercase letters, digits and single hyphens, "
            "starting with a letter (e.g. 'my-loss')"
        )


def fields(name: str, kind: str) -> dict[str, str]:
    """The values templates are filled with: ``my-loss`` -> distribution
    ``gan-pipe-my-loss``, import package ``gan_pipe_my_loss``, class prefix ``MyLoss``."""
    dist = name if name.startswith("gan-pipe-") else f"gan-pipe-{name}"
    hook, lookup, path = SCAFFOLD_KINDS[kind]
    return {
        "name": name,
        "kind": kind,
        "key": name.replace("-", "_"),
        "dist": dist,
        "pkg": dist.replace("-", "_"),
        "entry": name,
        "Class": "".join(part.capitalize() for part in name.split("-")),
        "hook": hook,
        "lookup": lookup,
        "path": path,
    }


def render(name: str, kind: str) -> dict[str, str]:
    """The package's files: relative path -> text."""
    f = fields(name, kind)
    sections = {"data": _RING8, "model": _MLP, "loss": _LOSS, "extra": ""} | _SECTIONS[kind]
    f["unit"] = Template(_template(f"unit_{kind}.py.tmpl")).substitute(f)
    f["run_check"] = Template(_RUN_CHECKS[kind]).substitute(f)
    recipe_fields = f | {k: Template(v).substitute(f) for k, v in sections.items()}
    if recipe_fields["extra"]:
        recipe_fields["extra"] = "\n" + recipe_fields["extra"]
    return {
        "pyproject.toml": Template(_template("pyproject.toml.tmpl")).substitute(f),
        "README.md": Template(_template("README.md.tmpl")).substitute(f),
        f"src/{f['pkg']}/__init__.py": f'"""The {name} {kind}, a gan-pipe plugin."""\n',
        f"src/{f['pkg']}/plugin.py": Template(_template(f"plugin_{kind}.py.tmpl")).substitute(f),
        f"recipes/{name}.toml": Template(_template("recipe.toml.tmpl")).substitute(recipe_fields),
        f"tests/test_{f['key']}.py": Template(_template("test.py.tmpl")).substitute(f),
    }


def new_plugin(name: str, kind: str, target: Path, registered: list[str]) -> list[Path]:
    """Write the package into ``target`` (absent or empty); return the files written.

    ``registered`` are the names of components of that kind already registered: the
    scaffold's name must not clash with them (its tests would fail)."""
    check_name(name, kind)
    if name in registered:
        raise UserError(
            f"a {kind} named {name!r} is registered already (gan-pipe plugins lists it); "
            "choose another name, or edit the generated register call to replaces="
            f"{name!r} if you mean to replace it"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} exists and is not an empty directory; choose another --dir")
    written = []
    for rel, text in render(name, kind).items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
