"""Dataset ``cifar10``: the binary version of CIFAR-10, read with numpy (never pickle).

The archive ``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/`` with five training
files ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``: 10,000 records each,
a record being one label byte (0..9) and 3,072 pixel bytes (1,024 red, 1,024 green, 1,024 blue,
row-major 32x32), i.e. already CHW. In ``data_dir`` the six files are looked for in
``cifar-10-batches-bin/``, then in ``data_dir`` itself, then inside ``cifar-10-binary.tar.gz``
(read in memory, nothing extracted; an archive with an absolute or '..' member name is refused).
When none is there the archive is downloaded from the dataset's page, verified by MD5 and
renamed into place atomically (the downloader of :mod:`gan_pipe.plugins.data.idx`); when that
fails too, the error says which files to put where.

Training images are the five training files in order; validation is the LAST ``val_size`` of
them (train[45000:50000] by default); test is ``test_batch.bin``. ``classes`` keeps a subset
of the labels (label values unchanged). Pixels are decoded into one uint8 array (3,072 bytes per
image), then converted to float32: 'tanh' -> [-1, 1] ((x - 127.5) / 127.5), 'unit' -> [0, 1].
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gan_pipe import hookimpl
from gan_pipe.context import Dataset
from gan_pipe.errors import DataNotFoundError, UserError
from gan_pipe.plugins.data.idx import download_file
from gan_pipe.plugins.data.image_folder import uint8_to_float

if TYPE_CHECKING:
    import numpy as np

    from gan_pipe.registry import Register

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
FILES: tuple[str, ...] = (*TRAIN_FILES, TEST_FILE)
#: One label byte, then 3 x 32 x 32 pixel bytes.
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32
#: Label value -> name (``batches.meta.txt`` of the archive).
CLASS_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class Cifar10Params(BaseModel):
    """Params of the ``cifar10`` dataset."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str = Field(
        "./data/cifar10",
        min_length=1,
        description=f"directory holding {FOLDER}/ (the extracted archive), the six .bin files "
        f"themselves, or {ARCHIVE}; '~' is expanded, relative paths are taken from the "
        "working directory",
    )
    download: bool = Field(True, description=f"download {ARCHIVE} when no data is found")
    scale: Literal["tanh", "unit"] = Field(
        "tanh",
        description="value range of the pixels: 'tanh' -> [-1, 1] ((x - 127.5) / 127.5), "
        "'unit' -> [0, 1] (x / 255)",
    )
    val_size: int = Field(
        5000,
        ge=0,
        description="the LAST val_size training images (after the classes filter) are the "
        "validation split (train[45000:50000] by default); training uses the ones before",
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="use only the first `limit` training images (quick runs); "
        "validation is unchanged",
    )
    classes: list[int] | None = Field(
        None,
        min_length=1,
        description="keep only these labels (0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, "
        "5 dog, 6 frog, 7 horse, 8 ship, 9 truck) in every split; labels keep their values",
    )
    batch_records: int = Field(
        10000,
        ge=1,
        description="records each .bin file must hold (10,000 in the official archive); a "
        "file of another size is refused as truncated or corrupt",
    )

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        bad = [c for c in v if not 0 <= c < len(CLASS_NAMES)]
        if bad:
            raise ValueError(f"unknown CIFAR-10 labels {bad}: labels are 0..9")
        if len(set(v)) != len(v):
            raise ValueError(f"repeated labels in {v}")
        return sorted(v)


# ---------------------------------------------------------------- files
def _missing_message(directory: Path, reason: str) -> str:
    names = ", ".join(FILES)
    return (
        f"CIFAR-10 binary files not found in {directory}; {reason}.\n"
        f"Download {URL} (the *binary* version, 162 MB) and either put {ARCHIVE} in "
        f"{directory} as it is, or extract it there so that {directory / FOLDER} holds "
        f"{names}"
    )


def _find_folder(directory: Path) -> Path | None:
    """The directory holding all six files (``FOLDER`` first, then ``directory``), or None."""
    for folder in (directory / FOLDER, directory):
        if all((folder / name).is_file() for name in FILES):
            return folder
    return None


def _check_member_name(archive: Path, name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise UserError(
            f"{archive}: refusing an archive with the unsafe member name {name!r} (absolute "
            f"or with '..'); it is not the official {ARCHIVE}: delete it and download it again"
        )


def read_archive(archive: Path) -> dict[str, bytes]:
    """The six files' bytes from the archive, read in memory (nothing is written to disk).

    Every member name is checked first: an absolute name or one with '..' refuses the archive.
    The six files may sit under ``FOLDER/`` or at the top level, and must be regular files.
    """
    wanted = {f"{FOLDER}/{name}": name for name in FILES} | {name: name for name in FILES}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                _check_member_name(archive, member.name)
                name = wanted.get(member.name.removeprefix("./"))
                if name is None or name in found:
                    continue
                if not member.isfile():
                    raise UserError(
                        f"{archive}: member {member.name!r} is not a regular file (a link?); "
                        f"delete the archive and download it again"
                    )
                fh = tar.extractfile(member)
                assert fh is not None
                found[name] = fh.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(
            f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e}); delete it "
            f"and download {URL} again"
        ) from e
    missing = [name for name in FILES if name not in found]
    if missing:
        raise UserError(
            f"{archive}: the archive lacks {', '.join(missing)} (expected under {FOLDER}/); "
            f"is it the binary version? Download {URL}"
        )
    return found


