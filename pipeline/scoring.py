"""Scoring sample files with any registered metric (``gan-pipe score``).

Metrics see the same interface they see in a run: ``ctx.dataset`` (here built from the real
samples), ``ctx.generate(n)`` (here the first n rows of the fake samples), ``ctx.device`` and
``ctx.tracker`` (here one that keeps what metrics log, so nothing touches MLflow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .context import Dataset
from .errors import RecipeError, UserError, did_you_mean
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


#: A .npy file starts with this, a .npz file (a zip archive) with the second.
_MAGIC = (b"\x93NUMPY", b"PK\x03\x04")


def parse_range(text: str) -> tuple[float, float]:
    """``"LO,HI"`` -> (lo, hi): two finite numbers, lo < hi."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--range {text!r}: expected two numbers LO,HI, e.g. 0,1 or -1,1") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UserError(f"--range {text!r}: LO and HI must be finite numbers, e.g. -1,1")
    if lo >= hi:
        example = f"{hi:g},{lo:g}" if lo > hi else "-1,1"
        raise UserError(f"--range {text!r}: LO must be below HI, e.g. {example}")
    return lo, hi


def _read_array(path: Path, what: str) -> Any:
    """The one numeric array in a .npy or .npz file."""
    import numpy as np

    if not path.exists():
        raise UserError(f"--{what}: file {path} not found")
    if not path.is_file():
        raise UserError(f"--{what}: {path} is not a file")
    with path.open("rb") as f:
        head = f.read(6)
    if not head.startswith(_MAGIC):
        raise UserError(
            f"--{what}: {path} is not a .npy/.npz array file (no numpy header: a text, CSV or "
            "pickle file?); save the samples with numpy.save(path, array)"
        )
    objects = (
        f"--{what}: {path} holds Python objects (dtype object), not a numeric array; save "
        "one, e.g. numpy.save(path, numpy.asarray(samples, dtype=numpy.float32))"
    )
    try:
        arr = np.load(path, allow_pickle=False)
        if hasattr(arr, "files"):
            if len(arr.files) != 1:
                raise UserError(
                    f"--{what}: {path} holds {len(arr.files)} arrays; give a file with one"
                )
            arr = arr[arr.files[0]]
    except UserError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UserError(objects) from None
        raise UserError(f"--{what}: {path} is not a readable .npy/.npz array ({e})") from None
    except Exception as e:  # numpy raises several types for a damaged file
        raise UserError(f"--{what}: {path} is not a readable .npy/.npz array ({e})") from None
    if arr.dtype == object:
        raise UserError(objects)
    if np.iscomplexobj(arr):
        raise UserError(
            f"--{what}: {path} holds complex values ({arr.dtype}); metrics score real numbers: "
            "save the part you mean, e.g. samples.real or numpy.abs(samples)"
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"--{what}: {path} holds {arr.dtype} values, not numbers")
    return arr


def _bad_rows(path: Path, mask: Any) -> str:
    """E.g. "a.npy has 3 rows (of 200; the first is row 17)", for a boolean mask over rows."""
    import numpy as np

    idx = np.flatnonzero(mask)
    rows = "1 row" if len(idx) == 1 else f"{len(idx)} rows"
    return f"{path} has {rows} (of {len(mask)}; the first is row {idx[0]})"


def load_samples(path: Path, what: str) -> Any:
    """A .npy (or .npz with one array) file of samples, rows first, as a float32 tensor.

    Checked in the file's own dtype (every value finite), then after the cast to float32 (the
    metrics compute in float32): nothing turns into inf or NaN unnoticed.
    """
    import numpy as np
    import torch

    arr = _read_array(path, what)
    if arr.ndim == 1:
        arr = arr[:, None]  # a 1-D file is n samples of one value
    if arr.ndim < 2 or len(arr) < 2 or math.prod(arr.shape[1:]) == 0:
        raise UserError(
            f"--{what}: {path} must hold at least 2 samples as rows of at least one value, "
            f"got shape {arr.shape}"
        )
    rows = arr.reshape(len(arr), -1)  # checked in the file's own dtype: nothing rounds yet
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise UserError(
            f"--{what}: {_bad_rows(path, bad)} with NaN or infinite values; drop them "
            "first, e.g. x = x[numpy.isfinite(x.reshape(len(x), -1)).all(axis=1)]"
            + (" (a generator that outputs NaN has diverged)" if what == "fake" else "")
        )
    with np.errstate(over="ignore"):  # overflow is reported below, not warned about
        x32 = arr.astype(np.float32)
    big = ~np.isfinite(x32.reshape(len(arr), -1)).all(axis=1)
    if big.any():
        raise UserError(
            f"--{what}: {_bad_rows(path, big)} with values beyond float32's range "
            f"(largest {np.format_float_scientific(np.abs(rows).max(), 2, trim='-')}; float32 "
            "stops at 3.4e38), and the metrics "
            "compute in float32; rescale the samples"
        )
    return torch.from_numpy(np.ascontiguousarray(x32))


