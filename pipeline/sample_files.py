"""Reading the sample files of ``gan-pipe score``: .npy or .npz, numeric, finite rows in the
dataset's sample shape, with values whose squared distances fit float32. Every problem is a
:class:`~gan_pipe.errors.UserError` that names the file and how to fix it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .context import Dataset
from .errors import UserError

#: A .npy file starts with this, a .npz file (a zip archive) with the second.
_MAGIC = (b"\x93NUMPY", b"PK\x03\x04")


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
    """A .npy (or .npz with one array) file of samples, rows first, as a float tensor of the
    file's precision: float32 for float32 and small-int files, float64 for float64 and wide-int
    ones (a float32 cast would erase the spread of data far from 0: N(1e8, 0.5) rounds to a
    few values). Checked in the file's own dtype (every value finite, squares finite); each
    metric casts what it needs (Parzen after mapping to [0, 1], see _check_magnitude).
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
    top = float(np.abs(rows).max())
    if top > 1e150:
        raise UserError(
            f"--{what}: {path} holds values up to {top:.3g}: their squares overflow even "
            "float64; rescale the samples"
        )
    # the file's precision: float32 (and small ints) stay float32 as in a run; float64 (and
    # wide ints) stay float64, so data far from 0 keep their spread
    dtype = np.result_type(arr.dtype, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=dtype))


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


def _values(shape: tuple[int, ...]) -> str:
    n = math.prod(shape)
    return "1 value" if n == 1 else f"{n} values"


def _conform(x: Any, ds: Dataset, what: str, path: Path, notes: list[str]) -> Any:
    """Rows of ``x`` in the dataset's sample shape: as they are, or reshaped when that keeps
    every value in place (flat rows, or shapes equal but for size-1 axes: (H, W) images of a
    (1, H, W) dataset); else a UserError (a channels-last (H, W, 3) file needs a transpose)."""
    row, shape = tuple(x.shape[1:]), tuple(ds.shape)
    if row == shape:
        return x
    squeezed = [d for d in row if d != 1] == [d for d in shape if d != 1]
    if math.prod(row) == math.prod(shape) and (len(row) == 1 or len(shape) == 1 or squeezed):
        notes.append(
            f"--{what}: rows of {_values(row)} reshaped to the sample shape {shape} "
            f"of dataset {ds.name}"
        )
        return x.reshape(len(x), *shape)
    raise UserError(
        f"--{what}: {path} has rows of shape {row} ({_values(row)}), but dataset {ds.name!r} "
        f"has samples of shape {shape} ({_values(shape)}); give samples of that dataset, or "
        "leave out --dataset"
    )
