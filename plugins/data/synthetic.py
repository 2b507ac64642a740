"""Synthetic datasets whose distribution is known exactly: ``gaussian-1d``, ``ring8``, ``grid25``.

Each is an equal-weight mixture of isotropic Gaussians (one component for ``gaussian-1d``), so
the dataset can expose the exact ``log_density`` and an exact ``sample``: divergence metrics
then compare the generator to the true distribution instead of to a finite sample, and the
mode-collapse metric reads the mode centres and width from ``Dataset.modes`` /
``Dataset.mode_std`` (also kept in ``info["modes"]`` / ``info["mode_std"]``).

* ``gaussian-1d``: N(mu=4, sigma=0.5), the 1-D GAN of seed 001.
* ``ring8``: 8 Gaussians evenly on a circle of radius 1, std 0.01 (VEEGAN / PacGAN).
* ``grid25``: 25 Gaussians at {-4,-2,0,2,4}^2, std 0.05 (VEEGAN / PacGAN).

Data are not rescaled: ``value_range`` is only the rough support (centres +- 4 std).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl

if TYPE_CHECKING:
    import torch

    from gan_pipe.context import Dataset


class _SplitParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_train: int = Field(50_000, gt=0, description="samples drawn for the training split")
    n_val: int = Field(10_000, ge=0, description="samples drawn for the validation split (0: none)")
    n_test: int = Field(10_000, ge=0, description="samples drawn for the test split (0: none)")
    seed: int = Field(
        0,
        description="seed of the drawn samples; each split gets its own seed derived from it, "
        "so resizing one split leaves the others unchanged",
    )


class Gaussian1DParams(_SplitParams):
    mu: float = Field(4.0, description="mean of the Gaussian (seed 001: 4)")
    sigma: float = Field(
        0.5, gt=0, description="standard deviation of the Gaussian (seed 001: 0.5)"
    )


class RingParams(_SplitParams):
    radius: float = Field(
        1.0, gt=0, description="radius of the circle the mode centres lie on (VEEGAN: 1)"
    )
    n_modes: int = Field(
        8,
        ge=1,
        description="Gaussians evenly spaced in angle, the first at (radius, 0) (VEEGAN: 8)",
    )
    std: float = Field(
        0.01, gt=0, description="standard deviation of each Gaussian per axis (VEEGAN: 0.01)"
    )


class GridParams(_SplitParams):
    n_per_axis: int = Field(
        5,
        ge=1,
        description="modes per axis (n_per_axis**2 in all); centres are "
        "(i - (n_per_axis - 1) / 2) * spacing on each axis (VEEGAN: 5)",
    )
    spacing: float = Field(
        2.0, gt=0, description="distance between neighbouring centres (VEEGAN: 2, so {-4,...,4})"
    )
    std: float = Field(
        0.05, gt=0, description="standard deviation of each Gaussian per axis (VEEGAN: 0.05)"
    )


class GaussianMixture:
    """Equal-weight mixture of isotropic Gaussians N(c_k, std^2 I): exact density and sampler.

    A class (not closures) so a Dataset holding it stays picklable.
    """

    def __init__(self, centres: list[list[float]], std: float):
        import torch

        self.centres = torch.tensor(centres, dtype=torch.float64)  # (K, d)
        self.std = float(std)

    @property
    def dim(self) -> int:
        return int(self.centres.shape[1])

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for a batch ``(N, d)`` (or ``(N,)`` when d = 1), in float64 on x's device.

        float64 because the narrow modes (std 0.01) give large squared-distance terms whose
        logsumexp must not lose the small ones.
        """
        import torch

        x = torch.as_tensor(x).to(torch.float64).reshape(len(x), -1)
        c = self.centres.to(x.device)
        k, d = c.shape
        sq = torch.cdist(x, c).square()  # (N, K)
        log_norm = -0.5 * d * math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(-sq / (2 * self.std**2), dim=1) + log_norm - math.log(k)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples ``(n, d)`` float32 on the CPU (pick a mode uniformly, add noise)."""
        import torch

        idx = torch.randint(len(self.centres), (n,), generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.centres[idx] + self.std * noise).float()


def _split_seeds(seed: int) -> list[int]:
    """Independent seeds for train/val/test, so changing one split's size leaves the others."""
    import numpy as np

    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(3)]


def _make(name: str, mix: GaussianMixture, p: _SplitParams, extra: dict[str, Any]) -> Dataset:
    import torch

    from gan_pipe.context import Dataset

    splits = [
        mix.sample(n, torch.Generator().manual_seed(s)) if n else None
        for n, s in zip((p.n_train, p.n_val, p.n_test), _split_seeds(p.seed), strict=True)
    ]
    margin = 4 * mix.std
    return Dataset(
        name=name,
        train=splits[0],
        val=splits[1],
        test=splits[2],
        value_range=(float(mix.centres.min()) - margin, float(mix.centres.max()) + margin),
        is_image=False,
        log_density=mix.log_density,
        sample=mix.sample,
        modes=mix.centres,
        mode_std=mix.std,
        info={
            "modes": mix.centres.tolist(),
            "mode_std": mix.std,
            "n_modes": len(mix.centres),
            "dim": mix.dim,
            "seed": p.seed,
            **extra,
        },
    )


def gaussian_1d(params: Gaussian1DParams) -> Dataset:
    """1-D Gaussian N(mu, sigma^2) (seed 001: N(4, 0.5))."""
    mix = GaussianMixture([[params.mu]], params.sigma)
    return _make("gaussian-1d", mix, params, {"mu": params.mu, "sigma": params.sigma})


def ring(params: RingParams) -> Dataset:
    """Gaussians evenly on a circle (VEEGAN ring: 8 modes, radius 1, std 0.01)."""
    k, r = params.n_modes, params.radius
    centres = [
        [r * math.cos(2 * math.pi * i / k), r * math.sin(2 * math.pi * i / k)] for i in range(k)
    ]
    return _make("ring8", GaussianMixture(centres, params.std), params, {"radius": r})


def grid(params: GridParams) -> Dataset:
    """Gaussians on a square grid (VEEGAN grid: 25 modes at {-4,-2,0,2,4}^2, std 0.05)."""
    k = params.n_per_axis
    axis = [(i - (k - 1) / 2) * params.spacing for i in range(k)]
    centres = [[a, b] for a in axis for b in axis]
    return _make("grid25", GaussianMixture(centres, params.std), params, {})


def mixture_modes(dataset: Dataset) -> torch.Tensor:
    """Mode centres ``(K, d)`` float64 of a dataset that declares ``info["modes"]``."""
    import torch

    if "modes" not in dataset.info:
        raise ValueError(f"dataset {dataset.name!r} declares no modes (info['modes'])")
    return torch.tensor(dataset.info["modes"], dtype=torch.float64).reshape(
        len(dataset.info["modes"]), -1
    )


@hookimpl
def register_datasets(register) -> None:
    register("gaussian-1d", gaussian_1d, params=Gaussian1DParams)
    register("ring8", ring, params=RingParams)
    register("grid25", grid, params=GridParams)
