"""What a run could not send to its tracking server, kept on disk, and ``gan-pipe sync``.

A run's spool is ``$GAN_PIPE_SPOOL_DIR/<run id>/`` (default ``./gan-pipe-spool``, beside the
default store ``./mlflow.db``), created only when something could not be sent:

* ``meta.json``: the tracking URI, the run id, the writing process (pid, host), and
  ``complete`` once that process ended the run;
* ``params.json``, ``tags.json``: params and tags not yet stored;
* ``metrics.jsonl``: metric points ``[key, value, timestamp ms, step]``;
* ``items.jsonl`` with ``files/``: artifacts (checkpoints, texts, figures) and images;
* ``end.json``: the status the run ended with, and when.

:meth:`Spool.upload` sends all of it and removes each part once it landed. It is idempotent:
metric points already in the store (same key, step, timestamp and value) are not sent again,
artifacts and tags are overwritten with the same content, so an upload cut short can simply
run again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .link import MAX_BATCH

log = logging.getLogger(__name__)


def spool_root() -> Path:
    """Where spools live: ``GAN_PIPE_SPOOL_DIR``, else ``./gan-pipe-spool``."""
    return Path(os.environ.get("GAN_PIPE_SPOOL_DIR") or "gan-pipe-spool").absolute()


def _point(m: Any) -> tuple[str, int, int, str]:
    """A metric point's identity in the store (NaN equals NaN here)."""
    value = "nan" if math.isnan(m.value) else repr(float(m.value))
    return m.key, int(m.step), int(m.timestamp), value


def missing_points(client: Any, run_id: str, metrics: list[Any]) -> list[Any]:
    """The points of ``metrics`` that the run does not hold yet, each once."""
    seen: set[tuple[str, int, int, str]] = set()
    for key in {m.key for m in metrics}:
        seen.update(_point(m) for m in client.get_metric_history(run_id, key))
    out = []
    for m in metrics:
        p = _point(m)
        if p not in seen:
            seen.add(p)
            out.append(m)
    return out


