# # Clustering of tokens on the circle: the mean-field PDE and the particles, side by side
#
# Tokens $x \in S^1$ follow self-attention (SA, $Q = K = V = I$, $\beta = 9$). Their density
# $\rho(t, x)$ solves the continuity equation
#
# $$ \partial_t \rho + \operatorname{div}(\rho X[\rho]) = 0, \qquad
#    X[\rho](x) = P_x \frac{\int e^{\beta\langle x, y\rangle} y\, \rho(y)\,dy}
#                          {\int e^{\beta\langle x, y\rangle} \rho(y)\,dy}, $$
#
# which attnflow solves with discontinuous Galerkin finite elements (DG1, positivity limiter,
# PETSc SSP Runge–Kutta). An ensemble of particle systems ($N$ tokens each, drawn from the same
# initial law) is the Monte Carlo reference.
#
# The uniform density is stationary; mode $n$ of a perturbation grows like $e^{\lambda_n t}$,
#
# $$ \lambda_n = \frac{n^2 I_n(\beta)}{\beta I_0(\beta)}, $$
#
# fastest at $n^\star \approx \sqrt{2\beta}$: starting from the uniform density perturbed by
# equal small amounts of the modes $2..6$, about $n^\star$ clusters form first, then merge on much
# longer (metastable) time scales while the energy
# $E = \frac{1}{2\beta}\iint e^{\beta\langle x, y\rangle}\,d\rho\,d\rho$ grows. We compare the
# two solvers with the Wasserstein distance $W_1$ on the circle (mean ± sd over the runs) and
# count clusters with one criterion for both (`attnflow.metrics.circle_clusters`).
#
# Run: `python demos/demo_circle_clustering.py [--small] [--animate] [--output DIR]`, also
# under `mpiexec -n 2` (the mesh and the particle runs are distributed).

# +
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from mpi4py import MPI
from scipy.special import ive

import attnflow as af
from attnflow.app.style import add_format_argument, figsize, save_figure, use_style
from attnflow.fem import MeanFieldSolver, circle_mesh

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="Clustering on S^1: finite elements vs particles.")
parser.add_argument("--output", type=Path, default=Path(__file__).parent / "output" / "circle")
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
parser.add_argument("--beta", type=float, default=9.0)
parser.add_argument("--animate", action="store_true", help="also write an animated GIF")
args = parser.parse_args()
logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING)
log = logging.getLogger("demo_circle_clustering")

beta = args.beta
if args.small:
    n_cells, n_tokens, n_runs, t_final = 160, 1000, 2, 16.0
else:
    n_cells, n_tokens, n_runs, t_final = 400, 3000, 4, 30.0
save_times = np.linspace(0.0, t_final, int(t_final) + 1)
out = args.output
# -

# ## Linear theory and the initial law

modes = np.arange(1, 40)
lam = modes**2 * ive(modes, beta) / (beta * ive(0, beta))
n_star = int(modes[np.argmax(lam)])
# Equal amplitudes on modes 2..6, well above the particles' sampling noise (~ sqrt(2/N) per
# mode), so that both solvers follow the same deterministic instability.
eps = 0.15
pert_modes = np.arange(2, 7)
phases = np.random.default_rng(7).uniform(0, 2 * np.pi, pert_modes.size)


def rho0(x: np.ndarray) -> np.ndarray:
    """(1 + eps sum_n cos(n theta + phi_n)) / (2 pi), n = 2..6: a probability density."""
    th = np.arctan2(x[:, 1], x[:, 0])
    pert = sum(np.cos(n * th + ph) for n, ph in zip(pert_modes, phases, strict=True))
    return (1 + eps * pert) / (2 * np.pi)


law = af.DensityLaw(rho0, 2, bound=(1 + pert_modes.size * eps) / (2 * np.pi))
model = af.SelfAttention(2, beta=beta)

# ## The two solvers