def load_files(directory: Path, download: bool) -> dict[str, tuple[str, bytes]]:
    """File name -> (where it was read from, its bytes), downloading the archive if needed."""
    folder = _find_folder(directory)
    if folder is not None:
        out = {}
        for name in FILES:
            path = folder / name
            try:
                out[name] = (str(path), path.read_bytes())
            except OSError as e:
                raise UserError(f"{path}: cannot read: {e}") from e
        return out
    archive = directory / ARCHIVE
    if not archive.is_file():
        if not download:
            raise DataNotFoundError(
                _missing_message(directory, "download is off (download = false)")
            )
        try:
            directory.mkdir(parents=True, exist_ok=True)
            print(f"cifar10: downloading {URL} (162 MB) to {directory}", file=sys.stderr)
            download_file(URL, archive, ARCHIVE_MD5, timeout=60.0)
        except Exception as e:  # offline, HTTP error, MD5 mismatch, read-only directory
            raise DataNotFoundError(
                _missing_message(directory, f"the download failed ({type(e).__name__}: {e})")
            ) from e
    return {
        name: (f"{archive}:{FOLDER}/{name}", data) for name, data in read_archive(archive).items()
    }


def parse_batch(data: bytes, source: str, records: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 and labels (n,) from one .bin file's bytes; ``source``
    names the file in errors."""
    import numpy as np

    expected = records * RECORD_BYTES
    if len(data) != expected:
        raise UserError(
            f"{source}: {len(data):,} bytes, expected {expected:,} ({records:,} records of "
            f"{RECORD_BYTES:,} bytes: 1 label + 3x32x32 pixels); the file is truncated or not "
            "from the binary CIFAR-10 archive: delete it and download it again (or set "
            "data.params.batch_records for a file of another size)"
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(records, RECORD_BYTES)
    labels = rows[:, 0]
    if labels.max(initial=0) >= len(CLASS_NAMES):
        bad = int(np.argmax(labels >= len(CLASS_NAMES)))
        raise UserError(
            f"{source}: record {bad} has label {int(labels[bad])} (CIFAR-10 labels are 0..9); "
            "the file is corrupt or not CIFAR-10: delete it and download it again"
        )
    return rows[:, 1:].reshape(records, *IMAGE_SHAPE), labels


# ---------------------------------------------------------------- dataset
def load_cifar10(params: Cifar10Params) -> Dataset:
    """CIFAR-10: 50,000 training and 10,000 test 32x32 colour images in 10 classes."""
    import numpy as np
    import torch

    directory = Path(params.data_dir).expanduser().resolve()
    raw = load_files(directory, params.download)
    r = params.batch_records

    def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        images = np.empty((len(names) * r, *IMAGE_SHAPE), dtype=np.uint8)
        labels = np.empty(len(names) * r, dtype=np.int64)
        for i, name in enumerate(names):
            source, data = raw.pop(name)  # drop each file's bytes once copied
            images[i * r : (i + 1) * r], labels[i * r : (i + 1) * r] = parse_batch(data, source, r)
        return images, labels

    train_x, train_y = read(TRAIN_FILES)
    test_x, test_y = read((TEST_FILE,))
    keep_train = np.arange(len(train_y))
    keep_test = np.arange(len(test_y))
    if params.classes is not None:
        keep_train = np.flatnonzero(np.isin(train_y, params.classes))
        keep_test = np.flatnonzero(np.isin(test_y, params.classes))
    n = len(keep_train)
    if params.val_size >= n:
        raise UserError(
            f"cifar10: val_size = {params.val_size} leaves no training images (there are {n}"
            f"{' of classes ' + str(params.classes) if params.classes else ''}); lower "
            "data.params.val_size"
        )
    n_fit = n - params.val_size
    n_train = min(n_fit, params.limit) if params.limit is not None else n_fit
    train_rows, val_rows = keep_train[:n_train], keep_train[n_fit:]

    def labels(rows: np.ndarray, y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y[rows])

    return Dataset(
        name="cifar10",
        train=uint8_to_float(train_x, train_rows, params.scale),
        val=uint8_to_float(train_x, val_rows, params.scale) if len(val_rows) else None,
        test=uint8_to_float(test_x, keep_test, params.scale) if len(keep_test) else None,
        train_labels=labels(train_rows, train_y),
        test_labels=labels(keep_test, test_y),
        value_range=(-1.0, 1.0) if params.scale == "tanh" else (0.0, 1.0),
        is_image=True,
        info={
            "source": "CIFAR-10 (binary)",
            "data_dir": str(directory),
            "classes": ",".join(CLASS_NAMES[c] for c in params.classes or range(10)),
            "n_train": n_train,
            "n_val": len(val_rows),
            "n_test": len(keep_test),
            "val_slice": f"last {len(val_rows)} training images",
        },
    )


@hookimpl
def register_datasets(register: Register) -> None:
    register(
        "cifar10",
        load_cifar10,
        params=Cifar10Params,
        description="CIFAR-10 32x32 colour images from the binary archive (downloaded when "
        "missing)",
    )
