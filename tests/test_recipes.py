"""Every shipped recipe validates with its real sizes and runs end to end at a tiny size.

Only sizes are shrunk (steps, batch, sample counts); architecture, loss, optimiser and noise
stay as written. MNIST recipes read small IDX files this test writes, through the real loader.
"""

from __future__ import annotations

import gzip
import re
import struct
import tomllib

import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from gan_pipe.cli import app
from gan_pipe.facade import Plugins
from gan_pipe.manager import load_plugins
from gan_pipe.recipe import apply_override, load_recipe, parse_override

from .conftest import RECIPES

RECIPE_FILES = sorted(RECIPES.glob("*.toml"))
EXPECTED = {
    "vanilla-gan",
    "mlp-gan",
    "gaussian-1d",
    "gaussian-1d-mbd",
    "dcgan",
    "dcgan-mnist",
    "wgan",
    "wgan-gp",
    "feature-matching",
    "ring8-gan",
    "ring8-wgan-gp",
    "grid25-gan",
    "grid25-wgan-gp",
}
runner = CliRunner()


def test_every_listed_recipe_exists():
    assert EXPECTED <= {p.stem for p in RECIPE_FILES}


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_recipe_has_header_and_validates(path):
    text = path.read_text()
    assert text.startswith("# ") and "Reproduces" in text and "Differs" in text
    reg = Plugins(load_plugins(entry_points=False)).registry
    resolved = load_recipe(path, reg)
    assert resolved.recipe.experiment.name == path.stem


def test_seed_settings_are_in_the_files():
    reg = Plugins(load_plugins(entry_points=False)).registry
    r = {p.stem: load_recipe(p, reg) for p in RECIPE_FILES}
    assert r["vanilla-gan"].params["loss"].real_label == 0.9
    assert (
        r["vanilla-gan"].recipe.train.batch_size == 128
        and r["vanilla-gan"].recipe.train.epochs == 200
    )
    mbd = r["gaussian-1d-mbd"].params["model.discriminator"].minibatch_discrimination
    assert (mbd.kernels, mbd.kernel_dim) == (5, 3)
    assert r["gaussian-1d"].params["model.discriminator"].minibatch_discrimination is None
    t = r["gaussian-1d"].recipe.train
    assert (t.optimizer, t.lr, t.decay_rate, t.decay_steps, t.batch_size) == (
        "sgd",
        0.005,
        0.95,
        150,
        12,
    )
    assert r["gaussian-1d"].recipe.noise.distribution == "stratified"
    w = r["wgan"].recipe.train
    assert (w.optimizer, w.lr, w.n_critic, w.batch_size) == ("rmsprop", 5e-5, 5, 64)
    assert r["wgan"].params["loss"].clip == 0.01
    assert r["wgan-gp"].params["loss"].lambda_gp == 10.0
    assert r["wgan-gp"].params["model.discriminator"].norm == "layer"
    assert r["feature-matching"].recipe.regularizers[0].name == "feature-matching"
    assert r["dcgan-mnist"].recipe.noise.dim == 20


