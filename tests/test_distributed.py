"""Training in several processes (DistributedDataParallel under torchrun), on the CPU with gloo.

The end-to-end tests start real torchrun launches of 2 processes, each process with one
thread (the machine that runs them may have 2 cores), on a tiny recipe: the 2-process run
logs the same losses and ends with the same weights as the 1-process run at the same global
batch, and a 2-process run interrupted with Ctrl-C and resumed with ``--nproc 2`` ends
bit-identical to an uninterrupted 2-process run.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from gan_pipe import distributed
from gan_pipe.cli import app
from gan_pipe.errors import UserError
from gan_pipe.tracking import Tracker

from .conftest import write
from .test_resume_exact import RECIPE, assert_same_state

runner = CliRunner()
SLOW = pytest.mark.slow
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]

#: a run long enough to be interrupted in the middle (about 200 steps a few seconds)
LONG = ["--set=train.steps=200", "--set=train.checkpoint_every=20", "--set=train.sample_every=50"]

#: The tolerance of "the same losses and weights" between 1 and 2 processes, absolute and
#: relative, in float32 (eps 1.2e-7). Both runs see the same batches and noise, but they add
#: the same numbers in another order: two half-batch means averaged against one mean over the
#: batch, DDP's averaged gradient against one backward pass over the whole batch. That changes
#: the last bits of a step's result; the 24 steps below carry it forward (4e-7 at most was seen
#: on the CPU). A GAN's training amplifies such differences over long runs (1e-3 after 200
#: steps of this recipe), so the comparison is made over a short one.
TOL = 1e-5


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(OMP_NUM_THREADS="1", GAN_PIPE_STRICT_PLUGINS="0", **more)
    return env


def _gan_pipe(where: Path, *args: str, torchrun: int = 0) -> subprocess.CompletedProcess:
    """``python -m gan_pipe ARGS`` in ``where``, under ``torchrun -m`` with that many
    processes if ``torchrun``."""
    launcher = [*TORCHRUN, f"--nproc-per-node={torchrun}"] if torchrun else [sys.executable]
    cmd = [*launcher, "-m", "gan_pipe", *args]
    out = subprocess.run(
        cmd, cwd=where, env=_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _run_id(output: str) -> str:
    return re.search(r"run id:\s+(\S+)", output).group(1)  # type: ignore[union-attr]


def _client(where: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{where / 'mlflow.db'}")


def _n_runs(where: Path, run_id: str) -> int:
    """How many runs the experiment of ``run_id`` holds."""
    client = _client(where)
    return len(client.search_runs(client.get_run(run_id).info.experiment_id))


def _final_checkpoint(where: Path, run_id: str) -> dict[str, Any]:
    client = _client(where)
    ckpts = sorted(f.path for f in client.list_artifacts(run_id, "checkpoints"))
    path = client.download_artifacts(run_id, ckpts[-1], str(where / f"dl-{run_id}"))
    state = torch.load(path, weights_only=True)
    state.pop("recipe")
    return state


def _train_metrics(where: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = _client(where)
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("train/")]
    history = client.get_metric_history
    return {k: sorted((m.step, m.value) for m in history(run_id, k)) for k in keys}


# ------------------------------------------------------------------ without processes
@pytest.fixture
def two_ranks(monkeypatch):
    """torchrun's environment of a 2-process launch (no process group: shards need none)."""
    monkeypatch.setenv("WORLD_SIZE", "2")

    def as_rank(r: int) -> None:
        monkeypatch.setenv("RANK", str(r))

    return as_rank


def test_each_rank_takes_its_contiguous_shard_of_the_global_batch(two_ranks):
    batch = torch.arange(12).reshape(6, 2)
    two_ranks(0)
    assert distributed.shard(batch).tolist() == [[0, 1], [2, 3], [4, 5]]
    two_ranks(1)
    assert distributed.shard(batch).tolist() == [[6, 7], [8, 9], [10, 11]]
    with pytest.raises(ValueError, match="5 rows does not split among 2"):
        distributed.shard(batch[:5])


def test_the_ranks_random_draws_are_the_one_process_draw_cut_in_two(two_ranks):
    torch.manual_seed(7)
    whole = torch.rand(8, 1, 1)  # one process, a global batch of 8 (a GP's weights)
    parts = []
    for r in (0, 1):
        two_ranks(r)
        torch.manual_seed(7)
        parts.append(distributed.rand((4, 1, 1)))
    assert torch.equal(torch.cat(parts), whole)


