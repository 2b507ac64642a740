"""Streaming training data through a DataLoader: the same batches, in the same order, as the
device-resident path, so a streamed run equals a resident run bit for bit and resumes
exactly; lazy image folders stream with a bounded memory footprint."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gan_pipe.cli import app
from gan_pipe.context import Dataset, RunContext
from gan_pipe.dataloading import Rows, StreamSampler, TensorRows, should_stream
from gan_pipe.errors import UserError
from gan_pipe.plugins.train import BatchSampler, Trainer
from gan_pipe.recipe import Recipe
from gan_pipe.scoring import MemoryTracker

from .conftest import write
from .test_resume_exact import RECIPE, _client, _final_checkpoint, _run_id, assert_same_state

runner = CliRunner()


class SquareRows(Rows):
    """Row i is a vector of i's: a lazy dataset with known values."""

    row_shape = (3,)

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def load(self, i: int) -> torch.Tensor:
        return torch.full((3,), float(i) ** 2 / self.n)


# ---------------------------------------------------------------- rows and decisions
def test_rows_index_like_a_tensor():
    rows, ref = SquareRows(10), torch.stack([SquareRows(10).load(i) for i in range(10)])
    assert rows.shape == ref.shape == (10, 3) and len(rows) == 10
    assert torch.equal(rows[4], ref[4])
    assert torch.equal(rows[2:7], ref[2:7])
    idx = torch.tensor([9, 0, 3, 3])
    assert torch.equal(rows[idx], ref[idx])
    assert torch.equal(rows[np.array([1, 5])], ref[[1, 5]])
    assert torch.equal(rows.materialize(workers=0), ref)
    assert rows.nbytes == 10 * 3 * 4


def test_materialize_with_workers_keeps_row_order():
    rows = SquareRows(600)  # three loader batches of MATERIALIZE_ROWS = 256
    assert torch.equal(rows.materialize(workers=2), rows[torch.arange(600)])


def _ds(train, fits=None):
    return Dataset("x", train=train, fits_device=fits)


def test_should_stream_follows_the_setting_and_the_size():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    tensor = torch.zeros(100, 10)  # 4,000 bytes
    assert should_stream(_ds(tensor), True, cpu)[0] is True
    assert should_stream(_ds(SquareRows(5)), False, cpu)[0] is False
    # auto: the dataset's declaration first, then lazy rows, then the size vs free memory
    assert should_stream(_ds(tensor, fits=False), "auto", cpu) == (
        True,
        "the dataset declares fits_device = False",
    )
    assert should_stream(_ds(SquareRows(5), fits=True), "auto", cpu)[0] is False
    assert should_stream(_ds(SquareRows(5)), "auto", cpu)[0] is True
    assert should_stream(_ds(tensor), "auto", cpu)[0] is False  # host memory already
    stream, why = should_stream(_ds(tensor), "auto", cuda, free=7999)
    assert stream and "more than 50%" in why
    assert should_stream(_ds(tensor), "auto", cuda, free=8000)[0] is False


# ---------------------------------------------------------------- same batches
def test_stream_sampler_gives_the_resident_batches_in_order():
    data = torch.randn(50, 4)
    torch.manual_seed(7)
    resident = BatchSampler(data, 8)
    want = [resident.next() for _ in range(20)]  # 6 per epoch: crosses 3 epoch boundaries
    rng_after = torch.get_rng_state()
    torch.manual_seed(7)
    stream = StreamSampler(TensorRows(data), 8, torch.device("cpu"), workers=2)
    got = [stream.next() for _ in range(20)]
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    # the global RNG saw the same draws (the loader seeds itself from its own generator)
    assert torch.equal(torch.get_rng_state(), rng_after)
    stream.close()


def test_stream_position_can_be_set_mid_epoch():
    data = torch.randn(40, 2)
    torch.manual_seed(1)
    a = StreamSampler(TensorRows(data), 5, torch.device("cpu"), workers=1)
    for _ in range(3):
        a.next()
    perm, i, rng = a._perm.clone(), a._i, torch.get_rng_state()
    rest = [a.next() for _ in range(9)]  # 5 more of this epoch, then 4 of the next
    b = StreamSampler(TensorRows(data), 5, torch.device("cpu"), workers=1)
    b.next()  # b's loader is under way elsewhere: setting the position restarts it
    torch.set_rng_state(rng)
    b._perm, b._i = perm, i
    again = [b.next() for _ in range(9)]
    assert all(torch.equal(x, y) for x, y in zip(rest, again, strict=True))