def _idx(path, arr, code=0x08):
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(">u1").tobytes())


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 96), ("t10k", 48)):
        _idx(d / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(d / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return d


def shrink(data: dict, mnist_dir) -> dict:
    """Tiny sizes; nothing else changes."""
    t = data.setdefault("train", {})
    t.update(steps=2, batch_size=min(t.get("batch_size", 128), 16), progress=False, eval_every=0)
    t.update(sample_every=1, log_every=1)
    t.pop("epochs", None)
    t.pop("checkpoint_every", None)
    small = {
        "parzen": dict(n_samples=64, n_val=16, n_test=32),
        "divergences": dict(n_samples=400, n_kde=300),
        "modes": dict(n_samples=400),
        "fid": dict(n_samples=64, kid_subsets=5, kid_subset_size=32, epochs=1),
    }
    for m in data["evaluate"].get("metrics", []):
        m.setdefault("params", {}).update(small.get(m["name"], {}))
    for r in data.get("report", []):
        if r["name"] == "sample-grid":
            r.setdefault("params", {}).update(n=16, n_points=200)
    dp = data["data"].setdefault("params", {})
    if data["data"]["name"] in ("mnist", "fashion-mnist"):
        dp.update(data_dir=str(mnist_dir), download=False, val_size=32)
    elif data["data"]["name"] in ("gaussian-1d", "ring8", "grid25"):
        dp.update(n_train=2000, n_val=200, n_test=500)
    return data


def run_tiny(data: dict, name: str, workdir) -> dict[str, float]:
    """Run a shrunk recipe through the CLI; the finished run's metrics."""
    tiny = workdir / name
    tiny.write_text(tomli_w.dumps(data))
    res = runner.invoke(app, ["run", str(tiny)])
    assert res.exit_code == 0, res.output
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs(experiment_ids=["1"])
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert "train/d_loss" in m and "train/g_loss" in m
    return m


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_recipe_runs_tiny(path, workdir, mnist_dir):
    data = shrink(tomllib.loads(path.read_text()), mnist_dir)
    m = run_tiny(data, path.name, workdir)
    names = {x["name"] for x in data["evaluate"]["metrics"]}
    if "parzen" in names:
        assert np.isfinite(m["eval/parzen_ll"])
    if "modes" in names:
        assert 0 <= m["eval/modes"] <= m["eval/n_modes"]
    if "divergences" in names:
        assert 0 <= m["eval/js"] <= np.log(2) + 1e-9


# ---------------------------------------------------------------- faithful settings
def header_overrides(path) -> list[str]:
    """Every ``--set KEY=VALUE`` written in a recipe's header comment."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return re.findall(r"--set\s+(\S+)", "\n".join(lines))


def test_recipes_offer_faithful_settings():
    offered = {p.stem for p in RECIPE_FILES if header_overrides(p)}
    assert {"vanilla-gan", "mlp-gan", "dcgan-mnist", "wgan-gp"} <= offered


def _lookup(tree, keys):
    for k in keys:
        tree = tree[int(k)] if isinstance(tree, list) else tree[k]
    return tree


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_header_settings_validate_and_take_effect(path):
    """Together, the --set lines a header offers validate (``gan-pipe validate``), and each
    one changes the resolved recipe to the value it names (no typo'd no-op)."""
    sets = header_overrides(path)
    if not sets:
        pytest.skip("no --set in the header")
    args = ["validate", str(path)] + [a for s in sets for a in ("--set", s)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    reg = Plugins(load_plugins(entry_points=False)).registry
    base = load_recipe(path, reg).to_dict()
    faithful = load_recipe(path, reg, overrides=sets).to_dict()
    for item in sets:
        keys, value = parse_override(item)
        expected: dict = {}
        apply_override(expected, ["v"], value)
        assert _lookup(faithful, keys) == expected["v"], item
        assert _lookup(base, keys) != expected["v"], f"{item} is the recipe's own value"


@pytest.mark.filterwarnings("ignore:wgan-gp. critic DCGANDiscriminator has BatchNorm")
@pytest.mark.parametrize("name", ["vanilla-gan", "wgan-gp"])
def test_faithful_settings_run_tiny(name, workdir, mnist_dir):
    """The seed-faithful loops (replacement sampling, concatenated D loss, BatchNorm with
    Keras' settings, simultaneous updates, eval-mode penalty) run end to end."""
    path = RECIPES / f"{name}.toml"
    data = tomllib.loads(path.read_text())
    for item in header_overrides(path):
        keys, value = parse_override(item)
        apply_override(data, keys, value)
    m = run_tiny(shrink(data, mnist_dir), path.name, workdir)
    assert np.isfinite(m["train/d_loss"]) and np.isfinite(m["train/g_loss"])
