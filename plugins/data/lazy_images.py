"""Lazy decoding for ``image-folder``: training images decoded when a batch needs them.

With ``lazy`` on, loading the dataset lists the files and decodes only the validation and
test images; the training split is a :class:`FolderRows`, which the trainer streams
(``data.stream = "auto"``): the DataLoader's worker processes decode each batch's files with
the same resize and centre crop, so no more than the batches in flight are in memory at once.
A row decoded here equals the same row decoded at load time bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from gan_pipe.dataloading import Rows
from gan_pipe.errors import UserError

if TYPE_CHECKING:
    import numpy as np

#: ``lazy = "auto"`` decodes lazily when the decoded training images would take more than
#: this fraction of the host's available memory.
LAZY_FRACTION = 0.5


def scale_uint8(x: torch.Tensor, scale: Literal["tanh", "unit"]) -> torch.Tensor:
    """uint8 pixels as float32 in [-1, 1] ('tanh') or [0, 1] ('unit')."""
    x = x.to(torch.float32)
    return (x - 127.5) / 127.5 if scale == "tanh" else x / 255.0


class FolderRows(Rows):
    """Training images decoded on demand from their files (``files[i]`` is row ``i``)."""

    def __init__(self, files: list[str], image_size: int, channels: int, scale: str):
        self.files, self.image_size, self.channels = files, image_size, channels
        self.scale: Any = scale
        self.row_shape = (channels, image_size, image_size)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> torch.Tensor:
        from gan_pipe.plugins.data.image_folder import decode_image

        path = self.files[i]
        try:
            pixels = decode_image(Path(path), self.image_size, self.channels)
        except Exception as e:  # Pillow raises OSError, ValueError, DecompressionBombError...
            raise UserError(
                f"image-folder: cannot decode {path}: {type(e).__name__}: {e}. Delete or "
                "replace the file (with lazy decoding, data.params.skip_corrupt only skips "
                "files that fail Pillow's verify() when the dataset is loaded)"
            ) from e
        return scale_uint8(torch.tensor(pixels), self.scale)  # a copy: pixels are read-only


def available_memory() -> int | None:
    """Bytes of host memory available (Linux' MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def decide_lazy(setting: Literal["auto"] | bool, n_images: int, row_bytes: int) -> bool:
    """``lazy = true/false`` as given; ``"auto"``: lazy when ``n_images`` decoded float32 rows
    of ``row_bytes`` would take more than ``LAZY_FRACTION`` of the available host memory."""
    if setting is True or setting is False:
        return setting
    avail = available_memory()
    return avail is not None and n_images * row_bytes > LAZY_FRACTION * avail


def verified(root: Path, files: list[Path]) -> tuple[list[Path], list[str]]:
    """Files that pass Pillow's ``verify()`` (structure and checksums, no decoding), and the
    relative paths of those that do not."""
    from PIL import Image

    good: list[Path] = []
    bad: list[str] = []
    for path in files:
        try:
            with Image.open(path) as im:
                im.verify()
            good.append(path)
        except Exception:  # noqa: BLE001 - any Pillow failure marks the file corrupt
            bad.append(path.relative_to(root).as_posix())
    return good, bad


def lazy_splits(
    files: list[Path], splits: tuple[np.ndarray, np.ndarray, np.ndarray], params: Any
) -> tuple[FolderRows, list[Path], list[Path]]:
    """The training rows (lazy) and the validation and test files, from split indices."""
    train_idx, val_idx, test_idx = splits
    rows = FolderRows(
        [str(files[i]) for i in train_idx], params.image_size, params.channels, params.scale
    )
    return rows, [files[i] for i in val_idx], [files[i] for i in test_idx]
