"""Frechet distance and KID in the features of a small classifier trained on the dataset.

Inception weights cannot be downloaded here, and Inception features mean little for 28x28
digits anyway; the practice for MNIST-like data is a small classifier trained once on the
dataset's own labels, whose penultimate layer (``feature_dim`` units) gives the features.
The classifier is trained with Adam for a few epochs and cached on disk, keyed by a hash of
the dataset (name, sample shape, number of rows, checksums of the training tensor and its
labels) and of the classifier settings, so every later evaluation on the same data loads it.
Its accuracy on the dataset's labelled test split is reported (``fid_classifier_acc``):
features of a classifier that cannot tell the classes apart are not worth a distance. Where
the test split has no labels (``gan-pipe score``: it is the user's real rows) the labelled split
is read from ``info["labelled_test"]``; with neither, the accuracy is left out.

* **FID** (Heusel et al. 2017): ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between
  Gaussians fitted to the two feature sets (float64, ``scipy.linalg.sqrtm``, as pytorch-fid).
* **KID** (Binkowski et al. 2018): the unbiased MMD^2 with the polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets (mean and std), as torch-fidelity.

The reference set is the **test split** (at most ``n_samples`` rows), never seen by the GAN.
``fid`` compares ``n`` generator samples to it and ``fid_floor`` a subset of ``n`` training
rows, so both have the same sample sizes and the same finite-sample bias: FID is biased upward
at small N, and the floor is what real data scores. A generator that memorised its training
set scores the floor, not zero. ``kid_floor`` is the same for KID (unbiased: near 0).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl
from gan_pipe.plugins.metrics.sampling import random_rows

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Bumped when the classifier's architecture or training changes, so old caches are not used.
#: 2: features are divided by a fixed scale (their RMS over the training rows).
CACHE_VERSION = 2

#: Training rows whose features set the feature scale (a fixed subset, seeded).
SCALE_ROWS = 5000

#: Datasets that come with labels and a test split (what this metric needs).
LABELLED_DATASETS = "digits, mnist, fashion-mnist"


# ------------------------------------------------------------------ pure functions
def feature_stats(f: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1, float64) of features ``f`` of shape (n, d)."""
    import numpy as np

    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats: need an (n >= 2, d) array, got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    import numpy as np
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        with np.errstate(all="ignore"):
            return linalg.sqrtm(a)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64).

    ``d^2 = ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``.
    As in pytorch-fid: when the product is singular (``sqrtm`` not finite) ``eps`` is added
    to both diagonals; tiny imaginary parts from rounding are dropped (a large one raises).
    Scalars and 1-D arrays are taken as 1-D Gaussians (variance) and diagonal-free 1x1.
    """
    import numpy as np

    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: means of shapes {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: covariances of shapes {sigma1.shape} and {sigma2.shape}, "
            f"means of length {d}"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max(initial=0.0)
        if imag > 1e-3 * max(1.0, np.abs(np.diagonal(covmean).real).max(initial=0.0)):
            raise ValueError(f"frechet_distance: sqrtm has an imaginary component {imag:.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def polynomial_mmd2(
    f1: Any, f2: Any, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> float:
    """Unbiased MMD^2 between two equal-size samples with ``k(x, y) = (gamma x.y + coef0)^degree``
    (``gamma`` defaults to 1/d): within-set sums skip the diagonal, the cross term does not."""
    import numpy as np

    f1 = np.asarray(f1, dtype=np.float64)
    f2 = np.asarray(f2, dtype=np.float64)
    m = f1.shape[0]
    if f2.shape[0] != m or m < 2:
        raise ValueError(f"kid: subsets must have the same size >= 2, got {m} and {f2.shape[0]}")
    g = 1.0 / f1.shape[1] if gamma is None else float(gamma)
    k11 = (f1 @ f1.T * g + coef0) ** degree
    k22 = (f2 @ f2.T * g + coef0) ** degree
    k12 = (f1 @ f2.T * g + coef0) ** degree
    within = (k11.sum() - np.trace(k11) + k22.sum() - np.trace(k22)) / (m * (m - 1))
    return float(within - 2.0 * k12.sum() / (m * m))


def kid(
    f1: Any,
    f2: Any,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) as torch-fidelity computes it.

    ``subsets`` times, ``m = min(subset_size, n1, n2)`` rows of each set are drawn without
    replacement and their unbiased polynomial MMD^2 computed; returns (mean, std) over the
    subsets (std with ddof 0). Rows are drawn by ``numpy.random.RandomState(seed)``.
    """
    import numpy as np

    f1 = np.asarray(f1, dtype=np.float64)
    f2 = np.asarray(f2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"kid: need two (n, d) arrays of the same d, got {f1.shape}, {f2.shape}")
    if subsets < 1:
        raise ValueError(f"kid: subsets must be >= 1, got {subsets}")
    m = min(int(subset_size), f1.shape[0], f2.shape[0])
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        a = f1[rng.choice(f1.shape[0], m, replace=False)]
        b = f2[rng.choice(f2.shape[0], m, replace=False)]
        values[i] = polynomial_mmd2(a, b, degree, gamma, coef0)
    return float(values.mean()), float(values.std())


