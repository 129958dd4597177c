# # The low-temperature regime: concentration, cluster counts, metastability
#
# As $\beta \to \infty$ the softmax becomes a hardmax and the token density collapses into
# near-Dirac clusters. This demo runs the three low-temperature studies of
# `attnflow.studies.low_temperature` over sweeps of $\beta$.
#
# **1. Concentration onto the zero-temperature limit** (Alcalde, Bungert, Riedl, Roith). In
# $\mathbb{R}^2$ with the centred field $X = V(m_\beta(x) - x)$, $Q = K = V = I$ and
# $\mu_0$ uniform on the unit disc, every token's zero-temperature leader is
# $T(x) = \arg\max_{|y| \le 1}\langle x, y\rangle = x/|x|$, so the hardmax flow is
# $x(t) = T(x) + e^{-t}(x - T(x))$ and $T_\#\mu_0$ is the uniform law on the unit circle. The
# theorem bounds
# $$W(\mu^\beta_t, T_\#\mu_0) \lesssim \sqrt{\log(\beta+1)/\beta}\; e^{Ct} + e^{-ct},$$
# i.e. the closest approach happens at $t \sim \log\beta$. The finite-$\beta$ flow stays
# rotation invariant, and $W_2$ between rotation-invariant laws is the $W_2$ of their radial
# laws: a 1-D mean-field equation with a Bessel kernel, solved on a grid geometric in $1-r$,
# gives the distances exactly at every $\beta$ up to $10^4$; particles (the same kernel engine)
# and finite elements check it.
#
# **2. Cluster counts on $S^1$**: uniform tokens first collapse into about
# $n^* \approx \sqrt{2\beta}$ clusters (the most unstable Fourier mode), counted with one gap
# criterion (gap $> 1/\sqrt\beta$).
#
# **3. The energy staircase** (Geshkovski, Koubbi, Polyanskiy, Rigollet): a few tokens on $S^1$
# at spacings of order $\log\beta/\sqrt\beta$ merge one pair at a time after exponentially long
# plateaus; in the rescaled time $s = \log(1+t)/\log(1+T_{\rm ref})$ the staircases of
# $\beta = 500 \ldots 4000$ coincide.

# +
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
from mpi4py import MPI

import attnflow as af
from attnflow.app.style import add_format_argument, figsize, save_figure, use_style
from attnflow.fem import DenseKernel, MeanFieldSolver, box_mesh
from attnflow.studies.low_temperature import (
    cluster_count_sweep,
    concentration_rate,
    concentration_study,
    energy_staircase,
    radial_mean_field,
)

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="Low-temperature studies over sweeps of beta.")
parser.add_argument(
    "--output", type=Path, default=Path(__file__).parent / "output" / "low_temperature"
)
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
args = parser.parse_args()
logging.basicConfig(
    level=logging.INFO if comm.rank == 0 else logging.WARNING,
    format="%(relativeCreated)8.0f ms %(name)s: %(message)s",
)
log = logging.getLogger("demo_low_temperature")
small = args.small
# -

# ## 1. Concentration: distance to $T_\#\mu_0$ against $\beta$ and $t$

# +
betas = [1.0, 10.0, 100.0, 1e3, 1e4]
conc = concentration_study(
    betas,
    t_final=14.0,
    n_times=57 if small else 113,
    n_radial=160 if small else 300,
    n_particles=200 if small else 800,
    dt=0.1 if small else 0.05,
    seed=11,
    comm=comm,
)
if comm.rank == 0:
    for b, f, tf in zip(conc.betas, conc.floor, conc.t_floor, strict=True):
        log.info(
            "beta=%6g: closest approach W2=%.2e at t=%.2f (log beta=%.2f)", b, f, tf, math.log(b)
        )
    log.info(
        "fitted: floor ~ beta^%.2f (rate sqrt(log(beta+1)/beta): slope %.2f); "
        "t_floor ~ %.2f log beta",
        conc.floor_slope,
        conc.rate_slope,
        conc.time_slope,
    )
# -

