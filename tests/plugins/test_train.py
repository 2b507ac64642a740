"""The training loop's pieces: batches, step counts, schedules, noise, optimisers."""

from __future__ import annotations

import math
import types

import pytest
import torch

from gan_pipe.plugins.stages import make_noise
from gan_pipe.plugins.train import BatchSampler, make_optimizer, make_schedule, total_steps
from gan_pipe.recipe import Train


def test_batch_sampler_covers_each_epoch_once():
    data = torch.arange(10).float().unsqueeze(1)
    s = BatchSampler(data, 3)
    assert s.per_epoch == 3
    for _ in range(2):
        seen = torch.cat([s.next() for _ in range(3)]).flatten().tolist()
        assert len(set(seen)) == 9  # drop_last: 9 distinct rows per epoch, none repeated
    with pytest.raises(ValueError, match="larger than the training set"):
        BatchSampler(data, 11)


def test_total_steps():
    assert total_steps(Train(steps=7), 1000) == 7
    assert total_steps(Train(batch_size=100, epochs=2), 1000) == 20
    assert total_steps(Train(batch_size=100, epochs=2, n_critic=5), 1000) == 4
    assert total_steps(Train(batch_size=100), 1000) == 10  # one epoch by default


def test_staircase_decay_matches_tf_formula():
    # seed 001: lr 0.005 * 0.95 ** (step // 150)
    cfg = Train(
        optimizer="sgd", lr=0.005, lr_schedule="exponential", decay_rate=0.95, decay_steps=150
    )
    w = torch.nn.Parameter(torch.zeros(1))
    opt = make_optimizer([w], cfg.optimizer_for("generator"))
    sched = make_schedule(opt, cfg)
    lrs = []
    for _ in range(451):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for step in (0, 149, 150, 299, 300, 450):
        assert lrs[step] == pytest.approx(0.005 * 0.95 ** (step // 150), rel=1e-12)


def test_smooth_decay():
    cfg = Train(lr=1.0, lr_schedule="exponential", decay_rate=0.5, decay_steps=10, staircase=False)
    w = torch.nn.Parameter(torch.zeros(1))
    opt = make_optimizer([w], cfg.optimizer_for("generator"))
    sched = make_schedule(opt, cfg)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5**0.5)


def test_optimizers_get_their_settings():
    w = [torch.nn.Parameter(torch.zeros(1))]
    adam = make_optimizer(
        w, {"optimizer": "adam", "lr": 1e-4, "betas": (0.0, 0.9), "momentum": 0, "weight_decay": 0}
    )
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.0, 0.9)
    rms = make_optimizer(
        w,
        {"optimizer": "rmsprop", "lr": 5e-5, "betas": (0.5, 0.9), "momentum": 0, "weight_decay": 0},
    )
    assert isinstance(rms, torch.optim.RMSprop) and rms.defaults["lr"] == 5e-5


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_fused_optimizers_make_the_same_updates(name):
    """The trainer asks for fused Adam/SGD on CUDA; the fused kernels (CPU ones exist too)
    must give the default path's update up to rounding."""
    settings = {
        "optimizer": name,
        "lr": 1e-2,
        "betas": (0.5, 0.999),
        "momentum": 0.9,
        "weight_decay": 1e-3,
    }
    g = torch.Generator().manual_seed(0)
    start = torch.randn(50, generator=g)
    grads = [torch.randn(50, generator=g) for _ in range(5)]
    finals = []
    for fused in (False, True):
        w = torch.nn.Parameter(start.clone())
        opt = make_optimizer([w], settings, fused=fused)
        assert bool(opt.defaults.get("fused")) == fused
        for grad in grads:
            w.grad = grad.clone()
            opt.step()
        finals.append(w.detach())
    assert not torch.equal(finals[0], start)
    torch.testing.assert_close(finals[1], finals[0], rtol=1e-5, atol=1e-6)