# ------------------------------------------------------------------ the classifier
def _build_classifier(
    shape: tuple[int, ...], n_classes: int, feature_dim: int, seed: int = 0
) -> torch.nn.Module:
    """A compact CNN for (C, H, W) images (two conv blocks, then ``feature_dim`` units), an
    MLP for flat vectors; weights initialised from ``seed`` (the global RNG is left alone)."""
    import torch
    from torch import nn

    def _pool(h: int, w: int) -> tuple[nn.Module, int, int]:
        """2x2 max-pooling, skipped on images too small for it."""
        return (nn.MaxPool2d(2), h // 2, w // 2) if min(h, w) >= 2 else (nn.Identity(), h, w)

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if len(shape) == 3:
                c, h, w = shape
                pool1, h, w = _pool(h, w)
                pool2, h, w = _pool(h, w)
                self.body = nn.Sequential(
                    nn.Conv2d(c, 32, 3, padding=1),
                    nn.ReLU(),
                    pool1,
                    nn.Conv2d(32, 64, 3, padding=1),
                    nn.ReLU(),
                    pool2,
                    nn.Flatten(),
                    nn.Linear(64 * h * w, feature_dim),
                )
            else:
                d = math.prod(shape)
                self.body = nn.Sequential(
                    nn.Flatten(),
                    nn.Linear(d, 256),
                    nn.ReLU(),
                    nn.Linear(256, feature_dim),
                )
            self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, n_classes))
            # set once after training (saved with the weights): features in units of their
            # RMS on the training rows, so FID and KID's (x.y / d + 1)^3 kernel see O(1) values
            self.register_buffer("feature_scale", torch.ones(()))

        def features(self, x: torch.Tensor) -> torch.Tensor:
            """The penultimate layer before its ReLU (no dead, all-zero features), divided by
            ``feature_scale``."""
            return self.body(x) / self.feature_scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier()


def train_classifier(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> torch.nn.Module:
    """Train ``model`` on (x, y) with Adam and cross-entropy; returns it in eval mode."""
    import torch
    import torch.nn.functional as F

    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            xb = x[idx].to(device=device, dtype=torch.float32)
            yb = y[idx].to(device=device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def _batches(
    model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int, fn: Any
) -> torch.Tensor:
    import torch

    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device=device, dtype=torch.float32)
            out.append(fn(xb).float())
    model.train(was_training)
    return torch.cat(out)


def extract_features(
    model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 500
) -> np.ndarray:
    """Penultimate-layer features of ``x`` (eval mode, no grad, batched) as float64 (n, d)."""
    import numpy as np

    f = _batches(model, x, device, batch_size, model.features)
    return f.cpu().numpy().astype(np.float64)


def classifier_accuracy(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int = 500,
) -> float:
    logits = _batches(model, x, device, batch_size, model)
    return float((logits.argmax(dim=1).cpu() == y.cpu()).double().mean())


def _tensor_digest(t: torch.Tensor) -> str:
    import numpy as np

    a = np.ascontiguousarray(t.detach().cpu().numpy())
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def classifier_settings(params: FrechetParams, n_classes: int) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "epochs": params.epochs,
        "feature_dim": params.feature_dim,
        "classifier_seed": params.classifier_seed,
        "batch_size": params.batch_size,
        "lr": params.lr,
        "n_classes": n_classes,
    }


