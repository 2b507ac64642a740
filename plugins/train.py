"""The built-in training loop.

Design choices, all for speed on small nets where overhead dominates:

* the training set lives on the device as one tensor; batches are index slices of a
  per-epoch permutation (no DataLoader, no workers, no host copies);
* losses are accumulated as device tensors and read back once per ``log_every`` steps
  (one host sync), then sent to MLflow in buffered asynchronous batches;
* bf16 autocast on CUDA when ``train.amp`` allows it.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gan_pipe import distributed as dist
from gan_pipe.context import LossInputs
from gan_pipe.errors import UserError

if TYPE_CHECKING:
    from gan_pipe.context import RunContext


def make_optimizer(params: Any, settings: dict[str, Any]) -> torch.optim.Optimizer:
    name = settings["optimizer"]
    if name == "adam":
        return torch.optim.Adam(
            params,
            lr=settings["lr"],
            betas=tuple(settings["betas"]),
            weight_decay=settings["weight_decay"],
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=settings["lr"],
            momentum=settings["momentum"],
            weight_decay=settings["weight_decay"],
        )
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=settings["lr"],
            momentum=settings["momentum"],
            weight_decay=settings["weight_decay"],
        )
    raise ValueError(f"unknown optimizer {name!r}")


def make_schedule(opt: torch.optim.Optimizer, train: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-optimizer-step learning-rate schedule (TF's exponential_decay, staircase or not)."""
    if train.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    rate, every, stair = train.decay_rate, train.decay_steps, train.staircase
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: rate ** (s // every if stair else s / every)
    )


class BatchSampler:
    """Endless shuffled batches from a device-resident tensor (drop_last per epoch), or, with
    ``replacement``, batches of rows drawn uniformly with replacement."""

    def __init__(self, data: torch.Tensor, batch_size: int, replacement: bool = False):
        if len(data) < batch_size:
            raise ValueError(
                f"train.batch_size = {batch_size} is larger than the training set "
                f"({len(data)} rows)"
            )
        self.data, self.batch_size, self.replacement = data, batch_size, replacement
        self.per_epoch = len(data) // batch_size
        self._perm = torch.empty(0, dtype=torch.long, device=data.device)
        self._i = self.per_epoch

    def next(self) -> torch.Tensor:
        if self.replacement:
            idx = torch.randint(len(self.data), (self.batch_size,), device=self.data.device)
            return self.data.index_select(0, dist.shard(idx))
        if self._i >= self.per_epoch:
            self._perm = torch.randperm(len(self.data), device=self.data.device)
            self._i = 0
        idx = self._perm[self._i * self.batch_size : (self._i + 1) * self.batch_size]
        self._i += 1
        return self.data.index_select(0, dist.shard(idx))  # this process's rows


