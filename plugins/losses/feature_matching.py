"""Feature matching (Salimans et al. 2016), a generator-side regulariser.

G is asked to match the batch mean of an intermediate discriminator activation f on real
data: term = weight * || mean f(x) - mean f(G(z)) ||_2^2. Matching statistics instead of
fooling D's last layer gives G a target that does not move as sharply when D overfits,
which is why the paper uses it against training instability.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from gan_pipe import hookimpl
from gan_pipe.context import LossInputs
from gan_pipe.errors import UserError

if TYPE_CHECKING:
    import torch


class FeatureMatchingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(1.0, ge=0, description="multiplies the squared distance")
    layer: str = Field("features", min_length=1, description="discriminator method giving f(x)")
    detach_real: bool = Field(True, description="compute f(real) without grad (a fixed target)")


def _batch_mean(f: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of features flattened to (N, -1), in float32."""
    return f.float().reshape(f.shape[0], -1).mean(0)


class FeatureMatching:
    """G loss += weight * || mean f(x) - mean f(G(z)) ||^2 on ``discriminator.<layer>``.

    Only a generator term: D keeps its own loss. The logged ``feature_matching`` is the
    weighted term, as added to the generator loss.
    """

    #: The extra scalars its terms return, logged as ``train/<key>`` (see docs/metrics.md).
    logs = ("feature_matching",)

    def __init__(self, params: FeatureMatchingParams | None = None):
        self.params = params or FeatureMatchingParams()

    def _layer(self, discriminator: object):
        name = self.params.layer
        fn = getattr(discriminator, name, None)
        if not callable(fn):
            cls = type(discriminator).__name__
            raise UserError(
                f"feature-matching needs discriminator.{name}(x), but discriminator {cls} has "
                f"no method {name!r}; pick a discriminator that exposes one (the dcgan "
                f"discriminator has 'features'), add the method to {cls}, or set the "
                f"regulariser's params.layer to the name of a method it has"
            )
        return fn

    def generator_term(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        import torch

        f = self._layer(x.discriminator)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.params.detach_real):
            f_real = _batch_mean(f(x.real))
        f_fake = _batch_mean(f(x.fake))
        value = self.params.weight * (f_real - f_fake).pow(2).sum()
        return value, {"feature_matching": value.detach()}


@hookimpl
def register_regularizers(register) -> None:
    register("feature-matching", FeatureMatching, params=FeatureMatchingParams)
