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
# an icosphere) and renders the density off-screen with pyvista; and it counts, with one
# criterion (`attnflow.metrics.sphere_clusters`), the clusters that particle systems form for
# several $\beta$.

# +
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
from mpi4py import MPI
from scipy.special import spherical_in

import attnflow as af
from attnflow.fem import MeanFieldSolver, icosphere, sphere_mesh

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="Clustering on S^2: FE snapshots, count vs beta.")
parser.add_argument("--output", type=Path, default=Path(__file__).parent / "output" / "sphere")
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
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
    import pyvista as pv

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    v, f = icosphere(level)
    faces = np.hstack([np.full((f.shape[0], 1), 3), f]).ravel()
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    plotter = pv.Plotter(off_screen=True, shape=(1, len(snap_times)), window_size=(1200, 330))
    for k, t in enumerate(snap_times):
        surf = pv.PolyData(v, faces)
        dens = fem.cell_masses(k) / area
        surf.cell_data["log10 density"] = np.log10(np.maximum(dens, 1e-3))
        plotter.subplot(0, k)
        plotter.add_mesh(
            surf,
            scalars="log10 density",
            cmap="magma",
            clim=(-3, 2),
            show_scalar_bar=k == len(snap_times) - 1,
        )
        plotter.add_text(f"t = {t:.0f}", font_size=10)
    plotter.screenshot(out / "sphere_density.png")
    plotter.close()

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.errorbar(
        betas, counts.mean(1), yerr=counts.std(1), fmt="o-", capsize=3, label="particle clusters"
    )
    ax.plot(betas, ell_star, "s--", label=r"most unstable degree $\ell^\star$")
    ax.set(xlabel=r"$\beta$", ylabel="count", title=f"S^2, SA, N = {n_tokens}, t = {t_final:g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "clusters_vs_beta.png", dpi=100)
    log.info("wrote %s", out)
