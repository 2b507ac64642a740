"""The feature classifier of ``fid``: a small network trained once on a dataset's labels,
cached on disk, whose penultimate layer gives the features FID and KID compare.

The cache file is keyed by a hash of the dataset (name, sample shape, number of rows,
checksums of the training tensor and its labels) and of the classifier settings
(:func:`classifier_settings`), so every later evaluation on the same data loads it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation import eval_mode
from .rows import random_rows

#: Bumped when the classifier's architecture or training changes, so old caches are not used.
#: 2: features are divided by a fixed scale (their RMS over the training rows).
CACHE_VERSION = 2

#: Training rows whose features set the feature scale (a fixed subset, seeded).
SCALE_ROWS = 5000


class ClassifierParams(Protocol):
    """The settings of the classifier (``fid``'s params carry them)."""

    epochs: int
    feature_dim: int
    classifier_seed: int
    batch_size: int
    lr: float
    cache_dir: str | None
    feature_batch_size: int


def _pool(h: int, w: int) -> tuple[nn.Module, int, int]:
    """2x2 max-pooling, skipped on images too small for it."""
    return (nn.MaxPool2d(2), h // 2, w // 2) if min(h, w) >= 2 else (nn.Identity(), h, w)


class Classifier(nn.Module):
    """A compact CNN for (C, H, W) images (two conv blocks, then ``feature_dim`` units), an
    MLP for flat vectors, and a linear head over ``n_classes``."""

    def __init__(self, shape: tuple[int, ...], n_classes: int, feature_dim: int) -> None:
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
            self.body = nn.Sequential(
                nn.Flatten(),
                nn.Linear(math.prod(shape), 256),
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


def build_classifier(
    shape: tuple[int, ...], n_classes: int, feature_dim: int, seed: int = 0
) -> Classifier:
    """A :class:`Classifier` with weights initialised from ``seed`` (the global RNG is left
    alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(shape, n_classes, feature_dim)


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
    """``fn`` over ``x`` in batches, in eval mode (every submodule's mode restored after)."""
    out = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device=device, dtype=torch.float32)
            out.append(fn(xb).float())
    return torch.cat(out)


def extract_features(
    model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 500
) -> np.ndarray:
    """Penultimate-layer features of ``x`` (eval mode, no grad, batched) as float64 (n, d)."""
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

    a = np.ascontiguousarray(t.detach().cpu().numpy())
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def classifier_settings(params: ClassifierParams, n_classes: int) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "epochs": params.epochs,
        "feature_dim": params.feature_dim,
        "classifier_seed": params.classifier_seed,
        "batch_size": params.batch_size,
        "lr": params.lr,
        "n_classes": n_classes,
    }


def classifier_cache_key(dataset: Any, params: ClassifierParams) -> str:
    """sha256 of (dataset name, sample shape, number of rows, checksums of the training tensor
    and labels, classifier settings)."""
    n_classes = count_classes(dataset)
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


def count_classes(dataset: Any) -> int:
    labels = [t for t in (dataset.train_labels, dataset.test_labels) if t is not None]
    return int(max(int(t.max()) for t in labels)) + 1


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "dataset"


def load_or_train_classifier(
    dataset: Any, params: ClassifierParams, device: torch.device
) -> tuple[torch.nn.Module, bool, Path]:
    """The dataset's classifier: loaded from the cache, else trained and saved there.

    Returns ``(model in eval mode on device, loaded from cache, cache file)``. A cache file
    that cannot be read is retrained and overwritten; one that cannot be written only warns.
    """
    n_classes = count_classes(dataset)
    key = classifier_cache_key(dataset, params)
    cache_dir = Path(params.cache_dir).expanduser() if params.cache_dir else default_cache_dir()
    path = cache_dir / f"{_safe_name(dataset.name)}-{key[:20]}.pt"
    model = build_classifier(dataset.shape, n_classes, params.feature_dim, params.classifier_seed)
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
