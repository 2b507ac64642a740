"""The built-in training loop.

Design choices, all for speed on small nets where overhead dominates:

* a training set that fits lives on the device as one tensor; batches are index slices of a
  per-epoch permutation (no DataLoader, no host copies); one that does not is streamed in
  the same order (``data.stream``; :mod:`.train_setup`, :mod:`gan_pipe.dataloading`);
* losses are accumulated as device tensors and read back once per ``log_every`` steps
  (one host sync), then sent to MLflow in buffered batches from a background thread;
* bf16 autocast and fused optimisers on CUDA.

The trainer's parts: the update rules of one step (:mod:`.train_updates`), the optimisers and
batches (:mod:`.train_setup`), the divergence policy (:mod:`.train_divergence`) and the
checkpoint state (:mod:`.train_checkpoint`).

:meth:`Trainer._loop` is the step loop: it trains a step, announces it (the
``gan_pipe_on_train_step`` hook, then the recipe's callbacks) and logs the losses at logging
steps. Everything else that happens periodically (sample frames, evaluation, checkpoints,
the progress bar) is a callback of :mod:`gan_pipe.plugins.callbacks`, run after the recipe's.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from gan_pipe import distributed as dist
from gan_pipe.errors import PluginError
from gan_pipe.plugins.callbacks.duties import duties
from gan_pipe.plugins.train_checkpoint import CheckpointState
from gan_pipe.plugins.train_compile import compile_nets
from gan_pipe.plugins.train_divergence import (  # noqa: F401  (re-exported)
    DivergencePolicy,
    TrainingDiverged,
    _first_nonfinite,
)
from gan_pipe.plugins.train_setup import (  # noqa: F401  (re-exported)
    BatchSampler,
    make_optimizer,
    make_schedule,
    memory_format,
    place_data,
    total_steps,
)
from gan_pipe.plugins.train_updates import GanUpdates

if TYPE_CHECKING:
    from gan_pipe.context import RunContext


class Trainer(GanUpdates, DivergencePolicy, CheckpointState):
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
        self._memory_format = memory_format(self.cfg, self.G, self.D)
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
        use_amp = self.cfg.amp == "bf16" or (self.cfg.amp == "auto" and self.device.type == "cuda")
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

    def _drain(self, step: int) -> dict[str, float]:
        """Means since the last log point: one host sync for every value. Under torchrun
        they are all-reduced in one collective, which also carries what the processes must
        agree on (:meth:`agreed`): the only collective of a step that is not DDP's own."""
        keys = list(self._acc)
        counts = self._acc_counts
        parts = [self._acc[k] / counts[k] for k in keys]
        check = self.cfg.on_nonfinite != "ignore"
        if check:  # in the same sync as the losses
            parts.append(self._largest_weight())
        flags = self._local_flags() if dist.enabled() else []
        parts += [torch.tensor(float(f), device=self.device) for f in flags]
        if not parts:
            return {}
        values = dist.mean(torch.stack(parts)).tolist()  # means over the processes too
        if flags:  # a mean above 0: true on some process
            agreed = [v > 0 for v in values[-len(flags) :]]
            del values[-len(flags) :]
            self._agreed = dict(zip(self._agreed, agreed, strict=True))
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
        self._agreed = {"stop": False, "clock": False}  # under torchrun: at the last log
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
                if not self.agreed("stop"):
                    self.callbacks.fire("on_train_end", ctx)
            finally:
                self.callbacks.fire("teardown", ctx)
                self._release()
            ctx.tracker.flush(wait=False)
        if self.agreed("stop"):
            # asked to stop during the last step: training is complete and checkpointed; the
            # run stops here (KILLED) instead of going on to evaluation
            raise KeyboardInterrupt(self._stopped_by())
        self._use_provided_generator()
        return ctx.step

    def _local_flags(self) -> list[bool]:
        """This process's view of what all must agree on, in the order of ``self._agreed``:
        a signal asked it to stop; ``train.checkpoint_minutes`` passed on its clock."""
        minutes = self.cfg.checkpoint_minutes
        clock = bool(minutes) and self.seconds_since_save() >= 60 * minutes
        return [self._stop_signal is not None, clock]

    def agreed(self, what: str) -> bool:
        """'stop' or 'clock' (:meth:`_local_flags`): this process's own view with one process;
        under torchrun, any process's view at the last logging step (all-reduced with its
        losses), so all stop, and save by the clock, after the same step. Hence a stop asked
        of one process under torchrun waits for the next logging step (``train.log_every``)."""
        if not dist.enabled():
            return dict(zip(self._agreed, self._local_flags(), strict=True))[what]
        if what == "stop" and self._agreed["stop"]:
            dist.leave_together()  # the final barrier waits for rank 0's checkpoint
        return self._agreed[what]

    def _release(self) -> None:
        """Let go of what holds the process group or worker processes once training ends:
        the DDP wrappers and a streaming loader's workers (under torchrun the group is then
        destroyed with nothing left holding it)."""
        self.G_ddp, self.D_ddp = self.G, self.D
        close = getattr(self.sampler, "close", None)
        if close is not None:
            close()

    def _stopped_by(self) -> str:
        """'SIGTERM' (the signal that asked training to stop), for the run's error tag."""
        if self._stop_signal is None:
            return "stopped by another process"  # under DDP: a signal to another rank
        return f"stopped by {signal.Signals(self._stop_signal).name}"

    def _loop(self) -> None:
        """The step loop: train a step, announce it, log it; callbacks do the rest."""
        ctx, cfg = self.ctx, self.cfg
        listeners = ctx.hooks.has_step_listeners()
        step = self.start_step
        while step < self.steps:
            if self.agreed("stop"):  # all processes stop alike, after the same step
                raise KeyboardInterrupt(self._stopped_by())
            step += 1
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
                raise KeyboardInterrupt(f"{self._stopped_by()}, then {signal.Signals(signum).name}")
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
