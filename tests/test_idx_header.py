"""IDX headers whose dimensions describe an impossible array are a UserError naming the file."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gan_pipe.errors import UserError
from gan_pipe.plugins.data.idx import IdxFormatError, parse_idx, read_idx

BIG = 2**32 - 1


def header(dims: tuple[int, ...], code: int = 0x08) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize(
    "dims",
    [(BIG, BIG), (BIG, BIG, BIG, BIG), (0, BIG, BIG, BIG), (2**16, 2**16, 2**16, 2**16)],
)
def test_overflowing_dims_name_the_file(tmp_path, dims):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(header(dims) + b"\0" * 16)
    with pytest.raises(IdxFormatError, match="corrupt IDX header") as info:
        read_idx(path)
    assert str(path) in str(info.value) and str(dims) in str(info.value)
    assert isinstance(info.value, UserError)


def test_large_but_possible_dims_are_truncation(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(header((BIG, 28, 28)))
    with pytest.raises(IdxFormatError, match=f"needs {16 + BIG * 28 * 28}"):
        read_idx(path)


@settings(max_examples=60, deadline=None)
@given(
    code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]),
    dims=st.lists(st.integers(0, BIG), max_size=6).map(tuple),
    body=st.binary(max_size=64),
)
def test_any_header_is_an_array_or_an_idx_error(code, dims, body):
    try:
        arr = parse_idx(header(dims, code) + body, "f")
    except IdxFormatError as e:
        assert str(e).startswith("f: ")
    else:
        assert arr.shape == dims and arr.nbytes == len(body)
        assert isinstance(arr, np.ndarray)
