"""The ``samples`` frames: the generator at fixed noise, drawn while training runs.

Always on (not a recipe entry): an image grid for image data, real vs generated scatter
(2-D and more) or histograms (1-D) otherwise, logged under the image key ``samples`` so the
MLflow UI's per-step slider shows mode collapse as it happens. Drawn at step 0 (a new run),
every ``train.sample_every`` steps (0: ten per run) and at the last step, with the generator
a callback provides (an EMA) once there is one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from gan_pipe.context import RunContext


class SampleFrames:
    def __init__(self, ctx: RunContext, every: int, total: int):
        import torch

        assert ctx.noise is not None and ctx.dataset is not None
        self.every, self.total = every, total
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.recipe.experiment.seed + 12345)
        # image data: an 8x8 grid; vector data: enough points for a scatter or histogram
        n_fixed = 64 if ctx.dataset.is_image else 1000
        self.fixed_noise = ctx.noise(n_fixed, generator=gen)
        self._fixed_real: torch.Tensor | None = None

    def on_train_start(self, ctx: RunContext) -> None:
        if ctx.step == 0:
            self.draw(ctx, 0)

    def on_step(self, ctx: RunContext, step: int) -> None:
        if step % self.every == 0 or step == self.total:
            self.draw(ctx, step)

    def draw(self, ctx: RunContext, step: int) -> None:
        """Log the frame of ``step``."""
        import torch

        from gan_pipe.evaluation import eval_mode

        ds = ctx.dataset
        if ds is None:
            return
        provided = ctx.callbacks.generator()
        net = provided if provided is not None else ctx.generator
        with eval_mode(net) as gen, torch.no_grad():
            x = gen(self.fixed_noise).float().cpu()
        if ds.is_image:
            from gan_pipe.plugins.reports import grid as G

            picture = G.image_grid(
                G.samples_to_images(x, ds.shape), nrow=8, value_range=ds.value_range
            )
        else:
            picture = self._vector_picture(ctx, x.reshape(len(x), -1), step)
        ctx.tracker.log_image(picture, key="samples", step=step)

    def _vector_picture(self, ctx: RunContext, x: torch.Tensor, step: int) -> Any:
        import torch

        from gan_pipe.plugins.reports import grid as G
        from gan_pipe.plugins.reports.plots import real_subset, vector_figure

        if self._fixed_real is None:  # the same real points in every frame
            seed = ctx.recipe.experiment.seed
            self._fixed_real = real_subset(ctx.dataset, len(x), seed).reshape(-1, x.shape[1])
        real = self._fixed_real
        lo, hi = real.min(dim=0).values, real.max(dim=0).values
        pad = torch.where(hi > lo, 0.5 * (hi - lo), torch.ones_like(hi))
        # fixed axes around the data: frames of the slider compare
        box = [(float(a), float(b)) for a, b in zip(lo - pad, hi + pad, strict=True)]
        fig = vector_figure(real, x, f"step {step}", span=box[0], limits=box[:2])
        return G.figure_pixels(fig)
