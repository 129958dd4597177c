"""Spectral kernel sums vs the direct engine: time and error of one velocity evaluation.

N tokens uniform on S^1 or S^2 (seeded), targets = sources (the particle solver's right-hand
side: den and num), the kernel ``e^{kappa <x, y>}``. Both are timed in the same run on the same
data: ``attnflow.kernels.spectral.zonal_sums`` (best of ``--repeat``) and the engine
``kernel_sums(kappa x, x, x, w)``. The engine is run on all N targets when its time,
extrapolated from ``--sub`` targets, is below ``--direct-max`` seconds; otherwise its time is the
subsample's times N / sub (it is linear in the number of targets) and is printed with a ``~``.
Errors are measured on the subsample's targets against the engine: the relative error of den
and the error of num/den (units of the speed bound 1), with the count of targets the spectral
method recomputed exactly. Usage::

    python benchmarks/spectral.py [--sizes 10000 100000 1000000] [--kappas 1 10 100 1000]
"""

from __future__ import annotations

import argparse
import os
import time

import numba
import numpy as np

from attnflow.kernels import kernel_sums
from attnflow.kernels.spectral import zonal_sums


def best_of(repeat: int, f, *args, **kwargs) -> tuple[float, object, float]:
    """Best wall time, the result, and the CPU time (all threads) of that best run."""
    t, out = [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = f(*args, **kwargs)
        t.append((time.perf_counter() - t0, time.process_time() - c0))
    best = min(t)
    return best[0], out, best[1]


def errors(s, r, idx: np.ndarray) -> tuple[float, float]:
    log_ratio = np.log(s.den[idx]) + s.shift[idx] - np.log(r.den) - r.shift
    den = float(np.abs(np.expm1(log_ratio)).max())
    vel = float(np.abs(s.num[idx] / s.den[idx, None] - r.num / r.den[:, None]).max())
    return den, vel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--kappas", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1000.0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    p.add_argument("--tol", type=float, default=1e-10)
    p.add_argument("--sub", type=int, default=2000, help="targets of the direct subsample")
    p.add_argument("--direct-max", type=float, default=60.0, help="seconds; beyond: extrapolate")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    load = os.getloadavg()[0]
    print(f"threads: {numba.get_num_threads()}  tol = {args.tol:g}  load average {load:.1f} (wall")
    print("times are inflated when other processes share the cores: 'cpu s' is the spectral")
    print(f"method's CPU time over all threads; ~: direct time extrapolated from {args.sub}")
    print("targets; errors on those targets against the engine)")
    head = (
        f"{'d':>2} {'N':>8} {'kappa':>6} {'L':>4} {'spectral s':>10} {'cpu s':>6} {'direct s':>10} "
        f"{'ratio':>8} {'den rel err':>11} {'num/den err':>11} {'recomputed':>10}"
    )
    print(head)
    for d in args.dims:
        for n in args.sizes:
            x = rng.standard_normal((n, d))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            w = np.full(n, 1.0 / n)
            idx = np.sort(rng.choice(n, size=min(args.sub, n), replace=False))
            for kappa in args.kappas:
                zonal_sums(x[:100], x[:100], w[:100], kappa, tol=args.tol)  # imports, compile
                t_sp, s, cpu = best_of(args.repeat, zonal_sums, x, x, w, kappa, tol=args.tol)
                kernel_sums(kappa * x[:64], x[:64], x[:64], w[:64])
                t_sub, r, _ = best_of(1, kernel_sums, kappa * x[idx], x, x, w)
                est = t_sub * n / len(idx)
                if est <= args.direct_max:
                    t_dir, _, _ = best_of(1, kernel_sums, kappa * x, x, x, w)
                    dir_txt = f"{t_dir:10.3f}"
                else:
                    t_dir, dir_txt = est, f"~{est:9.1f}"
                den, vel = errors(s, r, idx)
                print(
                    f"{d:>2} {n:>8} {kappa:>6g} {s.plan.degree:>4} {t_sp:>10.3f} {cpu:>6.2f} "
                    f"{dir_txt:>10} "
                    f"{t_dir / t_sp:>8.1f} {den:>11.1e} {vel:>11.1e} {s.recomputed:>10}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
