"""Frechet distance and KID in the features of a small classifier trained on the dataset.

The mathematics (Frechet distance, KID, the classifier and its cache) is in
:mod:`gan_pipe.estimators` (``gaussian``, ``mmd``, ``features``); this module declares the
metric's parameters and keeps the generator-independent side once per run.

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

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Datasets that come with labels and a test split (what this metric needs).
LABELLED_DATASETS = "digits, mnist, fashion-mnist"


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
        from gan_pipe.estimators import features as F
        from gan_pipe.estimators.gaussian import feature_stats, frechet_distance
        from gan_pipe.estimators.mmd import kid
        from gan_pipe.estimators.rows import random_rows

        p, ds = self.params, ctx.dataset
        memo = ctx.state.setdefault("_fid_reference", {})
        key = (id(ds), p.model_dump_json(), n_fake, str(device))
        if key in memo:
            return memo[key]
        model, cached, path = F.load_or_train_classifier(ds, p, device)
        acc = {}
        labelled = F.labelled_test_split(ds)
        if labelled is not None:
            x, y = labelled
            acc["fid_classifier_acc"] = F.classifier_accuracy(
                model, ds.to_unit(x), y.long(), device, p.feature_batch_size
            )

        def feats(x: torch.Tensor) -> np.ndarray:
            return F.extract_features(model, ds.to_unit(x), device, p.feature_batch_size)

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
        from gan_pipe.estimators.features import extract_features
        from gan_pipe.estimators.gaussian import feature_stats, frechet_distance
        from gan_pipe.estimators.mmd import kid

        p, ds = self.params, ctx.dataset
        self._check(ds)
        device = torch.device(ctx.device)
        fake = ctx.generate(min(p.n_samples, int(ds.train.shape[0])))
        if tuple(fake.shape[1:]) != tuple(ds.shape):
            raise UserError(
                f"fid: generator samples have shape {tuple(fake.shape[1:])}, data {ds.shape}"
            )
        ref = self._reference(ctx, int(fake.shape[0]), device)
        model, cached, path, acc, f_ref, mu_ref, s_ref, floor, kid_floor = ref
        f_fake = extract_features(model, ds.to_unit(fake), device, p.feature_batch_size)
        kw = {"subsets": p.kid_subsets, "subset_size": p.kid_subset_size, "seed": p.seed}
        kid_mean, kid_std = kid(f_fake, f_ref, **kw)
        result = {
            "fid": frechet_distance(*feature_stats(f_fake), mu_ref, s_ref),
            "fid_floor": floor,
            "kid": kid_mean,
            "kid_std": kid_std,
            "kid_floor": kid_floor,
            "fid_n_samples": float(f_fake.shape[0]),
            "fid_n_ref": float(f_ref.shape[0]),
            **acc,
            "fid_classifier_cached": 1.0 if cached else 0.0,
        }
        self._log(ctx, result, path, min(p.kid_subset_size, f_fake.shape[0], f_ref.shape[0]))
        return result

    def _log(self, ctx: Any, result: dict[str, float], path: Any, kid_size: int) -> None:
        """``fid.json`` beside the evaluation: the values and what they were computed with."""
        from gan_pipe.estimators.features import classifier_settings, count_classes

        tracker, ds = getattr(ctx, "tracker", None), ctx.dataset
        if tracker is None or not hasattr(tracker, "log_dict"):
            return
        tracker.log_dict(
            {
                **result,
                "dataset": ds.name,
                "classifier_cache": str(path),
                "classifier": classifier_settings(self.params, count_classes(ds)),
                "kid_subset_size": kid_size,
                "kid_subsets": self.params.kid_subsets,
                "reference": "test split",
                "floor": "training subset vs test split",
            },
            f"{ctx.eval_dir}/fid.json",
        )


@hookimpl
def register_metrics(register: Any) -> None:
    register(
        "fid",
        FrechetMetric,
        params=FrechetParams,
        description="Frechet distance and KID in the features of a classifier trained on the "
        "dataset's labels, with the real-vs-real floor",
    )
