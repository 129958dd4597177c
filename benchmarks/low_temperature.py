"""Sparse kernel assembly and step cost from high to low temperature (issue 5).

For beta = 1 .. 1e4 on S^1 (``circle_mesh``), S^2 (``sphere_mesh``) and R^2 (``box_mesh``,
centred form), DG1: the truncated kernel (tol 1e-12) is assembled (a) by branch and bound
over the bounding-ball tree (the default) and (b) by visiting all pairs (the baseline, same
run); prints the entries kept (nnz, fraction of all pairs), both assembly times, their ratio and
the assembly time per kept entry (flat in beta: the cost follows the entries kept), then the
cost of one SSPRK(4,3) step (4 right-hand sides) with the sparse matrix against the engine
recomputing the kernel at every stage. In R^2 the row maxima of ``<x, y>`` sit at the box
boundary, not at the node: at low temperature the assembled rows are recomputed (the column
"recomputed rows" gives the fraction per evaluation). Usage::

    python benchmarks/low_temperature.py [--circle 4096] [--sphere 5] [--box 48] [--steps 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from mpi4py import MPI

import attnflow as af
from attnflow.fem import (
    MeanFieldSolver,
    RecomputedKernel,
    SparseKernel,
    box_mesh,
    circle_mesh,
    sphere_mesh,
)
from attnflow.kernels import kernel_matrix_sparse

BETAS = [1.0, 10.0, 100.0, 1e3, 1e4]
TOL = 1e-12


def _bump(x: np.ndarray) -> np.ndarray:
    r2 = ((x[:, 0] - 0.1) ** 2 + x[:, 1] ** 2) / 0.64
    return np.where(r2 < 1, (1 - np.minimum(r2, 1)) ** 2, 0.0)


def cases(args):
    comm = MPI.COMM_WORLD
    yield (
        f"S^1 n={args.circle}",
        lambda b: af.SelfAttention(2, beta=b),
        circle_mesh(args.circle, comm),
        af.PerturbedCircle(0.5, 4),
    )
    yield (
        f"S^2 level {args.sphere}",
        lambda b: af.SelfAttention(3, beta=b),
        sphere_mesh(args.sphere, comm),
        af.VonMisesFisher([0.0, 0.6, 0.8], 2.0),
    )
    yield (
        f"R^2 {args.box}x{args.box}",
        lambda b: af.SelfAttention(2, beta=b, sphere=False, centered=True),
        box_mesh(2, 1.0, args.box, comm),
        _bump,
    )


def _time(f, repeat: int = 1) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        MPI.COMM_WORLD.Barrier()
        t0 = time.perf_counter()
        out = f()
        best = min(best, MPI.COMM_WORLD.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    return best, out


def step_cost(solver: MeanFieldSolver, steps: int) -> float:
    x = solver.rho.x.petsc_vec.copy()
    f = x.duplicate()
    solver.rhs(None, 0.0, x, f)  # warm-up
    t, _ = _time(lambda: [solver.rhs(None, 0.0, x, f) for _ in range(4 * steps)])
    return t / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--circle", type=int, default=4096, help="cells of the S^1 mesh")
    p.add_argument("--sphere", type=int, default=4, help="icosphere level of the S^2 mesh")
    p.add_argument("--box", type=int, default=48, help="cells per side of the R^2 box")
    p.add_argument("--betas", type=float, nargs="+", default=BETAS)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    head = (
        f"{'case':>16} {'beta':>6} {'nnz':>10} {'kept':>7} {'tree s':>8} {'all-pairs s':>11} "
        f"{'speed-up':>8} {'ns/entry':>8} {'sparse s/step':>13} {'engine s/step':>13} "
        f"{'ratio':>6} {'recomputed rows':>15}"
    )
    if comm.rank == 0:
        print(head, flush=True)
    for name, make, mesh, rho0 in cases(args):
        for beta in args.betas:
            model = make(beta)
            ref = MeanFieldSolver(model, mesh, rho0, degree=1, kernel=RecomputedKernel())
            v = ref.velocity
            starts = np.arange(v.src_dofs.size + 1) * v.n_q
            arrays = (v.a, v.b, v.v, v.src_w, starts, TOL)
            kernel_matrix_sparse(*arrays)  # JIT warm-up
            t_tree, out = _time(lambda arrays=arrays: kernel_matrix_sparse(*arrays), 2)
            t_all, _ = _time(lambda arrays=arrays: kernel_matrix_sparse(*arrays, prune=False))
            nnz = comm.allreduce(int(out[1][-1]))
            pairs = comm.allreduce(v.n_nodes * v.src_dofs.size)
            sparse = MeanFieldSolver(model, mesh, rho0, degree=1, kernel=SparseKernel(TOL))
            t_sparse = step_cost(sparse, args.steps)
            rows = sparse.velocity.rows_recomputed
            evals = 4 * args.steps + 1
            n_rows = comm.allreduce(sparse.velocity.n_nodes)
            t_engine = step_cost(ref, args.steps)
            if comm.rank == 0:
                print(
                    f"{name:>16} {beta:>6g} {nnz:>10} {nnz / pairs:>7.2%} {t_tree:>8.3f} "
                    f"{t_all:>11.3f} {t_all / t_tree:>7.1f}x {1e9 * t_tree / nnz:>8.1f} "
                    f"{t_sparse:>13.4f} {t_engine:>13.4f} {t_engine / t_sparse:>5.1f}x "
                    f"{rows / (evals * n_rows):>15.0%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
