# # Many clusters on $S^2$ at high resolution: finite elements and $10^6$ particles
#
# Tokens on $S^2$ under SA with $Q = K = V = I$ at a low temperature, $\beta = 64$. The kernel
# $e^{\beta \langle x, y\rangle}$ is *zonal*: by the Funk–Hecke formula it acts on the spherical
# harmonics of degree $\ell$ by $4\pi\, i_\ell(\beta)$, so
#
# $$ \sum_j w_j e^{\beta \langle x, y_j\rangle} = 4\pi \sum_{\ell \le L} i_\ell(\beta)
#    \sum_{m} Y_{\ell m}(x)\, \overline{\sum_j w_j Y_{\ell m}(y_j)} + O(\text{tail}), $$
#
# and the coefficients $i_\ell(\beta) e^{-\beta}$ decay fast beyond $\ell \sim \sqrt{\beta}$: a
# truncation degree $L$ chosen a priori from the tolerance (63 at $\beta = 64$ for $10^{-8}$,
# `attnflow/kernels/spectral.py`) turns the $O(N M)$ kernel sums into two spherical
# harmonic transforms, $O(N + M + L^2 \log L)$. The numerator $\sum_j w_j e^{\dots} y_j$ follows
# from the same coefficients. That is what makes both solvers affordable here:
#
# * the finite element solver on an icosphere of level 6 (81 920 cells, DG0 upwind, the density
#   as a cloud of quadrature points: `kernel="auto"` picks the spectral sums, a dense matrix would
#   take 100 GB and the truncated one 60 GB);
# * $10^6$ particles (`af.simulate(..., kernel="spectral")`), sampled from the same density.
#
# Degree $\ell$ of a perturbation of the uniform density grows at
# $\lambda_\ell = \ell(\ell+1) i_\ell(\beta) / (\beta\, i_0(\beta))$, fastest at
# $\ell^\star(64) = 11$: we start from plane waves of that wave number, which break up into many
# clusters. Checks: mass conserved, density $\ge 0$, the spectral kernel used by both solvers,
# and particles against finite elements (cluster counts and the $L^1$ distance of the cell
# histograms).

# +
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI
from scipy.special import ive

import attnflow as af
from attnflow.app.style import add_format_argument
from attnflow.fem import MeanFieldSolver, icosphere, sphere_mesh
from attnflow.kernels.choice import AutoKernel

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="S^2 at high resolution: FE and 10^6 particles.")
parser.add_argument(
    "--output", type=Path, default=Path(__file__).parent / "output" / "sphere_highres"
)
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
parser.add_argument("--level", type=int, help="icosphere level (default 6; --small: 3)")
parser.add_argument("--particles", type=int, help="number of tokens (default 10^6)")
args = parser.parse_args()
logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING)
log = logging.getLogger("demo_sphere_highres")

beta = 64.0
if args.small:
    level, n_tokens, t_final, dt = 3, 20_000, 1.0, 0.25
else:
    level, n_tokens, t_final, dt = 6, 10**6, 4.0, 0.2
level = args.level if args.level is not None else level
n_tokens = args.particles if args.particles is not None else n_tokens
save_times = np.linspace(0.0, t_final, 5)
ell = np.arange(1, 80)
lam = ell * (ell + 1) * ive(ell + 0.5, beta) / (beta * ive(0.5, beta))
ell_star = int(ell[np.argmax(lam)])
# -

# ## The initial density: plane waves at the most unstable wave number
#
# $\rho_0(x) \propto 1 + a \sum_{k=1}^{6} \cos(\ell^\star \langle x, d_k\rangle + \phi_k)$ with
# random directions $d_k$ and phases, $a = 0.1$ (so $\rho_0 \ge 0.4$ up to normalisation).

rng = np.random.default_rng(7)
dirs = rng.standard_normal((6, 3))
dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
phases = rng.uniform(0, 2 * np.pi, 6)


def rho0(x: np.ndarray) -> np.ndarray:
    return 1.0 + 0.1 * np.sum(np.cos(ell_star * x @ dirs.T + phases), axis=1)


law = af.DensityLaw(rho0, 3, bound=1.6)
model = af.SelfAttention(3, beta=beta)

# ## Finite elements (DG0 upwind on the icosphere, SSPRK(4,3), CFL step)
#
# `kernel=AutoKernel(tol=1e-8)`: the automatic choice with a spectral tolerance of $10^{-8}$
# (relative, per target; at the default $10^{-10}$ the transforms' own rounding, ~$10^{-12}$ of
# the maximum, makes the method recompute every target below a few percent of the maximum
# exactly). The kernel integrals use the quadrature of degree 1 (one point per cell, enough
# for DG0: `benchmarks/fem_scale.py --growth`).

