# # Attention plus a perceptron on S^2: a gradient flow that localises; two heads
#
# On the sphere, unnormalised attention (USA, here rescaled by $e^{-\beta}$) with
# $Q = K = V = I$ is the Wasserstein gradient ascent of the interaction energy
# $E(\mu) = \frac{1}{2\beta}\iint e^{\beta\langle x, y\rangle - \beta}\,d\mu\,d\mu$: its velocity
# is $P_x \nabla_x \frac{\delta E}{\delta\mu}$. A perceptron whose output weights are multiples of
# its input weights, $W_{:,k} = c_k A_k$, is the gradient of
#
# $$ \Phi(x) = \sum_k c_k\, S(A_k\cdot x + b_k), \qquad S(z) = z_+^2/2 \ \ (\mathrm{ReLU}), $$
#
# so the sum is the gradient ascent of $G(\mu) = E(\mu) + \int\Phi\,d\mu$:
# $\frac{d}{dt}G = \int |P_x\nabla(\frac{\delta E}{\delta\mu} + \Phi)|^2\,d\mu \ge 0$
# (with softmax attention the per-token factor $1/Z$ breaks this). The perceptron block
# localises the critical points (arXiv:2601.21366): the finite element density concentrates on
# a small set, reported as the fraction of the sphere holding 90% of the mass.
#
# Second part: two heads with different $(Q, K, V, \beta)$ (`af.MultiHead`), finite elements
# against particles.

# +
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
from mpi4py import MPI

import attnflow as af
from attnflow.app.style import (
    add_format_argument,
    cell_to_vertex,
    figsize,
    save_figure,
    sphere_scatter,
    sphere_views,
    use_style,
)
from attnflow.fem import DenseKernel, MeanFieldSolver, icosphere, sphere_mesh

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="Attention + perceptron on S^2; two heads.")
parser.add_argument(
    "--output", type=Path, default=Path(__file__).parent / "output" / "perceptron_sphere"
)
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
args = parser.parse_args()
logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING)
log = logging.getLogger("demo_perceptron_sphere")

level, n_tokens, t_final = (2, 400, 16.0) if args.small else (3, 2000, 20.0)
saves = np.linspace(0.0, t_final, 9)
att = af.SelfAttention(3, beta=4.0, normalized=False, rescale_usa=True)
perc = af.Perceptron.gradient(
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], [0.0, -0.5], [1.0, 2.0], sphere=True
)
dyn = att + perc
law = af.UniformSphere(3)


def G(cloud: af.Cloud) -> float:
    """``E + int Phi`` of a cloud."""
    return math.exp(att.log_energy(cloud)) + float(cloud.weights @ perc.potential(cloud.points))


def support_fraction(sol, k: int, mass_fraction: float = 0.9) -> float:
    """Fraction of the sphere covered by the densest cells holding ``mass_fraction``."""
    area = sol.point_weights.reshape(-1, sol.points_per_cell).sum(axis=1)
    m = np.maximum(sol.weights[k], 0.0).reshape(-1, sol.points_per_cell).sum(axis=1)
    order = np.argsort(-m / area)
    n = int(np.searchsorted(np.cumsum(m[order]), mass_fraction * m.sum())) + 1
    return float(area[order[:n]].sum() / area.sum())


mesh = sphere_mesh(level, comm)
fem = MeanFieldSolver(dyn, mesh, law, degree=0, kernel=DenseKernel()).solve(
    t_final, saves, output_dir=args.output / "fem", energy=False
)
parts = af.simulate(dyn, law.sample(n_tokens, 0), t_final, dt=0.05, save_times=saves, comm=comm)
g_fem = np.array([G(fem.cloud(k)) for k in range(saves.size)])
g_par = np.array([G(af.Cloud(x)) for x in parts.x])
supp = np.array([support_fraction(fem, k) for k in range(saves.size)])
log.info("G = E + int Phi, FE: %s", np.round(g_fem, 4))
log.info("G = E + int Phi, particles: %s", np.round(g_par, 4))
log.info("fraction of S^2 holding 90%% of the FE mass: %s", np.round(supp, 3))
assert np.all(np.diff(g_fem) > 0) and np.all(np.diff(g_par) > 0)
assert fem.min_density.min() >= 0 and abs(fem.mass[-1] - fem.mass[0]) < 1e-12 * fem.mass[0]
assert supp[0] > 0.85 and supp[-1] < 0.3, supp
# -