# Finite elements on a box (DG1, dense assembled kernel; in $\mathbb{R}^2$ the scores peak at
# the box boundary, not at the node, and rows that underflow are recomputed by the engine) at
# $\beta = 10$, where the mesh resolves the boundary layer of width $1/\beta$: density
# snapshots in ParaView, and the radial distance to $T_\#\mu_0$ against the exact radial
# mean field (the $W_2$ distance itself when the density is rotation invariant).

# +
beta_fem = 10.0
fem_times = [0.0, 0.5, 1.0, 2.0]
model_fem = af.SelfAttention(2, beta=beta_fem, sphere=False, centered=True)
fem = MeanFieldSolver(
    model_fem,
    box_mesh(2, 1.2, 16 if small else 32, comm),
    af.UniformBall(2),
    degree=1,
    kernel=DenseKernel(),
).solve(fem_times[-1], fem_times, output_dir=args.output / "fem_disc")
radius = np.linalg.norm(fem.points, axis=1)
fem_dist = np.sqrt(((1.0 - radius) ** 2) @ fem.weights.T / fem.weights.sum(axis=1))
exact = radial_mean_field(beta_fem, fem_times).distance_to_limit()
if comm.rank == 0:
    for t, a, b in zip(fem_times, fem_dist, exact, strict=True):
        log.info(
            "FE beta=10, t=%.1f: radial W2 to the circle %.4f (exact mean field %.4f)", t, a, b
        )
# -

# ## 2. Cluster counts on $S^1$ against $\beta$

# +
count_betas = [10.0, 30.0, 100.0, 300.0] if small else [10.0, 30.0, 100.0, 300.0, 1000.0]
clusters = cluster_count_sweep(
    count_betas, n_tokens=512 if small else 1024, n_runs=2 if small else 4, seed=5, comm=comm
)
if comm.rank == 0:
    for b, m, s, ns in zip(
        clusters.betas, clusters.mean, clusters.sd, clusters.n_star, strict=True
    ):
        log.info("beta=%6g: %.1f +- %.1f clusters, n* = %d", b, m, s, ns)
    log.info("cluster count ~ beta^%.2f (sqrt(2 beta) predicts 0.5)", clusters.exponent)
# -

# ## 3. The energy staircase

# +
stairs = energy_staircase((500, 1000, 2000, 4000), n_save=121 if small else 251)
if comm.rank == 0:
    for k, b in enumerate(stairs.betas):
        log.info("beta=%g: merges at s = %s", b, np.round(stairs.rescaled_merge_times[k], 3))
# -

# ## Checks and figures

