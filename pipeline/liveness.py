"""Is the process that writes a run still alive? Heartbeats, stale runs, refusing a second writer.

Every gan-pipe process that writes into a run (run, resume, evaluate) tags it with
``gan_pipe.pid``, ``gan_pipe.host`` and ``gan_pipe.heartbeat`` (unix seconds), and renews the
heartbeat every ``GAN_PIPE_FLUSH_SECONDS`` (default 5) until it ends, when the heartbeat tag is
removed. A run is *alive* while its heartbeat is younger than ``GAN_PIPE_STALE_SECONDS``
(default 3 x the flush interval + 30 s), or, on the host that wrote it, while its pid still
exists (a process stuck in a tracking outage cannot renew its heartbeat). On that host a gone
pid means the process is dead at once, whatever its heartbeat's age. A run without a
heartbeat (ended, or written by an older gan-pipe) has no live writer once it is older than
the stale limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HEARTBEAT = "gan_pipe.heartbeat"
PID = "gan_pipe.pid"
HOST = "gan_pipe.host"
KILLED_REASON = "gan_pipe.killed_reason"
#: Who holds the run: {"doing", "pid", "host", "time", "nonce"} as JSON (see :func:`claim`).
CLAIM = "gan_pipe.claim"
#: Tags of a failed or killed attempt, cleared when the run is resumed.
ERROR_TAGS = ("gan_pipe.error", "gan_pipe.failed_stage", "gan_pipe.stage", KILLED_REASON)

DEFAULT_FLUSH_SECONDS = 5.0
#: How long a claimant on a store without a file lock waits before reading its claim back.
DEFAULT_CLAIM_SECONDS = 2.0
STALE_MARGIN_SECONDS = 30.0


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        from .errors import UserError

        raise UserError(f"{name}={raw!r}: expected a positive number of seconds")
    return value


def flush_interval() -> float:
    """Seconds between metric flushes and heartbeats (``GAN_PIPE_FLUSH_SECONDS``)."""
    return _env_seconds("GAN_PIPE_FLUSH_SECONDS", DEFAULT_FLUSH_SECONDS)


def stale_after() -> float:
    """Age at which a heartbeat means a dead process (``GAN_PIPE_STALE_SECONDS``)."""
    return _env_seconds("GAN_PIPE_STALE_SECONDS", 3 * flush_interval() + STALE_MARGIN_SECONDS)


def this_host() -> str:
    return socket.gethostname()


def identity() -> dict[str, str]:
    """The tags that name this process."""
    return {PID: str(os.getpid()), HOST: this_host(), HEARTBEAT: f"{time.time():.0f}"}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


@dataclass
class Liveness:
    alive: bool
    #: seconds since the last sign of life (heartbeat, else the run's start); None if unknown
    age: float | None
    pid: str | None
    host: str | None
    why: str

    def describe(self) -> str:
        where = f"pid {self.pid} on host {self.host}" if self.pid else "an unknown process"
        return f"{where}, {self.why}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def liveness(run: Any, now: float | None = None) -> Liveness:
    """Whether the process writing ``run`` (an MLflow Run) is alive, with the reason."""
    now = time.time() if now is None else now
    tags = run.data.tags
    pid, host = tags.get(PID), tags.get(HOST)
    beat: float | None = None
    try:
        beat = float(tags[HEARTBEAT])
    except (KeyError, ValueError):
        pass
    limit = stale_after()
    if beat is not None:
        age: float | None = max(0.0, now - beat)
        sign = f"last heartbeat {_duration(age)} ago"
    else:
        start = run.info.start_time
        age = max(0.0, now - start / 1000) if start else None
        sign = "no heartbeat" + (f", started {_duration(age)} ago" if age is not None else "")
    if beat is None:  # ended cleanly (the tag is removed), or a process that never beat
        if age is not None and age <= limit and pid is None:
            return Liveness(True, age, pid, host, f"{sign}, just started?")
        return Liveness(False, age, pid, host, sign)
    if host == this_host() and pid and pid.isdigit():
        if pid_alive(int(pid)):
            return Liveness(True, age, pid, host, f"process still running ({sign})")
        return Liveness(False, age, pid, host, f"process gone ({sign})")
    if beat is not None and age is not None and age <= limit:
        return Liveness(True, age, pid, host, sign)
    return Liveness(False, age, pid, host, f"{sign}, older than {_duration(limit)}")


def stale_message(run: Any, live: Liveness) -> str:
    """What resume says about a run it takes over from a dead process."""
    age = f" for {_duration(live.age)}" if live.age is not None else ""
    who = f" (pid {live.pid} on host {live.host})" if live.pid else ""
    return f"run {run.info.run_id} was RUNNING with no heartbeat{age}: its process{who} died"


def _holder(run: Any) -> dict[str, Any]:
    """The run's claim tag, parsed ({} if none or unreadable)."""
    try:
        held = json.loads(run.data.tags.get(CLAIM, "{}"))
    except ValueError:
        return {}
    return held if isinstance(held, dict) else {}