def test_a_streamed_batch_is_the_same_shard_as_the_resident_one(two_ranks):
    """Each rank's StreamSampler batch is its BatchSampler batch, and the two ranks' batches
    put together are the one-process global batch, across an epoch boundary."""
    from gan_pipe.dataloading import StreamSampler, TensorRows
    from gan_pipe.plugins.train import BatchSampler

    data = torch.arange(40.0).reshape(20, 2)  # 5 global batches of 4 per epoch
    torch.manual_seed(5)
    perms = [torch.randperm(20) for _ in range(2)]
    whole = [data[p[k * 4 : (k + 1) * 4]] for p in perms for k in range(5)]
    got = []
    for r in (0, 1):
        two_ranks(r)
        torch.manual_seed(5)
        stream = StreamSampler(TensorRows(data), 4, torch.device("cpu"), workers=0)
        streamed = [stream.next() for _ in range(8)]
        torch.manual_seed(5)
        resident = BatchSampler(data, 4)
        assert all(torch.equal(a, resident.next()) for a in streamed)
        assert all(len(b) == 2 for b in streamed)
        got.append(streamed)
    for k in range(8):
        assert torch.equal(torch.cat([got[0][k], got[1][k]]), whole[k]), k


def test_one_process_is_untouched(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    x = torch.arange(5)
    assert distributed.shard(x) is x and distributed.world_size() == 1
    assert distributed.is_main() and not distributed.enabled()
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.mean(x) is x


def _public_methods(cls: type) -> list[str]:
    return [n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))]


def test_other_ranks_tracker_has_every_tracker_method_and_does_nothing():
    import inspect

    from gan_pipe.spool import Spool

    t = distributed.RankTracker()
    for name in _public_methods(Tracker):
        assert callable(getattr(t, name)), name
        if name != "deferred_artifacts":  # a context manager, below
            assert getattr(t, name)() is None, name
    # the public attributes a Tracker sets for itself (spool, link, latest, ...) exist too
    made = re.findall(r"self\.([a-z]\w*)\s*[:=]", inspect.getsource(Tracker.__init__))
    assert {"spool", "latest", "run_id", "link"} <= set(made)
    for name in made:
        assert hasattr(t, name), name
    for name in _public_methods(Spool):  # a failure's note asks spool.pending(): False
        assert getattr(t.spool, name)() is None, name
    assert not t.spool.pending()
    assert t.log_metrics({"train/d_loss": 1.0}, 3) is None and t.client is None
    assert t.claim("resumed") is None and t.flush(wait=False) is None
    with t.deferred_artifacts():
        pass
    with pytest.raises(AttributeError):
        t.no_such_method  # noqa: B018
    with pytest.raises(AttributeError):
        t.spool.no_such_method  # noqa: B018


@pytest.mark.parametrize(
    ("batch", "n", "hint"), [(63, 2, "batch_size=64"), (64, 3, "batch_size=66, or 2 processes")]
)
def test_a_global_batch_that_does_not_split_is_a_user_error(batch, n, hint):
    with pytest.raises(UserError, match=f"batch_size = {batch} .* processes \\({n}"):
        distributed.check_global_batch(batch, n)
    try:
        distributed.check_global_batch(batch, n)
    except UserError as e:
        assert hint in str(e)


def test_nproc_refuses_a_batch_that_does_not_split_before_starting_anything(workdir):
    recipe = write(workdir / "tiny.toml", RECIPE)
    res = runner.invoke(app, ["run", str(recipe), "--nproc", "2", "--set", "train.batch_size=63"])
    assert res.exit_code == 2, res.output
    assert "train.batch_size = 63 is the global batch and must divide by" in res.output
    assert "Traceback" not in res.output
    assert not (workdir / "mlflow.db").exists()


def test_nproc_under_torchrun_is_refused(workdir, monkeypatch):
    recipe = write(workdir / "tiny.toml", RECIPE)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    res = runner.invoke(app, ["run", str(recipe), "--nproc", "2"])
    assert res.exit_code == 2 and "under torchrun, leave it out" in res.output