def _trainer(train, stream, steps=14, resume=None, **extra):
    recipe = Recipe.model_validate(
        {
            "experiment": {"name": "t", "seed": 0},
            "data": {"name": "x", "stream": stream, "workers": 2},
            "model": {"generator": {"name": "g"}, "discriminator": {"name": "d"}},
            "loss": {"name": "l"},
            "noise": {"dim": 3},
            "train": {
                "batch_size": 8,
                "steps": steps,
                "n_critic": 2,
                "progress": False,
                "sample_every": 7,
            }
            | extra,
        }
    )
    plugins = types.SimpleNamespace(has_step_listeners=lambda: False)
    ctx = RunContext(
        recipe=recipe, plugins=plugins, tracker=MemoryTracker(), device=torch.device("cpu")
    )
    torch.manual_seed(0)
    from gan_pipe.plugins.losses.bce import NonSaturatingLoss

    ctx.dataset = Dataset("x", train=train)
    ctx.generator = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )
    ctx.discriminator = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Dropout(0.2), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    )
    ctx.loss = NonSaturatingLoss()
    ctx.noise = lambda n, generator=None: torch.randn(n, 3, generator=generator)
    if resume is not None:
        ctx.state["resume"] = resume
    return Trainer(ctx)


def _state(t: Trainer):
    state = t.checkpoint_state(t.ctx.step)
    state.pop("recipe")
    return state


def test_a_streamed_run_equals_the_resident_run_bit_for_bit():
    data = torch.randn(60, 3)  # 7 batches per epoch, 2 per step: 4 epochs in 14 steps
    resident = _trainer(data, False)
    assert isinstance(resident.sampler, BatchSampler)
    resident.fit()
    streamed = _trainer(data, True)
    assert isinstance(streamed.sampler, StreamSampler) and streamed.sampler.workers == 2
    streamed.fit()
    assert_same_state(_state(resident), _state(streamed))
    assert resident.ctx.history == streamed.ctx.history
    # lazy rows stream the same values: a Rows over the same tensor gives the same run
    lazy = _trainer(SquareRows(60), "auto")
    lazy.fit()
    tensor = _trainer(SquareRows(60).materialize(), False)
    tensor.fit()
    assert isinstance(lazy.sampler, StreamSampler)
    assert_same_state(_state(lazy), _state(tensor))


def test_data_stream_false_loads_lazy_rows_whole():
    t = _trainer(SquareRows(60), False)
    assert isinstance(t.sampler, BatchSampler) and torch.equal(t.data, SquareRows(60)[0:60])


def test_a_streamed_run_resumes_exactly_mid_epoch():
    data = torch.randn(60, 3)
    straight = _trainer(data, True)
    straight.fit()
    first = _trainer(data, True)
    first.steps = 5  # stops at step 5: batch 10 of 14 read, mid-epoch (7 per epoch)
    first.fit()
    checkpoint = copy.deepcopy(first.checkpoint_state(5))
    assert checkpoint["sampler_i"] == 3
    resumed = _trainer(data, True, resume=checkpoint)
    assert resumed.start_step == 5
    resumed.fit()
    assert_same_state(_state(straight), _state(resumed))


def test_replacement_sampling_cannot_stream():
    with pytest.raises(UserError, match="cannot be prefetched"):
        _trainer(torch.randn(60, 3), True, sampling="replacement")


def test_data_stream_is_validated():
    base = {
        "experiment": {"name": "t"},
        "model": {"generator": {"name": "g"}, "discriminator": {"name": "d"}},
        "loss": {"name": "l"},
    }
    from gan_pipe.registry import strict_validate

    for bad in ({"stream": "yes"}, {"stream": 1}, {"workers": -1}):
        with pytest.raises(ValueError):
            strict_validate(Recipe, base | {"data": {"name": "x", **bad}})
    ok = strict_validate(Recipe, base | {"data": {"name": "x", "stream": True, "workers": 0}})
    assert ok.data.stream is True and ok.data.workers == 0


