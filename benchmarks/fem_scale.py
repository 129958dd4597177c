"""The finite element solver at scale: S^2 levels 4-7, DG0/DG1, beta = 10, 100, 1000 (issue 12).

For SA with Q = K = V = I on icosphere meshes (level 4: 5 120 cells ... level 7: 327 680 cells)
and the initial density of ``benchmarks/fem_step.py`` (two von Mises-Fisher bumps, kappa = 4),
every case runs in its own process (``mpiexec -n R`` for R ranks, one thread per rank; serial:
numba's threads), so that its peak memory is its own. Per case it prints:

* the method ``kernel="auto"`` chose (``sol.stats["kernel"]``) and, at small sizes, the other
  methods measured in the same run (``--alternatives``);
* set-up: the wall time of ``MeanFieldSolver(...)`` (forms, quadrature, kernel operator);
* seconds per step: ``solve`` runs ``--steps`` timed steps after one warm-up step, timed between
  the solver's ``progress`` calls (wall and CPU; CPU is summed over ranks and threads, i.e.
  core-seconds: under a loaded machine the wall time is inflated, the CPU time much less);
* peak memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of each rank (the whole process:
  interpreter, dolfinx, PETSc, ~0.2 GB before any mesh), the largest rank;
* steps to t = 10 from the CFL step ``solver.dt`` and the projected time to t = 10 (steps times
  the measured seconds per step, plus the set-up): **projections from a few steps**, at the
  initial density (the spectral method's exact recomputation of untrusted targets may grow as the
  density concentrates; the count is printed as ``recomp``);
* where a step goes (fractions of the wall time of the timed steps, rank 0): the kernel sums
  (``KernelOperator.sums``), the rest of the velocity (field, projection), the transport
  assembly (``dolfinx.fem.assemble_vector``), the rest of the right-hand side (limiter, scatter,
  inverse mass matrices) and PETSc TS (stage combinations, post-step limiter).

``--growth`` prints the accuracy cost of the quadrature degree of the kernel integrals: the
growth rate of the zonal degree-l harmonic of the uniform state against Funk-Hecke theory
(``lambda_l = l (l + 1) i_l(beta) / (beta i_0(beta))``) for each quadrature degree, DG0 and DG1.
``--box`` runs the 128 x 128 DG1 box in R^2 (``box_mesh(2, 4.0, 128)``, Gaussian initial density,
SA with K = -Q, beta = 1): the method auto chose and its cost per step. Usage::

    python benchmarks/fem_scale.py [--levels 4 5 6 7] [--degrees 0 1] [--betas 10 100 1000]
        [--ranks 1 2] [--steps 3] [--tol 1e-8] [--quadrature-degree 4] [--growth] [--box]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from mpi4py import MPI

T_FINAL = 10.0
HERE = os.path.abspath(__file__)


def _law():
    import attnflow as af

    return af.Mixture(
        [af.VonMisesFisher([0.0, 0.0, 1.0], 4.0), af.VonMisesFisher([1.0, 0.0, 0.0], 4.0)],
        [0.5, 0.5],
    )


def _kernel(method: str, tol: float):
    from attnflow.kernels import DenseKernel, RecomputedKernel, SparseKernel, SpectralKernel
    from attnflow.kernels.choice import AutoKernel

    return {
        "auto": lambda: AutoKernel(tol=tol),
        "spectral": lambda: SpectralKernel(tol),
        "sparse": lambda: SparseKernel(min(tol, 1e-12)),
        "dense": DenseKernel,
        "recomputed": RecomputedKernel,
    }[method]()


class _Clock:
    """Accumulates the wall time of wrapped calls while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.total: dict[str, float] = {}

    def wrap(self, name: str, f):
        self.total.setdefault(name, 0.0)

        def timed(*args, **kwargs):
            if not self.on:
                return f(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                self.total[name] += time.perf_counter() - t0

        return timed


class _TimedVelocity:
    """``solver.velocity`` with its calls timed (everything else forwarded)."""

    def __init__(self, inner, clock: _Clock) -> None:
        self._inner = inner
        self._call = clock.wrap("velocity", inner.__call__)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _maxrss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux: kB


def run_case(kind: str, level: int, degree: int, beta: float, method: str, args) -> dict:
    """One case in this process (collective); returns the record on rank 0."""
    import dolfinx.fem

    import attnflow as af
    import attnflow.fem.solver as fem_solver
    from attnflow.fem import MeanFieldSolver, box_mesh, sphere_mesh

    comm = MPI.COMM_WORLD
    if kind == "box":
        mesh = box_mesh(2, 4.0, level, comm)
        model = af.SelfAttention(2, beta=beta, sphere=False, K=-np.eye(2))
        law = af.Gaussian(np.zeros(2), 0.5 * np.eye(2))
    else:
        mesh = sphere_mesh(level, comm)
        model = af.SelfAttention(3, beta=beta)
        law = _law()
    comm.Barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    solver = MeanFieldSolver(
        model,
        mesh,
        law,
        degree=degree,
        kernel=_kernel(method, args.tol),
        quadrature_degree=args.quadrature_degree,
    )
    comm.Barrier()
    setup = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    setup_cpu = comm.allreduce(time.process_time() - c0)
    clock = _Clock()
    solver.velocity = _TimedVelocity(solver.velocity, clock)
    for op in solver.velocity.operators.values():
        op.sums = clock.wrap("sums", op.sums)
    solver.rhs = clock.wrap("rhs", solver.rhs)
    assemble = dolfinx.fem.assemble_vector
    fem_solver.dolfinx.fem.assemble_vector = clock.wrap("assembly", assemble)
    n = args.steps
    marks: list[tuple[float, float]] = []

    def progress(t: float, step: int) -> None:
        if step == 1:
            clock.on = True
        if 1 <= step <= n + 1:
            marks.append((time.perf_counter(), time.process_time()))
        if step == n + 1:
            clock.on = False

    try:
        sol = solver.solve((n + 1.5) * solver.dt, energy=False, progress=progress)
    finally:
        fem_solver.dolfinx.fem.assemble_vector = assemble
    wall = (marks[-1][0] - marks[0][0]) / n
    cpu = comm.allreduce((marks[-1][1] - marks[0][1]) / n)
    wall = comm.allreduce(wall, op=MPI.MAX)
    tot = clock.total
    rec = {
        "kind": kind,
        "level": level,
        "degree": degree,
        "beta": beta,
        "requested": method,
        "ranks": comm.size,
        "cells": solver.n_cells_global,
        "setup": setup,
        "setup_cpu": setup_cpu,
        "step": wall,
        "step_cpu": cpu,
        "dt": solver.dt,
        "steps_to_10": int(np.ceil(T_FINAL / solver.dt)),
        "kernel": sol.stats["kernel"],
        "plan": sol.stats["kernel_plan"],
        "entries": sol.stats["matrix_entries"],
        "recomputed": sum(
            int(getattr(op, "spectral_recomputed", 0)) for op in solver.velocity.operators.values()
        )
        + sol.stats["rows_recomputed"],
        "rhs_evaluations": sol.stats["rhs_evaluations"],
        "maxrss": comm.allreduce(_maxrss(), op=MPI.MAX),
        "load": os.getloadavg()[0],
        "mass_drift": float(abs(sol.mass[-1] / sol.mass[0] - 1)),
        "fractions": {
            "sums": tot["sums"] / n / wall,
            "velocity_rest": (tot["velocity"] - tot["sums"]) / n / wall,
            "assembly": tot["assembly"] / n / wall,
            "rhs_rest": (tot["rhs"] - tot["velocity"] - tot["assembly"]) / n / wall,
            "petsc": 1.0 - tot["rhs"] / n / wall,
        },
    }
    return rec


def growth_rates(args) -> None:
    """Rate of the zonal degree-l harmonic against theory, per quadrature degree (serial)."""
    from scipy.special import eval_legendre, ive

    import attnflow as af
    from attnflow.fem import MeanFieldSolver, sphere_mesh
    from attnflow.kernels import SpectralKernel

    beta, ell, eps, level = args.growth_beta, args.growth_l, 1e-6, args.growth_level
    lam = ell * (ell + 1) * ive(ell + 0.5, beta) / (beta * ive(0.5, beta))
    T = min(1.0 / lam, 2.0)
    print(
        f"\n# growth rate of the degree-{ell} zonal harmonic, beta = {beta:g}, level {level}, "
        f"spectral kernel (tol {args.tol:g}); theory lambda = {lam:.5f}, T = {T:.3g}"
    )
    print(f"{'DG':>3} {'qdeg':>5} {'points/cell':>11} {'rate':>9} {'rel. error':>10} {'s/step':>8}")
    mesh = sphere_mesh(level, MPI.COMM_SELF)

    def rho0(x):
        return (1.0 + eps * eval_legendre(ell, x[:, 2])) / (4.0 * np.pi)

    for degree, qdegs in ((0, (1, 2, 4)), (1, (2, 4))):
        for q in qdegs:
            solver = MeanFieldSolver(
                af.SelfAttention(3, beta=beta),
                mesh,
                rho0,
                degree=degree,
                kernel=SpectralKernel(args.tol),
                quadrature_degree=q,
            )
            sol = solver.solve(T, energy=False)
            z = sol.points[:, 2] / np.linalg.norm(sol.points, axis=1)
            a = sol.weights @ eval_legendre(ell, z)
            rate = np.log(a[1] / a[0]) / T
            print(
                f"{degree:>3} {max(q, 2 * degree):>5} {sol.points_per_cell:>11} {rate:>9.5f} "
                f"{rate / lam - 1:>+10.2%} {sol.stats['wall_time'] / sol.stats['steps']:>8.4f}",
                flush=True,
            )


def _case_cmd(ranks: int, kind: str, level: int, degree: int, beta: float, method: str, args):
    cmd = [sys.executable, HERE, "--case", kind, str(level), str(degree), str(beta), method]
    cmd += ["--steps", str(args.steps), "--tol", str(args.tol)]
    cmd += ["--quadrature-degree", str(args.quadrature_degree)]
    env = dict(os.environ)
    if ranks > 1:
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        cmd = [mpiexec, "-n", str(ranks), *cmd]
        env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return cmd, env


def _spawn(ranks, kind, level, degree, beta, method, args) -> dict | None:
    cmd, env = _case_cmd(ranks, kind, level, degree, beta, method, args)
    try:
        out = subprocess.run(
            ["timeout", str(args.case_timeout), *cmd],
            capture_output=True,
            text=True,
            env=env,
        )
    except OSError as e:  # pragma: no cover
        print(f"# {kind} {level} DG{degree} beta={beta:g} {method}: {e}", flush=True)
        return None
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    why = out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]
    if out.returncode == 124:
        why = [f"over the {args.case_timeout} s limit of a case"]
    print(f"# {kind} {level} DG{degree} beta={beta:g} {method} on {ranks}: {why[0]}", flush=True)
    return None


