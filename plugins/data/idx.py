"""Datasets ``mnist`` and ``fashion-mnist``: the standard IDX files, read without torchvision.

The four files are looked for in ``data_dir`` (gzip-compressed or not). Missing ones are
downloaded from the public mirrors, verified by MD5 and renamed into place atomically, so an
interrupted download never leaves a half file behind. When that fails too, the error says
exactly which files to put where. Validation is the last ``val_size`` training images
(train[50000:60000] by default), as in Goodfellow et al.'s Parzen protocol.
The file format itself is read by :mod:`gan_pipe.plugins.data.idx_format`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl
from gan_pipe.context import Dataset
from gan_pipe.errors import DataNotFoundError, UserError
from gan_pipe.plugins.data.idx_format import (  # noqa: F401  (re-exported: they were here)
    IDX_DTYPES,
    IdxFormatError,
    _read_bytes,
    parse_idx,
    read_idx,
)

if TYPE_CHECKING:
    import numpy as np

    from gan_pipe.registry import Register

log = logging.getLogger(__name__)

#: The four standard files, in the order (train images, train labels, test images, test labels).
FILE_NAMES: tuple[str, str, str, str] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: Seconds to wait on a mirror before trying the next one.
DOWNLOAD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class IdxSource:
    """Where one IDX dataset comes from: mirrors tried in order, MD5 of each ``.gz`` file."""

    name: str
    title: str
    default_dir: str
    mirrors: tuple[str, ...]
    md5: dict[str, str]


MNIST = IdxSource(
    name="mnist",
    title="MNIST",
    default_dir="./data/mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
)

FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    title="Fashion-MNIST",
    default_dir="./data/fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
)


# ---------------------------------------------------------------- params
def _data_dir(source: IdxSource | None = None) -> Any:
    """The ``data_dir`` field: required, or defaulting to ``source``'s directory."""
    files = f"{source.title} IDX files" if source else "IDX files"
    return Field(
        source.default_dir if source else ...,
        min_length=1,
        description=f"directory holding the four {files} (.gz or uncompressed); '~' is "
        "expanded, relative paths are taken from the working directory",
    )


