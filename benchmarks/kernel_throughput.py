"""Kernel-sum throughput: pair evaluations per second, fused engine vs the naive numpy form.

The naive form is what published particle scripts do: build the full N x N matrix
``np.exp(beta * X @ X.T)`` and multiply (here with the max-shift, else beta = 9 already
overflows nothing but beta = 1e3 does). Both are measured in the same run on the same data;
the ratio is what to read. Usage::

    python benchmarks/kernel_throughput.py [--sizes 4096 8192 16384 32768] [--dims 2 3 16]
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from attnflow.kernels import kernel_sums


def naive(x: np.ndarray, beta: float) -> np.ndarray:
    s = beta * x @ x.T
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return (e @ x) / e.sum(axis=1, keepdims=True)


def best_of(f, repeat: int) -> float:
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    return min(t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3, 16])
    p.add_argument("--beta", type=float, default=9.0)
    p.add_argument("--naive-max", type=int, default=16384, help="largest N for the naive form")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"threads: {numba.get_num_threads()}  beta = {args.beta}")
    print(f"{'d':>3} {'N':>6} {'engine Gpair/s':>15} {'naive Gpair/s':>14} {'ratio':>7}")
    for d in args.dims:
        for n in args.sizes:
            x = rng.standard_normal((n, d))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            w = np.full(n, 1.0 / n)
            a = args.beta * x
            kernel_sums(a[:64], x, x, w)  # compile outside the timing
            t_eng = best_of(lambda a=a, x=x, w=w: kernel_sums(a, x, x, w), 3)
            g_eng = n * n / t_eng / 1e9
            if n <= args.naive_max:
                t_nv = best_of(lambda x=x: naive(x, args.beta), 1 if n > 8192 else 2)
                g_nv = n * n / t_nv / 1e9
                print(f"{d:>3} {n:>6} {g_eng:>15.3f} {g_nv:>14.3f} {g_eng / g_nv:>7.1f}")
            else:
                print(f"{d:>3} {n:>6} {g_eng:>15.3f} {'(skipped)':>14} {'':>7}")


if __name__ == "__main__":
    main()
