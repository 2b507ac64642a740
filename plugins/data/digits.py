"""Dataset ``digits``: scikit-learn's embedded handwritten digits, resized to MNIST size.

It ships inside scikit-learn (1,797 8x8 images, values 0..16), so tests, CI and quick
experiments get a real image dataset with no network and no files to download. torch and
scikit-learn are imported inside the factory so that listing plugins stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gan_pipe import hookimpl
from gan_pipe.context import Dataset

if TYPE_CHECKING:
    import numpy as np
    import torch

    from gan_pipe.registry import Register

#: Number of images in ``sklearn.datasets.load_digits``.
N_DIGITS = 1797
#: Side of the original images, in pixels.
ORIGINAL_SIZE = 8
#: Largest pixel value of the original images.
MAX_VALUE = 16.0


class DigitsParams(BaseModel):
    """Params of the ``digits`` dataset."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(
        28,
        ge=8,
        le=64,
        description="side of the square images after bilinear resizing from 8x8 (28 = MNIST size)",
    )
    scale: Literal["tanh", "unit"] = Field(
        "tanh",
        description="value range of the pixels: 'tanh' -> [-1, 1], 'unit' -> [0, 1]",
    )
    flatten: bool = Field(
        False,
        description="samples as vectors of image_size**2 values instead of (1, H, W) images",
    )
    val_size: int = Field(200, ge=0, description="images held out for validation")
    test_size: int = Field(300, ge=0, description="images held out for testing")
    split_seed: int = Field(
        0, ge=0, description="seed of the fixed shuffle that splits train/val/test"
    )

    @model_validator(mode="after")
    def _leave_training_images(self) -> DigitsParams:
        if self.val_size + self.test_size >= N_DIGITS:
            raise ValueError(
                f"val_size + test_size = {self.val_size + self.test_size} leaves no training "
                f"images (the dataset has {N_DIGITS})"
            )
        return self


def split_indices(
    n: int, val_size: int, test_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into (train, val, test) index arrays.

    Test takes the first ``test_size`` shuffled indices, validation the next ``val_size``,
    training the rest; each array is sorted so a split is a set, not an order.
    """
    import numpy as np

    perm = np.random.default_rng(seed).permutation(n)
    test = np.sort(perm[:test_size])
    val = np.sort(perm[test_size : test_size + val_size])
    train = np.sort(perm[test_size + val_size :])
    return train, val, test


def resize_to_unit(images: np.ndarray, image_size: int) -> torch.Tensor:
    """(N, 8, 8) values 0..16 -> (N, 1, S, S) float32 in [0, 1], bilinear, no corner alignment."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).to(torch.float32).unsqueeze(1) / MAX_VALUE
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp_(0.0, 1.0)


def load_digits_dataset(params: DigitsParams) -> Dataset:
    """scikit-learn's 1,797 handwritten digits, resized, scaled and split train/val/test."""
    import torch
    from sklearn.datasets import load_digits

    raw = load_digits()
    images, labels = raw.images, raw.target
    unit = resize_to_unit(images, params.image_size)
    data = unit * 2.0 - 1.0 if params.scale == "tanh" else unit
    if params.flatten:
        data = data.reshape(data.shape[0], -1)
    targets = torch.from_numpy(labels).to(torch.int64)

    train_idx, val_idx, test_idx = split_indices(
        len(images), params.val_size, params.test_size, params.split_seed
    )

    def take(t: torch.Tensor, idx: np.ndarray) -> torch.Tensor | None:
        return t[torch.from_numpy(idx)].contiguous() if len(idx) else None

    return Dataset(
        name="digits",
        train=take(data, train_idx),
        val=take(data, val_idx),
        test=take(data, test_idx),
        train_labels=take(targets, train_idx),
        test_labels=take(targets, test_idx),
        value_range=(-1.0, 1.0) if params.scale == "tanh" else (0.0, 1.0),
        is_image=True,
        info={
            "source": "sklearn.datasets.load_digits",
            "original_size": ORIGINAL_SIZE,
            "image_size": params.image_size,
            "n_train": len(train_idx),
            "n_val": len(val_idx),
            "n_test": len(test_idx),
            "split_seed": params.split_seed,
        },
    )


@hookimpl
def register_datasets(register: Register) -> None:
    register(
        "digits",
        load_digits_dataset,
        params=DigitsParams,
        description="scikit-learn's 1,797 handwritten digits (embedded, no download), "
        "resized from 8x8",
    )
