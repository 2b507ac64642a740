"""Samples as rows, and the one helper that draws n rows by seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gan_pipe.estimators.rows import as_1d, as_rows, random_rows, to_numpy


def test_as_rows_flattens_and_makes_float64():
    assert as_rows(torch.zeros(5, 1, 2, 2)).shape == (5, 4)
    assert as_rows([1, 2, 3]).shape == (3, 1) and as_rows([1, 2, 3]).dtype == np.float64
    assert to_numpy(torch.ones(2, dtype=torch.float16)).dtype == np.float64
    with pytest.raises(ValueError, match="1-D samples"):
        as_1d(np.zeros((4, 2)))


def test_random_rows_by_seed_is_torch_randperm_and_leaves_global_rngs_alone():
    x = torch.arange(20.0).reshape(10, 2)
    state = torch.random.get_rng_state()
    got = random_rows(x, 4, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    idx = torch.randperm(10, generator=torch.Generator().manual_seed(5))[:4]
    assert torch.equal(got, x[idx])
    assert torch.equal(random_rows(x, 4, seed=5), got)  # reproducible
    assert len(set(got[:, 0].tolist())) == 4  # without replacement
    # a numpy array: the same rows as the tensor
    np.testing.assert_array_equal(random_rows(x.numpy(), 4, seed=5), got.numpy())


def test_random_rows_with_a_numpy_generator_continues_its_stream():
    x = np.arange(30.0).reshape(15, 2)
    rng = np.random.default_rng(3)
    a, b = random_rows(x, 5, rng), random_rows(x, 5, rng)
    ref = np.random.default_rng(3)
    np.testing.assert_array_equal(a, x[ref.choice(15, 5, replace=False)])
    np.testing.assert_array_equal(b, x[ref.choice(15, 5, replace=False)])


@pytest.mark.parametrize("n", [10, 11])
def test_random_rows_of_no_more_than_n_rows_is_all_of_them_in_order(n):
    x = torch.arange(10.0)
    assert random_rows(x, n, seed=1) is x
    assert random_rows(x, n, np.random.default_rng(0)) is x