# ## Two heads with different (Q, K, V, beta), finite elements against particles

# +
rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
Q2, V2 = np.diag([1.0, 1.0, 0.2]), rot + 0.3 * np.eye(3)
heads = af.MultiHead(
    [af.SelfAttention(3, beta=6.0), af.SelfAttention(3, beta=1.0, Q=Q2, K=np.eye(3), V=V2)]
)
vmf = af.VonMisesFisher([0.0, 0.6, 0.8], 1.5)
t_heads = 2.0
saves_h = np.linspace(0.0, t_heads, 5)
fem_h = MeanFieldSolver(heads, mesh, vmf, degree=0, kernel=DenseKernel()).solve(
    t_heads, saves_h, energy=False
)
par_h = af.simulate(heads, vmf.sample(n_tokens, 1), t_heads, dt=0.05, save_times=saves_h, comm=comm)
w1 = np.array(
    [
        af.metrics.wasserstein(fem_h.points, w, x, None, geometry="sphere").value
        for w, x in zip(fem_h.weights, par_h.x, strict=True)
    ]
)
moved = af.metrics.wasserstein(par_h.x[0], None, par_h.x[-1], None, geometry="sphere").value
log.info("two heads: W1(FE, particles) %s; the particles moved W1 = %.3f", np.round(w1, 3), moved)
assert w1[-1] < 0.5 * moved, (w1, moved)
# -

# ## Figures

if comm.rank == 0:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_style()

    out = args.output
    out.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplot_mosaic(
        [["G", "G", "area", "area", "w1", "w1"], ["front"] * 3 + ["back"] * 3],
        figsize=figsize("page", 0.8),
        height_ratios=[1, 1.3],
    )
    ax["G"].plot(saves, g_fem, "o-", label="FE")
    ax["G"].plot(saves, g_par, "x--", label="particles")
    ax["G"].set(xlabel="time $t$", ylabel=r"$G = E + \int\Phi\,d\rho$", title="non-decreasing")
    ax["G"].legend()
    ax["area"].plot(saves, supp, "o-")
    ax["area"].set(
        xlabel="time $t$", ylabel="fraction of $S^2$", title="area holding 90% of FE mass"
    )
    ax["w1"].plot(saves_h, w1, "o-")
    ax["w1"].set(xlabel="time $t$", ylabel=r"$W_1$(FE, particles)", title="two heads on $S^2$")
    # The final FE density on two opposite views (level-`level` cells averaged to the
    # vertices, display mesh refined), the particles on top as black dots.
    v, f = icosphere(level)
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    h = af.metrics.sphere_histogram(fem.points, np.maximum(fem.weights[-1], 0), level)
    dens = np.log10(np.maximum(cell_to_vertex(v, f, h / area * area.sum() / h.sum()), 1e-2))
    views = [ax["front"], ax["back"]]
    m = sphere_views(
        views,
        v,
        f,
        dens,
        refine=max(0, 5 - level),
        vmin=-2.0,
        vmax=float(dens.max()),
        titles=[f"$t$ = {t_final:g}: FE density, particles (front)", "back (opposite)"],
    )
    sphere_scatter(views, parts.x[-1], s=1.0, c="white", alpha=0.8)
    bar = fig.colorbar(m, ax=views, shrink=0.9)
    bar.set_label(r"$\log_{10}(\rho / \bar\rho)$")
    save_figure(fig, out / "perceptron_sphere", args.format)
    log.info("wrote %s", out)
