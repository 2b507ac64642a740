"""Scoring sample files with any registered metric (``gan-pipe score``).

Metrics see the same interface they see in a run (:class:`gan_pipe.context.EvalContext`):
``ctx.dataset`` (here built from the real samples), ``ctx.generate(n)`` (here the first n rows
of the fake samples), ``ctx.device`` and ``ctx.tracker`` (here a :class:`MemoryTracker`, so
nothing touches MLflow).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .context import Dataset
from .errors import RecipeError, UserError, did_you_mean
from .evaluation import MemoryTracker as MemoryTracker  # noqa: F401  (re-exported)
from .evaluation import SampleContext, add_values, isolated_rng
from .recipe import format_validation_errors, parse_override
from .registry import Registry
from .sample_files import _check_magnitude, _conform, load_samples


@dataclass
class ScoreContext(SampleContext):
    """The context metrics see in ``gan-pipe score``: the fake file's rows; a request for more
    rows than it has gets a note (``notes``) naming the ``--param`` to change."""

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
        return super().generate(n)


#: What metrics need from a dataset that sample files cannot carry: a check, what it is, and
#: the built-in datasets that have it (for the hint to pass --dataset).
_NEEDS: dict[str, tuple[Callable[[Dataset], bool], str, str]] = {
    "modes": (
        lambda ds: (
            (ds.modes is not None and ds.mode_std is not None)
            or ("modes" in ds.info and "mode_std" in ds.info)
        ),
        "the mode centres of a known mixture",
        "ring8|grid25|gaussian-1d",
    ),
    "fid": (
        lambda ds: ds.train_labels is not None,
        "labelled training images for its feature classifier",
        "digits|mnist|fashion-mnist",
    ),
}


@dataclass
class ScoreDataset(Dataset):
    """The dataset metrics see in score mode; records whether a metric mapped its value range
    to [0, 1] (``to_unit``), so the note about values outside the range is given only then."""

    mapped: bool = False

    def to_unit(self, x: Any) -> Any:
        self.mapped = True
        return super().to_unit(x)


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


def _density_note(base: Dataset, real: Any, name: str) -> str | None:
    """A note when the --real rows do not look like samples of ``base``'s exact density (mean
    log-density of up to 5,000 rows vs 5,000 of the dataset's own draws, 5 standard errors
    apart): the KDE KLs compare G with that density, not with the rows."""
    import torch

    n = min(len(real), 5000)
    if n < 2:
        return None
    rows = real[:n].reshape(n, -1).double()
    own = base.sample(5000, generator=torch.Generator().manual_seed(0)).reshape(5000, -1).double()
    a, b = base.log_density(rows).double(), base.log_density(own).double()
    se = float((a.var() / len(a) + b.var() / len(b)).sqrt())
    gap = float(a.mean() - b.mean())
    if abs(gap) <= max(5 * se, 0.05):
        return None
    return (
        f"--real rows do not look like samples of {name} with its default settings (mean "
        f"log-density {float(a.mean()):.3g} vs {float(b.mean()):.3g} for its own samples): "
        "kl_kde and kl_reverse_kde compare the fake rows with that density, not with --real"
    )


def _score_dataset(
    real: Any,
    name: str,
    base: Dataset | None,
    value_range: tuple[float, float],
) -> ScoreDataset:
    """The dataset metrics see: val and test are the real rows (a random 10% held out as
    validation: sample files are often sorted); ``base`` (from --dataset) adds only what it
    knows, never real rows of its own."""
    import numpy as np
    import torch

    n_val = max(1, len(real) // 10)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(real)))
    val, test = real[perm[:n_val]], real[perm[n_val:]]
    if base is None:
        return ScoreDataset(
            name=name,
            train=real,
            val=val,
            test=test,
            value_range=value_range,
            is_image=real.ndim == 4,
        )
    info = dict(base.info)
    if base.test is not None and base.test_labels is not None:
        # fid measures its classifier's accuracy here: the test split is the unlabelled --real
        info["labelled_test"] = (base.test, base.test_labels)
    kept = {f.name: getattr(base, f.name) for f in fields(Dataset)}
    # train (and its labels: fid's classifier), log_density, value_range and info stay; the
    # sampler goes, so no metric draws real rows of its own instead of --real's
    kept.update(val=val, test=test, test_labels=None, sample=None, info=info)
    return ScoreDataset(**kept)


def _range_notes(ds: ScoreDataset, files: dict[str, Any], users: list[str], where: str) -> list:
    lo, hi = ds.value_range
    fix = (
        "give the data's range (e.g. --range -1,1)"
        if where.startswith("--range")
        else "give samples in that scale"
    )
    notes = []
    for what, x in files.items():
        if x.min() < lo or x.max() > hi:
            notes.append(
                f"{what} values span [{x.min():.3g}, {x.max():.3g}], outside {where}; "
                f"{' and '.join(users)} map{'s' if len(users) == 1 else ''} it to [0, 1], so {fix}"
            )
    return notes


def _validated(
    registry: Registry, metrics: list[str], params: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metrics' components and their ``--param`` values validated."""
    comps = {name: registry.get("metric", name) for name in metrics}
    per_metric = _parse_params(params, metrics, registry.names("metric"))
    validated = {}
    for name, comp in comps.items():
        try:
            validated[name] = comp.validate_params(per_metric[name])
        except ValidationError as e:
            lines = format_validation_errors(e, comp.params, prefix=name)
            raise UserError("bad --param: " + "; ".join(lines)) from None
    return comps, validated


