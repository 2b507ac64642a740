"""The ``digits`` dataset: shapes, scaling, resizing against an independent bilinear, splits."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.datasets import load_digits

from gan_pipe.plugins.data import digits
from gan_pipe.plugins.data.digits import DigitsParams, load_digits_dataset, split_indices
from gan_pipe.registry import Register, Registry

RAW = load_digits()


def bilinear_half_pixel(img: np.ndarray, size: int) -> np.ndarray:
    """Reference bilinear resize with half-pixel centres and edge clamping, written from the
    definition (what ``align_corners=False`` means), independent of torch."""
    n = img.shape[0]
    src = (np.arange(size) + 0.5) * (n / size) - 0.5
    src = np.clip(src, 0.0, n - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    w = src - i0
    rows = img[i0, :] * (1 - w)[:, None] + img[i1, :] * w[:, None]
    return rows[:, i0] * (1 - w)[None, :] + rows[:, i1] * w[None, :]


def test_default_shapes_dtypes_and_sizes() -> None:
    ds = load_digits_dataset(DigitsParams())
    assert ds.name == "digits" and ds.is_image
    assert ds.train.shape == (1797 - 500, 1, 28, 28)
    assert ds.val.shape == (200, 1, 28, 28)
    assert ds.test.shape == (300, 1, 28, 28)
    assert ds.shape == (1, 28, 28)
    for t in (ds.train, ds.val, ds.test):
        assert t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
    assert ds.train_labels.shape == (1297,) and ds.train_labels.dtype == torch.int64
    assert ds.test_labels.shape == (300,)
    assert set(ds.train_labels.tolist()) == set(range(10))
    assert ds.info["n_train"] == 1297 and ds.info["n_val"] == 200 and ds.info["n_test"] == 300
    assert ds.info["source"] == "sklearn.datasets.load_digits"


def test_tanh_range_and_relation_to_unit() -> None:
    tanh = load_digits_dataset(DigitsParams(scale="tanh"))
    unit = load_digits_dataset(DigitsParams(scale="unit"))
    assert tanh.value_range == (-1.0, 1.0) and unit.value_range == (0.0, 1.0)
    assert tanh.train.min().item() == -1.0 and tanh.train.max().item() <= 1.0
    assert tanh.train.max().item() > 0.9
    assert unit.train.min().item() == 0.0 and unit.train.max().item() <= 1.0
    torch.testing.assert_close(tanh.train, unit.train * 2 - 1)
    torch.testing.assert_close(tanh.to_unit(tanh.test), unit.test)


@pytest.mark.parametrize("size", [28, 13, 64])
def test_resized_pixels_match_independent_bilinear(size: int) -> None:
    params = DigitsParams(image_size=size, scale="unit")
    ds = load_digits_dataset(params)
    train_idx, _, test_idx = split_indices(1797, params.val_size, params.test_size, 0)
    for row, original in [(0, train_idx[0]), (5, train_idx[5])]:
        want = np.clip(bilinear_half_pixel(RAW.images[original] / 16.0, size), 0, 1)
        np.testing.assert_allclose(ds.train[row, 0].numpy(), want, atol=1e-5)
        assert ds.train_labels[row].item() == RAW.target[original]
    want = np.clip(bilinear_half_pixel(RAW.images[test_idx[-1]] / 16.0, size), 0, 1)
    np.testing.assert_allclose(ds.test[-1, 0].numpy(), want, atol=1e-5)


def test_upsampling_by_integer_factor_keeps_mean_intensity() -> None:
    # With half-pixel centres, x4 upsampling keeps each image's mean up to edge effects:
    # a tight check that no extra scaling or offset sneaks in.
    ds = load_digits_dataset(DigitsParams(image_size=32, scale="unit", val_size=0, test_size=0))
    ours = ds.train.mean(dim=(1, 2, 3)).numpy()
    want = RAW.images.mean(axis=(1, 2)) / 16.0
    assert np.corrcoef(ours, want)[0, 1] > 0.999
    np.testing.assert_allclose(ours.mean(), want.mean(), rtol=0.02)


def test_size_eight_is_the_original_over_sixteen() -> None:
    ds = load_digits_dataset(DigitsParams(image_size=8, scale="unit", val_size=0, test_size=0))
    assert ds.val is None and ds.test is None and ds.test_labels is None
    np.testing.assert_array_equal(ds.train[:, 0].numpy(), (RAW.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(ds.train_labels.numpy(), RAW.target)


def test_flatten() -> None:
    flat = load_digits_dataset(DigitsParams(flatten=True, image_size=20))
    image = load_digits_dataset(DigitsParams(image_size=20))
    assert flat.train.shape == (1297, 400) and flat.shape == (400,)
    assert flat.train.is_contiguous()
    torch.testing.assert_close(flat.train, image.train.reshape(1297, -1))
    torch.testing.assert_close(flat.val, image.val.reshape(200, -1))


def test_split_indices_disjoint_complete_deterministic() -> None:
    train, val, test = split_indices(1797, 200, 300, 0)
    assert (len(train), len(val), len(test)) == (1297, 200, 300)
    union = np.concatenate([train, val, test])
    assert len(np.unique(union)) == 1797 and union.min() == 0 and union.max() == 1796
    again = split_indices(1797, 200, 300, 0)
    for a, b in zip((train, val, test), again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = split_indices(1797, 200, 300, 1)
    assert not np.array_equal(test, other[2])


def test_dataset_splits_are_the_split_indices_and_deterministic() -> None:
    params = DigitsParams(image_size=8, scale="unit")
    a = load_digits_dataset(params)
    b = load_digits_dataset(params)
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(x, y)
    # Each split holds exactly the images its (disjoint, complete) index set names.
    train_idx, val_idx, test_idx = split_indices(1797, 200, 300, 0)
    for split, idx in ((a.train, train_idx), (a.val, val_idx), (a.test, test_idx)):
        want = (RAW.images[idx] / 16.0).astype(np.float32)
        np.testing.assert_array_equal(split[:, 0].numpy(), want)
    np.testing.assert_array_equal(a.train_labels.numpy(), RAW.target[train_idx])
    np.testing.assert_array_equal(a.test_labels.numpy(), RAW.target[test_idx])
    c = load_digits_dataset(DigitsParams(image_size=8, scale="unit", split_seed=7))
    assert not torch.equal(a.test, c.test)


def test_val_and_test_sizes() -> None:
    ds = load_digits_dataset(DigitsParams(val_size=100, test_size=50, image_size=8))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1647, 100, 50)
    assert len(ds.test_labels) == 50


@pytest.mark.parametrize(
    "raw",
    [
        {"image_size": 7},
        {"image_size": 65},
        {"scale": "sigmoid"},
        {"val_size": -1},
        {"val_size": 1000, "test_size": 797},
        {"imagesize": 28},
    ],
)
def test_bad_params_are_rejected(raw: dict) -> None:
    with pytest.raises(ValidationError):
        DigitsParams.model_validate(raw)


def test_every_param_is_described() -> None:
    for name, field in DigitsParams.model_fields.items():
        assert field.description, name


def test_registration_through_the_hook() -> None:
    registry = Registry()
    digits.register_datasets(Register(registry, "dataset", "test"))
    component = registry.get("dataset", "digits")
    assert component.params is DigitsParams and component.plugin == "test"
    assert component.description
    ds = component.factory(component.params())
    assert ds.train.shape == (1297, 1, 28, 28)
    small = component.factory(component.validate_params({"image_size": 16, "flatten": True}))
    assert small.train.shape == (1297, 256)


def test_module_import_does_not_import_torch_or_sklearn() -> None:
    code = (
        "import sys; import gan_pipe.plugins.data.digits; "
        "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"
