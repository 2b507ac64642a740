"""Artifacts of a run: files, figures, images, dicts, text and the MLflow model.

:class:`ArtifactLogging` is the part of :class:`.tracking.Tracker` that writes artifacts: each
goes to the store now, or into the run's spool while the server is down, or, inside
:meth:`~ArtifactLogging.deferred_artifacts`, when the block succeeds (a failed evaluation leaves
no files in the run). It relies on the tracker's client, run id, link, spool, metric buffer
and ``_store``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .link import MAX_BATCH

if TYPE_CHECKING:
    import numpy as np

    from .link import Link
    from .spool import Spool


class ArtifactLogging:
    """Artifact logging of :class:`.tracking.Tracker` (see the module's docstring)."""

    client: Any
    run_id: str
    experiment_id: str
    link: Link
    spool: Spool
    latest: dict[str, Any]
    _deferred: list[Callable[[], None]] | None
    _store: Callable[[Callable[[], Any], Callable[[], None]], None]  # send now, or keep
    flush: Callable[..., None]

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
