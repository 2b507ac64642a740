"""Training progress: a live bar with losses on a terminal, periodic lines elsewhere (CI logs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class _Bar:
    """Live rich bar; ``show`` updates the loss text."""

    def __init__(self, progress=None, task=None) -> None:
        self._progress, self._task = progress, task

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def show(self, metrics: dict[str, float]) -> None:
        if self._progress is not None and metrics:
            self._progress.update(self._task, losses=_fmt(metrics))


class _Lines(_Bar):
    """Off a terminal (CI logs): a line at the first logging step past each ~10% of the run,
    so every line shows losses measured at the step it names."""

    def __init__(self, total: int, title: str, start: int = 0) -> None:
        super().__init__()
        self.total, self.title, self.done, self.first = total, title, start, start
        self.every = max(1, total // 10)
        self.next_line = (start // self.every + 1) * self.every
        self.start = time.perf_counter()

    def advance(self) -> None:
        self.done += 1

    def show(self, metrics: dict[str, float]) -> None:
        step = self.done + 1  # show() comes before advance() for the step just trained
        if not metrics or (step < self.next_line and step < self.total):
            return
        self.next_line = (step // self.every + 1) * self.every
        el = time.perf_counter() - self.start
        eta = el / (step - self.first) * (self.total - step)
        print(
            f"train {self.title}: step {step}/{self.total} "
            f"({100 * step / self.total:.0f}%, {el:.0f}s elapsed, ~{eta:.0f}s left)  "
            f"{_fmt(metrics)}",
            file=sys.stderr,
            flush=True,
        )


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k.removeprefix('train/')} {v:.4g}" for k, v in metrics.items())


@contextmanager
def progress_bar(
    total: int, enabled: bool = True, title: str = "train", start: int = 0
) -> Iterator[_Bar]:
    """A bar over steps ``start + 1 .. total`` (a resumed run starts at its checkpoint)."""
    if not enabled:
        yield _Bar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    if not console.is_terminal:
        yield _Lines(total, title, start)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
        console=console,
    )
    with progress:
        task = progress.add_task(f"train {title}", total=total, completed=start, losses="")
        yield _Bar(progress, task)
