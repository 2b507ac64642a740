"""The one place that talks to MLflow: store selection, buffering, naming, run lifecycle.

* No ``MLFLOW_TRACKING_URI``: an embedded sqlite store ``./mlflow.db`` with artifacts under
  ``./mlartifacts`` (absolute paths), so ``mlflow ui --backend-store-uri sqlite:///mlflow.db``
  shows every run made in this directory. With the variable set, that server or store.
* Metrics are buffered in memory and sent with asynchronous ``log_batch`` calls: one
  synchronous ``log_metric`` costs ~5 ms on sqlite, far more than a small training step.
  The buffer is flushed when it fills, when ``GAN_PIPE_FLUSH_SECONDS`` (default 5) have passed
  since the last flush (checked as metrics are logged), before every artifact (checkpoints),
  at evaluation and at the end (also on error): the UI follows a run live, and a killed
  process loses at most that window.
* While the run is open a background thread renews its heartbeat tag every flush interval
  (see :mod:`.liveness`): a run whose process died is told apart from one still training.
* The run's status tells the truth: FINISHED, FAILED (with the error as a tag and an
  artifact), KILLED on Ctrl-C. Closing it survives failures of the store and of plugins:
  each step is tried on its own, and the status is set whatever failed before.
* HTTP stores: unless the user set them, MLflow's request timeout and retries are bounded
  (``MLFLOW_HTTP_REQUEST_TIMEOUT`` 30 s, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 3), so a server
  that never answers fails a call in about 2 minutes instead of about 16.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import liveness
from .link import MAX_BATCH, Link, Sender, TrackingUnavailable
from .spool import Spool, missing_points

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000


#: The default URI this process set itself (mlflow.set_tracking_uri exports it to the
#: environment, where it must not be mistaken for a user's server).
_ours: str | None = None


def default_store(cwd: Path | None = None) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments or None for the server's)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri != _ours:
        return uri, None
    cwd = (cwd or Path.cwd()).resolve()
    return f"sqlite:///{cwd / 'mlflow.db'}", (cwd / "mlartifacts").as_uri()


def _mlflow_exe() -> str:
    """``mlflow`` when it is on PATH, else the one beside this Python (an unactivated venv)."""
    if shutil.which("mlflow"):
        return "mlflow"
    exe = Path(sys.executable).parent / "mlflow"
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    mlflow_exe = _mlflow_exe()
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        try:
            shown = path.relative_to(Path.cwd())
        except ValueError:
            shown = path
        return f"{mlflow_exe} ui --backend-store-uri sqlite:///{shown}"
    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri} in a browser"
    return f"{mlflow_exe} ui --backend-store-uri {uri}"


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside an sqlite store (``mlflow.db.lock``) for creating it.

    MLflow creates and migrates an sqlite schema on first use; several processes doing so at
    once race (``table _alembic_tmp_... already exists``) and can leave the store unusable for
    every later run. Under this lock the first process creates the schema and the others find
    it complete. Other stores (servers, databases with their own locking) need nothing."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_store(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri`` whose store exists and is fully migrated.

    Safe to call from many processes at once (see :func:`_store_lock`); a study calls it once
    before starting any worker."""
    from mlflow import MlflowClient

    with _store_lock(uri):
        c = MlflowClient(uri)  # constructing the store creates and migrates its schema
        if uri.startswith("sqlite:///"):
            from mlflow.tracking._model_registry.utils import _get_store as registry_store

            registry_store(uri)  # the model registry shares the file and migrates it too
    return c


def client() -> tuple[Any, str | None]:
    """(MlflowClient on the default store, artifact location for new experiments).

    The store is decided before ``mlflow.set_tracking_uri``, which writes
    ``MLFLOW_TRACKING_URI`` into the environment: asking afterwards would mistake our own
    default for a user's server and lose the ``./mlartifacts`` location.
    """
    import mlflow

    bound_http_retries()
    # MLflow's own chatter about stores and schema migrations is not the user's business.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    global _ours
    uri, artifact_location = default_store()
    if artifact_location is not None:
        _ours = uri
    mlflow.set_tracking_uri(uri)
    return ensure_store(uri), artifact_location


