"""Loading a logged run's checkpoint (gan-pipe evaluate / resume): corrupt ones fall back,
pickles that are more than weights are refused."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gan_pipe.errors import UserError
from gan_pipe.reevaluate import load_checkpoint


class FakeStore:
    """The two MlflowClient calls load_checkpoint makes, on a folder of artifacts."""

    def __init__(self, root: Path):
        self.root = root

    def list_artifacts(self, run_id: str, path: str):
        return [SimpleNamespace(path=f"{path}/{p.name}") for p in (self.root / path).iterdir()]

    def download_artifacts(self, run_id: str, path: str, dst: str) -> str:
        return shutil.copy(self.root / path, dst)


def tracker_with(tmp_path: Path, files: dict[str, bytes | int]) -> SimpleNamespace:
    """A run whose checkpoints are ``files``: bytes, or an int (a good checkpoint at that step)."""
    ckpts = tmp_path / "artifacts" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, int):
            torch.save({"step": content, "generator": {"w": torch.full((2,), 1.0)}}, ckpts / name)
        else:
            (ckpts / name).write_bytes(content)
    return SimpleNamespace(run_id="r1", client=FakeStore(tmp_path / "artifacts"))


def good_bytes(tmp_path: Path) -> bytes:
    torch.save({"step": 9, "generator": {}}, tmp_path / "g.pt")
    return (tmp_path / "g.pt").read_bytes()


class Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


@pytest.mark.parametrize("damage", ["empty", "cut", "junk", "not a checkpoint"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, damage):
    good = good_bytes(tmp_path)
    latest = {
        "empty": b"",
        "cut": good[: len(good) // 2],
        "junk": b"hello world",
        "not a checkpoint": None,
    }[damage]
    if latest is None:
        torch.save({"weights": 1}, tmp_path / "other.pt")
        latest = (tmp_path / "other.pt").read_bytes()
    tracker = tracker_with(tmp_path, {"checkpoint-0000004.pt": 4, "checkpoint-0000008.pt": latest})
    with caplog.at_level(logging.WARNING, logger="gan_pipe.reevaluate"):
        state = load_checkpoint(tracker, str(tmp_path))
    assert state["step"] == 4
    (msg,) = [r.getMessage() for r in caplog.records]
    assert (
        "checkpoints/checkpoint-0000008.pt" in msg and "using checkpoints/checkpoint-0000004" in msg
    )


def test_the_latest_good_checkpoint_is_used_without_a_warning(tmp_path, caplog):
    tracker = tracker_with(tmp_path, {"checkpoint-0000004.pt": 4, "checkpoint-0000012.pt": 12})
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(tracker, str(tmp_path))["step"] == 12
    assert not caplog.records


def test_no_readable_checkpoint_is_a_user_error_listing_each(tmp_path):
    tracker = tracker_with(tmp_path, {"checkpoint-0000004.pt": b"", "checkpoint-0000008.pt": b"x"})
    with pytest.raises(UserError, match="no checkpoint could be read") as info:
        load_checkpoint(tracker, str(tmp_path))
    assert "checkpoint-0000004.pt (EOFError" in str(info.value)
    assert "checkpoint-0000008.pt" in str(info.value)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickle_that_is_not_weights_is_refused(tmp_path, capfd, how):
    if how == "pickle":
        evil = pickle.dumps(Evil(), protocol=2)
    else:
        torch.save({"step": 8, "generator": Evil()}, tmp_path / "e.pt")
        evil = (tmp_path / "e.pt").read_bytes()
    tracker = tracker_with(tmp_path, {"checkpoint-0000004.pt": 4, "checkpoint-0000008.pt": evil})
    with pytest.raises(UserError, match="could run code") as info:
        load_checkpoint(tracker, str(tmp_path))
    assert "checkpoints/checkpoint-0000008.pt" in str(info.value)
    assert "calls posix.system" in str(info.value)
    assert "should-not-run" not in capfd.readouterr().out  # never unpickled


def test_a_pickle_torch_cannot_parse_is_skipped_unrun(tmp_path, capfd, caplog):
    # Protocol 4 framing stops torch's weights-only unpickler before it sees the call: the
    # file reads as damaged, so the previous checkpoint is used; the call never runs.
    tracker = tracker_with(
        tmp_path, {"checkpoint-0000004.pt": 4, "checkpoint-0000008.pt": pickle.dumps(Evil(), 4)}
    )
    with caplog.at_level(logging.WARNING, logger="gan_pipe.reevaluate"):
        assert load_checkpoint(tracker, str(tmp_path))["step"] == 4
    assert "checkpoint-0000008.pt (UnpicklingError" in caplog.text
    assert "should-not-run" not in capfd.readouterr().out