def classifier_cache_key(dataset: Any, params: FrechetParams) -> str:
    """sha256 of (dataset name, sample shape, number of rows, checksums of the training tensor
    and labels, classifier settings)."""
    n_classes = _n_classes(dataset)
    blob = json.dumps(
        {
            "name": dataset.name,
            "shape": list(dataset.shape),
            "n": int(dataset.train.shape[0]),
            "train": _tensor_digest(dataset.train),
            "labels": _tensor_digest(dataset.train_labels),
            "classifier": classifier_settings(params, n_classes),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$GAN_PIPE_CACHE/classifiers``, else ``~/.cache/gan-pipe/classifiers``."""
    root = os.environ.get("GAN_PIPE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "gan-pipe"
    return base / "classifiers"


def _n_classes(dataset: Any) -> int:
    labels = [t for t in (dataset.train_labels, dataset.test_labels) if t is not None]
    return int(max(int(t.max()) for t in labels)) + 1


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "dataset"


def load_or_train_classifier(
    dataset: Any, params: FrechetParams, device: torch.device
) -> tuple[torch.nn.Module, bool, Path]:
    """The dataset's classifier: loaded from the cache, else trained and saved there.

    Returns ``(model in eval mode on device, loaded from cache, cache file)``. A cache file
    that cannot be read is retrained and overwritten; one that cannot be written only warns.
    """
    import torch

    n_classes = _n_classes(dataset)
    key = classifier_cache_key(dataset, params)
    cache_dir = Path(params.cache_dir).expanduser() if params.cache_dir else default_cache_dir()
    path = cache_dir / f"{_safe_name(dataset.name)}-{key[:20]}.pt"
    model = _build_classifier(dataset.shape, n_classes, params.feature_dim, params.classifier_seed)
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") != key:
                raise ValueError("cache key mismatch")
            model.load_state_dict(blob["state_dict"])
            return model.to(device).eval(), True, path
        except Exception as e:  # noqa: BLE001 - a bad cache file is retrained, not fatal
            warnings.warn(f"fid: ignoring unreadable classifier cache {path}: {e}", stacklevel=2)

    x = dataset.to_unit(dataset.train)
    model = train_classifier(
        model,
        x,
        dataset.train_labels.long(),
        epochs=params.epochs,
        batch_size=params.batch_size,
        lr=params.lr,
        seed=params.classifier_seed,
        device=device,
    )
    rows = random_rows(x, SCALE_ROWS, params.classifier_seed)
    f = extract_features(model, rows, device, params.feature_batch_size)
    rms = float((f**2).mean() ** 0.5)
    model.feature_scale.fill_(rms if rms > 0 else 1.0)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"key": key, "state_dict": state}, tmp)
        os.replace(tmp, path)  # atomic: concurrent runs never read a half-written file
    except OSError as e:
        warnings.warn(f"fid: could not cache the classifier in {cache_dir}: {e}", stacklevel=2)
    return model.eval(), False, path


def labelled_test_split(dataset: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rows and labels to measure the classifier's accuracy on: the test split with its labels,
    else ``info["labelled_test"]`` (where ``gan-pipe score`` keeps the dataset's own labelled
    test split: its test split is the user's unlabelled real rows), else None."""
    if dataset.test is not None and dataset.test_labels is not None:
        if len(dataset.test) != len(dataset.test_labels):
            raise ValueError(
                f"fid: dataset {dataset.name!r} has {len(dataset.test)} test rows but "
                f"{len(dataset.test_labels)} test labels"
            )
        return dataset.test, dataset.test_labels
    return (dataset.info or {}).get("labelled_test")


# ------------------------------------------------------------------ the metric
class FrechetParams(BaseModel):
    """Frechet distance and KID in the features of a classifier trained on the dataset."""

    model_config = ConfigDict(extra="forbid")

    n_samples: int = Field(
        10000,
        ge=2,
        description="generator samples (and training rows for the floor, test rows for the "
        "reference: at most this many of each)",
    )
    kid_subsets: int = Field(100, ge=1, description="KID: number of random subsets averaged")
    kid_subset_size: int = Field(1000, ge=2, description="KID: rows per subset (capped by n)")
    epochs: int = Field(3, ge=1, description="classifier: Adam epochs over the training split")
    feature_dim: int = Field(128, ge=2, description="classifier: units of the feature layer")
    classifier_seed: int = Field(0, ge=0, description="classifier: init and shuffling seed")
    batch_size: int = Field(64, ge=1, description="classifier: training batch size")
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False, description="classifier: Adam step size")
    cache_dir: str | None = Field(
        None,
        description="where trained classifiers are kept "
        "(default $GAN_PIPE_CACHE/classifiers or ~/.cache/gan-pipe/classifiers)",
    )
    seed: int = Field(0, ge=0, description="seed of the train/test subsets and KID subsets")
    feature_batch_size: int = Field(500, ge=1, description="rows per feature-extraction batch")


class FrechetMetric:
    """FID and KID of generator samples against the test split, with the real-vs-real floor."""

    def __init__(self, params: FrechetParams | None = None):
        self.params = params if params is not None else FrechetParams()

    def _check(self, ds: Any) -> None:
        from gan_pipe.errors import UserError

        if ds is None:
            raise UserError("fid: the run has no dataset")
        name = getattr(ds, "name", "?")
        works = f"it works on labelled datasets with a test split ({LABELLED_DATASETS})"
        if ds.train_labels is None:
            raise UserError(
                f"fid: dataset {name!r} has no labels to train the feature classifier on; {works}"
            )
        if ds.test is None or len(ds.test) < 2:
            raise UserError(
                f"fid: dataset {name!r} has fewer than 2 test rows to compare with (in gan-pipe "
                f"score: the --real rows left after the 10% validation hold-out); {works}"
            )
        if len(ds.train) < 2:
            raise UserError(f"fid: dataset {name!r} has fewer than 2 training rows")

    def _reference(self, ctx: Any, n_fake: int, device: torch.device) -> tuple:
        """What does not depend on the generator: the classifier, its accuracy, the test
        split's features and the real-vs-real floor (on ``n_fake`` training rows, so it has
        the generated side's small-sample bias). Computed once per run (``ctx.state``), not
        at every periodic evaluation."""
        p, ds = self.params, ctx.dataset
        memo = ctx.state.setdefault("_fid_reference", {})
        key = (id(ds), p.model_dump_json(), n_fake, str(device))
        if key in memo:
            return memo[key]
        model, cached, path = load_or_train_classifier(ds, p, device)
        acc = {}
        labelled = labelled_test_split(ds)
        if labelled is not None:
            x, y = labelled
            acc["fid_classifier_acc"] = classifier_accuracy(
                model, ds.to_unit(x), y.long(), device, p.feature_batch_size
            )

        def feats(x: torch.Tensor) -> np.ndarray:
            return extract_features(model, ds.to_unit(x), device, p.feature_batch_size)

        f_ref = feats(random_rows(ds.test, p.n_samples, p.seed))
        f_real = feats(random_rows(ds.train, n_fake, p.seed + 1))
        mu_ref, s_ref = feature_stats(f_ref)
        floor = frechet_distance(*feature_stats(f_real), mu_ref, s_ref)
        kw = {"subsets": p.kid_subsets, "subset_size": p.kid_subset_size, "seed": p.seed}
        kid_floor, _ = kid(f_real, f_ref, **kw)
        memo[key] = (model, cached, path, acc, f_ref, mu_ref, s_ref, floor, kid_floor)
        return memo[key]

    def compute(self, ctx: Any) -> dict[str, float]:
        import torch

        from gan_pipe.errors import UserError

        p = self.params
        ds = ctx.dataset
        self._check(ds)
        device = torch.device(ctx.device)

        n = min(p.n_samples, int(ds.train.shape[0]))
        fake = ctx.generate(n)
        if tuple(fake.shape[1:]) != tuple(ds.shape):
            raise UserError(
                f"fid: generator samples have shape {tuple(fake.shape[1:])}, data {ds.shape}"
            )
        ref = self._reference(ctx, int(fake.shape[0]), device)
        model, cached, path, acc, f_ref, mu_ref, s_ref, floor, kid_floor = ref
        f_fake = extract_features(model, ds.to_unit(fake), device, p.feature_batch_size)
        fid = frechet_distance(*feature_stats(f_fake), mu_ref, s_ref)
        kw = {"subsets": p.kid_subsets, "subset_size": p.kid_subset_size, "seed": p.seed}
        kid_mean, kid_std = kid(f_fake, f_ref, **kw)

        result = {
            "fid": fid,
            "fid_floor": floor,
            "kid": kid_mean,
            "kid_std": kid_std,
            "kid_floor": kid_floor,
            "fid_n_samples": float(f_fake.shape[0]),
            "fid_n_ref": float(f_ref.shape[0]),
            **acc,
            "fid_classifier_cached": 1.0 if cached else 0.0,
        }
        tracker = getattr(ctx, "tracker", None)
        if tracker is not None and hasattr(tracker, "log_dict"):
            tracker.log_dict(
                {
                    **result,
                    "dataset": ds.name,
                    "classifier_cache": str(path),
                    "classifier": classifier_settings(p, _n_classes(ds)),
                    "kid_subset_size": min(p.kid_subset_size, f_fake.shape[0], f_ref.shape[0]),
                    "kid_subsets": p.kid_subsets,
                    "reference": "test split",
                    "floor": "training subset vs test split",
                },
                f"{ctx.eval_dir}/fid.json",
            )
        return result


@hookimpl
def register_metrics(register: Any) -> None:
    register(
        "fid",
        FrechetMetric,
        params=FrechetParams,
        description="Frechet distance and KID in the features of a classifier trained on the "
        "dataset's labels, with the real-vs-real floor",
    )
