"""Parzen-window log-likelihood: gan-pipe vs scikit-learn's KernelDensity.

The protocol's size: 10,000 test points scored against 10,000 kernel centres in 784 dimensions
at one sigma. Prints wall times, the speed-up, and agreement with a float64 brute-force
logsumexp on a subset of the points (KernelDensity is not exact at d = 784). On CUDA it also
prints the achieved TFLOP/s of the distance matmul (2 n m d flops; printed on the CPU too).

    python bench/parzen.py                       # full size, sklearn on every point
    python bench/parzen.py --sklearn-n 500       # sklearn timed on 500 points, scaled linearly
    python bench/parzen.py --device cuda         # fraction of the GPU's spec-sheet peak
    python bench/parzen.py --device cuda --peak-tflops 67

On a GPU the fraction of the device's matmul throughput is printed against ``--peak-tflops``,
or, when it is not given, against the vendor's dense peak for the dtype looked up from the
device name (``PEAK_TFLOPS``; float32 on the CUDA cores, since the Parzen matmul runs without
TF32). Needs gan_pipe importable (installed, or on PYTHONPATH). No assertions on time.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy.special import logsumexp

from gan_pipe.estimators.kde import exact_matmul as _exact_matmul
from gan_pipe.estimators.kde import log_density as parzen_log_likelihood

#: Vendor spec-sheet dense peaks in TFLOP/s: (name fragment, float32 non-tensor, float64 as
#: DGEMM runs it: on the FP64 tensor cores where there are some). First match wins, so more
#: specific fragments come first. Sources: NVIDIA's H200, H100, A100, L40S, L4, A10, V100 and
#: T4 data sheets.
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("GH200", 67.0, 67.0),
    ("H200 NVL", 60.0, 60.0),
    ("H200", 67.0, 67.0),
    ("H100 NVL", 60.0, 60.0),
    ("H100 PCIe", 51.0, 51.0),
    ("H100", 67.0, 67.0),  # SXM5 (name "NVIDIA H100 80GB HBM3")
    ("A100", 19.5, 19.5),
    ("L40S", 91.6, 1.4),
    ("L40", 90.5, 1.4),
    ("L4", 30.3, 0.5),
    ("A10", 31.2, 1.0),
    ("V100", 15.7, 7.8),
    ("T4", 8.1, 0.25),
]


def spec_peak(device_name: str, dtype: str) -> float | None:
    """The spec-sheet peak (TFLOP/s) for a CUDA device name and ``float32``/``float64``."""
    col = 1 if dtype == "float32" else 2
    for row in PEAK_TFLOPS:
        if row[0].lower() in device_name.lower():
            return float(row[col])
    return None


def make_data(kind: str, n: int, d: int, seed: int) -> np.ndarray:
    """Rows in [0, 1]: ``uniform`` noise or ``digits`` (sklearn's 8x8 digits, resized to
    sqrt(d) x sqrt(d) and jittered, so nearest neighbours are close as with MNIST)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.random((n, d))
    from sklearn.datasets import load_digits

    side = math.isqrt(d)
    if side * side != d:
        raise SystemExit(f"--data digits needs a square --d, got {d}")
    imgs = torch.as_tensor(load_digits().images / 16.0, dtype=torch.float32)[:, None]
    imgs = torch.nn.functional.interpolate(imgs, size=(side, side), mode="bilinear")
    pick = torch.as_tensor(rng.integers(0, len(imgs), n))
    noise = torch.as_tensor(0.1 * rng.standard_normal((n, 1, side, side)), dtype=torch.float32)
    return (imgs[pick] + noise).clamp(0, 1).reshape(n, d).double().numpy()