def test_noise_distributions():
    g = torch.Generator().manual_seed(0)
    u = make_noise("uniform", 20, torch.device("cpu"))(10000, generator=g)
    assert u.shape == (10000, 20) and u.min() >= -1 and u.max() <= 1
    assert abs(u.mean().item()) < 0.01 and u.std().item() == pytest.approx(1 / 3**0.5, rel=0.02)
    n = make_noise("normal", 4, torch.device("cpu"))(20000, generator=g)
    assert n.std().item() == pytest.approx(1.0, rel=0.02)
    s = make_noise("stratified", 1, torch.device("cpu"), range=8.0, jitter=0.01)(12, generator=g)
    grid = torch.linspace(-8, 8, 12).unsqueeze(1)
    assert ((s - grid) >= 0).all() and ((s - grid) <= 0.01).all()


def test_regularizer_terms_are_added(monkeypatch):
    from gan_pipe.context import LossInputs
    from gan_pipe.plugins.train import Trainer

    class Reg:
        def generator_term(self, x):
            return torch.tensor(2.5), {"reg": torch.tensor(2.5)}

    fake = types.SimpleNamespace(ctx=types.SimpleNamespace(regularizers=[Reg(), object()]))
    extras: dict = {}
    x = LossInputs(torch.nn.Identity(), torch.zeros(1), torch.zeros(1), None, torch.zeros(1))
    total = Trainer._add_terms(fake, torch.tensor(1.0), extras, "generator_term", x)
    assert total.item() == 3.5 and "reg" in extras
    assert Trainer._add_terms(fake, torch.tensor(1.0), {}, "discriminator_term", x).item() == 1.0


