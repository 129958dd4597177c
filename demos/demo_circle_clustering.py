# # Clustering of tokens on the circle
#
# Tokens $x_i \in S^1$ follow the self-attention dynamics (SA, $Q = K = V = I$)
#
# $$ \dot x_i = P_{x_i}\Big( \frac{\sum_j e^{\beta \langle x_i, x_j\rangle} x_j}
#                               {\sum_j e^{\beta \langle x_i, x_j\rangle}} \Big),
#    \qquad P_x = I - x x^\top . $$
#
# The uniform density is stationary for the mean-field equation, and mode $n$ of a small
# perturbation grows like $e^{\lambda_n t}$ with
#
# $$ \lambda_n = \frac{n^2 I_n(\beta)}{\beta I_0(\beta)} , $$
#
# ($I_n$ the modified Bessel functions). Starting from i.i.d. uniform tokens, the sampling
# noise seeds every mode; the fastest one, $n^\star = \arg\max_n \lambda_n \approx \sqrt{2\beta}$,
# sets the number of clusters that form first. Clusters then merge on much longer
# (metastable) time scales while the interaction energy
# $E = \frac{1}{2\beta}\iint e^{\beta\langle x, y\rangle} d\mu\, d\mu$ increases.
#
# This demo runs an ensemble of particle systems (distributed over MPI ranks), counts the
# clusters over time with one criterion (`attnflow.metrics.circle_clusters`), and compares the
# first plateau of the count with $n^\star$.
#
# Run: `python demos/demo_circle_clustering.py [--small] [--output DIR]`, or under
# `mpiexec -n 2`.

# +
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from mpi4py import MPI
from scipy.special import ive

import attnflow as af

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="Clustering of tokens on S^1 (SA, beta = 9).")
parser.add_argument("--output", type=Path, default=Path(__file__).parent / "output" / "circle")
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
parser.add_argument("--beta", type=float, default=9.0)
parser.add_argument("--animate", action="store_true", help="also write an animated GIF")
args = parser.parse_args()
logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING)
log = logging.getLogger("demo_circle_clustering")

beta = args.beta
n_tokens, n_runs, t_final = (600, 2, 20.0) if args.small else (2000, 4, 40.0)
save_times = np.linspace(0.0, t_final, int(t_final) + 1)
# -

# ## Linear theory: the most unstable mode

modes = np.arange(1, 40)
lam = modes**2 * ive(modes, beta) / (beta * ive(0, beta))
n_star = int(modes[np.argmax(lam)])
if comm.rank == 0:
    log.info(
        "beta = %g: most unstable mode n* = %d (sqrt(2 beta) = %.2f)",
        beta,
        n_star,
        np.sqrt(2 * beta),
    )

# ## The particle ensemble

model = af.SelfAttention(2, beta=beta)
sol = af.ensemble(
    model,
    af.UniformSphere(2),
    n_tokens,
    n_runs,
    t_final,
    dt=0.1,
    seed=2026,
    save_times=save_times,
    comm=comm,
)
counts = np.array([[af.metrics.circle_clusters(x) for x in run] for run in sol.x])
energy = np.array([[model.log_energy(x) for x in run] for run in sol.x])


# The first plateau: the count once it has stayed the same for three consecutive saves
# after the uniform cloud has split.
def first_plateau(c: np.ndarray) -> int:
    for k in range(len(c) - 2):
        if c[k] > 1 and c[k] == c[k + 1] == c[k + 2]:
            return int(c[k])
    return int(c[-1])


first = np.array([first_plateau(c) for c in counts])

# ## Sanity checks

assert np.max(np.abs(np.linalg.norm(sol.x, axis=-1) - 1)) < 1e-12, "tokens left the circle"
assert np.all(np.diff(energy, axis=1) >= -1e-12), "energy decreased"
assert abs(first.mean() - n_star) <= 1.5, f"first clusters {first} far from n* = {n_star}"
assert np.all(counts[:, -1] <= first), "cluster count grew after the first plateau"

# ## Figures (rank 0)

if comm.rank == 0:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    theta = np.arctan2(sol.x[0, :, :, 1], sol.x[0, :, :, 0])
    bins = np.linspace(-np.pi, np.pi, 121)
    hist = np.stack([np.histogram(th, bins=bins, density=True)[0] for th in theta])

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    im = ax[0].imshow(
        hist.T,
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=[0, t_final, -np.pi, np.pi],
        vmax=np.quantile(hist, 0.99),
    )
    ax[0].set(xlabel="t", ylabel=r"angle $\theta$", title=f"token density, run 0 (N={n_tokens})")
    fig.colorbar(im, ax=ax[0])
    for c in counts:
        ax[1].step(sol.t, c, where="post", alpha=0.7)
    ax[1].axhline(n_star, ls="--", c="k", label=rf"$n^\star = {n_star}$")
    ax[1].axhline(np.sqrt(2 * beta), ls=":", c="gray", label=r"$\sqrt{2\beta}$")
    ax[1].set(xlabel="t", ylabel="clusters", title=f"cluster count ({n_runs} runs)")
    ax[1].legend()
    ax[2].errorbar(sol.t, energy.mean(0), yerr=energy.std(0), capsize=2)
    ax[2].set(xlabel="t", ylabel=r"$\log E$", title="interaction energy (mean ± sd)")
    fig.suptitle(rf"SA on $S^1$, $\beta = {beta:g}$")
    fig.tight_layout()
    fig.savefig(out / "circle_clustering.png", dpi=110)
    np.savez_compressed(out / "particles.npz", t=sol.t, x=sol.x, counts=counts, energy=energy)

    if args.animate:
        from matplotlib.animation import FuncAnimation, PillowWriter

        fig2, ax2 = plt.subplots(figsize=(4, 4))
        pts = ax2.scatter(*sol.x[0, 0].T, s=2)
        ax2.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal")

        def frame(k):
            pts.set_offsets(sol.x[0, k])
            ax2.set_title(f"t = {sol.t[k]:.1f}")
            return (pts,)

        FuncAnimation(fig2, frame, frames=len(sol.t)).save(
            out / "circle.gif", writer=PillowWriter(fps=8)
        )
    log.info("first plateau of the cluster count per run: %s (n* = %d)", first.tolist(), n_star)
    log.info("final counts: %s; wrote %s", counts[:, -1].tolist(), out)