def _stop_hint(pid: Any, host: Any) -> str:
    if host == this_host():
        return f"stop it with Ctrl-C in its terminal or `kill {pid}`"
    return f"stop it on {host} (Ctrl-C, or `kill {pid}` there)"


def _busy(run_id: str, doing: str, pid: Any, host: Any, command: str, how: str) -> Any:
    from .errors import UserError

    return UserError(
        f"run {run_id} is being {doing} by {how} (pid {pid} on host {host}); gan-pipe "
        f"{command} would write into the same run. Wait for it to end or "
        f"{_stop_hint(pid, host)}, then run gan-pipe {command} {run_id} again"
    )


def check_not_alive(run: Any, command: str) -> None:
    """A UserError if a live process writes into ``run``."""
    live = liveness(run)
    if live.alive:
        held = _holder(run)
        doing = held.get("doing", "written") if str(held.get("pid")) == live.pid else "written"
        if live.pid is None:
            from .errors import UserError

            raise UserError(f"run {run.info.run_id} is being written by {live.describe()}")
        raise _busy(run.info.run_id, doing, live.pid, live.host, command, "a live process")


def refuse_if_alive(run_id: str, command: str) -> Any:
    """The run (or None when the store has no such run); a UserError if a live process
    writes into it, so a second one never does."""
    from mlflow.exceptions import MlflowException

    from .tracking import client

    c, _ = client()
    try:
        run = c.get_run(run_id)
    except MlflowException:
        return None  # the caller reports a missing run in its own words
    check_not_alive(run, command)
    return run


# ------------------------------------------------------------------ claiming a run
def claim_wait() -> float:
    """Seconds a claim token is left before it is read back (``GAN_PIPE_CLAIM_SECONDS``)."""
    return _env_seconds("GAN_PIPE_CLAIM_SECONDS", DEFAULT_CLAIM_SECONDS)


def _lock_path(uri: str, run_id: str) -> Path | None:
    """The lock file that makes claims on an sqlite store atomic; None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :])
    return db.with_name(db.name + ".claims") / f"{run_id}.lock"


class Claim:
    """This process's exclusive right to write one run (see :func:`claim`)."""

    def __init__(self, token: str, lock: IO[str] | None):
        self.token = token
        self._lock = lock

    def release(self) -> None:
        """Let another process claim the run (the caller removes the claim tag)."""
        if self._lock is not None:
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def _read_holder(fh: IO[str]) -> dict[str, Any]:
    """The token the lock's holder wrote; it writes it right after locking, so an empty file
    is read again for up to a second."""
    for _ in range(10):
        fh.seek(0)
        text = fh.read()
        if text:
            try:
                held = json.loads(text)
            except ValueError:
                held = {}
            return held if isinstance(held, dict) else {}
        time.sleep(0.1)
    return {}


