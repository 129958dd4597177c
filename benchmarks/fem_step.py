"""Cost of one finite element time step on S^2: kernel recomputed vs assembled dense vs sparse.

For icosphere meshes of increasing size, one SSPRK(4,3) step (4 right-hand sides) of the DG0
solver with (a) the kernel recomputed by the engine at every stage, (b) the kernel assembled
once as a dense PETSc matrix, (c) assembled sparse (tol 1e-12) at beta = 10, 100, 1000. Prints
seconds per step and the ratio to (a) measured in the same run; then re-runs itself on 2 MPI
ranks (``--ranks 2``) and prints the speed-up. Usage::

    python benchmarks/fem_step.py [--levels 2 3 4 5] [--steps 5] [--ranks 2]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

from mpi4py import MPI

import attnflow as af
from attnflow.fem import DenseKernel, MeanFieldSolver, RecomputedKernel, SparseKernel, sphere_mesh

#: Matrices above this many entries are skipped (8 bytes each, 16 for sparse ones).
DENSE_MAX_ENTRIES = 3e8


def step_cost(level: int, beta: float, kernel, steps: int) -> tuple[float, float, int]:
    law = af.Mixture(
        [af.VonMisesFisher([0.0, 0.0, 1.0], 4.0), af.VonMisesFisher([1.0, 0.0, 0.0], 4.0)],
        [0.5, 0.5],
    )
    t0 = time.perf_counter()
    solver = MeanFieldSolver(af.SelfAttention(3, beta=beta), sphere_mesh(level), law, kernel=kernel)
    setup = time.perf_counter() - t0
    # A step of SSPRK(4,3) is four right-hand sides (velocity + transport) and vector updates;
    # time the right-hand sides directly (solve() also records energies at the save times).
    x = solver.rho.x.petsc_vec.copy()
    f = x.duplicate()
    solver.rhs(None, 0.0, x, f)  # warm-up: JIT of forms and kernels
    MPI.COMM_WORLD.Barrier()
    t0 = time.perf_counter()
    for _ in range(4 * steps):
        solver.rhs(None, 0.0, x, f)
    per_step = MPI.COMM_WORLD.allreduce(time.perf_counter() - t0, op=MPI.MAX) / steps
    return per_step, setup, solver.velocity.matrix_entries


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, nargs="+", default=[2, 3, 4, 5])
    p.add_argument("--betas", type=float, nargs="+", default=[10.0, 100.0, 1000.0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--ranks", type=int, default=2, help="also run on this many ranks (0: no)")
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    if comm.rank == 0:
        print(
            f"{'ranks':>5} {'cells':>6} {'beta':>6} {'kernel':>10} {'s/step':>9} "
            f"{'vs recomputed':>13} {'assembly s':>10} {'entries':>10}",
            flush=True,
        )
    for level in args.levels:
        cells = 20 * 4**level
        for beta in args.betas:
            base, _, _ = step_cost(level, beta, RecomputedKernel(), args.steps)
            rows = [("recomputed", base, 0.0, 0)]
            nodes = 10 * 4**level + 2
            dense_entries = 4 * nodes * cells
            if dense_entries <= DENSE_MAX_ENTRIES:
                rows.append(("dense", *step_cost(level, beta, DenseKernel(), args.steps)))
            # Kept fraction for Q = K = I: the cap 1 - cos(angle) <= log(1/tol)/beta.
            if min(1.0, math.log(1e12) / (2 * beta)) * dense_entries <= DENSE_MAX_ENTRIES:
                rows.append(("sparse", *step_cost(level, beta, SparseKernel(1e-12), args.steps)))
            if comm.rank == 0:
                for name, t, setup, nnz in rows:
                    print(
                        f"{comm.size:>5} {cells:>6} {beta:>6g} {name:>10} {t:>9.4f} "
                        f"{base / t:>12.1f}x {setup:>10.2f} {nnz:>10}",
                        flush=True,
                    )
    if args.ranks > 1 and comm.size == 1:
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        cmd = [
            mpiexec,
            "-n",
            str(args.ranks),
            sys.executable,
            __file__,
            "--ranks",
            "0",
            "--steps",
            str(args.steps),
            "--levels",
            *map(str, args.levels),
            "--betas",
            *map(str, args.betas),
        ]
        print(f"\n# the same on {args.ranks} ranks (1 thread each):", flush=True)
        subprocess.run(cmd, check=True, env=env)


if __name__ == "__main__":
    main()