if comm.rank == 0:
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    # Concentration: within the proven rate, faster than it, closest approach at t ~ log beta.
    assert np.all(conc.floor[1:] < concentration_rate(conc.betas[1:]))
    assert conc.floor_slope < conc.rate_slope
    assert 0.7 < conc.time_slope < 1.3
    assert np.all(np.isfinite(conc.particles_to_limit))
    # Finite elements: mass, positivity, and the radial distance near the exact one early on.
    assert np.all(np.abs(fem.mass + fem.outflow - fem.mass[0]) < 1e-12)
    assert np.all(fem.min_density >= 0)
    # (later the inner mass collapses into a point at the origin, which a coarse mesh smears)
    early = np.asarray(fem_times) <= 1.0
    assert np.all(np.abs(fem_dist - exact)[early] < 0.03), (fem_dist, exact)
    # Cluster counts grow like sqrt(beta), within a factor 2 of n*.
    assert 0.3 < clusters.exponent < 0.7
    assert np.all(clusters.mean < 2 * clusters.n_star) and np.all(
        clusters.mean > clusters.n_star / 2
    )
    # Staircase: energy non-decreasing, clusters merge one by one.
    assert np.all(np.diff(stairs.log_energy, axis=1) > -1e-9)
    assert np.all(np.diff(stairs.n_clusters, axis=1) >= -1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_style()

    fig, ax = plt.subplots(2, 2, figsize=figsize("page", 0.85))
    a = ax[0, 0]
    for k, b in enumerate(conc.betas):
        (line,) = a.semilogy(conc.t, conc.to_limit[k], label=rf"$\beta$ = {b:g}")
        if conc.particles_to_limit is not None:
            a.semilogy(conc.t, conc.particles_to_limit[k], ":", color=line.get_color())
    a.semilogy(conc.t, conc.zero_temperature, "k--", label=r"$\beta = \infty$ ($e^{-t}/\sqrt{6}$)")
    a.set(
        xlabel="time $t$",
        ylabel=r"$W_2(\mu_t, T_\#\mu_0)$",
        ylim=(5e-4, 1.5),
        title="distance to the $\\beta=\\infty$ limit (dotted: particles)",
    )
    a.legend(fontsize=6.5)
    a = ax[0, 1]
    a.loglog(conc.betas, conc.floor, "o-", label=rf"$\min_t W_2$ (slope {conc.floor_slope:.2f})")
    a.loglog(conc.betas, conc.rate, "k--", label=r"$\sqrt{\log(\beta+1)/\beta}$")
    a.set(
        xlabel=r"inverse temperature $\beta$",
        ylabel=r"closest distance $\min\, W_2$ over $t$",
        title=r"closest approach vs $\beta$",
    )
    a2 = a.twinx()
    a2.semilogx(
        conc.betas,
        conc.t_floor,
        "s:",
        color="C1",
        label=f"time of closest approach (slope {conc.time_slope:.2f})",
    )
    a2.semilogx(conc.betas, np.log(conc.betas), "-", color="C1", alpha=0.4, label=r"$\log\beta$")
    a2.set_ylabel("time of closest approach $t$", color="C1")
    h1, l1 = a.get_legend_handles_labels()
    h2, l2 = a2.get_legend_handles_labels()
    a.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=6.5)
    a = ax[1, 0]
    a.errorbar(
        clusters.betas, clusters.mean, yerr=clusters.sd, fmt="o", label="clusters (particles)"
    )
    a.loglog(clusters.betas, clusters.n_star, "k--", label=r"$n^\star$ (most unstable mode)")
    a.loglog(clusters.betas, np.sqrt(2 * clusters.betas), ":", label=r"$\sqrt{2\beta}$")
    a.set(
        xscale="log",
        yscale="log",
        xlabel=r"inverse temperature $\beta$",
        ylabel="number of clusters",
        title=f"clusters on $S^1$ (exponent {clusters.exponent:.2f})",
    )
    a.legend(fontsize=6.5)
    a = ax[1, 1]
    for k, b in enumerate(stairs.betas):
        a.plot(stairs.rescaled_times, stairs.log_energy_ratio[k], label=rf"$\beta$ = {b:g}")
    a.set(
        xlabel=r"rescaled time $s = \log(1+t)/\log(1+T_\mathrm{ref})$",
        ylabel=r"$\log(E / E_\max)$",
        title="energy staircase (metastability)",
    )
    a.legend(fontsize=6.5)
    save_figure(fig, out / "low_temperature", args.format)

    # Density snapshots: finite elements (cell masses) at beta = 10.
    from matplotlib.tri import Triangulation

    fig, ax = plt.subplots(
        1, len(fem_times), figsize=figsize("page", 1.25 / len(fem_times)), sharey=True
    )
    cells = fem.points.reshape(-1, fem.points_per_cell, 2).mean(axis=1)
    for j, t in enumerate(fem_times):
        m = fem.cell_masses(j)
        tri = Triangulation(cells[:, 0], cells[:, 1])
        cs = ax[j].tricontourf(tri, m / m.max(), levels=np.linspace(0, 1, 21))
        ax[j].set(aspect="equal", title=rf"$\beta$ = 10, $t$ = {t:g}", xlabel="$x_1$")
        ax[j].add_patch(plt.Circle((0, 0), 1.0, fill=False, color="w", lw=0.8))
    ax[0].set_ylabel("$x_2$")
    bar = fig.colorbar(cs, ax=ax, shrink=0.8)
    bar.set_label("FE cell mass / max")
    save_figure(fig, out / "low_temperature_snapshots", args.format)
    log.info("figures and ParaView files in %s", out)
