"""Every shipped recipe validates with its real sizes and runs end to end at a tiny size.

Only sizes are shrunk (steps, batch, sample counts); architecture, loss, optimiser and noise
stay as written. MNIST recipes read small IDX files this test writes, through the real loader;
the CelebA recipe a folder of generated PNG/JPEG images and the CIFAR-10 recipe generated
binary batch files, at the recipe's own image size.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import tomllib

import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from gan_pipe.cli import app
from gan_pipe.host import PluginHost
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
    "dcgan-celeba",
    "dcgan-cifar10",
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
    reg = PluginHost.load(entry_points=False).registry
    resolved = load_recipe(path, reg)
    # recipes of one comparison share an experiment: the pair's common name
    shared = {"ring8": "ring8", "grid25": "grid25", "gaussian-1d": "gaussian-1d"}
    family = next((v for k, v in shared.items() if path.stem.startswith(k)), path.stem)
    assert resolved.recipe.experiment.name == family


def test_seed_settings_are_in_the_files():
    reg = PluginHost.load(entry_points=False).registry
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


def test_dcgan_paper_settings_in_the_celeba_and_cifar10_recipes():
    reg = PluginHost.load(entry_points=False).registry
    for stem, size, blocks in (("dcgan-celeba", 64, 4), ("dcgan-cifar10", 32, 3)):
        r = load_recipe(RECIPES / f"{stem}.toml", reg)
        t = r.recipe.train
        assert (t.optimizer, t.lr, t.betas, t.batch_size) == ("adam", 2e-4, (0.5, 0.999), 128)
        assert (r.recipe.noise.distribution, r.recipe.noise.dim) == ("uniform", 100)
        for role in ("generator", "discriminator"):
            p = r.params[f"model.{role}"]
            assert (p.init, p.negative_slope, p.n_blocks) == ("dcgan", 0.2, blocks)
        assert r.params["model.generator"].output == "tanh"
        # the generator starts at 4x4, as the paper's
        assert size // 2**blocks == 4
    assert load_recipe(RECIPES / "dcgan-celeba.toml", reg).params["data"].image_size == 64


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


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """A CelebA-like folder: 24 random JPEG/PNG images of assorted sizes, portrait and wide."""
    from PIL import Image

    d = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(24):
        w, h = (int(s) for s in rng.integers(64, 110, 2))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / f"{i:06d}.{'jpg' if i % 3 else 'png'}")
    return d


#: Records per generated CIFAR-10 batch file.
CIFAR_RECORDS = 16


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """The six CIFAR-10 binary batch files with CIFAR_RECORDS random records each."""
    d = tmp_path_factory.mktemp("cifar10") / "cifar-10-batches-bin"
    d.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        records = np.concatenate(
            [
                rng.integers(0, 10, (CIFAR_RECORDS, 1), dtype=np.uint8),
                rng.integers(0, 256, (CIFAR_RECORDS, 3072), dtype=np.uint8),
            ],
            axis=1,
        )
        (d / name).write_bytes(records.tobytes())
    return d


@pytest.fixture(scope="module")
def data_dirs(mnist_dir, image_dir, cifar_dir):
    return {"mnist": mnist_dir, "image-folder": image_dir, "cifar10": cifar_dir}


def shrink(data: dict, dirs) -> dict:
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
        dp.update(data_dir=str(dirs["mnist"]), download=False, val_size=32)
    elif data["data"]["name"] == "image-folder":
        dp.update(path=str(dirs["image-folder"]), cache=False)
    elif data["data"]["name"] == "cifar10":
        dp.update(
            data_dir=str(dirs["cifar10"]), download=False, val_size=16, batch_records=CIFAR_RECORDS
        )
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
def test_recipe_runs_tiny(path, workdir, data_dirs):
    data = shrink(tomllib.loads(path.read_text()), data_dirs)
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
    offered = {p.stem for p in OFFERING}
    assert {"vanilla-gan", "mlp-gan", "dcgan-mnist", "wgan-gp"} <= offered


def _lookup(tree, keys):
    for k in keys:
        tree = tree[int(k)] if isinstance(tree, list) else tree[k]
    return tree


OFFERING = [p for p in RECIPE_FILES if header_overrides(p)]


@pytest.mark.parametrize("path", OFFERING, ids=lambda p: p.stem)
def test_header_settings_validate_and_take_effect(path):
    """Together, the --set lines a header offers validate (``gan-pipe validate``), and each
    one changes the resolved recipe to the value it names (no typo'd no-op). Recipes whose
    header offers none are not collected (test_recipes_offer_faithful_settings names the ones
    that must offer some)."""
    sets = header_overrides(path)
    args = ["validate", str(path)] + [a for s in sets for a in ("--set", s)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    reg = PluginHost.load(entry_points=False).registry
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
def test_faithful_settings_run_tiny(name, workdir, data_dirs):
    """The seed-faithful loops (replacement sampling, concatenated D loss, BatchNorm with
    Keras' settings, simultaneous updates, eval-mode penalty) run end to end."""
    path = RECIPES / f"{name}.toml"
    data = tomllib.loads(path.read_text())
    for item in header_overrides(path):
        keys, value = parse_override(item)
        apply_override(data, keys, value)
    m = run_tiny(shrink(data, data_dirs), path.name, workdir)
    assert np.isfinite(m["train/d_loss"]) and np.isfinite(m["train/g_loss"])


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_resolved_recipe_resolves_again(path):
    """A run's recipe/resolved.json (every default spelled out) must load again: resume and
    evaluate rebuild the run from it."""
    from gan_pipe.recipe import resolve

    reg = PluginHost.load(entry_points=False).registry
    first = load_recipe(path, reg).to_dict()
    again = resolve(json.loads(json.dumps(first)), reg, f"{path.name} (resolved)")
    assert again.to_dict() == first