def _check_magnitude(x: Any, ds: Dataset, what: str, path: Path, where: str) -> None:
    """Reject values whose squared distances would overflow float32 once mapped to [0, 1]."""
    lo, hi = ds.value_range
    top = float(((x.double() - lo) / (hi - lo)).abs().max())
    limit = math.sqrt(3.4e38 / math.prod(x.shape[1:])) * 1e-3  # room for sums and 1/sigma^2
    if top > limit:
        raise UserError(
            f"--{what}: {path} holds values up to {float(x.abs().max()):.3g}, too large for "
            f"{where}: squared distances between rows would overflow float32; "
            + (
                "give the data's range with --range LO,HI, or rescale the samples"
                if where.startswith("--range")
                else "give samples in the dataset's scale"
            )
        )


def _parse_params(items: list[str], metrics: list[str], known: list[str]) -> dict[str, dict]:
    """``--param METRIC.KEY=VALUE`` items, by metric (each metric selected with -m)."""
    per_metric: dict[str, dict[str, Any]] = {m: {} for m in metrics}
    example = f"e.g. --param {metrics[0]}.n_samples=5000"
    for item in items:
        if "=" not in item:
            raise UserError(f"--param {item!r}: expected METRIC.KEY=VALUE, {example}")
        try:
            keys, value = parse_override(item)
        except RecipeError as e:
            raise UserError("--param " + "; ".join(e.problems)) from None
        if len(keys) != 2:
            raise UserError(f"--param {item!r}: expected METRIC.KEY=VALUE, {example}")
        name, key = keys
        if name not in per_metric:
            selected = ", ".join(metrics)
            if name in known:
                raise UserError(
                    f"--param {item!r}: {name} was not selected with -m (selected: {selected}); "
                    f"add -m {name}"
                )
            raise UserError(
                f"--param {item!r}: {name!r} is not a metric selected with -m (selected: "
                f"{selected}){did_you_mean(name, metrics)}"
            )
        per_metric[name][key] = value
    return per_metric


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

    metrics = list(dict.fromkeys(metrics))  # -m parzen -m parzen runs it once
    comps = {name: registry.get("metric", name) for name in metrics}
    per_metric = _parse_params(params or [], metrics, registry.names("metric"))
    validated = {}
    for name, comp in comps.items():
        try:
            validated[name] = comp.validate_params(per_metric[name])
        except ValidationError as e:
            lines = format_validation_errors(e, comp.params, prefix=name)
            raise UserError("bad --param: " + "; ".join(lines)) from None

    real = load_samples(real_path, "real")
    fake = load_samples(fake_path, "fake")
    if real.shape[1:] != fake.shape[1:]:
        raise UserError(
            f"real samples have shape {tuple(real.shape[1:])} per row, fake {tuple(fake.shape[1:])}"
        )
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
    lo, hi = ds.value_range
    where = (
        f"--range {lo:g},{hi:g}"
        if dataset is None
        else f"the value range {lo:g},{hi:g} of {dataset}"
    )
    _check_magnitude(real, ds, "real", real_path, where)
    _check_magnitude(fake, ds, "fake", fake_path, where)
    ctx = ScoreContext(dataset=ds, fake=fake, device=torch.device(device))
    for what, x in (("real", real), ("fake", fake)):
        if dataset is None and (x.min() < lo or x.max() > hi):
            ctx.notes.append(
                f"{what} values span [{x.min():.3g}, {x.max():.3g}], outside --range "
                f"{lo:g},{hi:g}; Parzen maps --range to [0, 1], so give the data's range "
                "(e.g. --range -1,1)"
            )
    values: dict[str, float] = {}
    reported_by: dict[str, str] = {}
    for name in metrics:
        p = validated[name]
        ctx.metric = name
        result = dict(comps[name].factory(p).compute(ctx))
        clash = sorted(result.keys() & values.keys())
        if clash:
            raise UserError(
                f"metrics {reported_by[clash[0]]} and {name} both report "
                f"{', '.join(clash)}; score them in separate calls"
            )
        values.update(result)
        reported_by.update(dict.fromkeys(result, name))
        grid = getattr(p, "sigmas", None)
        if "parzen_sigma" in values and grid and getattr(p, "sigma", None) is None:
            if values["parzen_sigma"] in (min(grid), max(grid)):
                ctx.notes.append(
                    f"{name}: the chosen sigma {values['parzen_sigma']:.3g} is at the edge of "
                    f"the grid [{min(grid):.3g}, {max(grid):.3g}]; the best sigma may lie "
                    f"outside it (check --range, or --param {name}.sigmas=[...])"
                )
    return values, ctx.notes