#: MLflow's defaults (120 s per request, 7 retries with backoff) hang ~16 min on a dead server.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3"}


def bound_http_retries() -> None:
    """Bounded HTTP timeouts and retries for this process, where the user set none."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def experiment_location(name: str, artifact_location: str | None) -> str | None:
    """One artifact folder per experiment under the default ``./mlartifacts``, as a server
    keeps them; None (the server's choice) otherwise."""
    if artifact_location is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "experiment"
    return f"{artifact_location}/{safe}"


#: The MLflow UI opens an experiment with this tag on its training-runs view (GenAI otherwise).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(c: Any, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created if missing; safe when several processes (a
    study's workers, or independent runs on one server) create it at the same moment."""
    from mlflow.exceptions import MlflowException

    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(
            name,
            artifact_location=experiment_location(name, artifact_location),
            tags=EXPERIMENT_KIND,
        )
    except MlflowException as e:
        exp = c.get_experiment_by_name(name)  # another process created it first
        if exp is None:
            raise
        log.debug("experiment %s was created concurrently (%s)", name, e.error_code)
        return exp.experiment_id


class Tracker:
    """Logging for one MLflow run. Plugins log through ``ctx.tracker``."""

    def __init__(self, mlflow_client: Any, run: Any, attached: bool = False):
        """The state every use shares; make a tracker with :meth:`start`, :meth:`attach` or
        :meth:`reopen`, which say what happens to the run."""
        import mlflow

        self._mlflow = mlflow
        self.client = mlflow_client
        self.uri = mlflow.get_tracking_uri()
        self.link = Link(self.uri)
        self._buffer: list[Any] = []
        #: the newest value logged per metric key by this process (the Metric, with its step)
        self.latest: dict[str, Any] = {}
        self._deferred: list[Callable[[], None]] | None = None
        self._closed = False
        self.flush_seconds = liveness.flush_interval()
        self._last_flush = time.monotonic()
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None
        self._claim: liveness.Claim | None = None
        self.attached = attached
        self.run = run
        self.run_id: str = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self.spool = Spool(self.run_id, self.uri)
        self.link.hint = (
            f"What run {self.run_id} could not send is kept in {self.spool.dir}: upload it "
            f"with gan-pipe sync {self.run_id} once the server answers, then continue the run "
            f"with gan-pipe resume {self.run_id}"
        )
        self._sender = Sender(self.link, self._send_metrics)

    @classmethod
    def start(cls, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> Tracker:
        """A new RUNNING run in ``experiment`` (created if missing), claimed by this process
        at once (pid, host, heartbeat)."""
        import mlflow

        mlflow_client, artifact_location = client()
        exp_id = get_or_create_experiment(mlflow_client, experiment, artifact_location)
        tags = {**(tags or {}), **liveness.identity()}
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags)
        tracker = cls(mlflow_client, run)
        tracker._start_heartbeat()
        return tracker

    @classmethod
    def attach(cls, run_id: str) -> Tracker:
        """Log into an existing run without touching its status (``gan-pipe evaluate`` adds
        results to a finished run); it only reads until :meth:`claim` is called."""
        mlflow_client, _ = client()
        return cls(mlflow_client, mlflow_client.get_run(run_id), attached=True)

    @classmethod
    def reopen(cls, run_id: str) -> Tracker:
        """Continue an existing run (``gan-pipe resume``): claimed first, so a process that
        loses the claim changes nothing, then RUNNING again; :meth:`end` sets its new
        status."""
        import mlflow

        mlflow_client, _ = client()
        tracker = cls(mlflow_client, mlflow_client.get_run(run_id))
        tracker.claim("resumed")
        mlflow.start_run(run_id=run_id)
        return tracker

    # ------------------------------------------------------------ heartbeat
    def claim(self, doing: str = "written") -> None:
        """Make this process the run's only writer (see :func:`.liveness.claim`) and mark it
        as such (pid, host, heartbeat) until :meth:`end`; a UserError if another process
        writes it or claimed it first."""
        if self._beating is None:
            command = {"resumed": "resume", "evaluated": "evaluate"}.get(doing, "resume")
            self._claim = liveness.claim(self.client, self.uri, self.run_id, doing, command)
            self.set_tags(liveness.identity())
            self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        """A daemon thread renews ``gan_pipe.heartbeat`` every flush interval until
        :meth:`end` (or until this tracker is garbage): long stages that log nothing
        (evaluation, a slow download) stay alive."""
        me, stop, c, run_id = weakref.ref(self), self._stop, self.client, self.run_id
        every, link = self.flush_seconds, self.link

        def beat() -> None:
            while not stop.wait(every) and me() is not None:
                try:
                    link.call(lambda: c.set_tag(run_id, liveness.HEARTBEAT, f"{time.time():.0f}"))
                except Exception as e:  # noqa: BLE001 - a missed beat must not kill training
                    log.debug("heartbeat of run %s failed: %s", run_id, e)

        self._beating = threading.Thread(target=beat, name=f"gan-pipe-heartbeat-{run_id}")
        self._beating.daemon = True
        self._beating.start()

    def _stop_heartbeat(self) -> None:
        """Stop beating and remove the heartbeat and claim tags: no live process writes this
        run now (in an outage they stay: ``gan-pipe sync`` removes them)."""
        self._stop.set()
        if self._beating is None:
            return  # never claimed: nothing written
        self._beating.join(timeout=5)  # one beat stuck on a dead server is left behind

        def untag() -> None:
            tags = self.client.get_run(self.run_id).data.tags
            for key in (liveness.HEARTBEAT, liveness.CLAIM):
                if key in tags:
                    self.client.delete_tag(self.run_id, key)

        try:
            self.link.call(untag)
        finally:
            if self._claim is not None:
                self._claim.release()

    # ------------------------------------------------------------ metrics
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer metric values for ``step``; sent by a background thread in batches. Raises
        :class:`.link.TrackingUnavailable` once the server has been down past the limit."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        new = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        self._buffer.extend(new)
        self.latest.update((m.key, m) for m in new)
        self.link.check()
        if (
            len(self._buffer) >= MAX_BATCH
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush(wait=False)

    def _send_metrics(self, chunk: list[Any], again: bool) -> None:
        """One batch, in the sender's thread; sent ``again`` after a failed attempt, only the
        points that did not land then."""
        if again:
            chunk = missing_points(self.client, self.run_id, chunk)
        if chunk:
            self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)

    def flush(self, wait: bool = True) -> None:
        """Send buffered metrics; with ``wait``, block until every batch has landed (or the
        server has been down past the limit: :class:`.link.TrackingUnavailable`). What a
        short outage kept in the spool is sent as soon as the server answers again."""
        self._last_flush = time.monotonic()
        if self._buffer:
            self._sender.put(self._buffer)
            self._buffer = []
        if self.link.up and self.spool.pending():
            self._replay()
        if wait:
            self._sender.drain(self.link.check)

    def _replay(self) -> None:
        try:
            self.link.call(lambda: self.spool.upload(self.client, finish=False))
        except Exception as e:  # noqa: BLE001 - refused by the store: kept for gan-pipe sync
            log.warning("run %s: sending its spool %s failed: %s", self.run_id, self.spool.dir, e)

    # ------------------------------------------------------------ params, tags
    def _store(self, send: Callable[[], Any], keep: Callable[[], None]) -> None:
        """``send`` now, or while the server is down ``keep`` the data in the spool (and
        fail fast once the outage has lasted past the limit)."""
        if self.link.call(send):
            return
        keep()
        if not self._closed and sys.exc_info()[1] is None:  # (an error path: kept is enough)
            self.link.check()

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            part = items[i : i + 100]
            self._store(
                lambda: self.client.log_batch(self.run_id, params=part, synchronous=True),  # noqa: B023
                lambda: self.spool.add_params({p.key: p.value for p in part}),  # noqa: B023
            )

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        if items:
            self._store(
                lambda: self.client.log_batch(self.run_id, tags=items, synchronous=True),
                lambda: self.spool.add_tags({t.key: t.value for t in items}),
            )

    # ------------------------------------------------------------ artifacts
    @contextlib.contextmanager
    def deferred_artifacts(self) -> Iterator[None]:
        """Artifacts (files, figures, images) logged inside the block are written when it
        succeeds and dropped when it raises, so a failed evaluation leaves no files in the
        run. A nested block's artifacts join the outer block's only if the nested block
        succeeds. (If the store itself fails while writing, files written before stay.)"""
        outer = self._deferred
        if outer is not None:  # nested: collect separately, hand over on success
            self._deferred = []
            try:
                yield
                outer.extend(self._deferred)
            finally:
                self._deferred = outer
            return
        self._deferred = []
        with tempfile.TemporaryDirectory(prefix="gan-pipe-artifacts-") as tmp:
            self._deferred_dir = Path(tmp)
            self._n_kept = 0
            try:
                yield
                pending = self._deferred
            finally:
                self._deferred = None
            for write in pending:
                write()

    def _keep_dir(self) -> Path:
        """A fresh folder under the deferred block's temp dir."""
        self._n_kept += 1
        keep = self._deferred_dir / str(self._n_kept)
        keep.mkdir()
        return keep

    def _write(self, send: Callable[[], Any], keep: Callable[[], None]) -> None:
        """``send`` now or, inside a deferred block, when it succeeds; ``keep`` the data in
        the spool instead while the server is down."""
        if self._deferred is None:
            self._store(send, keep)
        else:
            self._deferred.append(lambda: self._store(send, keep))

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """An image series: the UI shows one slider over steps per ``key``."""
        if self._deferred is not None:
            image = image.copy()
        self._write(
            lambda: self.client.log_image(
                self.run_id, image, key=key, step=int(step), synchronous=self.link.remote
            ),
            lambda: self.spool.add_image(image, key, int(step)),
        )

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        if self._deferred is None:
            self._store(
                lambda: self.client.log_figure(self.run_id, figure, artifact_file),
                lambda: self.spool.add_written(artifact_file, figure.savefig),
            )
            return
        # rendered now: the caller may close or change the figure before the block ends
        path = self._keep_dir() / Path(artifact_file).name
        figure.savefig(path)
        parent = str(Path(artifact_file).parent)
        self._write(
            lambda: self.client.log_artifact(
                self.run_id, str(path), None if parent == "." else parent
            ),
            lambda: self.spool.add_written(artifact_file, lambda dst: shutil.copy2(path, dst)),
        )

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        data = copy.deepcopy(data) if self._deferred is not None else data
        self._write(
            lambda: self.client.log_dict(self.run_id, data, artifact_file),
            lambda: self.spool.add_text(json.dumps(data, indent=2), artifact_file),
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        self._write(
            lambda: self.client.log_text(self.run_id, text, artifact_file),
            lambda: self.spool.add_text(text, artifact_file),
        )

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file or folder. Buffered metrics are flushed first: a checkpoint's run holds
        the curve up to it even if the process dies right after. While the server is down
        the file is copied into the spool (a checkpoint stays on disk to resume from)."""
        self.flush(wait=False)
        if self._deferred is not None:  # copied now: the caller may delete its file
            src = Path(local_path)
            dst = self._keep_dir() / src.name
            local_path = shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
        self._write(
            lambda: self.client.log_artifact(self.run_id, str(local_path), artifact_path),
            lambda: self.spool.add_artifact(local_path, artifact_path),
        )

    def _await_server(self) -> None:
        """Wait while the server is down (an MLflow model cannot be spooled); raises
        :class:`.link.TrackingUnavailable` once the outage has lasted past the limit."""
        while not self.link.up:
            self.link.check()
            if not self.link.call(lambda: self.client.get_experiment(self.experiment_id)):
                time.sleep(0.5)

    def log_model(
        self, model: Any, name: str, input_example: Any = None, step: int = 0, prefix: str = "eval/"
    ) -> None:
        """Log a torch module as an MLflow model (loadable with ``mlflow.pytorch.load_model``)
        at ``step``, linked to the newest value of every metric under ``prefix`` (the model
        page shows the run's final metrics)."""
        import mlflow.pytorch
        import torch
        from mlflow.entities import Metric

        from . import __version__

        self._await_server()
        info = mlflow.pytorch.log_model(
            model,
            name=name,
            input_example=input_example,
            step=int(step),
            # Explicit requirements: inferring them loads the model in a subprocess (slow).
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"gan-pipe=={__version__}",
            ],
        )
        # The same (key, value, step, timestamp) again, now with the model's id: the run's
        # history keeps one point, and the logged model carries the values.
        linked = [
            Metric(m.key, m.value, m.timestamp, m.step, model_id=info.model_id)
            for k, m in self.latest.items()
            if k.startswith(prefix)
        ]
        self.flush(wait=True)
        for i in range(0, len(linked), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=linked[i : i + MAX_BATCH], synchronous=True)

    # ------------------------------------------------------------ lifecycle
    def end(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """Flush everything and close the run with ``status``; safe to call twice.

        Each step is tried on its own: a store that fails (or a flush that raises) while the
        error is recorded still leaves the run with ``status``, and nothing raised here hides
        ``error``, which the caller re-raises. Failures are logged as warnings. What a server
        that stays down did not take (metrics, tags, files, the status) is left in the spool
        for ``gan-pipe sync``."""
        if self._closed:
            return
        self._closed = True

        def attempt(what: str, step: Callable[[], Any]) -> bool:
            try:
                step()
                return True
            except Exception as e:  # noqa: BLE001 - the run must still be closed
                log.warning(
                    "closing run %s: %s failed: %s: %s", self.run_id, what, type(e).__name__, e
                )
                return False

        def flush() -> None:
            with contextlib.suppress(TrackingUnavailable):  # the metrics are spooled below
                self.flush(wait=True)

        attempt("flushing metrics", flush)
        if error is not None and not self.attached:
            msg = f"{type(error).__name__}: {error}"
            attempt("tagging the error", lambda: self.set_tags({"gan_pipe.error": msg[:5000]}))
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            attempt("logging error.txt", lambda: self.log_text(text, "error.txt"))
        attempt("flushing async logging", self._mlflow.flush_async_logging)
        attempt("stopping the heartbeat", self._stop_heartbeat)
        attempt("keeping unsent metrics", lambda: self.spool.add_metrics(self._sender.close()))
        if not self.attached:  # someone else's run: add to it, never change its status
            self._set_status(status, attempt)
        attempt("closing the spool", self._close_spool)

    def _set_status(self, status: str, attempt: Callable[[str, Callable[[], Any]], bool]) -> None:
        if self.link.remote:  # through the link (the spool keeps it), then forget it here
            end_time = int(time.time() * 1000)
            attempt(
                f"ending the run {status}",
                lambda: self._store(
                    lambda: self.client.set_terminated(self.run_id, status, end_time),
                    lambda: self.spool.set_end(status, end_time),
                ),
            )
            attempt("forgetting the active run", lambda: _forget_active_run(self.run_id))
            return
        if not attempt(f"ending the run {status}", lambda: self._mlflow.end_run(status=status)):
            # end_run pops the active run before it writes: setting the status again is safe
            attempt(
                f"setting status {status}",
                lambda: self.client.set_terminated(self.run_id, status=status),
            )

    def _close_spool(self) -> None:
        if not self.spool.pending():
            self.spool.close()
            return
        self.spool.close()
        log.warning(
            "run %s: the tracking server did not take everything; kept in %s (%s): upload it "
            "with gan-pipe sync %s",
            self.run_id,
            self.spool.dir,
            self.spool.summary(),
            self.run_id,
        )


def _forget_active_run(run_id: str) -> None:
    """Pop ``run_id`` from MLflow's active runs without writing (``mlflow.end_run`` would,
    and MLflow ends a run still active at exit as FINISHED)."""
    from mlflow.environment_variables import MLFLOW_RUN_ID
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    stack[:] = [r for r in stack if r.info.run_id != run_id]
    if MLFLOW_RUN_ID.get() == run_id:
        MLFLOW_RUN_ID.unset()


def _param_value(v: Any) -> str:
    s = str(v)
    return s if len(s) <= MAX_PARAM_LEN else s[: MAX_PARAM_LEN - 3] + "..."
