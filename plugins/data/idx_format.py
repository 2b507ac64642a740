"""The IDX file format of MNIST and Fashion-MNIST: header, type codes, big-endian values.

An IDX file is two zero bytes, a type code (0x08 uint8 .. 0x0E float64), the number of
dimensions, each dimension as a big-endian uint32, then the values, big-endian, row-major;
the files may be gzip-compressed. A file that breaks this (bad magic, unknown type,
truncated, trailing bytes, an impossible shape) is an :class:`IdxFormatError` naming it.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from gan_pipe.errors import UserError

if TYPE_CHECKING:
    import numpy as np

#: IDX type code -> big-endian numpy dtype string.
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class IdxFormatError(UserError):
    """A file that is not a valid IDX file (bad magic, unknown type, truncated, corrupt)."""


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is a ``.gz`` file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise IdxFormatError(
            f"{path}: corrupt or truncated gzip file ({e}); delete it and download it again"
        ) from e
    except OSError as e:
        raise IdxFormatError(f"{path}: cannot read: {e}") from e


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array of native byte order; ``source`` names it in errors.

    Layout: two zero bytes, a type code (0x08 uint8 .. 0x0E float64), the number of
    dimensions, each dimension as a big-endian uint32, then the values, big-endian, row-major.
    """
    import numpy as np

    if len(data) < 4:
        raise IdxFormatError(
            f"{source}: truncated IDX file: {len(data)} bytes, the header alone needs 4"
        )
    if data[0] != 0 or data[1] != 0:
        raise IdxFormatError(
            f"{source}: not an IDX file: bad magic number 0x{data[:4].hex()} "
            "(expected 0x0000 followed by a type code and the number of dimensions)"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IdxFormatError(f"{source}: unknown IDX type code 0x{code:02X} (known: {known})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(
            f"{source}: truncated IDX file: {len(data)} bytes, the header of a "
            f"{ndim}-dimensional array needs {header}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[code])
    count = math.prod(dims)  # Python ints: np.prod would wrap around at 2**63
    # numpy refuses any shape whose non-zero dimensions multiply past its index range, even
    # with a zero dimension elsewhere: such a header is damage, not a large data set.
    if math.prod(d for d in dims if d) * dtype.itemsize > np.iinfo(np.intp).max:
        raise IdxFormatError(
            f"{source}: corrupt IDX header: shape {dims} of {dtype.name} is larger than any "
            "array can be; delete the file and download it again"
        )
    expected = header + count * dtype.itemsize
    if len(data) < expected:
        raise IdxFormatError(
            f"{source}: truncated IDX file: {len(data)} bytes, shape {dims} of "
            f"{dtype.name} needs {expected}; delete it and download it again"
        )
    if len(data) > expected:
        raise IdxFormatError(
            f"{source}: corrupt IDX file: {len(data) - expected} bytes after the "
            f"{expected} that shape {dims} of {dtype.name} needs"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (``.gz`` or uncompressed); errors name the file."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))
