"""Dataset ``image-folder``: a directory of PNG/JPEG images (e.g. CelebA's ``img_align_celeba/``).

Files are found recursively by default (``recursive = false``: only the top level), skipping
hidden files and directories (names starting with '.', e.g. macOS' ``._*.jpg`` companions), and
taken in the order of their relative paths, so a run is reproducible. Each image is decoded with
Pillow (EXIF orientation applied), converted to RGB (``channels = 3``; alpha dropped) or 8-bit
grayscale (``channels = 1``), resized so its short side is ``image_size`` with Pillow's
antialiased BILINEAR filter (what torchvision's ``Resize`` does on PIL images), then
centre-cropped to ``image_size x image_size``: the DCGAN/CelebA convention. Pixels are scaled
like the other image datasets: 'tanh' -> [-1, 1] ((x - 127.5) / 127.5), 'unit' -> [0, 1].

Images are decoded into one preallocated uint8 array of shape (N, C, S, S) (C * S * S bytes per
image: 12,288 at 64x64 RGB) and converted to float32 split by split in chunks, never as a list
of per-image tensors. With ``cache = true`` that uint8 array is kept as a ``.npy`` file in the
cache directory, keyed by a hash of the file list (relative paths, sizes, modification times)
and of the decoding settings; a later run memory-maps it instead of decoding again
(:mod:`gan_pipe.plugins.data.image_cache`).

The folder has no labels: metrics that need them (fid) do not apply. Test and validation are
``test_fraction`` and ``val_fraction`` of the images, drawn by a fixed shuffle (``split_seed``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gan_pipe import hookimpl
from gan_pipe.context import Dataset
from gan_pipe.errors import DataNotFoundError, UserError
from gan_pipe.plugins.data.digits import split_indices
from gan_pipe.plugins.data.image_cache import (  # noqa: F401  (re-exported: they were here)
    CACHE_VERSION,
    _load_cached,
    _save_cached,
    cache_key,
    default_cache_dir,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from gan_pipe.registry import Register

#: Folders with at least this many images get progress lines on stderr while decoding.
PROGRESS_MIN_IMAGES = 1000
#: Rows converted from uint8 to float32 at a time (bounds the temporary copies).
CHUNK_ROWS = 4096


class ImageFolderParams(BaseModel):
    """Params of the ``image-folder`` dataset."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        min_length=1,
        description="directory of images (e.g. CelebA's img_align_celeba); '~' is expanded, "
        "relative paths are taken from the working directory",
    )
    image_size: int = Field(
        64,
        ge=4,
        le=1024,
        description="side of the square images: the short side is resized to it (Pillow "
        "BILINEAR, antialiased), then the centre image_size x image_size square is kept",
    )
    channels: Literal[1, 3] = Field(3, description="3: RGB (alpha dropped); 1: 8-bit grayscale")
    extensions: list[str] = Field(
        [".png", ".jpg", ".jpeg"],
        min_length=1,
        description="file name endings read as images (case-insensitive; '.png' or 'png')",
    )
    recursive: bool = Field(
        True, description="also read images in subdirectories (false: the top level only)"
    )
    max_images: int | None = Field(
        None,
        ge=1,
        description="use only the first max_images files (in path order), before the splits",
    )
    scale: Literal["tanh", "unit"] = Field(
        "tanh",
        description="value range of the pixels: 'tanh' -> [-1, 1] ((x - 127.5) / 127.5), "
        "'unit' -> [0, 1] (x / 255)",
    )
    val_fraction: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="fraction of the images held out for validation (at least 1 image when > 0)",
    )
    test_fraction: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="fraction of the images held out for testing (at least 1 image when > 0)",
    )
    split_seed: int = Field(
        0, ge=0, description="seed of the fixed shuffle that splits train/val/test"
    )
    skip_corrupt: bool = Field(
        False,
        description="skip images Pillow cannot decode (counted in data.info.n_skipped) "
        "instead of stopping with an error that names the file",
    )
    lazy: Literal["auto"] | bool = Field(
        "auto",
        description="decode the training images when batches need them, in the data "
        "loader's worker processes, instead of all at load (the run then streams them, "
        "data.stream = 'auto'); auto: when the decoded training images (float32) would take "
        "more than half of the available host memory. Validation and test images are decoded "
        "at load either way; the cache is not used",
    )
    cache: bool = Field(
        False,
        description="keep the decoded uint8 images as a .npy file in cache_dir and reuse it "
        "while the files and the decoding settings are unchanged",
    )
    cache_dir: str | None = Field(
        None,
        description="where decoded images are cached "
        "(default $GAN_PIPE_CACHE/datasets or ~/.cache/gan-pipe/datasets)",
    )

    @field_validator("extensions")
    @classmethod
    def _dotted_lower(cls, v: list[str]) -> list[str]:
        out = []
        for ext in v:
            ext = ext.strip().lower()
            if ext in ("", "."):
                raise ValueError("an empty extension; give endings like '.png'")
            out.append(ext if ext.startswith(".") else "." + ext)
        return out


