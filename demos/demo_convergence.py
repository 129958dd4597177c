# # Convergence of the mean-field PDE and the particle system
#
# The particle system with $N$ i.i.d. tokens and the mean-field density are two
# approximations of the same flow. At a fixed time the Wasserstein distance between the
# finite element density $\rho_h$ and the empirical measure $\mu_N$ of one particle run is
#
# $$ W_1(\rho_h, \mu_N) \le W_1(\rho_h, \rho) + W_1(\rho, \mu_N)
#    \approx C_h\, h^{q} + C_N\, N^{-1/2}, $$
#
# the discretisation error and the Monte Carlo error (on S^1, $E\,W_1(\rho, \mu_N) \sim
# N^{-1/2}$). Against $N$ on a fine mesh the distance falls like $N^{-1/2}$; against $h$ at
# large $N$ it falls with the discretisation error until the sampling floor. Here: S^1, SA,
# $\beta = 4$, a perturbed uniform start, $t = 1$ (before the clusters form), DG1; each point
# is the mean ± sd of several seeded particle runs (distributed over MPI ranks).

# +
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from mpi4py import MPI

import attnflow as af
from attnflow.app.style import add_format_argument, figsize, save_figure, use_style
from attnflow.fem import MeanFieldSolver, circle_mesh
from attnflow.studies import w1_convergence

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="W1(FE, particles) against N and h.")
parser.add_argument("--output", type=Path, default=Path(__file__).parent / "output" / "convergence")
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
args = parser.parse_args()
logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING)
log = logging.getLogger("demo_convergence")

model = af.SelfAttention(2, beta=4.0)
law = af.PerturbedCircle(0.4, 3, phase=0.3)
t = 1.0
if args.small:
    n_tokens, n_cells, fine, large_n, runs = [100, 400, 1600], [6, 12, 24], 200, 3000, 4
else:
    n_tokens, n_cells, fine, large_n, runs = [100, 400, 1600, 6400], [6, 12, 24, 48], 400, 10000, 6


def solve_fem(cells: int):
    out = args.output / "fem" if cells == fine else None  # ParaView files of the finest run
    sol = MeanFieldSolver(model, circle_mesh(cells, comm), law, degree=1).solve(
        t, [0.0, t], output_dir=out
    )
    assert abs(sol.mass[-1] / sol.mass[0] - 1) < 1e-12 and sol.min_density.min() >= 0
    return 2 * np.sin(np.pi / cells), sol.points, sol.weights[-1]


study = w1_convergence(
    model,
    law,
    solve_fem,
    t=t,
    n_tokens=n_tokens,
    n_cells=n_cells,
    fine_cells=fine,
    large_n=large_n,
    n_runs=runs,
    dt=0.05,
    geometry="circle",
    seed=11,
    comm=comm,
)
# -

# ## Checks and figures

if comm.rank == 0:
    log.info("slope of W1 against N: %.3f (theory -1/2)", study.slope_n)
    log.info("slope of W1 against h: %.3f (down to the sampling floor)", study.slope_h)
    assert -0.65 < study.slope_n < -0.35, f"slope against N {study.slope_n:.2f}"
    assert study.w1_vs_h[0] > study.w1_vs_h[-1], "W1 does not fall under mesh refinement"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_style()

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 2, figsize=figsize("page", 0.42))
    ax[0].errorbar(study.n_tokens, study.w1_vs_n, yerr=study.w1_vs_n_sd, fmt="o-", capsize=3)
    ref = study.w1_vs_n[0] * (study.n_tokens / study.n_tokens[0]) ** -0.5
    ax[0].loglog(study.n_tokens, ref, "k--", label=r"$N^{-1/2}$")
    ax[0].set(
        xscale="log",
        yscale="log",
        xlabel="number of tokens $N$",
        ylabel=r"$W_1$(FE, particles)",
        title=f"against $N$ ({fine} cells): slope {study.slope_n:.2f}",
    )
    ax[0].legend()
    ax[1].errorbar(study.h, study.w1_vs_h, yerr=study.w1_vs_h_sd, fmt="o-", capsize=3)
    ax[1].set(
        xscale="log",
        yscale="log",
        xlabel="cell size $h$",
        ylabel=r"$W_1$(FE, particles)",
        title=f"against $h$ ($N$ = {large_n}): slope {study.slope_h:.2f}",
    )
    fig.suptitle(r"$W_1$(finite elements, particles) on $S^1$, SA, $\beta = 4$, $t = 1$")
    save_figure(fig, out / "convergence", args.format)
    np.savez(out / "convergence.npz", **study.__dict__)
    log.info("wrote %s", out)
