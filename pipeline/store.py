"""Where runs are stored: the default sqlite store, creating and migrating it once under a file
lock, the MLflow client, bounded HTTP retries, and experiments created idempotently.

* No ``MLFLOW_TRACKING_URI``: an embedded sqlite store ``./mlflow.db`` with artifacts under
  ``./mlartifacts`` (absolute paths), so ``mlflow ui --backend-store-uri sqlite:///mlflow.db``
  shows every run made in this directory. With the variable set, that server or store.
* HTTP stores: unless the user set them, MLflow's request timeout and retries are bounded
  (``MLFLOW_HTTP_REQUEST_TIMEOUT`` 30 s, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 3), so a server
  that never answers fails a call in about 2 minutes instead of about 16.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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