def total_steps(train: Any, n_rows: int) -> int:
    """Generator steps to run: ``train.steps``, or ``train.epochs`` passes of real batches."""
    if train.steps is not None:
        return int(train.steps)
    epochs = train.epochs if train.epochs is not None else 1.0
    per_epoch = max(1, n_rows // train.batch_size)
    return max(1, math.ceil(epochs * per_epoch / train.n_critic))


class TrainingDiverged(UserError):
    """A NaN or infinite loss or weight, with ``train.on_nonfinite = 'stop'`` or rollbacks
    used up: the run is marked FAILED and no checkpoint of the diverged state is saved."""


def _first_nonfinite(metrics: dict[str, float], weights_ok: float) -> str | None:
    """'train/d_loss = nan' for the first non-finite value, or None when all are finite."""
    for k, v in metrics.items():
        if not math.isfinite(v):
            return f"{k} = {v}"
    return None if weights_ok == 1.0 else "a weight of G or D is NaN or infinite"


def _values(key: str, loss: torch.Tensor, extras: dict[str, torch.Tensor]):
    """A step's loss and extras, detached, for the log accumulators."""
    return {key: loss.detach(), **{k: v.detach() for k, v in extras.items()}}


class Trainer:
    def __init__(self, ctx: RunContext):
        assert ctx.dataset is not None and ctx.generator is not None
        assert ctx.discriminator is not None and ctx.loss is not None and ctx.noise is not None
        self.ctx = ctx
        self.cfg = ctx.recipe.train
        self.G, self.D, self.loss, self.noise = (
            ctx.generator,
            ctx.discriminator,
            ctx.loss,
            ctx.noise,
        )
        self.device = ctx.device
        # under torchrun: what trains through DistributedDataParallel (the same nets)
        self.G_ddp, self.D_ddp = dist.wrap(self.G), dist.wrap(self.D)
        self.data = ctx.dataset.train.to(self.device, non_blocking=True)
        self.sampler = BatchSampler(
            self.data, self.cfg.batch_size, replacement=self.cfg.sampling == "replacement"
        )
        self.opt_g = make_optimizer(self.G.parameters(), self.cfg.optimizer_for("generator"))
        self.opt_d = make_optimizer(self.D.parameters(), self.cfg.optimizer_for("discriminator"))
        self.sched_g = make_schedule(self.opt_g, self.cfg)
        self.sched_d = make_schedule(self.opt_d, self.cfg)
        self.steps = total_steps(self.cfg, len(self.data))
        use_amp = self.device.type == "cuda" and self.cfg.amp in ("auto", "bf16")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp)
        self.sample_every = self.cfg.sample_every or max(1, self.steps // 10)
        gen = torch.Generator(device=self.device).manual_seed(ctx.recipe.experiment.seed + 12345)
        # image data: an 8x8 grid; vector data: enough points for a scatter or histogram
        n_fixed = 64 if ctx.dataset.is_image else 1000
        self.fixed_noise = self.noise(n_fixed, generator=gen)
        self._fixed_real: torch.Tensor | None = None
        self._acc: dict[str, torch.Tensor] = {}
        self._acc_counts: dict[str, int] = {}
        self._saved_step = -1
        self.start_step = 0
        # the floating tensors of both nets, checked for NaN/inf at logging steps
        self._watched = [
            t
            for net in (self.G, self.D)
            for t in net.state_dict().values()
            if t.is_floating_point()
        ]
        self._bad: str | None = None  # what the last check found non-finite
        self._good: dict[str, Any] | None = None  # the last state seen finite (rollback)
        self._rollbacks = 0
        self._lr_scale = 1.0  # product of the rollbacks' learning-rate factors
        self._clock = time.monotonic
        self._last_save = self._clock()
        resume = ctx.state.get("resume")
        if resume is not None:
            self.load_checkpoint_state(resume)
            self._logged_history()
        else:
            ctx.tracker.log_params(
                {
                    "train.total_steps": self.steps,
                    "train.amp_enabled": use_amp,
                    "train.batches_per_epoch": self.sampler.per_epoch,
                }
            )

    def _logged_history(self) -> None:
        """On resume, ``ctx.history`` starts with the run's logged train/ and eval/ values up
        to the checkpoint, so loss plots and curves cover the whole run. Points logged after
        the checkpoint (a killed process, an abandoned rollback) are left out; of points
        logged twice at one step the later is kept."""
        client = getattr(self.ctx.tracker, "client", None)
        run_id = getattr(self.ctx.tracker, "run_id", None)
        if client is None or run_id is None:
            return
        keys = client.get_run(run_id).data.metrics
        for key in sorted(k for k in keys if k.startswith(("train/", "eval/"))):
            points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
            by_step = {m.step: m.value for m in points if m.step <= self.start_step}
            if by_step:
                self.ctx.history[key] = sorted(by_step.items())

    # ------------------------------------------------------------ one step
    def discriminator_step(self) -> dict[str, torch.Tensor]:
        real = self.sampler.next()
        with torch.no_grad(), self.autocast:
            fake = self.G(dist.shard(self.noise(self.cfg.batch_size)))
        with self.autocast:
            loss, extras, _ = self._discriminator_loss(real, fake)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        self._after_discriminator_step(real)
        return _values("d_loss", loss, extras)

    def _discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor):
        """D's loss plus its regularisers' terms; also returns D(fake)."""
        d_real = self.D_ddp(real)
        d_fake = self.D_ddp(fake)
        inputs = LossInputs(self.D, real, fake, d_real, d_fake)
        loss, extras = self.loss.discriminator_loss(inputs)
        return self._add_terms(loss, extras, "discriminator_term", inputs), extras, d_fake

    def _generator_loss(self, real: torch.Tensor, fake: torch.Tensor, d_fake: torch.Tensor):
        inputs = LossInputs(self.D, real, fake, None, d_fake)
        loss, extras = self.loss.generator_loss(inputs)
        return self._add_terms(loss, extras, "generator_term", inputs), extras

    def _after_discriminator_step(self, real: torch.Tensor) -> None:
        self.sched_d.step()
        after = getattr(self.loss, "after_discriminator_step", None)
        if after is not None:
            after(self.D)
        self._last_real = real

    def generator_step(self) -> dict[str, torch.Tensor]:
        real = self._last_real
        # D's weight gradients are not needed here (they are zeroed before D's next step):
        # freezing D skips computing them, a third of D's backward pass.
        d_params = [p for p in self.D.parameters() if p.requires_grad]
        for p in d_params:
            p.requires_grad_(False)
        try:
            return self._generator_update(real)
        finally:
            for p in d_params:
                p.requires_grad_(True)

    def _generator_update(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast:
            fake = self.G_ddp(dist.shard(self.noise(self.cfg.batch_size)))
            loss, extras = self._generator_loss(real, fake, self.D(fake))
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.sched_g.step()
        return _values("g_loss", loss, extras)

    def simultaneous_step(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One forward pass of G and D; D's gradient and G's gradient both come from it (G's
        against D before D's update), then both nets are stepped (seeds 002/003)."""
        real = self.sampler.next()
        with self.autocast:
            fake = self.G(dist.shard(self.noise(self.cfg.batch_size)))
            d_loss, d_extras, d_fake = self._discriminator_loss(real, fake)
            g_loss, g_extras = self._generator_loss(real, fake, d_fake)
        d_params = [p for p in self.D.parameters() if p.requires_grad]
        g_params = [p for p in self.G.parameters() if p.requires_grad]
        d_grads = torch.autograd.grad(d_loss, d_params, retain_graph=True, allow_unused=True)
        g_grads = torch.autograd.grad(g_loss, g_params, allow_unused=True)
        dist.average_grads([*d_grads, *g_grads])  # what DDP's backward() would do
        for opt, params, grads in (
            (self.opt_d, d_params, d_grads),
            (self.opt_g, g_params, g_grads),
        ):
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()
        self.sched_g.step()
        self._after_discriminator_step(real)
        return _values("d_loss", d_loss, d_extras), _values("g_loss", g_loss, g_extras)

    def _add_terms(self, loss, extras, which: str, inputs: LossInputs):
        """Add every regulariser's term for this network; extras are logged with the loss."""
        for reg in self.ctx.regularizers:
            term = getattr(reg, which, None)
            if term is None:
                continue
            value, more = term(inputs)
            loss = loss + value
            extras.update(more)
        return loss

    def _drain(self, step: int) -> dict[str, float]:
        """Means since the last log point: one host sync for every value."""
        if not self._acc:
            return {}
        keys = list(self._acc)
        counts = self._acc_counts
        parts = [self._acc[k] / counts[k] for k in keys]
        check = self.cfg.on_nonfinite != "ignore"
        if check:  # in the same sync as the losses
            parts.append(self._weights_finite())
        values = dist.mean(torch.stack(parts)).tolist()  # means over the processes too
        weights_ok = values.pop() if check else 1.0
        self._acc.clear()
        self._acc_counts = {}
        metrics = {f"train/{k}": v for k, v in zip(keys, values, strict=True)}
        self._bad = _first_nonfinite(metrics, weights_ok) if check else None
        if self.cfg.lr_schedule != "constant":
            metrics["train/lr_g"] = self.sched_g.get_last_lr()[0]
            metrics["train/lr_d"] = self.sched_d.get_last_lr()[0]
        for k, v in metrics.items():
            self.ctx.history.setdefault(k, []).append((step, v))
        self.ctx.tracker.log_metrics(metrics, step)
        return metrics

    # ------------------------------------------------------------ divergence
    def _weights_finite(self) -> torch.Tensor:
        """1.0 (on the device, no sync) if every weight and buffer of G and D is finite."""
        flags = torch.stack([torch.isfinite(t).all() for t in self._watched])
        return flags.all().float()

    def _nonfinite_now(self, everywhere: bool = True) -> str | None:
        """The divergence check of a logging step, for a checkpoint between logging steps
        (one sync, which saving the checkpoint makes anyway); the means stay accumulated.
        ``everywhere``: over all processes (all must call it), else this process's own."""
        if self.cfg.on_nonfinite == "ignore":
            return None
        keys = list(self._acc)
        values = torch.stack([*(self._acc[k] for k in keys), self._weights_finite()])
        values = (dist.mean(values) if everywhere else values).tolist()
        ok = values.pop()
        return _first_nonfinite({f"train/{k}": v for k, v in zip(keys, values, strict=True)}, ok)

    def _keep_good(self, step: int) -> None:
        """Remember a state found finite, for on_nonfinite = 'rollback' (copies on the device,
        at logging steps and checkpoints only)."""
        if self.cfg.on_nonfinite == "rollback":
            self._good = {**copy.deepcopy(self._training_state()), "step": step}
            self._good["lr_scale"] = self._lr_scale

    def _diverged(self, step: int, what: str) -> int:
        """Apply train.on_nonfinite to a non-finite value found at ``step``: raise
        TrainingDiverged, or roll back and return the step training goes on from."""
        cfg, ctx = self.cfg, self.ctx
        if cfg.on_nonfinite == "rollback" and self._good is not None:
            if self._rollbacks < cfg.max_rollbacks:
                return self._roll_back(step, what)
        tried = f" after {self._rollbacks} rollback(s)" if cfg.on_nonfinite == "rollback" else ""
        kept = (
            f"the newest checkpoint is step {self._saved_step}"
            if self._saved_step > 0
            else "no checkpoint was saved"
        )
        self._acc.clear()
        self._acc_counts.clear()
        ctx.tracker.set_tags({"gan_pipe.diverged": f"step {step}: {what}"})
        raise TrainingDiverged(
            f"training diverged at step {step}: {what} (train.on_nonfinite = "
            f"{cfg.on_nonfinite!r}{tried}); the run is marked FAILED and its diverged state is "
            f"not saved ({kept}). Lower train.lr, or set train.on_nonfinite = 'rollback'"
        )

    def _roll_back(self, step: int, what: str) -> int:
        cfg, ctx, good = self.cfg, self.ctx, self._good
        assert good is not None
        rollbacks, scale = self._rollbacks + 1, self._lr_scale * cfg.rollback_lr_factor
        self._restore(good)  # the state's own count and scale: set after
        self._rollbacks, self._lr_scale = rollbacks, scale
        factor = scale / good["lr_scale"]
        for opt, sched in ((self.opt_g, self.sched_g), (self.opt_d, self.sched_d)):
            sched.base_lrs = [lr * factor for lr in sched.base_lrs]
            for group in opt.param_groups:
                group["lr"] *= factor
                if "initial_lr" in group:
                    group["initial_lr"] *= factor
        back = int(good["step"])
        self._acc.clear()
        self._acc_counts.clear()
        for key, points in ctx.history.items():  # the curves of the trajectory kept
            ctx.history[key] = [(s, v) for s, v in points if s <= back]
        note = (
            f"step {step}: {what}; rolled back to step {back} with learning rates "
            f"x{self._lr_scale:g} (rollback {self._rollbacks} of {cfg.max_rollbacks})"
        )
        ctx.tracker.log_metrics({"train/rollbacks": self._rollbacks}, step)
        ctx.tracker.set_tags({f"gan_pipe.rollback.{self._rollbacks}": note})
        print(f"train: {note}", file=sys.stderr, flush=True)
        ctx.step = back
        return back

    # ------------------------------------------------------------ loop
    def fit(self) -> int:
        """Train to ``self.steps``. Ctrl-C (SIGINT) and SIGTERM stop the run between steps:
        the step under way is finished, the last completed step is checkpointed, and a
        KeyboardInterrupt (with ``checkpoint_step``, the newest checkpoint's step or None, and
        ``run_id``) goes up to the runner, which marks the run KILLED. A second signal stops
        at once; the checkpoint is then the last one written before it."""
        ctx = self.ctx
        self.G.train()
        self.D.train()
        ctx.step = self.start_step
        self._stop_signal: int | None = None
        self._in_step = False
        with self._signals_deferred():
            try:
                self._loop()
            except KeyboardInterrupt as e:
                self._interrupted(e)
                raise
            if self._saved_step != ctx.step:
                self.save_checkpoint(ctx.step)
            ctx.tracker.flush(wait=False)
        if self._stop_signal is not None:
            # asked to stop during the last step: training is complete and checkpointed; the
            # run stops here (KILLED) instead of going on to evaluation
            raise KeyboardInterrupt
        return ctx.step

    def _loop(self) -> None:
        from gan_pipe.plugins.train_progress import progress_bar

        ctx, cfg = self.ctx, self.cfg
        listeners = ctx.plugins.has_step_listeners()
        if self.start_step == 0:
            self._log_samples(0)
        title, shown = ctx.recipe.experiment.name, cfg.progress and dist.is_main()
        with progress_bar(self.steps, shown, title, start=self.start_step) as bar:
            self._keep_good(self.start_step)
            step = self.start_step
            while step < self.steps:
                step += 1
                if dist.any_rank(self._stop_signal is not None):  # all processes stop alike
                    raise KeyboardInterrupt
                # a step mutates nets, optimisers, schedules, the sampler and the RNG states:
                # a checkpoint taken while _in_step would not match its label
                self._in_step = True
                if cfg.updates == "simultaneous":
                    for values in self.simultaneous_step():
                        self._add(values)
                else:
                    for _ in range(cfg.n_critic):
                        self._add(self.discriminator_step())
                    self._add(self.generator_step())
                ctx.step = step
                self._in_step = False
                if listeners:
                    ctx.plugins.on_train_step(ctx, step)
                if step % cfg.log_every == 0 or step == self.steps:
                    bar.show(self._drain(step))
                    if self._bad is not None:
                        step = self._diverged(step, self._bad)
                        continue
                    self._keep_good(step)
                    minutes = cfg.checkpoint_minutes
                    if minutes and self._clock() - self._last_save >= 60 * minutes:
                        self.save_checkpoint(step)  # checked finite just now
                if step % self.sample_every == 0 or step == self.steps:
                    self._log_samples(step)
                if cfg.eval_every and step % cfg.eval_every == 0 and step != self.steps:
                    self._evaluate(step)
                every = cfg.checkpoint_every
                if every and step % every == 0 and self._saved_step != step:
                    bad = self._nonfinite_now()
                    if bad is not None:
                        step = self._diverged(step, bad)
                        continue
                    self.save_checkpoint(step)
                    self._keep_good(step)
                bar.advance()

    def _interrupted(self, e: KeyboardInterrupt) -> None:
        """Keep what was trained: checkpoint the last completed step unless the interrupt
        came in the middle of one (a second Ctrl-C), whose half-updated state would not match
        its label; then the newest checkpoint is the one to resume from. Losses since the last
        logging step are dropped (a half-finished step would skew their mean)."""
        ctx = self.ctx
        if not self._in_step and ctx.step > 0 and self._saved_step != ctx.step:
            if self._nonfinite_now(everywhere=False) is None:  # never a diverged state
                self.save_checkpoint(ctx.step)
        self._acc.clear()
        self._acc_counts.clear()
        e.checkpoint_step = self._saved_step if self._saved_step > 0 else None  # type: ignore[attr-defined]
        e.run_id = getattr(ctx.tracker, "run_id", None)  # type: ignore[attr-defined]

    @contextmanager
    def _signals_deferred(self) -> Iterator[None]:
        """While training, SIGINT and SIGTERM only ask the loop to stop after the current step;
        a second one raises KeyboardInterrupt at once. The previous handlers come back after.
        Signals set to be ignored stay ignored; off the main thread Python delivers none."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            before = signal.getsignal(sig)
            if before is not signal.SIG_IGN:
                previous[sig] = before
                signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, before in previous.items():
                signal.signal(sig, before if before is not None else signal.SIG_DFL)

    def _add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = v.float()
            if k in self._acc:
                self._acc[k] = self._acc[k] + v
                self._acc_counts[k] += 1
            else:
                self._acc[k] = v.clone()
                self._acc_counts[k] = 1

    def _log_samples(self, step: int) -> None:
        """Samples at fixed noise, the MLflow UI's per-step image slider ``samples``: an image
        grid for image data, real vs generated scatter (2-D+) or histograms (1-D) otherwise,
        so mode collapse can be watched as it happens."""
        ds = self.ctx.dataset
        if ds is None or not dist.is_main():
            return
        from gan_pipe.plugins.reports import grid as G
        from gan_pipe.plugins.reports.plots import real_subset, vector_figure

        was = self.G.training
        self.G.eval()
        with torch.no_grad():
            x = self.G(self.fixed_noise).float().cpu()
        self.G.train(was)
        if ds.is_image:
            picture = G.image_grid(
                G.samples_to_images(x, ds.shape), nrow=8, value_range=ds.value_range
            )
        else:
            x = x.reshape(len(x), -1)
            if self._fixed_real is None:  # the same real points in every frame
                seed = self.ctx.recipe.experiment.seed
                self._fixed_real = real_subset(ds, len(x), seed).reshape(-1, x.shape[1])
            real = self._fixed_real
            lo, hi = real.min(dim=0).values, real.max(dim=0).values
            pad = torch.where(hi > lo, 0.5 * (hi - lo), torch.ones_like(hi))
            # fixed axes around the data: frames of the slider compare
            box = [(float(a), float(b)) for a, b in zip(lo - pad, hi + pad, strict=True)]
            fig = vector_figure(real, x, f"step {step}", span=box[0], limits=box[:2])
            picture = G.figure_pixels(fig)
        self.ctx.tracker.log_image(picture, key="samples", step=step)

    def _evaluate(self, step: int) -> None:
        from gan_pipe.evaluation import evaluate

        if not dist.is_main():
            return
        results = evaluate(self.ctx)  # own RNG: evaluating does not change training
        self.ctx.tracker.log_metrics({f"eval/{k}": v for k, v in results.items()}, step)
        for k, v in results.items():
            self.ctx.history.setdefault(f"eval/{k}", []).append((step, v))

    def _training_state(self) -> dict[str, Any]:
        """Everything a step changes (references: copy before keeping)."""
        state = {
            "generator": self.G.state_dict(),
            "discriminator": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "sampler_perm": self.sampler._perm,
            "sampler_i": self.sampler._i,
            "rollbacks": self._rollbacks,
            "lr_scale": self._lr_scale,
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def checkpoint_state(self, step: int) -> dict[str, Any]:
        state = {"step": step, **self._training_state()}
        state["sampler_perm"] = self.sampler._perm.cpu()
        state["recipe"] = self.ctx.recipe.model_dump(mode="json")
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where a checkpoint left off: nets, optimisers, schedules, batch
        order and RNG states (``gan-pipe resume``)."""
        self._restore(state)
        self.start_step = int(state["step"])
        self._saved_step = self.start_step

    def _restore(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["generator"])
        self.D.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        if "sampler_perm" in state:
            self.sampler._perm = state["sampler_perm"].to(self.device)
            self.sampler._i = int(state["sampler_i"])
        self._rollbacks = int(state.get("rollbacks", 0))
        self._lr_scale = float(state.get("lr_scale", 1.0))
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    def save_checkpoint(self, step: int) -> None:
        if dist.is_main():  # rank 0 writes the checkpoints of all processes
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"checkpoint-{step:07d}.pt"
                torch.save(self.checkpoint_state(step), path)
                self.ctx.tracker.log_artifact(path, "checkpoints")
        self._saved_step = step  # only once it is in the store
        self._last_save = self._clock()
