# # Clustering on the sphere $S^2$
#
# Tokens on $S^2$ under SA with $Q = K = V = I$. By the Funk–Hecke formula the kernel acts on
# the spherical harmonics of degree $\ell$ by $4\pi\, i_\ell(\beta)$ ($i_\ell$: modified
# spherical Bessel functions), so degree $\ell$ of a perturbation of the uniform density grows
# at
#
# $$ \lambda_\ell = \frac{\ell(\ell + 1)\, i_\ell(\beta)}{\beta\, i_0(\beta)}, $$
#
# fastest at some $\ell^\star(\beta)$ that grows like $\sqrt{\beta}$: the lower the temperature,
# the more clusters form. This demo solves the mean-field equation with finite elements (DG0 on
# an icosphere) and draws the density on two opposite views of the sphere (smooth shading);
# and it counts, with one criterion (`attnflow.metrics.sphere_clusters`), the clusters that
# particle systems form for several $\beta$.

# +
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from mpi4py import MPI
from scipy.special import spherical_in

import attnflow as af
from attnflow.app.style import add_format_argument
from attnflow.fem import MeanFieldSolver, icosphere, sphere_mesh

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="Clustering on S^2: FE snapshots, count vs beta.")
parser.add_argument("--output", type=Path, default=Path(__file__).parent / "output" / "sphere")
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
args = parser.parse_args()
logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING)
log = logging.getLogger("demo_sphere_clustering")

if args.small:
    level, betas, n_tokens, t_final = 2, [4.0, 16.0], 800, 12.0
else:
    level, betas, n_tokens, t_final = 3, [4.0, 9.0, 16.0, 25.0], 2000, 20.0
snap_times = t_final * np.array([0.0, 0.15, 0.3, 1.0])
# -

# ## Finite elements at beta = 9 from a perturbed uniform density

rng = np.random.default_rng(3)
dirs = rng.standard_normal((6, 3))
dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
phases = rng.uniform(0, 2 * np.pi, 6)


def rho0(x: np.ndarray) -> np.ndarray:
    return 1.0 + 0.1 * np.sum(np.cos(4.0 * x @ dirs.T + phases), axis=1)


beta_fem = 9.0
fem = MeanFieldSolver(af.SelfAttention(3, beta=beta_fem), sphere_mesh(level, comm), rho0).solve(
    t_final, snap_times, output_dir=args.output / "fem"
)

# ## Particles: cluster count against beta

counts = []
for beta in betas:
    ens = af.ensemble(
        af.SelfAttention(3, beta=beta),
        af.UniformSphere(3),
        n_tokens,
        2,
        t_final,
        dt=0.1,
        seed=int(beta),
        comm=comm,
    )
    counts.append([af.metrics.sphere_clusters(run[-1]) for run in ens.x])
counts = np.array(counts)
ell = np.arange(1, 60)
ell_star = [
    int(ell[np.argmax(ell * (ell + 1) * spherical_in(ell, b) / (b * spherical_in(0, b)))])
    for b in betas
]

# ## Checks and pictures (rank 0)

if comm.rank == 0:
    assert np.all(np.abs(fem.mass / fem.mass[0] - 1) < 1e-12) and fem.min_density.min() >= 0
    assert np.all(np.diff(fem.energy) >= -1e-10)
    assert counts[-1].mean() > counts[0].mean(), f"counts {counts.tolist()} do not grow with beta"
    fem_clusters = af.metrics.sphere_clusters(fem.points, fem.weights[-1], level=level)
    log.info("FE (beta = %g): %d clusters at t = %g", beta_fem, fem_clusters, t_final)
    log.info(
        "particles: clusters %s for beta %s (most unstable degree %s)",
        counts.tolist(),
        betas,
        ell_star,
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attnflow.app.style import cell_to_vertex, figsize, save_figure, sphere_views, use_style

    use_style()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    # The DG0 cell densities, averaged to the vertices and interpolated to a mesh refined
    # twice for display (smooth shading); two opposite views show the whole sphere.
    v, f = icosphere(level)
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    clim = (-1.0, 1.6)
    fig, axes = plt.subplots(2, len(snap_times), figsize=figsize("page", 0.5))
    for k, t in enumerate(snap_times):
        masses = fem.cell_masses(k)
        dens = masses / area / (masses.sum() / area.sum())  # density / its mean
        vals = np.log10(np.maximum(cell_to_vertex(v, f, dens), 10 ** clim[0]))
        mappable = sphere_views(
            axes[:, k],
            v,
            f,
            vals,
            refine=2,
            vmin=clim[0],
            vmax=clim[1],
            titles=[f"$t = {t:.3g}$, front", "back (opposite)"],
        )
    bar = fig.colorbar(mappable, ax=axes, shrink=0.8)
    bar.set_label(r"$\log_{10}(\rho / \bar\rho)$, $\bar\rho$ = mean density")
    fig.suptitle(rf"FE (DG0, level {level}), SA, $\beta = {beta_fem:g}$")
    save_figure(fig, out / "sphere_density", args.format)

    fig, ax = plt.subplots(figsize=figsize("column", 0.8))
    ax.errorbar(
        betas, counts.mean(1), yerr=counts.std(1), fmt="o-", capsize=3, label="particle clusters"
    )
    ax.plot(betas, ell_star, "s--", label=r"most unstable degree $\ell^\star$")
    ax.set(
        xlabel=r"inverse temperature $\beta$",
        ylabel="number of clusters / degree",
        title=f"$S^2$, SA, N = {n_tokens}, t = {t_final:g}",
    )
    ax.legend()
    save_figure(fig, out / "clusters_vs_beta", args.format)
    log.info("wrote %s", out)
