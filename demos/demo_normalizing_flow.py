# # A normalizing flow as a continuity equation: ReLU controls, fitted on the mesh
#
# The velocity $v(x, \theta) = w\,(a^\top x + b)_+$ with controls $\theta = (w, a, b)$
# constant on intervals of length $\tau$ transports a base density $\rho_B = N(0, I)$ towards a
# target $\rho_*$ (Álvarez-López, Geshkovski, Ruiz-Balet, arXiv:2412.19366): the density solves
#
# $$ \partial_t \rho + \nabla\cdot(\rho\, v(\cdot, \theta(t))) = 0 . $$
#
# On one interval the flow is explicit: with $s = a^\top x + b$ and $\lambda = a^\top w$, a
# point with $s > 0$ moves to $x + w\, s\,(e^{\lambda\tau} - 1)/\lambda$ and the Jacobian is
# $e^{\lambda\tau}$ there; the others stay. Hence the relative entropy of the pushforward of
# the current finite element density $\rho_h$ is a quadrature over its own cloud,
#
# $$ \mathrm{KL}(T_\#\rho_h \,\|\, \rho_*) = \int \rho_h(y)\,\big[\log\rho_h(y) - \log J(y)
#    - \log\rho_*(T y)\big]\,dy , $$
#
# which `attnflow.studies.flows.fit_controls` minimises over $\theta$ (scipy Nelder–Mead from
# a fixed set of starts, shears $a \perp w$ included); the best optima are then transported by
# the finite element solver (DG1 upwind, outflow box) and the one with the smallest
# $\mathrm{KL}(\rho_h \| \rho_*)$ **computed on the mesh** is kept. The same piecewise-constant
# controls (an `attnflow.Piecewise` of `attnflow.Perceptron`s) then push particles.

# +
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from mpi4py import MPI

import attnflow as af
from attnflow.app.style import add_format_argument, figsize, save_figure, use_style
from attnflow.fem import MeanFieldSolver, box_mesh
from attnflow.studies.flows import fit_controls

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="Normalizing flow with ReLU controls: FE + particles.")
parser.add_argument(
    "--output", type=Path, default=Path(__file__).parent / "output" / "normalizing_flow"
)
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
args = parser.parse_args()
logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING)
log = logging.getLogger("demo_normalizing_flow")

L = 5.0
cells, n_switches, n_tokens = (16, 3, 1000) if args.small else (24, 6, 2000)
base = af.Gaussian([0.0, 0.0], np.eye(2))
s2 = 0.3
centres = np.array([[-1.5, 0.0], [1.5, 0.0]])
target = af.Mixture([af.Gaussian(c, s2 * np.eye(2)) for c in centres], [0.5, 0.5])


def target_pdf(x: np.ndarray) -> np.ndarray:
    """The two-Gaussian target density (numpy, fast: the search evaluates it often)."""
    r = ((x[:, None, :] - centres[None]) ** 2).sum(axis=2)
    return 0.5 * np.exp(-r / (2 * s2)).sum(axis=1) / (2 * np.pi * s2)


fit = fit_controls(base, target_pdf, n_switches, cells=cells, length=L, comm=comm)
# -

# ## The controls and the relative entropy after each switch

# +
for k, c in enumerate(fit.controls):
    log.info(
        "switch %d: w = (%.3f, %.3f), a = (%.3f, %.3f), b = %.3f%s, KL %.4f (search %.4f)",
        k + 1, *c.w, *c.a, c.b, " (shear)" if c.is_shear else "", fit.kl[k + 1], fit.kl_search[k],
    )  # fmt: skip
log.info("KL on the mesh: %s; cost %s", np.round(fit.kl, 4), fit.stats)
assert np.all(np.diff(fit.kl) < 0), fit.kl
for s in fit.solutions:
    assert s.min_density.min() >= 0
    assert np.allclose(s.mass + s.outflow, s.mass[0], rtol=1e-12)