# ---------------------------------------------------------------- through the CLI
@pytest.mark.slow
def test_cli_streamed_run_matches_the_resident_run(workdir):
    recipe = write(workdir / "exact.toml", RECIPE)
    runs = {}
    for stream in ("false", "true"):
        res = runner.invoke(
            app, ["run", str(recipe), "--set", f"data.stream={stream}", "--set", "data.workers=1"]
        )
        assert res.exit_code == 0, res.output
        run_id = _run_id(res.output)
        params = _client().get_run(run_id).data.params
        assert params["data.streamed"] == stream.capitalize()  # the choice is recorded
        runs[stream] = _final_checkpoint(run_id)
    assert_same_state(runs["false"], runs["true"])


def test_cli_replacement_with_stream_is_a_clear_error(workdir):
    recipe = write(workdir / "exact.toml", RECIPE)
    args = ["--set", "data.stream=true", "--set", "train.sampling=replacement"]
    res = runner.invoke(app, ["run", str(recipe), *args])
    assert res.exit_code == 2, res.output
    assert "cannot be prefetched" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------- image folders
def _folder(root: Path, n: int, size: int = 64, varied: bool = False) -> Path:
    """``n`` random RGB PNG files (sizes between 20 and 50 pixels a side with ``varied``)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = (int(s) for s in rng.integers(20, 50, 2)) if varied else (size, size)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:05d}.png", compress_level=1)
    return root


def _folder_params(root: Path, **kw):
    from gan_pipe.plugins.data.image_folder import ImageFolderParams

    return ImageFolderParams(path=str(root), image_size=16, **kw)


def test_lazy_image_folder_rows_equal_the_decoded_ones(tmp_path):
    from gan_pipe.plugins.data.image_folder import load_image_folder
    from gan_pipe.plugins.data.lazy_images import FolderRows

    root = _folder(tmp_path / "imgs", 40, varied=True)  # resized and centre-cropped
    eager = load_image_folder(_folder_params(root, lazy=False, val_fraction=0.1))
    lazy = load_image_folder(_folder_params(root, lazy=True, val_fraction=0.1))
    assert isinstance(lazy.train, FolderRows) and lazy.fits_device is False
    assert eager.fits_device is None and isinstance(eager.train, torch.Tensor)
    assert lazy.shape == eager.shape == (3, 16, 16) and len(lazy.train) == len(eager.train) == 34
    assert torch.equal(lazy.train[torch.arange(34)], eager.train)
    assert torch.equal(lazy.train.materialize(workers=2), eager.train)
    assert torch.equal(lazy.val, eager.val) and torch.equal(lazy.test, eager.test)
    assert lazy.info["lazy"] is True and eager.info["lazy"] is False


def test_lazy_auto_compares_the_decoded_size_with_available_memory(monkeypatch):
    from gan_pipe.plugins.data import lazy_images

    monkeypatch.setattr(lazy_images, "available_memory", lambda: 1000)
    assert lazy_images.decide_lazy("auto", 10, 50) is False  # 500 bytes: half of 1000
    assert lazy_images.decide_lazy("auto", 10, 51) is True
    assert lazy_images.decide_lazy(False, 10, 10**9) is False
    monkeypatch.setattr(lazy_images, "available_memory", lambda: None)
    assert lazy_images.decide_lazy("auto", 10, 10**9) is False
    assert lazy_images.available_memory.__module__  # the real one reads /proc/meminfo
    monkeypatch.undo()
    avail = lazy_images.available_memory()
    assert avail is None or avail > 0


def test_lazy_corrupt_files_are_skipped_or_named_by_the_stream(tmp_path):
    from gan_pipe.plugins.data.image_folder import load_image_folder

    root = _folder(tmp_path / "imgs", 12)
    good = (root / "00003.png").read_bytes()
    (root / "00003.png").write_bytes(good[: len(good) // 2])  # truncated
    kw = {"lazy": True, "val_fraction": 0.0, "test_fraction": 0.0}
    skipped = load_image_folder(_folder_params(root, skip_corrupt=True, **kw))
    assert skipped.info["n_skipped"] == 1 and len(skipped.train) == 11
    ds = load_image_folder(_folder_params(root, **kw))
    stream = StreamSampler(ds.train, 12, torch.device("cpu"), workers=1)
    with pytest.raises(UserError, match="cannot decode .*00003.png") as err:
        stream.next()
    assert "Traceback" not in str(err.value)


MEMORY_RECIPE = """
[experiment]
name = "stream-memory"
seed = 1
device = "cpu"