# ------------------------------------------------------------------ collectives, 2 processes
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, port: int, where: str, out: Any) -> None:
    """One of two processes (torch.multiprocessing), in torchrun's environment."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    distributed.start()
    got: dict[str, Any] = {"enabled": distributed.enabled()}
    got["any"] = (distributed.any_rank(rank == 1), distributed.any_rank(False))
    got["mean"] = distributed.mean(torch.tensor([2.0 * rank])).item()
    grads = [torch.tensor([4.0 * rank]), None]
    distributed.average_grads(grads)
    got["grad"] = grads[0].item()
    got["broadcast"] = distributed.broadcast(f"from {rank}")
    flag = Path(where) / "rank0-was-here"

    def first() -> bool:
        if rank == 0:
            time.sleep(1.0)  # rank 1 would see no file if it did not wait
            flag.write_text("x")
        return flag.exists()

    got["first"] = distributed.main_first(first)

    def fails() -> None:
        raise UserError("no data file")

    try:
        distributed.main_first(fails)
    except UserError as e:  # rank 0: its own error; rank 1: PeerFailed naming it
        got["failed"] = (type(e).__name__, str(e))
    try:
        torch.nn.SyncBatchNorm(3).train()(torch.randn(4, 3))
        got["syncbn"] = "ran"
    except ValueError as e:
        got["syncbn"] = str(e)
    distributed.stop()
    got["stopped"] = not distributed.enabled()
    out.put((rank, got))


@SLOW
def test_collectives_between_two_processes(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.spawn(_collectives, args=(_free_port(), str(tmp_path), out), nprocs=2)
    got = dict(out.get(timeout=60) for _ in range(2))
    for rank in (0, 1):
        g = got[rank]
        assert g["enabled"] and g["stopped"]
        assert g["any"] == (True, False)  # rank 1's flag reaches rank 0
        assert g["mean"] == 1.0 and g["grad"] == 2.0  # (0 + 2) / 2, (0 + 4) / 2
        assert g["broadcast"] == "from 0"
        assert g["first"]  # rank 1 ran after rank 0 had written its file
        assert "expected input tensor to be on GPU" in g["syncbn"]  # none on the CPU
    assert got[0]["failed"] == ("UserError", "no data file")
    assert got[1]["failed"][0] == "PeerFailed"
    assert "rank 0 failed (UserError: no data file)" in got[1]["failed"][1]


# ------------------------------------------------------------------ real launches
@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("ddp")
    write(where / "tiny.toml", RECIPE)
    write(where / "ema.toml", RECIPE + EMA)
    return where


#: the ema callback, averaging from step 2 on (runs on every process)
EMA = """
[[callbacks]]
name = "ema"
[callbacks.params]
decay = 0.8
start_step = 2
"""


VARIANTS = {
    # alternating updates, 2 critic steps per generator step: DDP's backward() averages
    "alternating": ["tiny.toml"],
    # WGAN-GP (the penalty's double backward through DDP), one forward pass for both nets
    # (gradients from torch.autograd.grad, averaged by hand) and batches drawn with
    # replacement
    "wgan-gp-simultaneous": [
        "tiny.toml",
        '--set=loss.name="wgan-gp"',
        '--set=train.updates="simultaneous"',
        "--set=train.n_critic=1",
        '--set=train.sampling="replacement"',
    ],
    # the rows streamed by a DataLoader (each process loads its shard of every batch), and
    # the ema callback: its average, in every checkpoint, is the 1-process run's too
    "streamed-ema": ["ema.toml", "--set=data.stream=true", "--set=data.workers=0"],
}


@SLOW
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_train_as_one_at_the_same_global_batch(runs_dir, variant):
    """``torchrun --nproc-per-node 2 -m gan_pipe run`` against ``python -m gan_pipe run``:
    every logged train/ value and every weight of both nets within TOL."""
    args = ["run", *VARIANTS[variant]]
    one = _run_id(_gan_pipe(runs_dir, *args).stdout)
    before = _n_runs(runs_dir, one)
    launched = _gan_pipe(runs_dir, *args, torchrun=2)
    two = _run_id(launched.stdout)
    # rank 0 alone made a run and printed the stage lines and the summary
    assert _n_runs(runs_dir, two) == before + 1
    assert launched.stdout.count("run id:") == 1 and launched.stderr.count("[train]") == 1
    m1, m2 = _train_metrics(runs_dir, one), _train_metrics(runs_dir, two)
    assert set(m1) == set(m2) and "train/d_loss" in m1 and "train/g_loss" in m1
    worst = 0.0
    for key in m1:
        assert [s for s, _ in m1[key]] == [s for s, _ in m2[key]] == [3, 6, 9, 12, 15, 18, 21, 24]
        v1, v2 = torch.tensor([v for _, v in m1[key]]), torch.tensor([v for _, v in m2[key]])
        torch.testing.assert_close(v2, v1, rtol=TOL, atol=TOL, msg=lambda m, k=key: f"{k}: {m}")
        worst = max(worst, (v2 - v1).abs().max().item())
    c1, c2 = _final_checkpoint(runs_dir, one), _final_checkpoint(runs_dir, two)
    assert c1["step"] == c2["step"] == 24
    nets = {net: (c1[net], c2[net]) for net in ("generator", "discriminator")}
    if variant == "streamed-ema":
        ema1, ema2 = (c["callbacks"]["callbacks.0"] for c in (c1, c2))
        assert ema1["started_at"] == ema2["started_at"] == 2 and ema1["updates"] == 22
        nets["ema"] = (ema1["average"], ema2["average"])
        g1 = c1["generator"]
        assert any(not torch.equal(ema1["average"][k], g1[k]) for k in g1)  # an average
    for net, (w1, w2) in nets.items():
        torch.testing.assert_close(w2, w1, rtol=TOL, atol=TOL, msg=lambda m, n=net: f"{n}: {m}")
        worst = max(worst, *((w2[k] - w1[k]).abs().max().item() for k in w1))
    print(f"{variant}: largest difference 1 vs 2 processes {worst:.2g} (tolerance {TOL:g})")
    params = {r: _client(runs_dir).get_run(r).data.params for r in (one, two)}
    assert params[one]["dist.world_size"] == "1" and params[two]["dist.world_size"] == "2"
    streamed = str(variant == "streamed-ema")
    assert params[one]["data.streamed"] == params[two]["data.streamed"] == streamed


def _interrupted_run(where: Path, seed: int) -> tuple[str, str]:
    """``gan-pipe run --nproc 2`` of the long run, Ctrl-C (SIGINT to torchrun, which passes
    it on) at a random moment between 20% and 50% of its training; (run id, its stderr)."""
    cmd = [sys.executable, "-m", "gan_pipe", "run", "tiny.toml", *LONG, "--nproc", "2"]
    cmd.append("--set=train.progress=true")
    proc = subprocess.Popen(
        cmd, cwd=where, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # rank 0's progress lines at 10% and 20%
        if re.search(r"step \d+/200", line):
            seen.append(time.monotonic())
            if len(seen) == 2:
                break
    else:
        proc.kill()
        pytest.fail("the run printed no progress")
    time.sleep(random.Random(seed).uniform(0, 3 * (seen[1] - seen[0])))
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err
    found = re.search(r"checkpoint of step (\d+): continue it with gan-pipe resume (\S+)", err)
    assert found, err
    assert err.count("error: interrupted") == 1, err  # one message, rank 0's
    assert f"gan-pipe resume {found.group(2)} --nproc 2" in err
    return found.group(2), err


@SLOW
def test_resume_under_ddp_equals_an_uninterrupted_ddp_run(runs_dir):
    run_id, _ = _interrupted_run(runs_dir, seed=0)
    client = _client(runs_dir)
    assert client.get_run(run_id).info.status == "KILLED"
    resumed = _gan_pipe(runs_dir, "resume", run_id, "--nproc", "2")
    assert _run_id(resumed.stdout) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gan_pipe.resumed_world_size"] == "2"
    assert run.data.params["dist.world_size"] == "2"
    straight = _run_id(_gan_pipe(runs_dir, "run", "tiny.toml", *LONG, "--nproc", "2").stdout)
    final = _final_checkpoint(runs_dir, run_id)
    assert final["step"] == 200
    assert_same_state(_final_checkpoint(runs_dir, straight), final)


@SLOW
def test_resume_on_processes_that_do_not_split_the_batch_is_refused(runs_dir):
    """The processes check the logged recipe's batch (64) against 3 processes: exit 2 with the
    message, and the run is left as it was (not reopened, not failed)."""
    run_id = _run_id(_gan_pipe(runs_dir, "run", "tiny.toml", "--set=train.steps=6").stdout)
    cmd = [sys.executable, "-m", "gan_pipe", "resume", run_id, "--steps", "9", "--nproc", "3"]
    out = subprocess.run(cmd, cwd=runs_dir, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr
    assert "train.batch_size = 64 is the global batch and must divide by" in out.stderr
    run = _client(runs_dir).get_run(run_id)
    assert run.info.status == "FINISHED" and "gan_pipe.resumed_world_size" not in run.data.tags