solver = MeanFieldSolver(model, circle_mesh(n_cells, comm), rho0, degree=1)
fem = solver.solve(t_final, save_times, output_dir=out / "fem")
ens = af.ensemble(
    model, law, n_tokens, n_runs, t_final, dt=0.1, seed=2026, save_times=save_times, comm=comm
)

# ## Comparison (rank 0; all ranks hold the gathered data)

if comm.rank == 0:
    cmp = af.compare.compare(
        fem,
        ens,
        model,
        geometry="circle",
        histogram=lambda x, w: af.metrics.circle_histogram(x, w, n_cells),
        clusters=af.metrics.circle_clusters,
    )
    w1, counts_fem, counts_par = cmp.w1, cmp.clusters_fem, cmp.clusters_particles
    energy_par = cmp.energy_particles
    l1_mean, l1_sd = cmp.mean_sd(cmp.l1)

    def first_plateau(c: np.ndarray) -> int:
        """The count once it has held for three consecutive saves after the first split."""
        for k in range(len(c) - 2):
            if c[k] > 1 and c[k] == c[k + 1] == c[k + 2]:
                return int(c[k])
        return int(c[-1])

    first_fem = first_plateau(counts_fem)
    first_par = np.array([first_plateau(c) for c in counts_par])

    # ## Sanity checks
    drift = np.max(np.abs(fem.mass / fem.mass[0] - 1))
    assert drift < 1e-12, f"finite element mass drift {drift:.1e}"
    assert fem.min_density.min() >= 0, "negative density"
    assert np.all(np.diff(fem.energy) >= -1e-10), "finite element energy decreased"
    assert np.max(np.abs(np.linalg.norm(ens.x, axis=-1) - 1)) < 1e-12, "tokens left the circle"
    assert abs(first_fem - n_star) <= 1, f"FE formed {first_fem} clusters, n* = {n_star}"
    assert np.all(np.abs(first_par - n_star) <= 1), f"particles formed {first_par} clusters"
    # Agreement: at t = 0 the particles differ from the density by sampling, W1 ~ N^-1/2; the
    # instability amplifies that difference, but the clusters form at the same places.
    assert w1[:, 0].mean() < 3 / np.sqrt(n_tokens), f"W1 at t=0: {w1[:, 0].mean():.3f}"
    assert w1.mean(0).max() < 10 / np.sqrt(n_tokens), f"W1 up to {w1.mean(0).max():.3f}"
    log.info("n* = %d; first clusters: FE %d, particles %s", n_star, first_fem, first_par)
    log.info(
        "W1(FE, particles): t=0 %.4f, t=%g %.4f ± %.4f",
        w1[:, 0].mean(),
        t_final,
        w1[:, -1].mean(),
        w1[:, -1].std(),
    )
    log.info(
        "L1(FE cell masses, particle histogram on the mesh): t=0 %.3f ± %.3f, t=%g %.3f",
        l1_mean[0],
        l1_sd[0],
        t_final,
        l1_mean[-1],
    )

    # ## Figures and ParaView files
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_style()

    out.mkdir(parents=True, exist_ok=True)
    th_fem = np.arctan2(fem.points[:, 1], fem.points[:, 0])
    bins = np.linspace(-np.pi, np.pi, 121)
    dens_fem = np.stack(
        [np.histogram(th_fem, bins=bins, weights=w, density=True)[0] for w in fem.weights]
    )
    th_par = np.arctan2(ens.x[0, :, :, 1], ens.x[0, :, :, 0])
    dens_par = np.stack([np.histogram(t, bins=bins, density=True)[0] for t in th_par])
    vmax = np.quantile(dens_fem, 0.995)
    fig, ax = plt.subplots(2, 3, figsize=figsize("page", 0.62))
    for a, dens, title in (
        (ax[0, 0], dens_fem, f"finite elements (DG1, {n_cells} cells)"),
        (ax[0, 1], dens_par, f"particles, run 0 (N = {n_tokens})"),
    ):
        im = a.imshow(
            dens.T,
            origin="lower",
            aspect="auto",
            vmax=vmax,
            extent=[0, t_final, -np.pi, np.pi],
        )
        a.set(xlabel="time $t$", ylabel=r"angle $\theta$", title=title)
        fig.colorbar(im, ax=a).set_label(r"density $\rho(t, \theta)$")
    k_show = min(len(save_times) - 1, int(np.argmax(counts_fem > 1)))  # clusters forming
    ax[0, 2].plot(0.5 * (bins[1:] + bins[:-1]), dens_fem[k_show], label="finite elements")
    ax[0, 2].hist(th_par[k_show], bins=bins, density=True, alpha=0.5, label="particles")
    ax[0, 2].set(
        xlabel=r"angle $\theta$",
        ylabel=r"density $\rho$",
        title=f"density at $t$ = {save_times[k_show]:g}",
    )
    ax[0, 2].legend()
    ax[1, 0].step(save_times, counts_fem, where="post", lw=2, c="k", label="finite elements")
    for r, c in enumerate(counts_par):
        lab = "particles (each run)" if r == 0 else None
        ax[1, 0].step(save_times, c, where="post", alpha=0.6, label=lab)
    ax[1, 0].axhline(n_star, ls="--", c="gray", label=rf"$n^\star = {n_star}$")
    ax[1, 0].set(xlabel="time $t$", ylabel="number of clusters", title="cluster count")
    ax[1, 0].legend()
    ax[1, 1].errorbar(save_times, w1.mean(0), yerr=w1.std(0), capsize=2)
    ax[1, 1].set(
        xlabel="time $t$",
        ylabel=r"$W_1$ (radians)",
        title=rf"$W_1$(FE, particles), {n_runs} runs",
    )
    ax[1, 2].plot(save_times, fem.energy, c="k", label="finite elements")
    ax[1, 2].errorbar(
        save_times, energy_par.mean(0), yerr=energy_par.std(0), capsize=2, label="particles"
    )
    ax[1, 2].set(xlabel="time $t$", ylabel=r"$\log E$", title="interaction energy")
    ax[1, 2].legend()
    fig.suptitle(rf"SA on $S^1$, $\beta = {beta:g}$: mean-field PDE vs particles")
    save_figure(fig, out / "circle_clustering", args.format)
    np.savez_compressed(
        out / "comparison.npz",
        t=save_times,
        w1=w1,
        counts_fem=counts_fem,
        counts_par=counts_par,
        fem_energy=fem.energy,
        par_energy=energy_par,
    )
    # Particles (run 0) as a point-cloud time series for ParaView, next to fem/density.xdmf.
    af.io.write_point_cloud_series(out, save_times, ens.x[0])

    if args.animate:
        from matplotlib.animation import FuncAnimation, PillowWriter

        fig2, ax2 = plt.subplots(figsize=figsize("column", 0.8))
        centres = 0.5 * (bins[1:] + bins[:-1])
        (line,) = ax2.plot(centres, dens_fem[0], c="k", label="finite elements")
        bars = ax2.bar(centres, dens_par[0], width=bins[1] - bins[0], alpha=0.4, label="particles")
        ax2.set(
            ylim=(0, 1.05 * max(dens_fem.max(), dens_par.max())),
            xlabel=r"angle $\theta$",
            ylabel=r"density $\rho$",
        )
        ax2.legend(loc="upper right")

        def frame(k):
            line.set_ydata(dens_fem[k])
            for b, h in zip(bars, dens_par[k], strict=True):
                b.set_height(h)
            ax2.set_title(f"t = {save_times[k]:.0f}")
            return (line, *bars)

        FuncAnimation(fig2, frame, frames=len(save_times)).save(
            out / "circle.gif", writer=PillowWriter(fps=6)
        )
    log.info("wrote %s", out)