[data]
name = "image-folder"
stream = "auto"
workers = 2
[data.params]
path = "{path}"
image_size = 64
lazy = {lazy}
val_fraction = 0.01
test_fraction = 0.01

[model.generator]
name = "mlp"
[model.generator.params]
hidden = [16]

[model.discriminator]
name = "mlp"
[model.discriminator.params]
hidden = [16]

[noise]
dim = 8

[loss]
name = "non-saturating"

[train]
batch_size = 32
steps = 12
log_every = 4
sample_every = 12
checkpoint_minutes = 0
progress = false
"""

#: Runs the CLI in a fresh interpreter: first a warm-up run over a small folder (MLflow's store
#: and every lazy import set up), then each recipe with the peak resident set reset before it
#: (/proc/self/clear_refs); prints, per recipe, the resident set before it and the peaks of the
#: process and of its children (the loader's workers) after it, in bytes.
MEASURE = """
import gc, json, resource, sys
from gan_pipe.cli import app

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(s.split()[1]) * 1024 for s in fh if s.startswith(key + ":"))

out = {}
for recipe in sys.argv[1:]:
    gc.collect()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak resident set (VmHWM) starts again from the current one
    app(["run", recipe], standalone_mode=False)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    out[recipe] = {"before": before, "peak": status("VmHWM"), "children": children}
print("MEMORY " + json.dumps(out))
"""


def _measured_runs(workdir: Path, folders: dict[str, tuple[Path, str]]) -> dict[str, dict]:
    recipes = []
    for name, (folder, lazy) in folders.items():
        text = MEMORY_RECIPE.format(path=folder, lazy=lazy)
        recipes.append(str(write(workdir / f"{name}.toml", text)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *recipes],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(s for s in out.stdout.splitlines() if s.startswith("MEMORY "))
    found = json.loads(line.removeprefix("MEMORY "))
    ids = re.findall(r"run id:\s+(\S+)", out.stdout)
    return {
        name: {**found[recipe], "run_id": run_id}
        for name, recipe, run_id in zip(folders, recipes, ids, strict=True)
    }


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux' /proc")
def test_a_large_image_folder_streams_in_bounded_memory(workdir):
    """4,000 64x64 RGB files: 188 MiB as float32. Streamed (lazy decoding in 2 workers), the
    run's peak memory grows by less than a quarter of that, about what a streamed run over
    200 files grows by, and the workers' by less; decoded whole (lazy = false) it grows by
    more than all of it, which shows the measure sees the data. Both runs end with the same
    weights, bit for bit."""
    n = 4000
    decoded = n * 3 * 64 * 64 * 4
    big, small = _folder(workdir / "faces", n), _folder(workdir / "few", 200)
    runs = {
        "warm-up": (small, "true"),
        "small": (small, "true"),
        "streamed": (big, "true"),
        "whole": (big, "false"),
    }
    m = _measured_runs(workdir, runs)
    grow = {k: m[k]["peak"] - m[k]["before"] for k in runs}
    print(
        f"decoded {decoded / 2**20:.0f} MiB; peak growth (MiB) "
        f"{ {k: round(v / 2**20) for k, v in grow.items()} }; {m}"
    )
    assert grow["whole"] > decoded
    assert grow["streamed"] < decoded / 4
    # and it does not grow with the folder: 20 times the files, less than a tenth more
    assert grow["streamed"] - grow["small"] < decoded / 10
    # workers are forked from the process: their peak starts from its resident set
    assert m["streamed"]["children"] - m["streamed"]["before"] < decoded / 4
    a, b = _final_checkpoint(m["streamed"]["run_id"]), _final_checkpoint(m["whole"]["run_id"])
    assert_same_state(a, b)
