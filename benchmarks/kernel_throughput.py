"""Kernel-sum throughput: pair evaluations per second, fused engine vs the naive numpy form.

The naive form is what published particle scripts do: build the full N x N matrix
``np.exp(beta * X @ X.T)`` and multiply (here with the max-shift, else beta = 9 already
overflows nothing but beta = 1e3 does). Both are measured in the same run on the same data;
the ratio is what to read.

For d >= 4 the engine computes scores and values by BLAS tiles (``attnflow.kernels.tiled``),
and its limit is the GEMM-bound time: the two matrix products of the same sizes (scores
``N x d . d x N`` and values ``N x N . N x d``, numpy, threaded BLAS) plus N*N exponentials
(``np.exp`` in cache-sized blocks on all cores, numpy's SIMD exp), measured in the same run.
``limit/engine`` is that time over the engine's (the issue's target: >= 0.67, i.e. the engine
within 1.5x of the limit). Usage::

    python benchmarks/kernel_throughput.py [--sizes 4096 8192 16384 32768]
        [--dims 2 3 16 64 128]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from attnflow.kernels import kernel_sums

#: Elements per exponential block (256 KiB: stays in L2).
EXP_BLOCK = 32768


def naive(x: np.ndarray, beta: float) -> np.ndarray:
    s = beta * x @ x.T
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return (e @ x) / e.sum(axis=1, keepdims=True)


def best_of(f: Callable[[], object], repeat: int) -> float:
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    return min(t)


def gemm_exp_limit(
    x: np.ndarray, beta: float, pool: ThreadPoolExecutor, n_workers: int
) -> tuple[float, ...]:
    """Times of the scores product, the N*N exponentials and the values product (seconds)."""
    n = x.shape[0]
    a = beta * x
    s = np.empty((n, n))
    out = np.empty_like(x)
    t_scores = best_of(lambda: np.matmul(a, x.T, out=s), 2)
    s -= beta  # scores <= 0, as after the shift
    flat = s.reshape(-1)

    def work(k: int) -> None:
        for i in range(k * EXP_BLOCK, flat.size, n_workers * EXP_BLOCK):
            blk = flat[i : i + EXP_BLOCK]
            np.exp(blk, out=blk)

    t_exp = best_of(lambda: list(pool.map(work, range(n_workers))), 1)
    t_values = best_of(lambda: np.matmul(s, x, out=out), 2)
    return t_scores, t_exp, t_values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3, 16, 64, 128])
    p.add_argument("--beta", type=float, default=9.0)
    p.add_argument("--naive-max", type=int, default=16384, help="largest N for the naive form")
    p.add_argument("--limit-max", type=int, default=16384, help="largest N for the GEMM+exp limit")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    pool = ThreadPoolExecutor(numba.get_num_threads())
    print(f"threads: numba {numba.get_num_threads()}, cores {os.cpu_count()}  beta = {args.beta}")
    print(
        f"{'d':>3} {'N':>6} {'engine Gpair/s':>15} {'naive Gpair/s':>14} {'ratio':>7}"
        f" {'limit Gpair/s':>14} {'limit/engine':>13}  (scores, exp, values) s"
    )
    for d in args.dims:
        for n in args.sizes:
            x = rng.standard_normal((n, d))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            w = np.full(n, 1.0 / n)
            a = args.beta * x
            kernel_sums(a[:64], x, x, w)  # compile outside the timing
            t_eng = best_of(lambda a=a, x=x, w=w: kernel_sums(a, x, x, w), 3)
            g_eng = n * n / t_eng / 1e9
            row = f"{d:>3} {n:>6} {g_eng:>15.3f}"
            if n <= args.naive_max:
                t_nv = best_of(lambda x=x: naive(x, args.beta), 1 if n > 8192 else 2)
                g_nv = n * n / t_nv / 1e9
                row += f" {g_nv:>14.3f} {g_eng / g_nv:>7.1f}"
            else:
                row += f" {'(skipped)':>14} {'':>7}"
            if d >= 4 and n <= args.limit_max:
                parts = gemm_exp_limit(x, args.beta, pool, numba.get_num_threads())
                t_lim = sum(parts)
                row += f" {n * n / t_lim / 1e9:>14.3f} {t_lim / t_eng:>13.2f}"
                row += "  (" + ", ".join(f"{t:.3f}" for t in parts) + ")"
            print(row, flush=True)


if __name__ == "__main__":
    main()