# The same controls on particles, saved at every switch; and one FE solve of the whole
# piecewise flow for ParaView (density.xdmf / density.bp), with the particles beside it.
times = fit.times
x0 = base.sample(n_tokens, 1)
ys = target.sample(n_tokens, 2)
parts = af.simulate(fit.dynamics, x0, float(times[-1]), dt=0.01, save_times=times)
w1 = [af.metrics.wasserstein(x, None, ys, None).value for x in parts.x]
log.info("W1(particles, target sample) after each switch: %s", np.round(w1, 3))
assert w1[-1] < 0.8 * w1[0], w1
whole = MeanFieldSolver(fit.dynamics, box_mesh(2, L, cells, comm), base, degree=1).solve(
    float(times[-1]), times, output_dir=args.output / "fem", energy=False
)
kl_whole = af.metrics.relative_entropy(whole, target_pdf).lumped
log.info("one solve of the piecewise flow: KL %.4f (fit: %.4f)", kl_whole, fit.kl[-1])
# Same mesh and scheme; only the CFL steps differ (one per interval in the fit, the largest
# speed bound here): third-order SSP time errors.
assert abs(kl_whole - fit.kl[-1]) < 1e-3 * fit.kl[-1], (kl_whole, fit.kl[-1])
if comm.rank == 0:
    af.io.write_point_cloud_series(args.output / "particles", times, parts.x)
# -

# ## Figures: the density after each switch with the particles, and KL against switches

if comm.rank == 0:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_style()

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    n_pan = len(times) + 1
    n_col = (n_pan + 2) // 2
    fig, axs = plt.subplots(2, n_col, figsize=figsize("page", 0.72))
    ax = axs.ravel()
    for extra in ax[n_pan + 1 :]:
        extra.set_axis_off()
    pts = whole.points
    g = np.linspace(-3.5, 3.5, 150)
    X, Y = np.meshgrid(g, g)
    dens = target_pdf(np.stack([X.ravel(), Y.ravel()], 1)).reshape(X.shape)
    rhos = [np.maximum(whole.weights[k], 0) / whole.point_weights for k in range(len(times))]
    levels = np.linspace(0.0, max(dens.max(), *(r.max() for r in rhos)), 21)  # one colour scale
    for k, rho in enumerate(rhos):
        cs = ax[k].tricontourf(pts[:, 0], pts[:, 1], rho, levels=levels)
        ax[k].scatter(*parts.x[k][:400].T, s=0.6, c="w", alpha=0.6)
        ax[k].set(aspect="equal", xlim=(-3.5, 3.5), ylim=(-3.5, 3.5))
        ax[k].set_title(f"after {k} switch{'es' if k > 1 else ''}" if k else "base $N(0, I)$")
        ax[k].set(xlabel="$x_1$", ylabel="$x_2$")
    ax[n_pan - 1].contourf(X, Y, dens, levels=levels)
    ax[n_pan - 1].scatter(*ys[:400].T, s=0.6, c="w", alpha=0.6)
    ax[n_pan - 1].set(aspect="equal", title="target", xlabel="$x_1$", ylabel="$x_2$")
    bar = fig.colorbar(cs, ax=ax[:n_pan], shrink=0.8)
    bar.set_ticks(np.linspace(0.0, levels[-1], 5))
    bar.ax.yaxis.set_major_formatter("{x:.2f}")
    bar.set_label(r"density $\rho$ (white: particles)")
    ax[n_pan].semilogy(np.arange(len(fit.kl)), fit.kl, "o-", label="KL(FE | target), mesh")
    ax[n_pan].semilogy(np.arange(1, len(fit.kl)), fit.kl_search, "x", label="search (exact map)")
    ax[n_pan].semilogy(np.arange(len(w1)), w1, "s--", label="$W_1$(particles, target)")
    ax[n_pan].set(xlabel="number of switches", ylabel="KL, $W_1$", title="distance to the target")
    ax[n_pan].legend(fontsize=6.5, loc="lower left")
    save_figure(fig, out / "normalizing_flow", args.format)
    log.info("wrote %s", out)