HEAD = (
    f"{'R':>1} {'cells':>6} {'DG':>2} {'beta':>5} {'method':>12} {'set-up s':>8} {'s/step':>7} "
    f"{'cpu':>6} {'vs auto':>7} {'peak GB':>7} {'steps':>6} {'to t=10':>8} {'sums':>5} "
    f"{'asm':>5} {'rhs':>5} {'vel':>5} {'TS':>5} {'recomp':>6}"
)


def _fmt_time(s: float) -> str:
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"


def _row(r: dict, base: dict | None) -> str:
    f = r["fractions"]
    method = r["kernel"] if r["requested"] == "auto" else f"({r['kernel']})"
    vs = "" if base is None or base is r else f"{r['step'] / base['step']:.2f}x"
    proj = r["setup"] + r["steps_to_10"] * r["step"]
    return (
        f"{r['ranks']:>1} {r['cells']:>6} {r['degree']:>2} {r['beta']:>5g} {method:>12} "
        f"{r['setup']:>8.1f} {r['step']:>7.3f} {r['step_cpu']:>6.3f} {vs:>7} "
        f"{r['maxrss'] / 1e9:>7.2f} {r['steps_to_10']:>6} {_fmt_time(proj):>8} "
        f"{f['sums']:>5.0%} {f['assembly']:>5.0%} {f['rhs_rest']:>5.0%} "
        f"{f['velocity_rest']:>5.0%} {f['petsc']:>5.0%} {r['recomputed']:>6}"
    )