def _take_lock(path: Path, run_id: str, command: str, token: str) -> IO[str]:
    """The run's lock file, locked by this process with ``token`` in it (so a process that
    finds it locked can name the holder); a UserError naming the holder if it is locked."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held until Claim.release
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held = _read_holder(fh)
        fh.close()
        doing = held.get("doing", "resumed")
        raise _busy(
            run_id, doing, held.get("pid"), held.get("host"), command, "another process"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(token)
    fh.flush()
    return fh


def claim(c: Any, uri: str, run_id: str, doing: str, command: str) -> Claim:
    """Make this process the only writer of ``run_id`` (``doing``: "resumed", "evaluated").

    Two processes that passed :func:`refuse_if_alive` at the same moment must not both write.
    On an sqlite store an OS file lock beside it decides, held until :meth:`Claim.release`.
    Elsewhere (a server) each claimant writes a token tag, waits ``claim_wait()`` seconds and
    reads it back: the last writer wins and the others refuse, naming it. A claimant that
    finds a live writer, or a fresh claim of another live process, refuses at once."""
    token = json.dumps(
        {
            "doing": doing,
            "pid": os.getpid(),
            "host": this_host(),
            "time": round(time.time()),
            "nonce": secrets.token_hex(4),
        }
    )
    path = _lock_path(uri, run_id)
    lock = _take_lock(path, run_id, command, token) if path is not None else None
    try:
        run = c.get_run(run_id)
        check_not_alive(run, command)
        held = _holder(run)
        if _claim_fresh(held):
            raise _busy(
                run_id, held["doing"], held["pid"], held["host"], command, "another process"
            )
        c.set_tag(run_id, CLAIM, token)
        if lock is None:  # no lock: the last token written wins
            time.sleep(claim_wait())
            held = _holder(c.get_run(run_id))
            if held.get("nonce") != json.loads(token)["nonce"]:
                raise _busy(
                    run_id,
                    held.get("doing", "written"),
                    held.get("pid"),
                    held.get("host"),
                    command,
                    "another process",
                )
    except BaseException:
        Claim(token, lock).release()
        raise
    return Claim(token, lock)


def _claim_fresh(held: dict[str, Any]) -> bool:
    """Whether a claim tag names another process that may still be writing."""
    pid, host, when = held.get("pid"), held.get("host"), held.get("time")
    if not isinstance(pid, int) or not isinstance(when, int | float) or not host:
        return False
    if host == this_host():
        return pid != os.getpid() and pid_alive(pid)
    return time.time() - when <= stale_after()


def running(c: Any, experiment_ids: list[str]) -> list[tuple[Any, Liveness]]:
    """RUNNING training runs of ``experiment_ids``, each with its liveness."""
    from mlflow.entities import ViewType

    out = []
    page_token = None
    while True:
        runs = c.search_runs(
            experiment_ids,
            "attributes.status = 'RUNNING'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=page_token,
        )
        for run in runs:
            tags = run.data.tags
            if PID not in tags and "gan_pipe.recipe" not in tags:
                continue  # not a training run (a study's own runs, someone else's)
            out.append((run, liveness(run)))
        page_token = runs.token
        if not page_token:
            return out


def list_runs(experiment: str | None, only_stale: bool) -> list[tuple[str, Any, Liveness]]:
    """(experiment name, run, liveness) of RUNNING gan-pipe runs, dead ones only if
    ``only_stale``; in one experiment or all."""
    from mlflow.entities import ViewType

    from .errors import UserError, did_you_mean
    from .tracking import client

    c, _ = client()
    if experiment is not None:
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in c.search_experiments()]
            raise UserError(f"no experiment {experiment!r}{did_you_mean(experiment, names)}")
        exps = [exp]
    else:
        exps = c.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    out = []
    for exp in exps:
        for run, live in running(c, [exp.experiment_id]):
            if live.alive and only_stale:
                continue
            out.append((exp.name, run, live))
    return out


def mark_killed(run: Any, live: Liveness) -> None:
    """End a run whose process died as KILLED, saying why; its end time is its last sign of
    life."""
    from .tracking import client

    c, _ = client()
    reason = (
        f"its process died ({live.describe()}); marked KILLED by gan-pipe runs --mark-killed "
        f"on {this_host()} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    c.set_tag(run.info.run_id, KILLED_REASON, reason)
    end = None
    if live.age is not None:
        end = int((time.time() - live.age) * 1000)
    c.set_terminated(run.info.run_id, status="KILLED", end_time=end)
    if HEARTBEAT in run.data.tags:
        c.delete_tag(run.info.run_id, HEARTBEAT)
