"""Metrics at their default sizes, each timed beside the reference it is checked against.

Prints, for every estimator: gan-pipe's wall time, the reference's wall time on the same
inputs, the ratio (reference / gan-pipe: above 1 means gan-pipe is faster) and the largest
relative difference of the values. The Parzen window at the protocol's size (10k x 10k x 784)
has its own script, ``bench/parzen.py``.

    python bench/metrics.py                  # default sizes (a few minutes on 2 CPU cores)
    python bench/metrics.py --scale 0.1      # every size times 0.1 (a smoke run)

References: SciPy (``stats.entropy``, ``spatial.distance.jensenshannon``,
``stats.wasserstein_distance``, ``optimize.linear_sum_assignment``), scikit-learn's
``KernelDensity``, sliced Wasserstein as one SciPy W1 per direction, and pytorch-fid's Frechet
distance through ``scipy.linalg.sqrtm`` (gan-pipe uses symmetric eigendecompositions).
FID's features come from a small classifier (``gan_pipe.estimators.features``): their line
times gan-pipe's batched extraction against one unbatched forward of the same net (what the
batching must equal) and prints images per second, plus one training epoch of the classifier
(done once per dataset, then cached). KID is timed beside torch-fidelity's formula (row sums
without the diagonal) on the same subsets. No assertions on time.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import linalg, stats
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist, jensenshannon

from gan_pipe.estimators import features, gaussian, histogram, kde, mmd, transport


def timed(fn: Callable[[], Any], reps: int = 1) -> tuple[Any, float]:
    """(result, best wall seconds of ``reps`` calls)."""
    best, out = math.inf, None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def rel(a: Any, b: Any) -> float:
    a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def row(name: str, ours: float, ref: float, diff: float, note: str = "") -> None:
    print(f"{name:<34} {ours:9.4f} s {ref:9.4f} s {ref / ours:8.2f}x  {diff:9.2e}  {note}")


def ring(n: int, rng: np.random.Generator, std: float = 0.02) -> np.ndarray:
    k = rng.integers(0, 8, n)
    centres = np.stack([np.cos(2 * np.pi * k / 8), np.sin(2 * np.pi * k / 8)], 1)
    return centres + std * rng.standard_normal((n, 2))


def bench_histogram(n: int, rng: np.random.Generator) -> None:
    p, q = ring(n, rng), ring(n, rng, std=0.05)
    (cp, cq, _), t_counts = timed(lambda: histogram.histogram_counts(p, q, None, None, 0.05), 3)
    ours, t_ours = timed(lambda: histogram.count_divergences(cp, cq), 3)

    def reference() -> dict[str, float]:
        a, k = 0.5, cp.size
        P = (cp.ravel() + a) / (cp.sum() + a * k)
        Q = (cq.ravel() + a) / (cq.sum() + a * k)
        P0, Q0 = cp.ravel() / cp.sum(), cq.ravel() / cq.sum()
        return {
            "kl_pq": stats.entropy(P, Q),
            "kl_qp": stats.entropy(Q, P),
            "js": jensenshannon(P0, Q0) ** 2,  # SciPy returns the JS *distance*
            "tv": 0.5 * np.abs(P0 - Q0).sum(),
        }

    ref, t_ref = timed(reference, 3)
    diff = max(rel(ours[k], ref[k]) for k in ref)
    row(f"histogram KL/JS/TV 2-D n={n}", t_ours, t_ref, diff, f"(+{t_counts:.4f} s binning)")


def bench_w1(n: int, n_assign: int, rng: np.random.Generator) -> None:
    a, b = rng.standard_normal(n), 0.5 + 2 * rng.standard_normal(n)
    ours, t_ours = timed(lambda: transport.w1_1d(a, b), 3)
    ref, t_ref = timed(lambda: stats.wasserstein_distance(a, b), 3)
    row(f"W1 1-D n={n}", t_ours, t_ref, rel(ours, ref), "(wraps SciPy)")
    closed = transport.sliced_wasserstein(a[:, None], b[:, None])
    print(f"{'  1-D sliced W1 = exact W1':<34} rel. diff {rel(closed, ref):.2e}")

    p, q = ring(n, rng), ring(n, rng, std=0.1)
    theta = transport.random_projections(2, 128, 0)
    ours, t_ours = timed(lambda: transport.sliced_wasserstein(p, q, projections=theta), 3)

    def direct() -> float:  # one exact 1-D W1 per direction, through SciPy
        pa, qa = p @ theta, q @ theta
        return float(np.mean([stats.wasserstein_distance(pa[:, j], qa[:, j]) for j in range(128)]))

    ref, t_ref = timed(direct, 1)
    row(f"sliced W1 2-D n={n} x 128 dirs", t_ours, t_ref, rel(ours, ref), "(vs SciPy per dir)")

    ours, t_ours = timed(lambda: transport.w1_assignment(p, q, n=n_assign, seed=1), 1)

    def assignment() -> float:
        r = np.random.default_rng(1)
        k = min(n_assign, len(p))
        x, y = p[r.choice(len(p), k, replace=False)], q[r.choice(len(q), k, replace=False)]
        cost = cdist(x, y)
        i, j = linear_sum_assignment(cost)
        return float(cost[i, j].mean())

    ref, t_ref = timed(assignment, 1)
    note = "(same subsample draw)" if rel(ours, ref) < 1e-12 else "(different subsample draw)"
    row(f"exact W1 2-D assignment n={n_assign}", t_ours, t_ref, rel(ours, ref), note)


def bench_kde(n: int, rng: np.random.Generator) -> None:
    from sklearn.neighbors import KernelDensity

    g, x = ring(n, rng, std=0.05), ring(n, rng, std=0.05)
    h = 0.03
    gt, xt = torch.from_numpy(g), torch.from_numpy(x)
    ours, t_ours = timed(lambda: kde.log_density(xt, gt, h, dtype=torch.float64).numpy(), 3)
    fit = KernelDensity(kernel="gaussian", bandwidth=h, rtol=0.0, atol=0.0).fit(g)
    ref, t_ref = timed(lambda: fit.score_samples(x), 1)
    row(f"KDE log-density 2-D {n}x{n}", t_ours, t_ref, rel(ours, ref), "(sklearn exact tree)")


def bench_frechet(d: int, n: int, rng: np.random.Generator) -> None:
    """FID's size: 2048 features. Features with a decaying spectrum, like a network's."""
    scales = 1.0 / np.sqrt(1.0 + np.arange(d))
    f1 = rng.standard_normal((n, d)) * scales
    f2 = (rng.standard_normal((n, d)) + 0.05) * scales * 1.1
    (m1, s1), t_stats = timed(lambda: gaussian.feature_stats(f1), 1)
    m2, s2 = gaussian.feature_stats(f2)
    ours, t_ours = timed(lambda: gaussian.frechet_distance(m1, s1, m2, s2), 1)

    def sqrtm_reference() -> float:  # pytorch-fid's formula
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * 1e-6
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        tr_covmean = float(np.trace(covmean.real))
        return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)

    ref, t_ref = timed(sqrtm_reference, 1)
    row(f"Frechet distance d={d}", t_ours, t_ref, rel(ours, ref), f"(+{t_stats:.2f} s mean/cov)")


def bench_fid_features(n: int, rng: np.random.Generator) -> None:
    """The default FID classifier on MNIST-shaped rows: feature extraction and one epoch of
    its training (weights are random: throughput does not depend on them)."""
    x = torch.from_numpy(rng.random((n, 1, 28, 28), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, n))
    model = features.build_classifier((1, 28, 28), 10, 128, seed=0).eval()
    cpu = torch.device("cpu")
    ours, t_ours = timed(lambda: features.extract_features(model, x, cpu, 500), 2)

    def unbatched() -> np.ndarray:
        with torch.no_grad():
            return model.features(x).double().numpy()

    ref, t_ref = timed(unbatched, 2)
    note = f"({n / t_ours:.0f} images/s; reference: one unbatched forward)"
    row(f"FID features {n}x1x28x28 -> 128", t_ours, t_ref, rel(ours, ref), note)
    train = lambda: features.train_classifier(  # noqa: E731
        model, x, y, epochs=1, batch_size=64, lr=1e-3, seed=0, device=cpu
    )
    _, t_train = timed(train, 1)
    label = "  classifier: 1 training epoch"
    print(f"{label:<34} {t_train:9.4f} s  ({n / t_train:.0f} images/s)")


def bench_kid(n: int, d: int, subsets: int, m: int, rng: np.random.Generator) -> None:
    f1 = rng.standard_normal((n, d))
    f2 = rng.standard_normal((n, d)) * 1.05 + 0.02
    ours, t_ours = timed(lambda: mmd.kid(f1, f2, subsets, m)[0], 1)

    def torch_fidelity_formula() -> float:  # kernel row sums without the diagonal
        state, vals = np.random.RandomState(0), []
        for _ in range(subsets):
            a = f1[state.choice(n, m, replace=False)]
            b = f2[state.choice(n, m, replace=False)]
            kxx, kyy, kxy = ((u @ v.T / d + 1) ** 3 for u, v in ((a, a), (b, b), (a, b)))
            sxx = (kxx.sum(1) - np.diagonal(kxx)).sum()
            syy = (kyy.sum(1) - np.diagonal(kyy)).sum()
            vals.append((sxx + syy) / (m * (m - 1)) - 2 * kxy.sum() / m**2)
        return float(np.mean(vals))

    ref, t_ref = timed(torch_fidelity_formula, 1)
    row(f"KID {subsets} subsets x {m}, d={d}", t_ours, t_ref, rel(ours, ref), "(torch-fidelity)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    def size(n: int) -> int:
        return max(16, int(n * args.scale))

    rng = np.random.default_rng(args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}")
    print(
        f"{'estimator (default size)':<34} {'gan-pipe':>11} {'reference':>11} {'ref/ours':>9}  "
        f"{'max rel.diff':>9}"
    )
    bench_histogram(size(10_000), rng)  # divergences.n_samples
    bench_w1(size(10_000), size(1000), rng)  # n_samples; n_assign
    bench_kde(size(5000), rng)  # divergences.n_kde
    bench_frechet(2048 if args.scale >= 1 else 64, size(10_000), rng)  # fid: 2048 features
    bench_fid_features(size(10_000), rng)  # fid.n_samples generated rows
    bench_kid(size(10_000), 128, max(2, int(100 * args.scale)), size(1000), rng)  # fid: kid_*


if __name__ == "__main__":
    main()