t0 = time.perf_counter()
solver = MeanFieldSolver(
    model,
    sphere_mesh(level, comm),
    law,
    degree=0,
    kernel=AutoKernel(tol=1e-8),
    quadrature_degree=1,
    normalize=True,
)
fem = solver.solve(t_final, save_times, output_dir=args.output / "fem", energy=False)
fem_wall = time.perf_counter() - t0

# ## Particles with the spectral kernel sums (RK4)

x0 = law.sample(n_tokens, rng=11)
t0 = time.perf_counter()
part = af.simulate(model, x0, t_final, dt=dt, save_times=save_times, kernel="spectral", comm=comm)
part_wall = time.perf_counter() - t0

# ## Checks and pictures (rank 0)
#
# Both measures are deposited on the cells of a coarser icosphere (level 4 at full size) to
# count clusters with the one criterion of `attnflow.metrics.sphere_clusters` and to compare
# the cell histograms in $L^1$.

if comm.rank == 0:
    mass_drift = np.abs(fem.mass / fem.mass[0] - 1).max()
    assert mass_drift < 1e-11, mass_drift
    assert fem.min_density.min() >= 0.0, fem.min_density.min()
    assert fem.stats["kernel"] == "spectral" or args.small, fem.stats["kernel"]
    assert part.stats["kernel"] == "spectral", part.stats["kernel"]
    coarse = min(level - 2, 4) if level > 3 else level - 1
    h_fem = af.metrics.sphere_histogram(fem.points, fem.weights[-1], coarse)
    h_part = af.metrics.sphere_histogram(part.x[-1], None, coarse)
    l1 = af.metrics.l1_distance(h_fem, h_part)
    l1_0 = af.metrics.l1_distance(
        af.metrics.sphere_histogram(fem.points, fem.weights[0], coarse),
        af.metrics.sphere_histogram(part.x[0], None, coarse),
    )
    # Clusters still forming at t = 4 are connected by mass above 1% of the mean: count the
    # connected regions above the mean density (empty=1) holding at least 0.2% of the mass.
    crit = {"level": coarse, "empty": 1.0, "min_mass": 0.002}
    c_fem = af.metrics.sphere_clusters(fem.points, fem.weights[-1], **crit)
    c_part = af.metrics.sphere_clusters(part.x[-1], None, **crit)
    log.info(
        "level %d (%d cells), beta = %g, l* = %d: FE %s, %d steps, %.0f s; %d particles, "
        "%d steps, %.0f s",
        level,
        solver.n_cells_global,
        beta,
        ell_star,
        fem.stats["kernel"],
        fem.stats["steps"],
        fem_wall,
        n_tokens,
        part.stats["steps"],
        part_wall,
    )
    log.info(
        "t = %g: clusters FE %d, particles %d; L1(FE, particles) on level-%d cells %.3f "
        "(at t = 0: %.3f); mass drift %.1e",
        t_final,
        c_fem,
        c_part,
        coarse,
        l1,
        l1_0,
        mass_drift,
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attnflow.app.style import cell_to_vertex, figsize, save_figure, sphere_views, use_style

    use_style()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)

    def vertex_density(points, weights, lev):
        """log10 of density / mean on the cells of level lev, averaged to the vertices."""
        v, f = icosphere(lev)
        tri = v[f]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        h = af.metrics.sphere_histogram(points, weights, lev)
        dens = h / area * area.sum() / h.sum()
        return v, f, np.log10(np.maximum(cell_to_vertex(v, f, dens), 1e-2))

    clim = (-2.0, 1.5)
    rows = {
        f"FE, DG0, {solver.n_cells_global} cells": (
            vertex_density(fem.points, fem.weights[-1], level),
            level,
        ),
        f"{n_tokens:,} particles, level-{min(level, 5)} cells": (
            vertex_density(part.x[-1], None, min(level, 5)),
            min(level, 5),
        ),
    }
    fig, axes = plt.subplots(2, 2, figsize=figsize("page", 0.85))
    for i, (name, ((v, f, vals), lev)) in enumerate(rows.items()):
        # Smooth shading on a display mesh refined up to about level 5 (the computation's
        # mesh is unchanged).
        mappable = sphere_views(
            axes[i],
            v,
            f,
            vals,
            refine=max(0, 5 - lev),
            vmin=clim[0],
            vmax=clim[1],
            titles=[f"{name}\nfront", "back (opposite)"],
        )
    bar = fig.colorbar(mappable, ax=axes, shrink=0.6, ticks=[-2, -1, 0, 1])
    bar.set_label(r"$\log_{10}(\rho / \bar\rho)$, $\bar\rho$ = mean density")
    fig.suptitle(
        rf"$S^2$, SA, $\beta = {beta:g}$, $t = {t_final:g}$: {c_fem} clusters (FE), "
        f"{c_part} (particles)"
    )
    save_figure(fig, out / "sphere_highres", args.format)
    log.info("wrote %s", out)
    if not args.small:
        assert c_fem >= 10 and abs(c_fem - c_part) <= 0.25 * c_part, (c_fem, c_part)
    assert l1 < 0.4, l1
