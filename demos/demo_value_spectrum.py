# # The spectrum of V decides the limit shape (R^2)
#
# In $\mathbb{R}^d$ with SA and $Q = K = I$, the tokens grow like $e^{tV}$; in the rescaled
# variable $z = e^{-tV} x$ they cluster (Geshkovski, Letrouit, Polyanskiy, Rigollet):
#
# * $V = I$: the $z_i$ converge to the **vertices of a convex polytope**;
# * $V$ with a simple positive top eigenvalue $\lambda_1$ (here $V = \mathrm{diag}(1, 1/2)$):
#   the component along the top eigenvector converges to a few values, so the $z_i$ gather on
#   **parallel lines**.
#
# Particles show both limits at $t = 8$; finite elements (DG1 on a box, outflow boundary)
# agree with them while the density still fits in the box ($t = 1$), compared in the rescaled
# variable with $W_1$.

# +
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from mpi4py import MPI
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.linalg import expm
from scipy.spatial import ConvexHull

import attnflow as af
from attnflow.app.style import add_format_argument, figsize, save_figure, use_style
from attnflow.fem import MeanFieldSolver, box_mesh

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="Limit shapes in the rescaled variable e^{-tV} x.")
parser.add_argument("--output", type=Path, default=Path(__file__).parent / "output" / "value")
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
args = parser.parse_args()
logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING)
log = logging.getLogger("demo_value_spectrum")

n_tokens, cells = (300, 16) if args.small else (600, 24)
t_long, t_fem = 8.0, 1.0
law = af.Gaussian([0.0, 0.0], [[0.25, 0.0], [0.0, 0.25]])
values = {"V = I": np.eye(2), "V = diag(1, 1/2)": np.diag([1.0, 0.5])}


def rescaled(V: np.ndarray, t: float, x: np.ndarray) -> np.ndarray:
    return x @ expm(-t * V).T


def clusters(z: np.ndarray, rel: float = 0.05) -> np.ndarray:
    """Cluster labels by single linkage at rel * diameter."""
    diam = np.ptp(z, axis=0).max()
    return fcluster(linkage(z, "single"), rel * diam, criterion="distance")


long_runs, fem_runs = {}, {}
for name, V in values.items():
    model = af.SelfAttention(2, beta=1.0, V=V, sphere=False)
    x0 = law.sample(n_tokens, 17)
    long_runs[name] = af.simulate(
        model, x0, t_long, dt=0.02, save_times=[0.0, t_fem, t_long], comm=comm
    )
    tag = "identity" if name == "V = I" else "diagonal"
    fem_runs[name] = MeanFieldSolver(model, box_mesh(2, 6.0, cells, comm), law, degree=1).solve(
        t_fem, energy=False, output_dir=args.output / f"fem_{tag}"
    )
# -

# ## Checks and figures

if comm.rank == 0:
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_style()

    fig, ax = plt.subplots(1, 3, figsize=figsize("page", 0.4))
    for i, (name, V) in enumerate(values.items()):
        z = rescaled(V, t_long, long_runs[name].x[-1])
        lab = clusters(z)
        # Clusters told apart by marker and grey level, not by hue alone.
        for k in np.unique(lab):
            ax[i].scatter(*z[lab == k].T, s=12, marker="osd^v<>ph*"[k % 10], color=f"C{k % 7}")
        ax[i].set(
            aspect="equal",
            title=rf"{name}: $z = e^{{-tV}}x$, $t$ = {t_long:g}",
            xlabel="$z_1$",
            ylabel="$z_2$",
        )
        fem, sol = fem_runs[name], long_runs[name]
        zf = rescaled(V, t_fem, fem.points)
        w1 = af.metrics.wasserstein(zf, fem.weights[-1], rescaled(V, t_fem, sol.x[1]), None).value
        log.info(
            "%s: %d clusters at t = %g; W1(FE, particles) at t = %g: %.3f",
            name,
            lab.max(),
            t_long,
            t_fem,
            w1,
        )
        assert w1 < 3.0 / np.sqrt(n_tokens), f"{name}: W1 = {w1:.3f}"
        assert np.all(np.abs(fem.mass + fem.outflow - fem.mass[0]) < 1e-12 * fem.mass[0])
        if i == 0:  # the cluster centres are the vertices of their convex hull
            centres = np.array([z[lab == k].mean(0) for k in np.unique(lab)])
            assert 3 <= len(centres) <= 12, len(centres)
            assert len(ConvexHull(centres).vertices) == len(centres), "not a polytope"
        else:  # the top component takes few values, the other stays spread
            lab1 = clusters(z[:, :1])
            spread = max(np.ptp(z[lab1 == k, 0]) for k in np.unique(lab1))
            assert lab1.max() <= 4 and np.ptp(z[:, 1]) > 10 * spread, (lab1.max(), spread)
            for k in np.unique(lab1):
                ax[i].axvline(z[lab1 == k, 0].mean(), c="gray", lw=0.5)
    name = "V = I"
    zf = rescaled(values[name], t_fem, fem_runs[name].points)
    dens = fem_runs[name].weights[-1] / fem_runs[name].point_weights
    cs = ax[2].tricontourf(*zf.T, dens, levels=20)
    ax[2].scatter(*rescaled(values[name], t_fem, long_runs[name].x[1]).T, s=0.8, c="w", alpha=0.6)
    ax[2].set(
        aspect="equal",
        xlim=(-2, 2),
        ylim=(-2, 2),
        xlabel="$z_1$",
        ylabel="$z_2$",
        title=f"{name}, $t$ = {t_fem:g}: FE, particles",
    )
    fig.colorbar(cs, ax=ax[2], shrink=0.8).set_label(r"FE density $\rho$ (in $x$)")
    save_figure(fig, out / "value_spectrum", args.format)
    for name, tag in (("V = I", "identity"), ("V = diag(1, 1/2)", "diagonal")):
        af.io.write_point_cloud_series(
            out, long_runs[name].t, long_runs[name].x, name=f"particles_{tag}"
        )
    log.info("wrote %s", out)