class IdxParams(BaseModel):
    """Params shared by the IDX datasets (each subclass sets its own ``data_dir`` default)."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str = _data_dir()
    download: bool = Field(True, description="download missing files from the public mirrors")
    scale: Literal["tanh", "unit"] = Field(
        "tanh",
        description="value range of the pixels: 'tanh' -> [-1, 1] ((x - 127.5) / 127.5), "
        "'unit' -> [0, 1] (x / 255)",
    )
    flatten: bool = Field(
        False, description="samples as vectors of 784 values instead of (1, 28, 28) images"
    )
    val_size: int = Field(
        10000,
        ge=0,
        description="the LAST val_size training images are the validation split "
        "(train[50000:60000] by default, Goodfellow et al.'s Parzen protocol); "
        "training uses the ones before",
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="use only the first `limit` training images (quick runs); "
        "validation is unchanged",
    )


class MnistParams(IdxParams):
    """Params of the ``mnist`` dataset."""

    data_dir: str = _data_dir(MNIST)


class FashionMnistParams(IdxParams):
    """Params of the ``fashion-mnist`` dataset."""

    data_dir: str = _data_dir(FASHION_MNIST)


# ---------------------------------------------------------------- files and download
def find_file(directory: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``directory`` (also the ``train-images.idx3-ubyte`` spelling
    some redistributions use); None when absent."""
    alt = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", alt, alt + ".gz"):
        path = directory / candidate
        if path.is_file():
            return path
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    url: str, dest: Path, md5: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S
) -> None:
    """Download ``url`` to ``dest`` through a temporary file in the same directory, check
    ``md5`` and rename atomically; raises OSError (incl. URLError) or ValueError on failure."""
    import shutil
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "gan-pipe"})
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as r:
            shutil.copyfileobj(r, out, 1 << 20)
        if md5 is not None:
            got = _md5(tmp)
            if got != md5:
                raise ValueError(f"MD5 mismatch for {url}: got {got}, expected {md5}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _missing_message(source: IdxSource, directory: Path, missing: list[str], reason: str) -> str:
    names = "\n".join(f"  {n}" for n in FILE_NAMES)
    return (
        f"{source.title} files missing in {directory}: {', '.join(missing)}; {reason}.\n"
        f"Put these four files in {directory} (gzip-compressed '.gz' or uncompressed, "
        f"both work):\n{names}\n"
        f"They can be downloaded (as .gz) from {source.mirrors[0]}"
    )


def ensure_files(source: IdxSource, directory: Path, download: bool) -> dict[str, Path]:
    """Paths of the four files, downloading the missing ones (when allowed) first."""
    found = {name: find_file(directory, name) for name in FILE_NAMES}
    missing = [name for name, path in found.items() if path is None]
    if not missing:
        return {name: path for name, path in found.items() if path is not None}
    if not download:
        raise DataNotFoundError(
            _missing_message(source, directory, missing, "download is off (download = false)")
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataNotFoundError(
            _missing_message(source, directory, missing, f"cannot create the directory: {e}")
        ) from e
    failures: list[str] = []
    for name in missing:
        gz = name + ".gz"
        for mirror in source.mirrors:
            url = mirror + gz
            log.info("downloading %s to %s", url, directory)
            try:
                download_file(url, directory / gz, source.md5.get(gz))
            except Exception as e:  # any mirror failure: try the next one
                failures.append(f"{url}: {type(e).__name__}: {e}")
                continue
            found[name] = directory / gz
            break
        else:
            still = [n for n in FILE_NAMES if found[n] is None]
            tried = "; ".join(failures)
            raise DataNotFoundError(
                _missing_message(source, directory, still, f"the download failed ({tried})")
            )
    return {name: path for name, path in found.items() if path is not None}


# ---------------------------------------------------------------- dataset
def _read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) from a pair of IDX files, checked to match."""
    import numpy as np

    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IdxFormatError(
            f"{images_path}: expected uint8 images of shape (N, H, W), "
            f"got {images.dtype.name} of shape {images.shape}"
        )
    if labels.ndim != 1:
        raise IdxFormatError(f"{labels_path}: expected 1-D labels, got shape {labels.shape}")
    if len(labels) != len(images):
        raise IdxFormatError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels


def load_idx_dataset(source: IdxSource, params: IdxParams) -> Dataset:
    """Read (downloading if needed), scale and split one IDX dataset."""
    import torch

    directory = Path(params.data_dir).expanduser().resolve()
    paths = ensure_files(source, directory, params.download)
    train_x, train_y = _read_split(paths[FILE_NAMES[0]], paths[FILE_NAMES[1]])
    test_x, test_y = _read_split(paths[FILE_NAMES[2]], paths[FILE_NAMES[3]])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise IdxFormatError(
            f"training images are {train_x.shape[1:]} but test images are {test_x.shape[1:]} "
            f"in {directory}"
        )
    n = len(train_x)
    if params.val_size >= n:
        raise UserError(
            f"{source.name}: val_size = {params.val_size} leaves no training images "
            f"(the training file has {n})"
        )
    n_fit = n - params.val_size
    n_train = min(n_fit, params.limit) if params.limit is not None else n_fit

    def scale(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x).to(torch.float32).unsqueeze(1)
        t = (t - 127.5) / 127.5 if params.scale == "tanh" else t / 255.0
        return (t.reshape(t.shape[0], -1) if params.flatten else t).contiguous()

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype("int64"))

    return Dataset(
        name=source.name,
        train=scale(train_x[:n_train]),
        val=scale(train_x[n_fit:]) if params.val_size else None,
        test=scale(test_x),
        train_labels=labels(train_y[:n_train]),
        test_labels=labels(test_y),
        value_range=(-1.0, 1.0) if params.scale == "tanh" else (0.0, 1.0),
        is_image=True,
        info={
            "source": source.title,
            "data_dir": str(directory),
            "n_train": n_train,
            "n_val": n - n_fit,
            "n_test": len(test_x),
            "val_slice": f"train[{n_fit}:{n}]",
        },
    )


def load_mnist(params: MnistParams) -> Dataset:
    """MNIST: 60,000 training and 10,000 test handwritten digits, 28x28."""
    return load_idx_dataset(MNIST, params)


def load_fashion_mnist(params: FashionMnistParams) -> Dataset:
    """Fashion-MNIST: Zalando's 28x28 clothing images in MNIST's format and sizes."""
    return load_idx_dataset(FASHION_MNIST, params)


@hookimpl
def register_datasets(register: Register) -> None:
    register(
        "mnist",
        load_mnist,
        params=MnistParams,
        description="MNIST handwritten digits from the IDX files (downloaded when missing)",
    )
    register(
        "fashion-mnist",
        load_fashion_mnist,
        params=FashionMnistParams,
        description="Fashion-MNIST clothing images from the IDX files (downloaded when missing)",
    )
