"""Frechet distance / KID in classifier features: checked against independent references.

The mathematics is tested in tests/estimators/test_frechet_kid.py; here the metric and its
classifier (``gan_pipe.estimators.features``):

* on real data: scikit-learn's digits, where real held-out images must score near the
  real-vs-real floor and noise far above it.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from threadpoolctl import threadpool_limits

from gan_pipe.context import Dataset
from gan_pipe.errors import UserError
from gan_pipe.estimators import features
from gan_pipe.estimators.features import classifier_cache_key
from gan_pipe.estimators.gaussian import feature_stats, frechet_distance
from gan_pipe.estimators.rows import random_rows
from gan_pipe.plugins.data.digits import DigitsParams, load_digits_dataset
from gan_pipe.plugins.metrics import frechet
from gan_pipe.plugins.metrics.frechet import FrechetMetric, FrechetParams
from gan_pipe.registry import Register, Registry


@pytest.fixture(autouse=True)
def _one_thread():
    """Single-threaded torch and BLAS: far faster than 2 threads on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------ params and registration
def test_params_defaults_and_forbid_extra():
    p = FrechetParams()
    assert (p.n_samples, p.kid_subsets, p.kid_subset_size) == (10000, 100, 1000)
    assert (p.epochs, p.feature_dim, p.classifier_seed) == (3, 128, 0)
    for bad in ({"nsamples": 5}, {"epochs": 0}, {"kid_subset_size": 1}):
        with pytest.raises(ValidationError):
            FrechetParams.model_validate(bad)
    assert all(f.description for f in FrechetParams.model_fields.values())


def test_registers_as_a_metric():
    registry = Registry()
    frechet.register_metrics(register=Register(registry, "metric", "frechet-test"))
    comp = registry.get("metric", "fid")
    assert comp.factory is FrechetMetric and comp.params is FrechetParams and comp.description
    assert hasattr(comp.factory(comp.validate_params({"n_samples": 50})), "compute")


def test_module_import_does_not_import_torch():
    code = "import sys, gan_pipe.plugins.metrics.frechet; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GAN_PIPE_CACHE", str(tmp_path))
    assert features.default_cache_dir() == tmp_path / "classifiers"
    monkeypatch.delenv("GAN_PIPE_CACHE")
    assert features.default_cache_dir().parts[-3:] == (".cache", "gan-pipe", "classifiers")


# ------------------------------------------------------------------ fake runs
class FakeTracker:
    def __init__(self) -> None:
        self.dicts: dict[str, dict] = {}

    def log_dict(self, data, artifact_file):
        self.dicts[artifact_file] = data


def fake_ctx(ds: Dataset, generate) -> SimpleNamespace:
    return SimpleNamespace(
        dataset=ds,
        device=torch.device("cpu"),
        generate=generate,
        tracker=FakeTracker(),
        eval_dir="eval",
        state={},
    )


