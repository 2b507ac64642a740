"""The one place a run talks to MLflow: buffering, naming, run lifecycle.

* Store selection and experiments live in :mod:`.store` (re-exported here).
* Metrics are buffered in memory and sent in batches by a background sender
  (:class:`.link.Sender`): one synchronous ``log_metric`` costs ~5 ms on sqlite, far more
  than a small training step. A remote server that goes away is ridden out up to
  ``GAN_PIPE_TRACKING_TIMEOUT``, then the run fails fast with what was not sent kept in a
  local spool (:mod:`.link`, :mod:`.spool`). The buffer is flushed when it fills, when
  ``GAN_PIPE_FLUSH_SECONDS`` (default 5) have passed since the last flush (checked as metrics
  are logged), before every artifact (checkpoints), at evaluation and at the end (also on
  error): the UI follows a run live, and a killed process loses at most that window.
* Artifacts (files, figures, images, the MLflow model) are written by Tracker's base
  :class:`.tracking_artifacts.ArtifactLogging`, through the same spool while the server is down.
* While the run is open a background thread renews its heartbeat tag every flush interval
  (see :mod:`.liveness`): a run whose process died is told apart from one still training.
* The run's status tells the truth: FINISHED, FAILED (with the error as a tag and an
  artifact), KILLED on Ctrl-C. Closing it survives failures of the store and of plugins:
  each step is tried on its own, and the status is set whatever failed before.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from . import liveness
from .link import MAX_BATCH, Link, Sender, TrackingUnavailable
from .spool import Spool, missing_points
from .store import (  # noqa: F401  (re-exported: callers import them from here)
    EXPERIMENT_KIND,
    HTTP_DEFAULTS,
    bound_http_retries,
    client,
    default_store,
    ensure_store,
    experiment_location,
    get_or_create_experiment,
    ui_command,
)
from .tracking_artifacts import ArtifactLogging

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000


class Tracker(ArtifactLogging):
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
