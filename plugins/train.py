"""The built-in training loop.

Design choices, all for speed on small nets where overhead dominates:

* the training set lives on the device as one tensor; batches are index slices of a
  per-epoch permutation (no DataLoader, no workers, no host copies);
* losses are accumulated as device tensors and read back once per ``log_every`` steps
  (one host sync), then sent to MLflow in buffered asynchronous batches;
* bf16 autocast on CUDA when ``train.amp`` allows it.

:meth:`Trainer._loop` is the step loop: it trains a step, announces it (the
``gan_pipe_on_train_step`` hook, then the recipe's callbacks) and logs the losses at logging
steps. Everything else that happens periodically (sample frames, evaluation, checkpoints,
the progress bar) is a callback of :mod:`gan_pipe.plugins.callbacks`, run after the recipe's.
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
from gan_pipe.dataloading import StreamSampler, batches_per_epoch
from gan_pipe.errors import PluginError, UserError
from gan_pipe.plugins.callbacks.duties import duties
from gan_pipe.plugins.train_compile import compile_nets

if TYPE_CHECKING:
    from gan_pipe.context import RunContext


def make_optimizer(
    params: Any, settings: dict[str, Any], fused: bool = False
) -> torch.optim.Optimizer:
    """The optimizer of one net. ``fused`` (the trainer sets it on CUDA): Adam and SGD
    update every tensor in one fused kernel instead of PyTorch's default multi-tensor
    (foreach) path; the same update up to rounding. RMSprop has no fused kernel."""
    name = settings["optimizer"]
    if name == "adam":
        return torch.optim.Adam(
            params,
            lr=settings["lr"],
            betas=tuple(settings["betas"]),
            weight_decay=settings["weight_decay"],
            fused=fused or None,
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
            fused=fused or None,
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
        self.data, self.batch_size, self.replacement = data, batch_size, replacement
        self.per_epoch = batches_per_epoch(len(data), batch_size)
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


def place_data(ctx: RunContext) -> tuple[Any, BatchSampler | StreamSampler, bool]:
    """The training rows and the batch sampler over them, and whether they stream: on the
    device whole (BatchSampler), or streamed from host memory or disk by a DataLoader
    (StreamSampler), as ``data.stream`` and :func:`~gan_pipe.dataloading.should_stream` decide.
    Both give the same batches in the same order."""
    from gan_pipe.dataloading import Rows, TensorRows, default_workers, should_stream

    assert ctx.dataset is not None
    cfg, data_cfg, train = ctx.recipe.train, ctx.recipe.data, ctx.dataset.train
    stream, why = should_stream(ctx.dataset, getattr(data_cfg, "stream", "auto"), ctx.device)
    workers = getattr(data_cfg, "workers", None)
    workers = default_workers() if workers is None else workers
    if stream and cfg.sampling == "replacement":
        raise UserError(
            f"train.sampling = 'replacement' draws each batch's rows between steps, so its "
            f"batches cannot be prefetched by a streaming loader (streaming because {why}); "
            "use train.sampling = 'epochs', or data.stream = false to load the data whole"
        )
    if stream:
        rows = train if isinstance(train, Rows) else TensorRows(train)
        return rows, StreamSampler(rows, cfg.batch_size, ctx.device, workers), True
    if isinstance(train, Rows):
        train = train.materialize(workers)
    data = train.to(ctx.device, non_blocking=True)
    return data, BatchSampler(data, cfg.batch_size, cfg.sampling == "replacement"), False


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


def _first_nonfinite(
    metrics: dict[str, float], largest_weight: float, limit: float = 0.0
) -> str | None:
    """'train/d_loss = nan' for the first non-finite value (or, with ``limit`` > 0, the first
    whose magnitude exceeds it), or None when all are fine. ``largest_weight`` is the largest
    magnitude of any weight of G or D (NaN if one is NaN)."""
    too_large = f" (beyond train.max_abs_value = {limit:g})"
    for k, v in metrics.items():
        if not math.isfinite(v):
            return f"{k} = {v}"
        if limit and abs(v) > limit:
            return f"{k} = {v:.4g}{too_large}"
    if not math.isfinite(largest_weight):
        return "a weight of G or D is NaN or infinite"
    if limit and largest_weight > limit:
        return f"a weight of G or D reached {largest_weight:.4g}{too_large}"
    return None


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
        self._compile = compile_nets(self.G, self.D) if self.cfg.compile else None
        # under torchrun: what trains through DistributedDataParallel (the same nets)
        self.G_ddp, self.D_ddp = dist.wrap(self.G), dist.wrap(self.D)
        self.data, self.sampler, streamed = place_data(ctx)
        fused = self.device.type == "cuda"  # one kernel per update on the GPU
        self.opt_g = make_optimizer(self.G.parameters(), self.cfg.optimizer_for("generator"), fused)
        self.opt_d = make_optimizer(
            self.D.parameters(), self.cfg.optimizer_for("discriminator"), fused
        )
        self.sched_g = make_schedule(self.opt_g, self.cfg)
        self.sched_d = make_schedule(self.opt_d, self.cfg)
        self.steps = total_steps(self.cfg, len(self.data))
        use_amp = self.device.type == "cuda" and self.cfg.amp in ("auto", "bf16")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp)
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
        if len(ctx.callbacks) != len(ctx.recipe.callbacks):
            raise PluginError(
                f"the recipe names {len(ctx.recipe.callbacks)} callback(s) but the build stage "
                f"built {len(ctx.callbacks)}: a build stage that replaces the built-in one must "
                "call gan_pipe.plugins.stages.build_callbacks(ctx)"
            )
        # the recipe's callbacks first: gan-pipe's own see their work of the step done
        self.duties = duties(self)
        self.callbacks = ctx.callbacks + self.duties
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
                    "data.streamed": streamed,
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
            parts.append(self._largest_weight())
        values = dist.mean(torch.stack(parts)).tolist()  # means over the processes too
        largest = values.pop() if check else 0.0
        self._acc.clear()
        self._acc_counts = {}
        metrics = {f"train/{k}": v for k, v in zip(keys, values, strict=True)}
        self._bad = _first_nonfinite(metrics, largest, self.cfg.max_abs_value) if check else None
        if self._compile is not None:
            metrics["perf/compile_seconds"] = self._compile.seconds
        if self.cfg.lr_schedule != "constant":
            metrics["train/lr_g"] = self.sched_g.get_last_lr()[0]
            metrics["train/lr_d"] = self.sched_d.get_last_lr()[0]
        for k, v in metrics.items():
            self.ctx.history.setdefault(k, []).append((step, v))
        self.ctx.tracker.log_metrics(metrics, step)
        return metrics

    # ------------------------------------------------------------ divergence
    def _largest_weight(self) -> torch.Tensor:
        """The largest magnitude of any weight or buffer of G and D (on the device, no sync);
        NaN if one is NaN."""
        tops = torch.stack([t.detach().abs().amax().float() for t in self._watched if t.numel()])
        return tops.amax()  # amax propagates NaN

    def _nonfinite_now(self, everywhere: bool = True) -> str | None:
        """The divergence check of a logging step, for a checkpoint between logging steps
        (one sync, which saving the checkpoint makes anyway); the means stay accumulated.
        ``everywhere``: over all processes (all must call it), else this process's own."""
        if self.cfg.on_nonfinite == "ignore":
            return None
        keys = list(self._acc)
        values = torch.stack([*(self._acc[k] for k in keys), self._largest_weight()])
        values = (dist.mean(values) if everywhere else values).tolist()
        largest = values.pop()
        metrics = {f"train/{k}": v for k, v in zip(keys, values, strict=True)}
        return _first_nonfinite(metrics, largest, self.cfg.max_abs_value)

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
        if dist.is_main():  # one line for all the processes of a torchrun launch
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
                try:
                    self.callbacks.fire("on_train_start", ctx)
                    self._keep_good(self.start_step)
                    self._loop()
                except KeyboardInterrupt as e:
                    self._interrupted(e)
                    raise
                if self._saved_step != ctx.step:
                    self.save_checkpoint(ctx.step)
                if self._stop_signal is None:
                    self.callbacks.fire("on_train_end", ctx)
            finally:
                self.callbacks.fire("teardown", ctx)
            ctx.tracker.flush(wait=False)
        if self._stop_signal is not None:
            # asked to stop during the last step: training is complete and checkpointed; the
            # run stops here (KILLED) instead of going on to evaluation
            raise KeyboardInterrupt
        self._use_provided_generator()
        return ctx.step

    def _loop(self) -> None:
        """The step loop: train a step, announce it, log it; callbacks do the rest."""
        ctx, cfg = self.ctx, self.cfg
        listeners = ctx.hooks.has_step_listeners()
        step = self.start_step
        while step < self.steps:
            step += 1
            if dist.any_rank(self._stop_signal is not None):  # all processes stop alike
                raise KeyboardInterrupt
            # a step mutates nets, optimisers, schedules, the sampler, the RNG states and the
            # callbacks' state: a checkpoint taken while _in_step would not match its label
            self._in_step = True
            self._train_step()
            ctx.step = step
            if listeners:
                ctx.hooks.on_train_step(ctx, step)
            ctx.callbacks.on_step(ctx, step)
            self._in_step = False
            if (step % cfg.log_every == 0 or step == self.steps) and not self._log(step):
                step = ctx.step  # rolled back
                continue
            self.duties.on_step(ctx, step)
            step = ctx.step  # a checkpoint's check for NaN may have rolled back

    def _train_step(self) -> None:
        if self.cfg.updates == "simultaneous":
            for values in self.simultaneous_step():
                self._add(values)
        else:
            for _ in range(self.cfg.n_critic):
                self._add(self.discriminator_step())
            self._add(self.generator_step())

    def _log(self, step: int) -> bool:
        """Log the means since the last logging step; False if a NaN rolled training back
        (``ctx.step`` is then the step it goes on from), TrainingDiverged if it stops it."""
        metrics = self._drain(step)
        if self._bad is not None:
            self._diverged(step, self._bad)
            return False
        self._keep_good(step)
        self.callbacks.fire("on_log", self.ctx, step, metrics)
        return True

    def _use_provided_generator(self) -> None:
        """After training, the generator a callback provides (an EMA) is ``ctx.generator``:
        the final evaluation, the reports and the logged model use it."""
        found = self.ctx.callbacks.provider()
        if found is not None:
            key, module = found
            self.ctx.generator = module
            comp = self.ctx.components.get(key)
            name = f"{comp.name} ({key})" if comp is not None else key
            self.ctx.tracker.set_tags({"gan_pipe.generator": f"provided by callback {name}"})

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
            "callbacks": self.ctx.callbacks.state_dict(),
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
        self.ctx.callbacks.load_state_dict(state.get("callbacks", {}))
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    @property
    def saved_step(self) -> int:
        """The step of the newest checkpoint this process saved (-1: none)."""
        return self._saved_step

    def seconds_since_save(self) -> float:
        return self._clock() - self._last_save

    def checkpoint_if_finite(self, step: int) -> None:
        """Save a checkpoint of ``step`` unless a weight or a loss since the last logging
        step is NaN: then roll back (``ctx.step`` changes) or stop, as for a logging step."""
        bad = self._nonfinite_now()
        if bad is not None:
            self._diverged(step, bad)
            return
        self.save_checkpoint(step)
        self._keep_good(step)

    def save_checkpoint(self, step: int) -> None:
        self.callbacks.fire("on_checkpoint", self.ctx, step)  # on every process
        if dist.is_main():  # rank 0 writes the checkpoints of all processes
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"checkpoint-{step:07d}.pt"
                torch.save(self.checkpoint_state(step), path)
                self.ctx.tracker.log_artifact(path, "checkpoints")
        self._saved_step = step  # only once it is in the store
        self._last_save = self._clock()