# ---------------------------------------------------------------- files
def list_images(root: Path, extensions: list[str], recursive: bool) -> list[Path]:
    """Image files under ``root`` (hidden names skipped), sorted by relative path."""
    exts = tuple(extensions)

    def keep(name: str) -> bool:
        return not name.startswith(".") and name.lower().endswith(exts)

    if not recursive:
        found = [e.path for e in os.scandir(root) if keep(e.name) and e.is_file()]
    else:
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [os.path.join(dirpath, f) for f in filenames if keep(f)]
    return sorted((Path(p) for p in found), key=lambda p: p.relative_to(root).as_posix())


def decode_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One image as uint8 (C, S, S): RGB or L, short side resized to S (BILINEAR), centre crop.

    Raises OSError/ValueError (Pillow's errors) when the file cannot be decoded.
    """
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im = im.convert("RGB" if channels == 3 else "L")
    w, h = im.size
    s = image_size
    if min(w, h) != s:
        # torchvision's Resize(int) rule: the short side becomes s, the long one is truncated.
        size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        im = im.resize(size, Image.Resampling.BILINEAR)
        w, h = im.size
    left, top = int(round((w - s) / 2.0)), int(round((h - s) / 2.0))
    arr = np.asarray(im.crop((left, top, left + s, top + s)), dtype=np.uint8)
    return arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]


class _Progress:
    """A line on stderr at the start and every ~10% of a long decode, so it is never silent."""

    def __init__(self, total: int, root: Path) -> None:
        self.total, self.root = total, root
        self.on = total >= PROGRESS_MIN_IMAGES
        self.every = max(1, total // 10)
        self.start = time.perf_counter()
        self._say(f"decoding {total:,} images from {root}")

    def _say(self, text: str) -> None:
        if self.on:
            print(f"image-folder: {text}", file=sys.stderr, flush=True)

    def update(self, done: int) -> None:
        if done % self.every == 0 or done == self.total:
            el = time.perf_counter() - self.start
            eta = el / done * (self.total - done)
            self._say(
                f"{done:,}/{self.total:,} images ({100 * done / self.total:.0f}%, "
                f"{el:.0f}s elapsed, ~{eta:.0f}s left)"
            )


def decode_all(
    root: Path, files: list[Path], image_size: int, channels: int, skip_corrupt: bool
) -> tuple[np.ndarray, list[str]]:
    """All ``files`` decoded into one uint8 (N, C, S, S) array, and the relative paths skipped."""
    import numpy as np

    out = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8)
    skipped: list[str] = []
    progress = _Progress(len(files), root)
    k = 0
    for i, path in enumerate(files, 1):
        try:
            out[k] = decode_image(path, image_size, channels)
            k += 1
        except Exception as e:  # Pillow raises OSError, ValueError, DecompressionBombError...
            if not skip_corrupt:
                raise UserError(
                    f"image-folder: cannot decode {path}: {type(e).__name__}: {e}. Delete or "
                    "replace the file, or set data.params.skip_corrupt = true to skip such files"
                ) from e
            skipped.append(path.relative_to(root).as_posix())
        progress.update(i)
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        print(
            f"image-folder: skipped {len(skipped)} undecodable file(s) in {root}: {shown}",
            file=sys.stderr,
        )
    return out[:k], skipped


# ---------------------------------------------------------------- cache
# ---------------------------------------------------------------- dataset
def uint8_to_float(
    images: np.ndarray, rows: np.ndarray, scale: Literal["tanh", "unit"]
) -> torch.Tensor:
    """float32 tensor of ``images[rows]`` scaled to [-1, 1] ('tanh') or [0, 1] ('unit'),
    converted ``CHUNK_ROWS`` at a time (``images`` may be a memory map)."""
    import numpy as np
    import torch

    from gan_pipe.plugins.data.lazy_images import scale_uint8

    out = torch.empty((len(rows), *images.shape[1:]), dtype=torch.float32)
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = torch.from_numpy(np.ascontiguousarray(images[rows[start : start + CHUNK_ROWS]]))
        out[start : start + len(chunk)] = scale_uint8(chunk, scale)
    return out


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test): floor(n * fraction), at least 1 when the fraction is > 0."""

    def size(f: float) -> int:
        return max(1, math.floor(n * f)) if f > 0 else 0

    return size(val_fraction), size(test_fraction)


def _listed_files(params: ImageFolderParams) -> tuple[Path, list[Path]]:
    """The folder and its image files (``max_images`` applied); errors name what is missing."""
    root = Path(params.path).expanduser().resolve()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise DataNotFoundError(
            f"image-folder: {root} {what}; set data.params.path to the directory holding the "
            "images (e.g. CelebA's img_align_celeba)"
        )
    files = list_images(root, params.extensions, params.recursive)
    if not files:
        where = "in it or its subdirectories" if params.recursive else "at its top level"
        hint = "" if params.recursive else " (set data.params.recursive = true to look deeper)"
        raise DataNotFoundError(
            f"image-folder: no files ending in {', '.join(params.extensions)} {where} "
            f"of {root}; put the images there or set data.params.extensions{hint}"
        )
    if params.max_images is not None:
        files = files[: params.max_images]
    return root, files


def _splits(n: int, root: Path, params: ImageFolderParams):
    """(train, val, test) index arrays over ``n`` images."""
    n_val, n_test = split_sizes(n, params.val_fraction, params.test_fraction)
    if n - n_val - n_test < 1:
        raise UserError(
            f"image-folder: {n} image(s) in {root} leave none for training after "
            f"{n_val} for validation and {n_test} for testing; add images or lower "
            "data.params.val_fraction / test_fraction"
        )
    return split_indices(n, n_val, n_test, params.split_seed)


def _decoded(root: Path, files: list[Path], params: ImageFolderParams):
    """All images decoded (or memory-mapped from the cache), the skipped files, the cache state."""
    shape = (params.channels, params.image_size, params.image_size)
    stem = None
    if params.cache:
        base = Path(params.cache_dir).expanduser() if params.cache_dir else default_cache_dir()
        stem = base / "image-folder" / cache_key(root, files, params)
        cached = _load_cached(stem, shape)
        if cached is not None:
            return (*cached, "hit")
    images, skipped = decode_all(
        root, files, params.image_size, params.channels, params.skip_corrupt
    )
    if stem is None:
        return images, skipped, "off"
    return images, skipped, "written" if _save_cached(stem, images, skipped, root) else "failed"


def _eager(root: Path, files: list[Path], params: ImageFolderParams) -> tuple:
    """Every split as a float tensor, decoded at load."""
    images, skipped, cache_state = _decoded(root, files, params)
    splits = _splits(len(images), root, params)

    def take(idx: np.ndarray) -> torch.Tensor | None:
        return uint8_to_float(images, idx, params.scale) if len(idx) else None

    return tuple(take(idx) for idx in splits), splits, skipped, cache_state


def _lazy(root: Path, files: list[Path], params: ImageFolderParams) -> tuple:
    """Training rows decoded on demand; validation and test decoded at load."""
    import numpy as np

    from gan_pipe.plugins.data.lazy_images import lazy_splits, verified

    skipped: list[str] = []
    if params.skip_corrupt:
        files, skipped = verified(root, files)
    splits = _splits(len(files), root, params)
    rows, val_files, test_files = lazy_splits(files, splits, params)

    def take(some: list[Path]) -> torch.Tensor | None:
        if not some:
            return None
        images, _ = decode_all(root, some, params.image_size, params.channels, False)
        return uint8_to_float(images, np.arange(len(images)), params.scale)

    return (rows, take(val_files), take(test_files)), splits, skipped, "off (lazy)"


def load_image_folder(params: ImageFolderParams) -> Dataset:
    """Decode (or load from the cache), scale and split a folder of images; with ``lazy``, the
    training images are decoded when batches need them (plugins/data/lazy_images.py)."""
    from gan_pipe.plugins.data.lazy_images import decide_lazy

    root, files = _listed_files(params)
    row_bytes = 4 * params.channels * params.image_size**2
    lazy = decide_lazy(params.lazy, len(files), row_bytes)
    load = _lazy if lazy else _eager
    (train, val, test), splits, skipped, cache_state = load(root, files, params)
    assert train is not None
    return Dataset(
        name="image-folder",
        train=train,
        val=val,
        test=test,
        value_range=(-1.0, 1.0) if params.scale == "tanh" else (0.0, 1.0),
        is_image=True,
        fits_device=False if lazy else None,
        info={
            "source": "image-folder",
            "path": str(root),
            "n_files": len(files),
            "n_skipped": len(skipped),
            "image_size": params.image_size,
            "channels": params.channels,
            "n_train": len(splits[0]),
            "n_val": len(splits[1]),
            "n_test": len(splits[2]),
            "split_seed": params.split_seed,
            "cache": cache_state,
            "lazy": lazy,
        },
    )


@hookimpl
def register_datasets(register: Register) -> None:
    register(
        "image-folder",
        load_image_folder,
        params=ImageFolderParams,
        description="a directory of PNG/JPEG images (e.g. CelebA), resized and centre-cropped "
        "to squares",
    )