def _load_files(
    real_path: Path,
    fake_path: Path,
    base: Dataset | None,
    dataset: str | None,
    value_range: tuple[float, float] | None,
    notes: list[str],
) -> tuple[Any, Any]:
    """Both sample files, in ``base``'s sample shape where a dataset is given."""
    real = load_samples(real_path, "real")
    fake = load_samples(fake_path, "fake")
    if base is not None:
        if value_range is not None and tuple(value_range) != tuple(base.value_range):
            lo, hi = base.value_range
            raise UserError(
                f"--range cannot be combined with --dataset {dataset}: the dataset's value "
                f"range {lo:g},{hi:g} is used (its modes, density or labelled images are in that "
                "scale); leave out --range and give samples in that scale"
            )
        real = _conform(real, base, "real", real_path, notes)
        fake = _conform(fake, base, "fake", fake_path, notes)
    if real.shape[1:] != fake.shape[1:]:
        same = math.prod(real.shape[1:]) == math.prod(fake.shape[1:])
        raise UserError(
            f"real samples have shape {tuple(real.shape[1:])} per row, fake {tuple(fake.shape[1:])}"
            + (
                "; both have the same number of values: save them in one shape "
                "(or pass --dataset, which reshapes rows to its sample shape)"
                if same
                else ""
            )
        )
    return real, fake


def _check_needs(ds: Dataset, metrics: list[str], dataset: str | None) -> None:
    for name in metrics:
        need = _NEEDS.get(name)
        if need is not None and not need[0](ds):
            has = (
                f"dataset {dataset!r} has none"
                if dataset is not None
                else "sample files do not carry them"
            )
            raise UserError(
                f"-m {name} needs {need[1]}; {has}: pass the dataset the samples come from "
                f"with --dataset {need[2]}"
            )


def _compute(
    ctx: ScoreContext, comps: dict[str, Any], validated: dict[str, Any], scale: str
) -> tuple[dict[str, float], list[str]]:
    """Each metric under its own RNG seeded with 0; returns (values, metrics that mapped the
    samples to [0, 1]). Notes (a sigma at the grid's edge) go to ``ctx.notes``."""
    values: dict[str, float] = {}
    owners: dict[str, str] = {}
    range_users: list[str] = []
    ds = ctx.dataset
    for name, comp in comps.items():
        p = validated[name]
        ctx.metric, ds.mapped = name, False
        with isolated_rng(0, ctx.device):  # a metric's own randomness: the same every call
            result = dict(comp.factory(p).compute(ctx))
        add_values(values, owners, result, f"-m {name}", "score them in separate calls")
        if ds.mapped:
            range_users.append(name)
        if result.get("parzen_sigma_at_edge", 0) != 0:
            grid = p.sigmas
            ctx.notes.append(
                f"{name}: the chosen sigma {result['parzen_sigma']:.3g} is at the edge of "
                f"the grid [{min(grid):.3g}, {max(grid):.3g}]; the best sigma may lie "
                f"outside it (check {scale}, or --param {name}.sigmas=[...])"
            )
    return values, range_users


def score(
    registry: Registry,
    real_path: Path,
    fake_path: Path,
    metrics: list[str],
    params: list[str] | None = None,
    value_range: tuple[float, float] | None = None,
    dataset: str | None = None,
    device: str = "cpu",
) -> tuple[dict[str, float], list[str]]:
    """Compute metrics on two sample files; returns (values, notes).

    ``value_range`` defaults to (0, 1); with ``dataset`` it is the dataset's, and a different
    one is an error (its modes, density and labelled images are in that scale). With
    ``dataset`` the rows must have its sample shape (flat rows of an image dataset's size are
    reshaped); it adds what it knows, while the real rows are always ``real_path``'s.
    """
    import torch

    metrics = list(dict.fromkeys(metrics))  # -m parzen -m parzen runs it once
    comps, validated = _validated(registry, metrics, params or [])
    notes: list[str] = []
    base = None
    if dataset is not None:
        comp = registry.get("dataset", dataset)
        base = comp.factory(comp.params.model_validate({}))
    real, fake = _load_files(real_path, fake_path, base, dataset, value_range, notes)
    ds = _score_dataset(real, real_path.stem, base, value_range or (0.0, 1.0))
    lo, hi = ds.value_range
    where = (
        f"--range {lo:g},{hi:g}" if base is None else f"the value range {lo:g},{hi:g} of {dataset}"
    )
    _check_magnitude(real, ds, "real", real_path, where)
    _check_magnitude(fake, ds, "fake", fake_path, where)
    _check_needs(ds, metrics, dataset)
    kde = "divergences" in metrics and getattr(validated["divergences"], "kde", False)
    if kde and base is not None and base.log_density is not None and base.sample is not None:
        note = _density_note(base, real, dataset)
        if note:
            notes.append(note)
    ctx = ScoreContext(dataset=ds, fake=fake, device=torch.device(device), notes=notes)
    scale = "--range" if base is None else "the samples' scale"
    values, range_users = _compute(ctx, comps, validated, scale)
    if range_users and (base is None or ds.is_image):
        notes += _range_notes(ds, {"real": real, "fake": fake}, range_users, where)
    return values, notes