def blobs_dataset(shift: float = 0.0) -> Dataset:
    """Flat 2-class data (the MLP path), small enough to train in a blink."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 2
    x = torch.randn(120, 6, generator=g) * 0.3 + y[:, None].float() - 0.5 + shift
    return Dataset(
        name="blobs",
        train=x[:80],
        test=x[80:],
        train_labels=y[:80],
        test_labels=y[80:],
        value_range=(-1.0, 1.0),
    )


def small_params(tmp_path, **kw) -> FrechetParams:
    base = {"n_samples": 40, "kid_subsets": 5, "kid_subset_size": 20, "epochs": 2}
    return FrechetParams(cache_dir=str(tmp_path), **{**base, **kw})


@pytest.fixture
def count_training(monkeypatch):
    calls = []
    real = features.train_classifier

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "train_classifier", counting)
    return calls


def test_second_compute_loads_the_cached_classifier(tmp_path, count_training):
    ds = blobs_dataset()
    metric = FrechetMetric(small_params(tmp_path))
    ctx = fake_ctx(ds, lambda n: ds.test[:n])
    first = metric.compute(ctx)
    assert len(count_training) == 1 and first["fid_classifier_cached"] == 0.0
    assert len(list(tmp_path.glob("blobs-*.pt"))) == 1
    ctx = fake_ctx(ds, lambda n: ds.test[:n])  # a later run: loads the classifier from disk
    second = FrechetMetric(small_params(tmp_path)).compute(ctx)
    assert len(count_training) == 1 and second["fid_classifier_cached"] == 1.0
    # the loaded classifier is the trained one: same features, same numbers
    for key in ("fid", "fid_floor", "kid", "kid_floor", "fid_classifier_acc"):
        assert second[key] == pytest.approx(first[key], rel=1e-6, abs=1e-9)
    assert ctx.tracker.dicts["eval/fid.json"]["fid_classifier_cached"] == 1.0


def test_changed_data_or_settings_change_the_cache_key(tmp_path, count_training):
    ds = blobs_dataset()
    p = small_params(tmp_path)
    key = classifier_cache_key(ds, p)
    assert key == classifier_cache_key(blobs_dataset(), p)
    changed = blobs_dataset()
    changed.train[3, 2] += 1e-3
    assert classifier_cache_key(changed, p) != key
    relabelled = blobs_dataset()
    relabelled.train_labels[0] = 1 - relabelled.train_labels[0]
    assert classifier_cache_key(relabelled, p) != key
    renamed = blobs_dataset()
    renamed.name = "other"
    assert classifier_cache_key(renamed, p) != key
    for change in ({"epochs": 3}, {"feature_dim": 16}, {"classifier_seed": 1}, {"batch_size": 8}):
        assert classifier_cache_key(ds, small_params(tmp_path, **change)) != key
    # metric-only settings do not retrain
    assert classifier_cache_key(ds, small_params(tmp_path, n_samples=30, kid_subsets=2)) == key

    FrechetMetric(p).compute(fake_ctx(ds, lambda n: ds.test[:n]))
    out = FrechetMetric(p).compute(fake_ctx(changed, lambda n: changed.test[:n]))
    assert len(count_training) == 2 and out["fid_classifier_cached"] == 0.0


def test_unreadable_cache_file_is_retrained(tmp_path, count_training):
    ds = blobs_dataset()
    p = small_params(tmp_path)
    ctx = fake_ctx(ds, lambda n: ds.test[:n])
    FrechetMetric(p).compute(ctx)
    (path,) = tmp_path.glob("blobs-*.pt")
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable classifier cache"):
        out = FrechetMetric(p).compute(fake_ctx(ds, lambda n: ds.test[:n]))  # a later run
    assert out["fid_classifier_cached"] == 0.0 and len(count_training) == 2
    later = fake_ctx(ds, lambda n: ds.test[:n])
    assert FrechetMetric(p).compute(later)["fid_classifier_cached"] == 1.0


def test_accuracy_is_measured_on_labelled_rows_or_left_out(tmp_path):
    # gan-pipe score's test split is the user's unlabelled real rows (any number of them): the
    # accuracy must not pair them with the dataset's labels, and must not be NaN.
    ds = blobs_dataset()
    p = small_params(tmp_path)
    with_labels = FrechetMetric(p).compute(fake_ctx(ds, lambda n: ds.test[:n]))
    model, cached, _ = features.load_or_train_classifier(ds, p, torch.device("cpu"))
    assert cached
    own = features.classifier_accuracy(model, ds.to_unit(ds.test), ds.test_labels, "cpu")
    assert with_labels["fid_classifier_acc"] == own

    unlabelled = blobs_dataset()
    unlabelled.test, unlabelled.test_labels = unlabelled.train[:30], None  # 30 rows, not 40
    out = FrechetMetric(p).compute(fake_ctx(unlabelled, lambda n: ds.test[:n]))
    assert "fid_classifier_acc" not in out and "fid" in out

    unlabelled.info = {"labelled_test": (ds.test, ds.test_labels)}
    out = FrechetMetric(p).compute(fake_ctx(unlabelled, lambda n: ds.test[:n]))
    assert out["fid_classifier_acc"] == own


def test_test_labels_of_another_length_are_an_error(tmp_path):
    ds = blobs_dataset()
    ds.test = ds.test[:10]
    with pytest.raises(ValueError, match="10 test rows but 40 test labels"):
        FrechetMetric(small_params(tmp_path)).compute(fake_ctx(ds, lambda n: ds.train[:n]))


def test_missing_labels_or_test_split_is_a_user_error(tmp_path):
    ds = blobs_dataset()
    ds.train_labels = None
    with pytest.raises(UserError, match="no labels") as e:
        FrechetMetric(small_params(tmp_path)).compute(fake_ctx(ds, lambda n: ds.test[:n]))
    assert "digits, mnist, fashion-mnist" in str(e.value)
    ds = blobs_dataset()
    ds.test = None
    with pytest.raises(UserError, match="fewer than 2 test rows") as e:
        FrechetMetric(small_params(tmp_path)).compute(fake_ctx(ds, lambda n: ds.train[:n]))
    assert "digits, mnist, fashion-mnist" in str(e.value)


def test_wrong_generator_shape_is_a_user_error(tmp_path):
    ds = blobs_dataset()
    with pytest.raises(UserError, match="shape"):
        FrechetMetric(small_params(tmp_path)).compute(fake_ctx(ds, lambda n: torch.zeros(n, 5)))


# ------------------------------------------------------------------ digits, end to end
@pytest.fixture(scope="module")
def digits():
    # 400 test rows are the reference; the 400 validation rows play a generator that draws
    # real, held-out digits (returning test rows themselves would compare the reference to
    # itself and score 0, below the floor).
    return load_digits_dataset(DigitsParams(image_size=16, val_size=400, test_size=400))


@pytest.fixture(scope="module")
def digits_params(tmp_path_factory):
    return FrechetParams(
        n_samples=400,
        kid_subsets=20,
        kid_subset_size=200,
        epochs=5,  # about 0.91 test accuracy on 997 training digits (3 epochs: 0.80 to 0.88)
        cache_dir=str(tmp_path_factory.mktemp("classifiers")),
    )


@pytest.fixture(scope="module")
def digits_results(digits, digits_params):
    torch.set_num_threads(1)
    with threadpool_limits(1):
        real = FrechetMetric(digits_params).compute(fake_ctx(digits, lambda n: digits.val[:n]))
        g = torch.Generator().manual_seed(0)
        noise = FrechetMetric(digits_params).compute(
            fake_ctx(digits, lambda n: torch.rand(n, *digits.shape, generator=g) * 2 - 1)
        )
    return real, noise


def test_digits_classifier_is_accurate(digits_results):
    real, noise = digits_results
    assert real["fid_classifier_acc"] > 0.8
    assert real["fid_classifier_cached"] == 0.0 and noise["fid_classifier_cached"] == 1.0
    assert noise["fid_classifier_acc"] == real["fid_classifier_acc"]


def test_digits_real_images_score_near_the_floor(digits_results):
    real, _ = digits_results
    assert set(real) == {
        "fid",
        "fid_floor",
        "kid",
        "kid_std",
        "kid_floor",
        "fid_n_samples",
        "fid_n_ref",
        "fid_classifier_acc",
        "fid_classifier_cached",
    }
    assert real["fid_n_samples"] == 400 and real["fid_n_ref"] == 400
    assert real["fid_floor"] > 0
    assert 0.5 * real["fid_floor"] < real["fid"] < 2.0 * real["fid_floor"]
    assert abs(real["kid"]) < 3 * real["kid_std"]


def test_digits_noise_scores_far_above_the_floor(digits_results):
    real, noise = digits_results
    assert noise["fid"] > 20 * noise["fid_floor"]
    assert noise["fid"] > 20 * real["fid"]
    assert noise["fid_floor"] == pytest.approx(real["fid_floor"])
    assert noise["kid"] > 5 * noise["kid_std"] and noise["kid"] > 20 * abs(real["kid"])
    assert abs(noise["kid_floor"]) < noise["kid"] / 20


def test_digits_features_are_extracted_without_touching_the_model_mode(
    digits, digits_params, digits_results
):
    model, cached, _ = features.load_or_train_classifier(digits, digits_params, torch.device("cpu"))
    assert cached  # trained by the digits_results fixture
    model.train()
    x = digits.to_unit(digits.test[:7])
    a = features.extract_features(model, x, torch.device("cpu"), batch_size=3)
    assert model.training and a.shape == (7, 128) and a.dtype == np.float64
    b = features.extract_features(model, x, torch.device("cpu"), batch_size=500)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_features_are_in_units_of_their_training_rms(tmp_path, count_training):
    """The feature scale is fixed after training and cached with the weights: training rows'
    features have RMS 1 (here every row sets it), and a loaded classifier keeps the scale."""
    ds = blobs_dataset()
    p = small_params(tmp_path)
    model, cached, _ = features.load_or_train_classifier(ds, p, torch.device("cpu"))
    f = features.extract_features(model, ds.to_unit(ds.train), torch.device("cpu"))
    assert not cached and float(np.sqrt((f**2).mean())) == pytest.approx(1.0, rel=1e-5)
    assert float(model.feature_scale) != 1.0  # a scale was set, not the default
    again, cached, _ = features.load_or_train_classifier(ds, p, torch.device("cpu"))
    assert cached and float(again.feature_scale) == float(model.feature_scale)
    assert len(count_training) == 1


def test_floor_uses_as_many_real_rows_as_there_are_generated_ones(tmp_path):
    """A short sample file (10 rows of 40 asked for): the floor is computed on 10 training
    rows too, so fid and fid_floor carry the same small-sample bias."""

    ds = blobs_dataset()
    p = small_params(tmp_path)
    out = FrechetMetric(p).compute(fake_ctx(ds, lambda n: ds.test[:10]))
    model, _, _ = features.load_or_train_classifier(ds, p, torch.device("cpu"))

    def stats(x):
        return feature_stats(features.extract_features(model, ds.to_unit(x), torch.device("cpu")))

    ref = stats(random_rows(ds.test, p.n_samples, p.seed))
    floor = frechet_distance(*stats(random_rows(ds.train, 10, p.seed + 1)), *ref)
    assert out["fid_n_samples"] == 10
    assert out["fid_floor"] == pytest.approx(floor, rel=1e-9)


def test_reference_side_is_computed_once_per_run(tmp_path, monkeypatch, count_training):
    """Periodic evaluations in one run share the classifier, the test features and the
    floor: a second compute extracts features of the generated rows only, and agrees."""
    ds = blobs_dataset()
    ctx = fake_ctx(ds, lambda n: ds.test[:n])
    calls = []
    real = features.extract_features
    monkeypatch.setattr(
        features,
        "extract_features",
        lambda m, x, *a, **k: calls.append(len(x)) or real(m, x, *a, **k),
    )
    first = FrechetMetric(small_params(tmp_path)).compute(ctx)
    n_first = len(calls)
    second = FrechetMetric(small_params(tmp_path)).compute(ctx)
    # first: the feature scale after training, the test rows, the floor rows, the fakes
    assert n_first == 4 and len(calls) == n_first + 1 and len(count_training) == 1
    assert second == first