def _tiny_trainer(n_critic=1, dim=2, **train):
    from gan_pipe.context import Dataset, RunContext
    from gan_pipe.plugins.losses.bce import NonSaturatingLoss
    from gan_pipe.plugins.train import Trainer
    from gan_pipe.recipe import Recipe
    from gan_pipe.scoring import MemoryTracker

    recipe = Recipe.model_validate(
        {
            "experiment": {"name": "t"},
            "data": {"name": "x"},
            "model": {"generator": {"name": "g"}, "discriminator": {"name": "d"}},
            "loss": {"name": "l"},
            "noise": {"dim": 3},
            "train": {
                "batch_size": 8,
                "steps": 2,
                "n_critic": n_critic,
                "progress": False,
                **train,
            },
        }
    )
    ctx = RunContext(recipe=recipe, hooks=None, tracker=MemoryTracker(), device=torch.device("cpu"))
    ctx.dataset = Dataset("x", train=torch.randn(32, dim))
    ctx.generator = torch.nn.Linear(3, dim)
    ctx.discriminator = torch.nn.Sequential(
        torch.nn.Linear(dim, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
    )
    ctx.loss = NonSaturatingLoss()
    ctx.noise = lambda n, generator=None: torch.randn(n, 3, generator=generator)
    return Trainer(ctx)


def test_generator_step_updates_only_the_generator():
    t = _tiny_trainer()
    t.discriminator_step()
    d_before = [p.detach().clone() for p in t.D.parameters()]
    g_before = [p.detach().clone() for p in t.G.parameters()]
    t.generator_step()
    assert all(torch.equal(a, b) for a, b in zip(d_before, t.D.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(g_before, t.G.parameters(), strict=True))
    assert all(p.requires_grad for p in t.D.parameters())  # unfrozen again


def test_discriminator_step_updates_only_the_discriminator():
    t = _tiny_trainer()
    g_before = [p.detach().clone() for p in t.G.parameters()]
    d_before = [p.detach().clone() for p in t.D.parameters()]
    out = t.discriminator_step()
    assert all(torch.equal(a, b) for a, b in zip(g_before, t.G.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(d_before, t.D.parameters(), strict=True))
    assert {"d_loss", "d_real", "d_fake", "js_estimate"} <= set(out)


def test_loss_means_are_logged_per_log_step():
    t = _tiny_trainer(n_critic=3)
    t._add({"d_loss": torch.tensor(1.0)})
    t._add({"d_loss": torch.tensor(2.0)})
    t._add({"g_loss": torch.tensor(5.0)})
    out = t._drain(7)
    assert out == {"train/d_loss": 1.5, "train/g_loss": 5.0}
    assert t.ctx.tracker.metrics == out and t.ctx.history["train/d_loss"] == [(7, 1.5)]
    assert t._drain(8) == {}


def test_log_lines_off_a_terminal_show_fresh_values(capsys):
    from gan_pipe.plugins.train_progress import _Lines

    bar = _Lines(total=300, title="t")
    for step in range(1, 301):
        if step % 50 == 0:
            bar.show({"train/d_loss": float(step)})
        bar.advance()
    lines = capsys.readouterr().err.strip().splitlines()
    # One line per logging step past each 10% mark (log_every 50 > 10% of 300 = 30).
    assert [ln.split()[3] for ln in lines] == [f"{s}/300" for s in (50, 100, 150, 200, 250, 300)]
    assert all(ln.endswith(f"d_loss {s}") for ln, s in zip(lines, range(50, 301, 50), strict=True))


@pytest.mark.parametrize("dim", [1, 2])
def test_vector_data_get_a_sample_picture_per_step(dim):
    """Scatter (2-D) or histograms (1-D) of fixed noise under the image key ``samples``: the
    MLflow image slider shows mode collapse as it happens, as it shows grids for images."""
    import numpy as np

    from gan_pipe.plugins.callbacks.frames import SampleFrames

    t = _tiny_trainer(dim=dim)
    got = []
    t.ctx.tracker.log_image = lambda image, key, step: got.append((image, key, step))
    frames = SampleFrames(t.ctx, every=1, total=2)
    frames.draw(t.ctx, 3)
    frames.draw(t.ctx, 3)
    with torch.no_grad():
        t.G.bias.add_(3.0)  # another generator: another picture
    frames.draw(t.ctx, 4)
    (a, key, step), (again, _, _), (b, _, step_b) = got
    assert key == "samples" and (step, step_b) == (3, 4)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert np.array_equal(a, again)  # fixed noise and fixed real points: frames compare
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert (a < 200).any() and (a > 250).any()  # something drawn on a white background


def test_batch_sampler_with_replacement():
    data = torch.arange(10).float().unsqueeze(1)
    torch.manual_seed(0)
    s = BatchSampler(data, 8, replacement=True)
    assert s.per_epoch == 1  # an epoch is still len // batch_size batches
    rows = torch.cat([s.next() for _ in range(500)]).flatten().long()
    counts = torch.bincount(rows, minlength=10).float()
    # uniform over all 10 rows (4000 draws: 400 each, sd 19), repeats inside a batch happen
    assert counts.min() > 320 and counts.max() < 480
    batches = rows.view(500, 8)
    repeats = sum(len(set(b.tolist())) < 8 for b in batches)
    assert repeats > 400  # P(8 distinct of 10) = 10!/(2! 10^8) = 1.8%
    # without replacement a batch never repeats a row
    s = BatchSampler(data, 8)
    assert all(len(set(s.next().flatten().tolist())) == 8 for _ in range(50))


def test_trainer_uses_the_sampling_setting():
    assert _tiny_trainer(sampling="replacement").sampler.replacement is True
    assert _tiny_trainer().sampler.replacement is False


def test_simultaneous_needs_one_critic_step():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="n_critic must be 1"):
        Train(updates="simultaneous", n_critic=5)
    with pytest.raises(ValidationError, match="updates"):
        Train(updates="interleaved")
    with pytest.raises(ValidationError, match="sampling"):
        Train(sampling="bootstrap")


def _sgd_step_by_hand(t0, real, z, lr):
    """Seed 003's loop with plain SGD: both gradients from one forward pass at the old weights."""
    import torch.nn.functional as F

    G, D = t0.G, t0.D
    fake = G(z)
    d_real, d_fake = D(real).squeeze(1), D(fake).squeeze(1)
    ones, zeros = torch.ones_like(d_real), torch.zeros_like(d_fake)
    d_loss = F.binary_cross_entropy_with_logits(d_real, ones) + F.binary_cross_entropy_with_logits(
        d_fake, zeros
    )
    g_loss = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
    d_grads = torch.autograd.grad(d_loss, list(D.parameters()), retain_graph=True)
    g_grads = torch.autograd.grad(g_loss, list(G.parameters()))
    new_d = [p.detach() - lr * g for p, g in zip(D.parameters(), d_grads, strict=True)]
    new_g = [p.detach() - lr * g for p, g in zip(G.parameters(), g_grads, strict=True)]
    return new_d, new_g, d_loss.detach(), g_loss.detach()


def test_simultaneous_step_matches_a_hand_computation():
    lr = 0.5

    def trainer(**train):
        t = _tiny_trainer(optimizer="sgd", lr=lr, **train)
        t.G.load_state_dict(start_g)
        t.D.load_state_dict(start_d)
        t.data = data
        t.sampler = BatchSampler(data, 8)
        return t

    t = _tiny_trainer(updates="simultaneous", optimizer="sgd", lr=lr)
    start_g = {k: v.clone() for k, v in t.G.state_dict().items()}
    start_d = {k: v.clone() for k, v in t.D.state_dict().items()}
    data = t.data
    ref = trainer()
    torch.manual_seed(11)
    d_out, g_out = t.simultaneous_step()
    # the same draws: the batch permutation first, then the noise
    torch.manual_seed(11)
    real = BatchSampler(data, 8).next()
    z = torch.randn(8, 3)
    new_d, new_g, d_loss, g_loss = _sgd_step_by_hand(ref, real, z, lr)
    for a, b in zip(t.D.parameters(), new_d, strict=True):
        torch.testing.assert_close(a.detach(), b)
    for a, b in zip(t.G.parameters(), new_g, strict=True):
        torch.testing.assert_close(a.detach(), b)
    torch.testing.assert_close(d_out["d_loss"], d_loss)
    torch.testing.assert_close(g_out["g_loss"], g_loss)
    assert {"d_real", "d_fake", "js_estimate"} <= set(d_out)
    # alternating differs: G's step sees D after D's update (and fresh noise)
    alt = trainer()
    torch.manual_seed(11)
    alt.discriminator_step()
    alt.generator_step()
    for a, b in zip(alt.D.parameters(), new_d, strict=True):
        torch.testing.assert_close(a.detach(), b)  # same D step
    assert not all(torch.allclose(a, b) for a, b in zip(alt.G.parameters(), new_g, strict=True))


# ------------------------------------------------------------ divergence policy
def _poisoned(at_steps, once=True, **train):
    """A tiny trainer whose D gets a NaN weight after each step in ``at_steps`` (``once``:
    only the first time that step is reached); records the checkpoints it saves, with their
    finiteness, and the tags it sets."""
    t = _tiny_trainer(**{"steps": 12, "log_every": 2, **train})
    todo = set(at_steps)

    def on_train_step(ctx, step):
        if step in todo:
            if once:
                todo.discard(step)
            with torch.no_grad():
                t.D[0].weight[0, 0] = float("nan")

    t.ctx.hooks = types.SimpleNamespace(
        has_step_listeners=lambda: True, on_train_step=on_train_step
    )
    saved = []
    t.ctx.tracker.set_tags = lambda tags: saved.append(("tags", tags))
    original = t.save_checkpoint

    def save(step):
        finite = all(torch.isfinite(p).all() for p in [*t.G.parameters(), *t.D.parameters()])
        saved.append((step, bool(finite)))
        original(step)

    t.save_checkpoint = save
    return t, saved


def test_nonfinite_loss_stops_the_run_naming_step_and_value():
    from gan_pipe.errors import UserError
    from gan_pipe.plugins.train import TrainingDiverged

    t, saved = _poisoned([5], checkpoint_every=3)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 6: train/d_loss = nan") as e:
        t.fit()
    assert isinstance(e.value, UserError)  # the CLI's exit 2, the runner's FAILED
    assert "newest checkpoint is step 3" in str(e.value)
    checkpoints = [s for s in saved if s[0] != "tags"]
    assert checkpoints == [(3, True)]  # step 6's checkpoint (NaN) never written


def test_a_nan_weight_between_logging_steps_is_not_checkpointed():
    from gan_pipe.plugins.train import TrainingDiverged

    t, saved = _poisoned([2], checkpoint_every=3, log_every=4)  # NaN after 2, logged at 4
    with pytest.raises(TrainingDiverged, match="step 3: train/d_loss = nan"):
        t.fit()  # found by the check before step 3's checkpoint
    assert [s for s in saved if s[0] != "tags"] == []


def test_rollback_goes_back_to_the_last_finite_step_with_a_lower_lr():
    t, saved = _poisoned([5], on_nonfinite="rollback", rollback_lr_factor=0.25)
    assert t.fit() == 12
    assert t._rollbacks == 1 and t.ctx.tracker.metrics["train/rollbacks"] == 1
    assert t.opt_g.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.25)
    assert t.sched_d.base_lrs == [pytest.approx(2e-4 * 0.25)]
    assert all(torch.isfinite(p).all() for p in t.D.parameters())
    # the curves are those of the trajectory kept: step 6 (NaN) replaced by its redo
    steps = [s for s, _ in t.ctx.history["train/d_loss"]]
    assert steps == [2, 4, 6, 8, 10, 12]
    assert all(v == v for _, v in t.ctx.history["train/d_loss"])
    tags = [tags for kind, tags in saved if kind == "tags"]
    assert any("rolled back to step 4" in v for tag in tags for v in tag.values())
    assert t.checkpoint_state(12)["lr_scale"] == 0.25  # resume keeps the lowered lr


def test_rollbacks_are_bounded():
    from gan_pipe.plugins.train import TrainingDiverged

    t, _ = _poisoned([5], once=False, on_nonfinite="rollback", max_rollbacks=2)
    # step 5 poisons D every time: found at 6, back to 4, twice; the third time it stops
    with pytest.raises(TrainingDiverged, match="after 2 rollback"):
        t.fit()
    assert t._rollbacks == 2


def test_ignore_trains_on_through_nan():
    t, saved = _poisoned([5], on_nonfinite="ignore")
    assert t.fit() == 12
    assert saved[-1] == (12, False)
    assert math.isnan(t.ctx.history["train/d_loss"][-1][1])


def test_nonfinite_settings_are_validated():
    from pydantic import ValidationError

    assert Train().on_nonfinite == "stop"
    with pytest.raises(ValidationError, match="on_nonfinite"):
        Train(on_nonfinite="warn")
    with pytest.raises(ValidationError, match="rollback_lr_factor"):
        Train(rollback_lr_factor=1.0)


def test_checkpoints_by_time_at_logging_steps():
    """checkpoint_minutes (default 10) saves at the first logging step that many minutes after
    the last checkpoint; a fake clock advances a minute per step."""
    assert Train().checkpoint_minutes == 10

    def saved_steps(**train):
        t, saved = _poisoned([], **train)
        now = [0.0]
        t._clock = lambda: now[0]
        t._last_save = 0.0
        t.ctx.hooks.on_train_step = lambda ctx, step: now.__setitem__(0, 60.0 * step)
        t.fit()
        return [s for s, _ in saved]

    assert saved_steps(checkpoint_minutes=3) == [4, 8, 12]  # 4 minutes apart: log_every 2
    assert saved_steps(checkpoint_minutes=3, checkpoint_every=5) == [4, 5, 8, 10, 12]
    assert saved_steps(checkpoint_minutes=0) == [12]  # the end of training only


def test_log_lines_of_a_resumed_run_count_from_its_checkpoint(capsys):
    from gan_pipe.plugins.train_progress import _Lines

    bar = _Lines(total=100, title="t", start=60)
    for step in range(61, 101):
        if step % 10 == 0:
            bar.show({"train/d_loss": float(step)})
        bar.advance()
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split()[3] for ln in lines] == [f"{s}/100" for s in (70, 80, 90, 100)]
