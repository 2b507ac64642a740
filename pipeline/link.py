"""The tracking server as one run sees it: writes with a deadline, outages timed, fail-fast.

A remote store (``http://``, ``https://``) can go away. Every write of a run goes through
:meth:`Link.call`: it runs in a daemon thread and is waited on for at most the time left
before the limit (``GAN_PIPE_TRACKING_TIMEOUT`` seconds, default 180). A write that fails for
want of the server (no connection, no answer in time, a 5xx) starts an outage and returns
False: the caller keeps the data (metrics stay queued in the :class:`Sender`, everything else
goes to the run's spool). During an outage a write is tried at most once per
:data:`PROBE_SECONDS` (the others return False at once); the first one that lands ends the
outage. Once an outage has lasted longer than the limit, :meth:`Link.check` raises
:class:`TrackingUnavailable`, naming the server and the limit.

A local store (sqlite, a folder) has no outages: its writes run inline and raise as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import UserError
from .liveness import _env_seconds

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 180.0
#: During an outage, writes are tried at most this often.
PROBE_SECONDS = 2.0
#: MLflow accepts at most 1000 metrics per log_batch call.
MAX_BATCH = 1000


class TrackingUnavailable(UserError):
    """The tracking server did not answer for longer than ``GAN_PIPE_TRACKING_TIMEOUT``."""


def tracking_timeout() -> float:
    """Seconds of outage a run rides out (``GAN_PIPE_TRACKING_TIMEOUT``, default 180)."""
    return _env_seconds("GAN_PIPE_TRACKING_TIMEOUT", DEFAULT_TIMEOUT)


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def is_outage(e: BaseException) -> bool:
    """Whether ``e`` says the server could not be reached (rather than that it refused the
    request: a 4xx is the request's fault and is raised as before)."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):  # no connection, timeouts and 5xx map to >= 500
        return e.get_http_status_code() >= 500
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(status, int):  # requests.HTTPError from an artifact upload
        return status >= 500
    return isinstance(e, OSError)  # requests' errors are OSErrors; so are socket errors


class Link:
    """Outage bookkeeping for one run's writes to ``uri``."""

    def __init__(self, uri: str, limit: float | None = None):
        self.uri = uri
        self.remote = is_remote(uri)
        self.limit = tracking_timeout() if limit is None else limit
        #: added to the fail-fast message: where the run's data is kept, what to do next
        self.hint = ""
        self.error = ""
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_try = 0.0

    @property
    def up(self) -> bool:
        return self._down_since is None

    def down_for(self) -> float:
        since = self._down_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def call(self, fn: Callable[[], Any]) -> bool:
        """Run ``fn``: True when it landed, False when the server is down (keep the data).
        An error that is not an outage is raised."""
        if not self.remote:
            fn()
            return True
        start = time.monotonic()
        with self._lock:
            if self._down_since is not None and start - self._last_try < PROBE_SECONDS:
                return False
            self._last_try = start
        budget = max(0.1, self.limit - self.down_for())
        done, failed = threading.Event(), []

        def work() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                failed.append(e)
            finally:
                done.set()

        threading.Thread(target=work, name="gan-pipe-tracking-call", daemon=True).start()
        if not done.wait(budget):  # it may still land later: every write is idempotent
            self._down(start, f"no answer within {budget:.0f} s")
            return False
        if failed:
            if not is_outage(failed[0]):
                raise failed[0]
            self._down(start, f"{type(failed[0]).__name__}: {failed[0]}")
            return False
        self._up()
        return True

    def _down(self, since: float, why: str) -> None:
        with self._lock:
            self.error = why[:300]
            if self._down_since is not None:
                return
            self._down_since = since
        log.warning(
            "the tracking server %s does not answer (%s); keeping the run's data and retrying "
            "for up to %g s (GAN_PIPE_TRACKING_TIMEOUT)",
            self.uri,
            self.error,
            self.limit,
        )

    def _up(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning(
                "the tracking server %s answers again after %.0f s; sending what was kept",
                self.uri,
                time.monotonic() - since,
            )

    def check(self) -> None:
        """Raise :class:`TrackingUnavailable` once an outage has lasted past the limit."""
        age = self.down_for()
        if age > self.limit:
            raise TrackingUnavailable(self.message(age))

    def message(self, age: float) -> str:
        return (
            f"the tracking server {self.uri} has not answered for {age:.0f} s, longer than "
            f"the limit of {self.limit:g} s (GAN_PIPE_TRACKING_TIMEOUT); last error: "
            f"{self.error}. {self.hint}"
        ).strip()


class Sender:
    """Metric batches sent from a background thread; every point is kept until it landed.

    ``send(chunk, again)`` stores one batch; ``again`` is True while points that may have
    landed in a failed attempt are sent again (the sender filters those out). The thread
    exists only while there is something to send."""

    def __init__(self, link: Link, send: Callable[[list[Any], bool], None]):
        self.link = link
        self._send = send
        self._queue: list[Any] = []
        self._inflight: list[Any] = []
        self._again = False
        self._closed = False
        self._lock = threading.Condition()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def put(self, metrics: list[Any]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("metrics logged after the run ended")
            self._queue.extend(metrics)
            self._start()

    def _start(self) -> None:
        if self._thread is None and self._queue:
            self._thread = threading.Thread(target=self._run, name="gan-pipe-metrics")
            self._thread.daemon = True
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed or not self._queue:
                    self._thread = None
                    self._lock.notify_all()
                    return
                chunk, again = self._queue[:MAX_BATCH], self._again
                self._inflight, self._queue = chunk, self._queue[MAX_BATCH:]
            try:
                ok = self.link.call(lambda: self._send(chunk, again))  # noqa: B023
            except Exception as e:  # noqa: BLE001 - refused values, a broken local store
                log.warning("a batch of %d metric values was not stored: %s", len(chunk), e)
                ok = True  # dropped: sending it again would fail again
            with self._lock:
                self._inflight = []
                if ok:
                    self._again = False
                else:
                    self._queue[:0] = chunk
                    self._again = True
                self._lock.notify_all()
            if not ok:
                self._wake.clear()
                self._wake.wait(PROBE_SECONDS)

    def drain(self, check: Callable[[], None]) -> None:
        """Wait until every point landed; ``check`` (raising) ends the wait in an outage."""
        with self._lock:
            while self._queue or self._inflight:
                self._start()
                self._lock.wait(0.2)
                check()

    def close(self) -> list[Any]:
        """Stop sending; the points that did not land (perhaps one batch that did)."""
        with self._lock:
            self._closed = True
            left, self._queue = self._inflight + self._queue, []
        self._wake.set()
        return left
