"""Scoring sample files with any registered metric (``gan-pipe score``).

Metrics see the same interface they see in a run: ``ctx.dataset`` (here built from the real
samples), ``ctx.generate(n)`` (here the first n rows of the fake samples), ``ctx.device`` and
``ctx.tracker`` (here one that keeps what metrics log, so nothing touches MLflow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .context import Dataset
from .errors import UserError
from .recipe import format_validation_errors, parse_override
from .registry import Registry


class MemoryTracker:
    """Collects what metrics would log; used where there is no MLflow run."""

    def __init__(self) -> None:
        self.dicts: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.dicts[artifact_file] = data

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.update(metrics)

    def __getattr__(self, name: str) -> Any:  # figures, images, artifacts: dropped
        if name.startswith("log_") or name in ("set_tags", "flush"):
            return lambda *a, **k: None
        raise AttributeError(name)


@dataclass
class ScoreContext:
    """The slice of :class:`gan_pipe.context.RunContext` that metrics use."""

    dataset: Dataset
    fake: Any
    device: Any
    tracker: MemoryTracker = field(default_factory=MemoryTracker)
    step: int = 0
    notes: list[str] = field(default_factory=list)
    metric: str = ""

    def generate(self, n: int, batch_size: int = 0) -> Any:
        if n > len(self.fake):
            note = (
                f"{self.metric} asked for {n} generated samples; the fake file has "
                f"{len(self.fake)}, so it uses those (--param {self.metric}.n_samples=N)"
            )
            if note not in self.notes:
                self.notes.append(note)
        return self.fake[:n].to(self.device)


def load_samples(path: Path, what: str) -> Any:
    """A .npy (or .npz with one array) file of samples, rows first, as a float32 tensor."""
    import numpy as np
    import torch

    if not path.exists():
        raise UserError(f"--{what}: file {path} not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises several types for a bad file
        raise UserError(f"--{what}: {path} is not a .npy/.npz array file ({e})") from None
    if hasattr(arr, "files"):
        if len(arr.files) != 1:
            raise UserError(f"--{what}: {path} holds {len(arr.files)} arrays; give a file with one")
        arr = arr[arr.files[0]]
    if arr.ndim == 1:
        arr = arr[:, None]  # a 1-D file is n samples of one value
    if arr.ndim < 2 or len(arr) < 2:
        raise UserError(
            f"--{what}: {path} must hold at least 2 samples as rows, got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"--{what}: {path} holds {arr.dtype} values, not numbers")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def score(
    registry: Registry,
    real_path: Path,
    fake_path: Path,
    metrics: list[str],
    params: list[str] | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    dataset: str | None = None,
    device: str = "cpu",
) -> tuple[dict[str, float], list[str]]:
    """Compute metrics on two sample files; returns (values, notes)."""
    import numpy as np
    import torch

    real = load_samples(real_path, "real")
    fake = load_samples(fake_path, "fake")
    if real.shape[1:] != fake.shape[1:]:
        raise UserError(
            f"real samples have shape {tuple(real.shape[1:])} per row, fake {tuple(fake.shape[1:])}"
        )
    per_metric: dict[str, dict[str, Any]] = {m: {} for m in metrics}
    for item in params or []:
        keys, value = parse_override(item)
        if len(keys) != 2 or keys[0] not in per_metric:
            raise UserError(
                f"--param {item!r}: expected METRIC.KEY=VALUE with METRIC one of "
                f"{', '.join(metrics)}"
            )
        per_metric[keys[0]][keys[1]] = value

    if dataset is not None:
        ds = registry.get("dataset", dataset).factory(
            registry.get("dataset", dataset).params.model_validate({})
        )
        ds.test = real
    else:
        # Parzen chooses sigma on a validation split: hold out a random 10% of the real rows
        # (random, not the first rows: sample files are often sorted).
        n_val = max(1, len(real) // 10)
        perm = torch.from_numpy(np.random.default_rng(0).permutation(len(real)))
        ds = Dataset(
            name=real_path.stem,
            train=real,
            val=real[perm[:n_val]],
            test=real[perm[n_val:]],
            value_range=value_range,
            is_image=real.ndim == 4,
        )
    ctx = ScoreContext(dataset=ds, fake=fake, device=torch.device(device))
    lo, hi = value_range
    for what, x in (("real", real), ("fake", fake)):
        if dataset is None and (x.min() < lo or x.max() > hi):
            ctx.notes.append(
                f"{what} values span [{x.min():.3g}, {x.max():.3g}], outside --range "
                f"{lo:g},{hi:g}; Parzen maps --range to [0, 1], so give the data's range "
                "(e.g. --range -1,1)"
            )
    values: dict[str, float] = {}
    for name in metrics:
        comp = registry.get("metric", name)
        try:
            p = comp.validate_params(per_metric[name])
        except ValidationError as e:
            lines = format_validation_errors(e, comp.params, prefix=name)
            raise UserError("bad --param: " + "; ".join(lines)) from None
        ctx.metric = name
        values.update(comp.factory(p).compute(ctx))
        grid = getattr(p, "sigmas", None)
        if "parzen_sigma" in values and grid and getattr(p, "sigma", None) is None:
            if values["parzen_sigma"] in (min(grid), max(grid)):
                ctx.notes.append(
                    f"{name}: the chosen sigma {values['parzen_sigma']:.3g} is at the edge of "
                    f"the grid [{min(grid):.3g}, {max(grid):.3g}]; the best sigma may lie "
                    f"outside it (check --range, or --param {name}.sigmas=[...])"
                )
    return values, ctx.notes