def _alternatives(level: int, degree: int, beta: float, chosen: str, args) -> list[str]:
    """Other methods measured in the same run: at levels <= --alt-max-level; dense only when
    its matrix has at most 3e8 entries."""
    if level > args.alt_max_level:
        return []
    cells = 20 * 4**level
    entries = 4 * (10 * 4**level + 2) * cells * (1 + 2 * degree)
    alts = ["spectral", "sparse", "recomputed"] + (["dense"] if entries <= 3e8 else [])
    return [m for m in alts if m != chosen]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, nargs="+", default=[4, 5, 6, 7])
    p.add_argument("--degrees", type=int, nargs="+", default=[0, 1])
    p.add_argument("--betas", type=float, nargs="+", default=[10.0, 100.0, 1000.0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--tol", type=float, default=1e-8, help="tolerance of auto / spectral")
    p.add_argument("--quadrature-degree", type=int, default=4)
    p.add_argument("--alt-max-level", type=int, default=4, help="alternatives up to this level")
    p.add_argument("--case-timeout", type=int, default=900, help="seconds per case")
    p.add_argument("--growth", action="store_true", help="quadrature degree vs growth rate")
    p.add_argument("--growth-beta", type=float, default=100.0)
    p.add_argument("--growth-l", type=int, default=6)
    p.add_argument("--growth-level", type=int, default=4)
    p.add_argument("--box", action="store_true", help="also the 128 x 128 DG1 box in R^2")
    p.add_argument("--no-sphere", action="store_true", help="skip the S^2 table")
    p.add_argument("--case", nargs=5, metavar=("KIND", "LEVEL", "DEGREE", "BETA", "METHOD"))
    args = p.parse_args()
    if args.case:
        kind, level, degree, beta, method = args.case
        rec = run_case(kind, int(level), int(degree), float(beta), method, args)
        if MPI.COMM_WORLD.rank == 0:
            print("RESULT " + json.dumps(rec), flush=True)
        return
    print(
        f"# load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; auto/spectral tol "
        f"{args.tol:g}; quadrature degree {args.quadrature_degree}; {args.steps} steps timed "
        f"after a warm-up step and projected to t = {T_FINAL:g}\n# R: ranks; s/step: wall, cpu: "
        "core-seconds per step (all ranks and threads); peak: max rss of a rank; fractions of "
        "a step: kernel sums, transport assembly, rest of the rhs, rest of the velocity, PETSc "
        "TS; recomp: targets / rows recomputed by the engine in the run",
        flush=True,
    )
    if not args.no_sphere:
        print(HEAD, flush=True)
        for level in args.levels:
            for degree in args.degrees:
                for beta in args.betas:
                    for ranks in args.ranks:
                        base = _spawn(ranks, "sphere", level, degree, beta, "auto", args)
                        if base is None:
                            continue
                        print(_row(base, base), flush=True)
                        for m in _alternatives(level, degree, beta, base["kernel"], args):
                            r = _spawn(ranks, "sphere", level, degree, beta, m, args)
                            if r is not None:
                                print(_row(r, base), flush=True)
    if args.box:
        print("\n# the 128 x 128 DG1 box in R^2, SA with K = -Q, beta = 1, Gaussian density")
        print(HEAD, flush=True)
        for ranks in args.ranks:
            r = _spawn(ranks, "box", 128, 1, 1.0, "auto", args)
            if r is not None:
                print(_row(r, r), flush=True)
                plan = r["plan"][0]
                print(
                    f"#   auto's estimate: {plan['method']} {plan['memory'] / 1e9:.2f} GB, "
                    f"{plan['evaluation_estimate']:.3g} s per evaluation; budget "
                    f"{plan['budget'] / 1e9:.1f} GB per rank",
                    flush=True,
                )
    if args.growth:
        growth_rates(args)


if __name__ == "__main__":
    main()
