"""BCE losses against values computed by hand from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from gan_pipe.context import LossInputs
from gan_pipe.plugins.losses.bce import MinimaxLoss, NonSaturatingLoss, NonSaturatingParams

REAL = torch.tensor([0.0, 2.0])  # logits: D = 0.5, 0.8808
FAKE = torch.tensor([-1.0, 1.0])  # D = 0.2689, 0.7311


def sig(v):
    return 1 / (1 + math.exp(-v))


def inputs():
    return LossInputs(torch.nn.Identity(), torch.zeros(2), torch.zeros(2), REAL, FAKE)


def test_minimax_discriminator_loss():
    loss, extras = MinimaxLoss().discriminator_loss(inputs())
    expected = (
        -(math.log(sig(0)) + math.log(sig(2))) / 2
        - (math.log(1 - sig(-1)) + math.log(1 - sig(1))) / 2
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert extras["d_real"].item() == pytest.approx((sig(0) + sig(2)) / 2, rel=1e-6)
    assert extras["js_estimate"].item() == pytest.approx((math.log(4) - expected) / 2, rel=1e-6)


def test_minimax_generator_is_saturating():
    loss, _ = MinimaxLoss().generator_loss(inputs())
    expected = (math.log(1 - sig(-1)) + math.log(1 - sig(1))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_non_saturating_generator():
    loss, _ = NonSaturatingLoss().generator_loss(inputs())
    expected = -(math.log(sig(-1)) + math.log(sig(1))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_one_sided_label_smoothing():
    loss, _ = NonSaturatingLoss(NonSaturatingParams(real_label=0.9)).discriminator_loss(inputs())
    real = -sum(0.9 * math.log(sig(v)) + 0.1 * math.log(1 - sig(v)) for v in (0.0, 2.0)) / 2
    fake = -sum(math.log(1 - sig(v)) for v in (-1.0, 1.0)) / 2
    assert loss.item() == pytest.approx(real + fake, rel=1e-6)


def test_optimal_discriminator_js_estimate():
    # p_data = p_g: the optimal D outputs 1/2 everywhere, so V = -log 4 and JS = 0.
    zero = torch.zeros(8)
    x = LossInputs(torch.nn.Identity(), zero, zero, zero, zero)
    _, extras = MinimaxLoss().discriminator_loss(x)
    assert extras["js_estimate"].item() == pytest.approx(0.0, abs=1e-7)


def test_gradients_flow_to_logits():
    logits = FAKE.clone().requires_grad_()
    x = LossInputs(torch.nn.Identity(), torch.zeros(2), torch.zeros(2), None, logits)
    loss, _ = NonSaturatingLoss().generator_loss(x)
    loss.backward()
    # d/dl of -log sigmoid(l) / n is -(1 - sigmoid(l)) / n
    expected = [-(1 - sig(v)) / 2 for v in (-1.0, 1.0)]
    assert logits.grad.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("real_label,fake_label", [(0.9, 0.0), (0.8, 0.1)])
def test_js_estimate_ignores_label_smoothing(real_label, fake_label):
    """V(D, G) = E log D(x) + E log(1 - D(G(z))) is defined with labels 1 and 0; the smoothed
    D loss is a different number, and the estimate must not move with the smoothing."""
    params = NonSaturatingParams(real_label=real_label, fake_label=fake_label)
    loss, extras = NonSaturatingLoss(params).discriminator_loss(inputs())
    d_real = torch.sigmoid(REAL.double())
    d_fake = torch.sigmoid(FAKE.double())
    v = torch.log(d_real).mean() + torch.log1p(-d_fake).mean()  # independent of _bce
    assert extras["js_estimate"].item() == pytest.approx((math.log(4) + v.item()) / 2, rel=1e-6)
    # the smoothed loss gives a different (biased) value, so the assertion above can fail
    assert abs((math.log(4) - loss.item()) / 2 - extras["js_estimate"].item()) > 1e-3
    assert not extras["js_estimate"].requires_grad
    # without smoothing the same V: minimax and non-saturating agree
    _, plain = MinimaxLoss().discriminator_loss(inputs())
    assert extras["js_estimate"].item() == pytest.approx(plain["js_estimate"].item(), rel=1e-6)


def _bce_numpy(logits, labels):
    """-[y log s(l) + (1 - y) log(1 - s(l))] per element, float64."""
    import numpy as np

    p = 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))
    y = np.asarray(labels, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@pytest.mark.parametrize("n_real, n_fake", [(3, 3), (2, 5)])
def test_concatenated_mean_is_keras_train_on_batch(n_real, n_fake):
    """Seed 000: D.train_on_batch(concatenate([real, fake]), [0.9] * N + [0] * N): the
    mean over all rows of the concatenated batch."""
    import numpy as np

    g = torch.Generator().manual_seed(3)
    d_real, d_fake = torch.randn(n_real, generator=g), torch.randn(n_fake, generator=g)
    x = LossInputs(torch.nn.Identity(), torch.zeros(n_real), torch.zeros(n_fake), d_real, d_fake)
    params = NonSaturatingParams(real_label=0.9, d_reduction="concatenated_mean")
    loss, extras = NonSaturatingLoss(params).discriminator_loss(x)
    logits = np.concatenate([d_real.numpy(), d_fake.numpy()])
    labels = np.array([0.9] * n_real + [0.0] * n_fake)
    assert loss.item() == pytest.approx(_bce_numpy(logits, labels).mean(), rel=1e-6)
    summed, extras_sum = NonSaturatingLoss(NonSaturatingParams(real_label=0.9)).discriminator_loss(
        x
    )
    if n_real == n_fake:
        assert loss.item() == pytest.approx(summed.item() / 2, rel=1e-6)
    else:
        assert loss.item() != pytest.approx(summed.item() / 2, rel=1e-3)
    # the JS estimate is -V with labels 1/0 and the per-half means, whatever D trains on
    minus_v = _bce_numpy(d_real.numpy(), 1.0).mean() + _bce_numpy(d_fake.numpy(), 0.0).mean()
    assert extras["js_estimate"].item() == pytest.approx((math.log(4) - minus_v) / 2, rel=1e-5)
    assert extras["js_estimate"].item() == pytest.approx(extras_sum["js_estimate"].item())


def test_concatenated_mean_halves_the_gradient():
    d_real = REAL.clone().requires_grad_(True)
    d_fake = FAKE.clone().requires_grad_(True)
    x = LossInputs(torch.nn.Identity(), torch.zeros(2), torch.zeros(2), d_real, d_fake)
    NonSaturatingLoss(NonSaturatingParams(d_reduction="concatenated_mean")).discriminator_loss(x)[
        0
    ].backward()
    g_concat = torch.cat([d_real.grad, d_fake.grad])
    # d/dl BCE(l, y) = s(l) - y, averaged over the 4 rows
    hand = torch.tensor([sig(0) - 1, sig(2) - 1, sig(-1), sig(1)]) / 4
    torch.testing.assert_close(g_concat, hand)


def test_d_reduction_is_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="d_reduction"):
        NonSaturatingParams(d_reduction="mean")