def brute_force(x: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """float64 log p(x) from explicit differences (the reference)."""
    m, d = centres.shape
    out = np.empty(len(x))
    for i, row in enumerate(x):
        sq = ((row[None, :] - centres) ** 2).sum(axis=1)
        out[i] = logsumexp(-sq / (2 * sigma**2))
    return out - math.log(m) - 0.5 * d * math.log(2 * math.pi * sigma**2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    out = fn()
    sync(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="test points")
    ap.add_argument("--centres", type=int, default=None, help="kernel centres (default: --n)")
    ap.add_argument("--d", type=int, default=784, help="dimension")
    ap.add_argument("--sigma", type=float, default=0.2)
    ap.add_argument("--data", choices=["digits", "uniform"], default="digits")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--max-bytes", type=int, default=256 * 2**20, help="chunk memory bound")
    ap.add_argument("--repeats", type=int, default=3, help="timed gan-pipe runs (best is shown)")
    ap.add_argument("--skip-sklearn", action="store_true", help="do not run KernelDensity")
    ap.add_argument(
        "--sklearn-n",
        type=int,
        default=None,
        help="time KernelDensity on this many test points and scale linearly to --n",
    )
    ap.add_argument("--check-n", type=int, default=200, help="points checked by brute force")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak, for a fraction")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    n, m, d, sigma = args.n, args.centres or args.n, args.d, args.sigma
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "float32" else torch.float64

    x_np = make_data(args.data, n, d, args.seed)
    c_np = make_data(args.data, m, d, args.seed + 1)
    x = torch.as_tensor(x_np, dtype=dtype, device=device)
    c = torch.as_tensor(c_np, dtype=dtype, device=device)
    flops = 2.0 * n * m * d
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"Parzen log-likelihood: {n} test points x {m} centres, d={d}, sigma={sigma}, "
        f"data={args.data}, {args.dtype} on {device} ({where}), torch threads "
        f"{torch.get_num_threads()}"
    )

    # ---- gan-pipe
    t_ours, ll = timed(
        lambda: parzen_log_likelihood(x, c, sigma, max_bytes=args.max_bytes), device, args.repeats
    )
    ll_np = ll.double().cpu().numpy()
    print(
        f"gan-pipe  : {t_ours:9.3f} s  ({n / t_ours:,.0f} points/s, "
        f"{flops / t_ours / 1e12:.2f} TFLOP/s of distance work overall), "
        f"mean LL {ll_np.mean():.2f} +- {ll_np.std() / math.sqrt(n):.2f} nats"
    )
    bound = -math.log(m) - 0.5 * d * math.log(2 * math.pi * sigma**2)
    print(f"            max LL {ll_np.max():.2f} <= bound -log N - d/2 log(2 pi s^2) = {bound:.2f}")

    # the distance matmul alone (full precision: no TF32), the floor under the whole call
    with _exact_matmul():
        t_mm, _ = timed(lambda: x @ c.T, device, max(args.repeats, 5))
    tf = flops / t_mm / 1e12
    line = f"matmul    : {t_mm:9.3f} s  for the {n}x{d} @ {d}x{m} distance matmul alone"
    line += f" = {tf:.3f} TFLOP/s ({args.dtype}, no TF32)"
    peak, source = args.peak_tflops, "the given"
    if peak is None and device.type == "cuda":
        peak, source = spec_peak(where, args.dtype), f"{where}'s spec-sheet"
    if peak:
        line += f", {tf / peak:.1%} of {source} peak {peak:g} TFLOP/s"
        line += f"; whole Parzen call {flops / t_ours / 1e12 / peak:.1%} of peak"
    elif device.type == "cuda":
        line += f"; {where} is not in PEAK_TFLOPS: pass --peak-tflops for a fraction"
    print(line)

    # ---- scikit-learn
    t_sk = None
    sk_ll = None
    if not args.skip_sklearn:
        from sklearn.neighbors import KernelDensity

        k = min(args.sklearn_n or n, n)
        t0 = time.perf_counter()
        kde = KernelDensity(kernel="gaussian", bandwidth=sigma).fit(c_np)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        sk_ll = kde.score_samples(x_np[:k])
        t_score = time.perf_counter() - t0
        t_sk = t_fit + t_score * n / k
        note = "" if k == n else f" (scored {k} points in {t_score:.2f} s, scaled linearly to {n})"
        print(f"sklearn   : {t_sk:9.3f} s  (fit {t_fit:.2f} s + score){note}")
        print(f"speed-up  : {t_sk / t_ours:9.1f}x  gan-pipe over sklearn KernelDensity")

    # ---- agreement with a float64 brute force
    k = min(args.check_n, n)
    t0 = time.perf_counter()
    ref = brute_force(x_np[:k], c_np, sigma)
    t_ref = time.perf_counter() - t0
    print(
        f"agreement : max relative difference vs float64 brute force on {k} points "
        f"({t_ref:.1f} s): gan-pipe {rel_diff(ll_np[:k], ref):.2e}",
        end="",
    )
    if sk_ll is not None:
        kk = min(k, len(sk_ll))
        print(f", sklearn {rel_diff(sk_ll[:kk], ref[:kk]):.2e} (on {kk})", end="")
    print()


if __name__ == "__main__":
    main()