class Spool:
    """One run's spool. Thread-safe: the training thread adds while a sender uploads."""

    def __init__(self, run_id: str, uri: str, root: Path | None = None):
        self.run_id = run_id
        self.uri = uri
        self.dir = (root or spool_root()) / run_id
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ writing
    def _open(self) -> Path:
        if not (self.dir / "meta.json").exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            from .liveness import this_host

            meta = {"run_id": self.run_id, "tracking_uri": self.uri, "pid": os.getpid()}
            _write_json(self.dir / "meta.json", {**meta, "host": this_host()})
        return self.dir

    def _merge(self, name: str, values: dict[str, str]) -> None:
        with self._lock:
            path = self._open() / name
            old = json.loads(path.read_text()) if path.exists() else {}
            _write_json(path, {**old, **values})

    def add_params(self, params: dict[str, str]) -> None:
        self._merge("params.json", params)

    def add_tags(self, tags: dict[str, str]) -> None:
        self._merge("tags.json", tags)

    def add_metrics(self, metrics: list[Any]) -> None:
        if not metrics:
            return
        lines = "".join(
            json.dumps([m.key, m.value, m.timestamp, m.step], allow_nan=True) + "\n"
            for m in metrics
        )
        with self._lock, open(self._open() / "metrics.jsonl", "a") as fh:
            fh.write(lines)

    def _new_file(self, name: str) -> Path:
        with self._lock:
            files = self._open() / "files"
            files.mkdir(exist_ok=True)
            n = sum(1 for _ in files.iterdir()) + 1
            while (files / str(n)).exists():
                n += 1
            (files / str(n)).mkdir()
            return files / str(n) / name

    def _add_item(self, item: dict[str, Any]) -> None:
        with self._lock, open(self._open() / "items.jsonl", "a") as fh:
            fh.write(json.dumps(item) + "\n")

    def add_artifact(self, local_path: str | Path, artifact_path: str | None) -> None:
        src = Path(local_path)
        dst = self._new_file(src.name)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
        self._add_item({"kind": "artifact", "path": self._rel(dst), "to": artifact_path})

    def add_written(self, artifact_file: str, write: Callable[[Path], Any]) -> None:
        """An artifact that ``write(path)`` writes (a text, a figure's ``savefig``)."""
        dst = self._new_file(Path(artifact_file).name)
        write(dst)
        parent = str(Path(artifact_file).parent)
        to = None if parent == "." else parent
        self._add_item({"kind": "artifact", "path": self._rel(dst), "to": to})

    def add_text(self, text: str, artifact_file: str) -> None:
        self.add_written(artifact_file, lambda dst: dst.write_text(text, encoding="utf-8"))

    def add_image(self, image: Any, key: str, step: int) -> None:
        import numpy as np

        dst = self._new_file("image.npy")
        np.save(dst, image)
        self._add_item({"kind": "image", "path": self._rel(dst), "key": key, "step": step})

    def set_end(self, status: str, end_time: int) -> None:
        with self._lock:
            _write_json(self._open() / "end.json", {"status": status, "end_time": end_time})

    def close(self) -> None:
        """The writing process is done with it: mark it complete, or remove it if empty."""
        with self._lock:
            if not self.pending():
                shutil.rmtree(self.dir, ignore_errors=True)
                return
            meta = self.meta()
            _write_json(self.dir / "meta.json", {**meta, "complete": True})

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.dir))

    # ------------------------------------------------------------------ reading
    def meta(self) -> dict[str, Any]:
        path = self.dir / "meta.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def pending(self) -> bool:
        """Whether anything besides meta.json is kept."""
        if not self.dir.is_dir():
            return False
        return any(p.name != "meta.json" for p in self.dir.iterdir())

    def summary(self) -> str:
        """What is kept, in words."""
        parts = []
        if (self.dir / "metrics.jsonl").exists():
            parts.append(f"{len(_read_jsonl(self.dir / 'metrics.jsonl'))} metric values")
        for name, what in (("params.json", "params"), ("tags.json", "tags")):
            if (self.dir / name).exists():
                parts.append(f"{len(json.loads((self.dir / name).read_text()))} {what}")
        if (self.dir / "items.jsonl").exists():
            parts.append(f"{len(_read_jsonl(self.dir / 'items.jsonl'))} files")
        if (self.dir / "end.json").exists():
            end = json.loads((self.dir / "end.json").read_text())
            parts.append(f"the end status {end['status']}")
        return ", ".join(parts) or "nothing"

    # ------------------------------------------------------------------ uploading
    def upload(self, client: Any, finish: bool = True) -> dict[str, int]:
        """Send everything kept to ``client``'s store, each part removed once it landed;
        with ``finish``, end the run with its recorded status. Counts of what was sent."""
        with self._lock:
            sent = {
                "params": self._upload_dict(client, "params.json"),
                "tags": self._upload_dict(client, "tags.json"),
                "metrics": self._upload_metrics(client),
                "files": self._upload_items(client),
            }
            if finish:
                sent["ended"] = self._upload_end(client)
            if not self.pending():
                shutil.rmtree(self.dir, ignore_errors=True)
        return sent

    def _upload_dict(self, client: Any, name: str) -> int:
        from mlflow.entities import Param, RunTag

        path = self.dir / name
        if not path.exists():
            return 0
        kind = Param if name == "params.json" else RunTag
        items = [kind(k, v) for k, v in json.loads(path.read_text()).items()]
        for i in range(0, len(items), 100):
            key = "params" if kind is Param else "tags"
            client.log_batch(self.run_id, **{key: items[i : i + 100]}, synchronous=True)
        path.unlink()
        return len(items)

    def _upload_metrics(self, client: Any) -> int:
        from mlflow.entities import Metric

        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return 0
        rows = _read_jsonl(path)
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in rows]
        new = missing_points(client, self.run_id, metrics)
        for i in range(0, len(new), MAX_BATCH):
            client.log_batch(self.run_id, metrics=new[i : i + MAX_BATCH], synchronous=True)
        path.unlink()
        return len(new)

    def _upload_items(self, client: Any) -> int:
        path = self.dir / "items.jsonl"
        if not path.exists():
            return 0
        items = _read_jsonl(path)
        for n, item in enumerate(items):
            self._upload_item(client, item)
            left = "".join(json.dumps(i) + "\n" for i in items[n + 1 :])
            path.write_text(left)  # what landed is not sent again if a later item fails
        path.unlink()
        shutil.rmtree(self.dir / "files", ignore_errors=True)
        return len(items)

    def _upload_item(self, client: Any, item: dict[str, Any]) -> None:
        local = self.dir / item["path"]
        if item["kind"] == "image":
            import numpy as np

            image = np.load(local)
            client.log_image(self.run_id, image, key=item["key"], step=item["step"])
        else:
            client.log_artifact(self.run_id, str(local), item["to"])

    def _upload_end(self, client: Any) -> int:
        from .liveness import CLAIM, HEARTBEAT

        path = self.dir / "end.json"
        if not path.exists():
            return 0
        end = json.loads(path.read_text())
        client.set_terminated(self.run_id, status=end["status"], end_time=end["end_time"])
        tags = client.get_run(self.run_id).data.tags
        for key in (HEARTBEAT, CLAIM):  # no process writes the run any more
            if key in tags:
                client.delete_tag(self.run_id, key)
        path.unlink()
        return 1


