# # A Gaussian stays Gaussian: exact solution, finite elements and particles in R^2
#
# In $\mathbb{R}^d$ with SA and $A = \beta K^\top Q$, a Gaussian $N(m, \Sigma)$ stays Gaussian
# and its moments solve
#
# $$ \dot m = V(m + \Sigma A m), \qquad
#    \dot\Sigma = V\Sigma A\Sigma + \Sigma A^\top \Sigma V^\top . $$
#
# With $K = -Q$ the covariance contracts. We integrate these ODEs exactly (to 1e-12), solve the
# continuity equation with DG1 finite elements on $[-4, 4]^2$ (outflow boundary), and run a
# particle ensemble, then compare mean, covariance and $W_2$ to the exact Gaussian.

# +
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from mpi4py import MPI
from scipy.integrate import solve_ivp

import attnflow as af
from attnflow.app.style import add_format_argument, figsize, save_figure, use_style
from attnflow.fem import MeanFieldSolver, box_mesh

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="Gaussian solution in R^2: exact, FE, particles.")
parser.add_argument("--output", type=Path, default=Path(__file__).parent / "output" / "gaussian")
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
args = parser.parse_args()
logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING)
log = logging.getLogger("demo_gaussian_euclidean")

beta, Q, K, V = 1.0, np.eye(2), -np.eye(2), np.eye(2)
A = beta * K.T @ Q
m0, S0 = np.array([0.5, 0.0]), np.array([[0.5, 0.1], [0.1, 0.3]])
t_final = 1.0
save_times = np.linspace(0.0, t_final, 6)
cells, n_tokens, runs = (20, 1000, 2) if args.small else (24, 4000, 4)


def moment_ode(t, y):
    m, S = y[:2], y[2:].reshape(2, 2)
    return np.concatenate([V @ (m + S @ A @ m), (V @ S @ A @ S + S @ A.T @ S @ V.T).ravel()])


exact = solve_ivp(
    moment_ode,
    [0, t_final],
    np.concatenate([m0, S0.ravel()]),
    t_eval=save_times,
    rtol=1e-12,
    atol=1e-12,
).y.T
model = af.SelfAttention(2, beta=beta, Q=Q, K=K, V=V, sphere=False)
law = af.Gaussian(m0, S0)
fem = MeanFieldSolver(model, box_mesh(2, 4.0, cells, comm), law, degree=1).solve(
    t_final, save_times, output_dir=args.output / "fem"
)
ens = af.ensemble(
    model, law, n_tokens, runs, t_final, dt=0.02, seed=5, save_times=save_times, comm=comm
)
# -

# ## Comparison with the exact moments

if comm.rank == 0:
    fem_m = np.array([af.metrics.moments(fem.points, w)[0] for w in fem.weights])
    fem_S = np.array([af.metrics.moments(fem.points, w)[1] for w in fem.weights])
    par_m = np.array([[af.metrics.moments(x)[0] for x in run] for run in ens.x])
    par_S = np.array([[af.metrics.moments(x)[1] for x in run] for run in ens.x])
    ex_m, ex_S = exact[:, :2], exact[:, 2:].reshape(-1, 2, 2)
    err_m = np.abs(fem_m - ex_m).max() / np.abs(ex_m).max()
    err_S = np.abs(fem_S - ex_S).max() / np.abs(ex_S).max()
    log.info("finite elements vs exact: mean %.2e, covariance %.2e (relative)", err_m, err_S)
    assert err_m < 0.02 and err_S < 0.02, (err_m, err_S)
    assert np.all(np.abs(fem.mass + fem.outflow - fem.mass[0]) < 1e-12 * fem.mass[0])
    assert fem.min_density.min() >= 0
    # Particles: the sample mean scatters like sqrt(tr S0 / N) at t = 0; the flow stretches
    # that by at most e^{|V| t}.
    scale = np.sqrt(np.trace(S0) / n_tokens) * np.exp(t_final)
    assert np.abs(par_m - ex_m).max() < 6 * scale, np.abs(par_m - ex_m).max() / scale

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_style()

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 3, figsize=figsize("page", 0.4))
    for i, lab in enumerate(["$m_1$", "$m_2$"]):
        ax[0].plot(save_times, ex_m[:, i], "k-", lw=1)
        ax[0].plot(save_times, fem_m[:, i], "o", label=f"{lab} FE")
        ax[0].errorbar(
            save_times,
            par_m[:, :, i].mean(0),
            yerr=par_m[:, :, i].std(0),
            fmt="x",
            capsize=3,
            label=f"{lab} particles",
        )
    ax[0].set(xlabel="time $t$", ylabel="mean $m(t)$", title="mean (lines: exact)")
    ax[0].legend(fontsize=6.5)
    for (i, j), lab in zip(
        [(0, 0), (1, 1), (0, 1)],
        [r"$\Sigma_{11}$", r"$\Sigma_{22}$", r"$\Sigma_{12}$"],
        strict=True,
    ):
        ax[1].plot(save_times, ex_S[:, i, j], "k-", lw=1)
        ax[1].plot(save_times, fem_S[:, i, j], "o", label=f"{lab} FE")
        ax[1].errorbar(
            save_times,
            par_S[:, :, i, j].mean(0),
            yerr=par_S[:, :, i, j].std(0),
            fmt="x",
            capsize=3,
            label=f"{lab} particles",
        )
    ax[1].set(
        xlabel="time $t$", ylabel=r"covariance $\Sigma(t)$", title="covariance (lines: exact)"
    )
    ax[1].legend(fontsize=6.5)
    w = fem.weights[-1]
    cs = ax[2].tricontourf(fem.points[:, 0], fem.points[:, 1], w / fem.point_weights, levels=20)
    ax[2].scatter(*ens.x[0, -1].T, s=0.4, c="w", alpha=0.35, label="particles")
    ax[2].set(
        aspect="equal",
        xlim=(-1, 3),
        ylim=(-2, 2),
        xlabel="$x_1$",
        ylabel="$x_2$",
        title=f"$t$ = {t_final:g}: FE density, particles",
    )
    fig.colorbar(cs, ax=ax[2], shrink=0.8).set_label(r"density $\rho$")
    fig.suptitle(r"SA in $\mathbb{R}^2$, $K = -Q$: a contracting Gaussian")
    save_figure(fig, out / "gaussian", args.format)
    log.info("wrote %s", out)