def _read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=True))
    tmp.replace(path)


def spools(root: Path | None = None) -> list[Spool]:
    """Every spool under ``root`` (default :func:`spool_root`), oldest first."""
    root = root or spool_root()
    found = []
    for meta in sorted(root.glob("*/meta.json"), key=lambda p: p.stat().st_mtime):
        data = json.loads(meta.read_text())
        found.append(Spool(data["run_id"], data["tracking_uri"], root))
    return found


def _writer_alive(spool: Spool) -> int | None:
    """The pid still writing ``spool`` on this host, if any."""
    from .liveness import pid_alive, this_host

    meta = spool.meta()
    pid = meta.get("pid")
    if meta.get("complete") or meta.get("host") != this_host() or not isinstance(pid, int):
        return None
    return pid if pid != os.getpid() and pid_alive(pid) else None


def sync(run_ids: list[str] | None, note: Callable[[str], None]) -> int:
    """Upload the spools of ``run_ids`` (default: every one of the current store); the
    number of runs synced. Raises :class:`~.link.TrackingUnavailable` when the server does
    not answer, :class:`~.errors.UserError` for a spool of another store."""
    import mlflow

    from .errors import UserError
    from .tracking import client

    c, _ = client()
    uri = mlflow.get_tracking_uri()
    every = spools()
    if run_ids:
        by_id = {s.run_id: s for s in every}
        chosen = []
        for rid in run_ids:
            s = by_id.get(rid)
            if s is None:
                note(f"run {rid}: nothing spooled in {spool_root()}")
            elif s.uri != uri:
                raise UserError(
                    f"run {rid} was spooled for the tracking store {s.uri}, not {uri}: "
                    f"set MLFLOW_TRACKING_URI={s.uri} and run gan-pipe sync again"
                )
            else:
                chosen.append(s)
    else:
        chosen = [s for s in every if s.uri == uri]
        others = len(every) - len(chosen)
        if others:
            note(f"{others} spooled run(s) in {spool_root()} belong to other tracking stores")
        if not chosen:
            note(f"nothing spooled for {uri} in {spool_root()}")
    done = 0
    for s in chosen:
        done += _sync_one(c, s, note)
    return done


def _sync_one(c: Any, s: Spool, note: Callable[[str], None]) -> int:
    from .link import TrackingUnavailable, is_outage

    pid = _writer_alive(s)
    if pid is not None:
        note(f"run {s.run_id}: still being written by pid {pid}; not synced")
        return 0
    what = s.summary()
    started = time.monotonic()
    try:
        sent = s.upload(c)
    except Exception as e:
        if not is_outage(e):
            raise
        raise TrackingUnavailable(
            f"the tracking server {s.uri} does not answer ({type(e).__name__}: "
            f"{str(e)[:300]}); run {s.run_id} stays spooled in {s.dir} ({s.summary()}): run "
            "gan-pipe sync again when the server is up"
        ) from None
    status = f"; ended it {_status(c, s.run_id)}" if sent.get("ended") else ""
    note(
        f"run {s.run_id}: synced {what} in {time.monotonic() - started:.1f} s "
        f"({sent['metrics']} metric values were new){status}"
    )
    return 1


def _status(c: Any, run_id: str) -> str:
    return str(c.get_run(run_id).info.status)


def sync_before_resume(run_id: str, note: Callable[[str], None]) -> None:
    """``gan-pipe resume`` first uploads what the run kept in its spool, if anything."""
    from .tracking import default_store

    uri = default_store()[0]
    if any(s.run_id == run_id and s.uri == uri for s in spools()):
        sync([run_id], note)
