# # Lost in the middle: causal attention, its kinetic equation and the U-shaped retrieval profile
#
# Decoder transformers mask attention causally. Tokens $\theta_1, \dots, \theta_N$ on $S^1$ at
# positions $s_j = j/N$ move by (Duerinckx–Geshkovski–Rossi, arXiv:2605.09213)
#
# $$ \dot\theta_j = \sum_{k<j} w_{jk}\, W'(\theta_j - \theta_k), \qquad
#    W(\theta) = e^{\beta\cos\theta}, \qquad
#    w_{jk} = \frac{e^{-(\lambda/N)(j-k)}}{\sum_{k'<j} e^{-(\lambda/N)(j-k')}} $$
#
# (ALiBi slope $\lambda$). As $N \to \infty$ the density $f(t, s, \theta)$ of the token at
# position $s$ solves the kinetic equation
# $\partial_t f + \partial_\theta\big(f\, X[f]\big) = 0$, with the field
# $X[f](s,\theta) = \int_0^s \kappa_\lambda(s,s')
#  \int W'(\theta-\varphi) f(s',\varphi)\,d\varphi\,ds'$,
# with $\kappa_\lambda(s, s') = F'(s')/F(s)$, $F(s) = e^{\lambda s} - 1$.
#
# Around the uniform state, Fourier mode $n$ obeys the Volterra equation
# $\partial_t g_n = a_n \int_0^s \kappa_\lambda(s,s') g_n(s')\,ds'$, $a_n = n^2 I_n(\beta)$.
# Its resolvent is explicit, so the correlation of the last token at time $t$ with the token at
# source position $s$ (iid uniform prompts, $N \to \infty$) is
#
# $$ N\,\mathbb E\big[e^{-in\theta_N(t)} e^{in\theta_{sN}(0)}\big] \to \delta_1(s) +
#    \kappa_\lambda(1, s)\,\sqrt{\tfrac{a_n t}{L}}\, I_1\big(2\sqrt{a_n t L}\big), \qquad
#    L = \log\frac{F(1)}{F(s)}. $$
#
# The retrieval score $S_t(s) = \sum_{n \le 20} e^{-\pi^2 n^2/128} R_n(t; 1, s)$ (the companion
# code's weights) is U-shaped — primacy, recency, one interior minimum — for
# $t < t_{crit} = 2(1 - e^{-\lambda}) \sum_n \omega_n a_n / \sum_n \omega_n a_n^2$.
#
# This demo checks the closed form against three independent routes: the $N$-token linearised
# system (a matrix exponential, $O(1/N)$), Monte Carlo over many prompts of the particle system,
# and the kinetic finite element solver `attnflow.fem.CausalSolver` (linear response and the
# nonlinear regime, where late slices cluster and early ones do not).

# +
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import matplotlib
from mpi4py import MPI  # before dolfinx

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import attnflow as af
from attnflow import causal
from attnflow.app.style import add_format_argument, figsize, save_figure, use_style
from attnflow.fem import CausalSolver, circle_mesh

parser = argparse.ArgumentParser(description="The lost-in-the-middle retrieval profile.")
parser.add_argument("--output", type=Path, default=Path(__file__).parent / "output" / "litm")
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
args = parser.parse_args()
use_style()
comm = MPI.COMM_WORLD
root = comm.rank == 0
if root:
    args.output.mkdir(parents=True, exist_ok=True)
comm.Barrier()
logging.basicConfig(level=logging.INFO if root else logging.WARNING)
log = logging.getLogger("demo_lost_in_the_middle")
report: list[str] = []


def note(line: str) -> None:
    """Log a line of the summary (rank 0) and keep it for summary.md."""
    log.info("%s", line)
    report.append(line)


# -

# ## (1) The U-shaped profile in closed form, and the discrete route
#
# $S_t(s)/S_t(1)$ for several $t/t_{crit}$ and two inverse temperatures; the dots are the
# $N$-token linearised system $N\,e^{tA_N}$ (last row, $A_N = a_n\,w$) summed over the same
# modes. The minimum moves right as $t$ grows; beyond $t_{crit}$ the profile decreases at
# $s = 1$ (recency lost).

# +
lam = 2.0
betas = [1.0, 3.0]
fractions = [0.25, 0.5, 0.75, 1.0, 1.5]
n_disc = 32 if args.small else 64
s_plot = np.linspace(0.004, 1.0, 400)
fig, axes = plt.subplots(1, 3, figsize=figsize("page", 0.4))
note("| beta | lambda | t_crit | t/t_crit | s_min (closed form) | s_min (N-token route) |")
note("|---|---|---|---|---|---|")
for ax, beta in zip(axes[:2], betas, strict=True):
    tc = causal.t_crit(beta, lam)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(fractions)))
    for f, c in zip(fractions, colors, strict=True):
        t = f * tc
        prof = causal.retrieval_score(beta, lam, t, s_plot)
        ax.plot(s_plot, prof / prof[-1], color=c, ls="-", label=rf"$t = {f:g}\,t_c$")
        s_d, v_d = causal.discrete_retrieval_score(beta, lam, t, n_disc)
        v_d = v_d[0, :-1]  # the last token's own atom left out
        ax.plot(s_d[:-1], v_d / prof[-1], "o", ms=3, color=c, alpha=0.7)
        s_min = causal.profile_minimum(beta, lam, t)
        i = int(np.argmin(v_d))
        s_min_d = s_d[i] if 0 < i < v_d.size - 1 else math.nan
        if np.isfinite(s_min):
            ax.plot(s_min, causal.retrieval_score(beta, lam, t, s_min) / prof[-1], "kv")
        note(f"| {beta:g} | {lam:g} | {tc:.4g} | {f:g} | {s_min:.4f} | {s_min_d:.4f} |")
    ax.set(
        xlabel="source position $s$",
        ylabel=r"retrieval score $S_t(s) / S_t(1)$",
        title=rf"$\beta = {beta:g}$, $\lambda = {lam:g}$ (dots: $N = {n_disc}$)",
    )
    ax.set_ylim(0, 2.5)
    ax.legend(fontsize=6.5)
# t_crit against beta for several slopes (the companion code's threshold curve)
b_grid = np.linspace(0.1, 4.8, 48)
for lam_c in [0.5, 1.0, 2.0, 4.0]:
    axes[2].semilogy(
        b_grid, [causal.t_crit(b, lam_c) for b in b_grid], label=rf"$\lambda = {lam_c:g}$"
    )
axes[2].set(
    xlabel=r"inverse temperature $\beta$",
    ylabel=r"critical time $t_c$",
    title="largest time with recency",
)
axes[2].legend()
if root:
    save_figure(fig, args.output / "litm_profiles", args.format)
plt.close(fig)
# -

# ## (2) Closed form against the N-token system: first order in 1/N
#
# $N\,[e^{tA_N}]_{N,k}$ at $s = k/N$ against $R_1(t; 1, s)$ ($\beta = 1$, $\lambda = 2$): the ALiBi
# matrix is the left-end, exact-cell-integral quadrature of the Volterra operator, a first-order
# rule, so the error decreases like $1/N$.

# +
beta, n_mode = 1.0, 1
s_chk = np.array([0.25, 0.5, 0.75])
t_chk = np.array([0.5, 2.0])
sizes = [16, 64, 256] if args.small else [16, 64, 256, 1024]
ref = causal.correlation_kernel(n_mode, beta, lam, t_chk[:, None], s_chk[None, :])
errs = []
note("")
note("| t | s | closed form | " + " | ".join(f"N = {n}" for n in sizes) + " |")
note("|---|---|---|" + "---|" * len(sizes))
vals = {}
for n_tok in sizes:
    s_d, c_d = causal.discrete_correlation(n_mode, beta, lam, t_chk, n_tok)
    k = np.rint(s_chk * n_tok).astype(int) - 1
    vals[n_tok] = c_d[:, k]
    errs.append(np.abs(c_d[:, k] - ref).max())
for it, t in enumerate(t_chk):
    for js, s in enumerate(s_chk):
        row = " | ".join(f"{vals[n][it, js]:.5f}" for n in sizes)
        note(f"| {t:g} | {s:g} | {ref[it, js]:.5f} | {row} |")
rates = np.log(np.array(errs[:-1]) / errs[1:]) / np.log(4)
note(
    "max errors "
    + ", ".join(f"{e:.3g}" for e in errs)
    + "; rates "
    + ", ".join(f"{r:.3f}" for r in rates)
)
fig, ax = plt.subplots(figsize=figsize("column", 0.8))
ax.loglog(sizes, errs, "o-", label=r"$\max\,|N e^{tA_N} - R|$")
ax.loglog(sizes, errs[0] * sizes[0] / np.array(sizes), "k--", label="$1/N$")
ax.set(
    xlabel="number of tokens $N$",
    ylabel="max error",
    title=r"discrete route $\to$ closed form",
)
ax.legend()
if root:
    save_figure(fig, args.output / "litm_convergence", args.format)
plt.close(fig)
# -

# ## (3) Particles: Monte Carlo over iid uniform prompts
#
# The particle system itself (not linearised), `attnflow.causal.prompt_ensemble` with
# `CausalInteraction(2, beta, lam)`, prompts dealt over the MPI ranks; the estimator
# `correlation_mc` (mode 1, with its control variate) against the $N$-token linearised system and
# the closed form. Error bars: 2 standard errors. The closed form is the limit $N \to \infty$ at
# fixed $t$; at finite $N$ the linearisation drops the three-point functions, whose size grows
# with the amplitude of the empirical modes, $e^{a_n t}/\sqrt N$: the particles agree only while
# $e^{a_n t} \ll \sqrt N$ (here $t \le t_{crit}/2$, $e^{a_1 t} \le 2.6$), and fall below the
# linear prediction beyond (saturation; at $t = t_{crit}$ and $N = 16$ they are a third of it).

# +
n_tok = 16 if args.small else 32
n_prompts = 1000 if args.small else 10000
tc = causal.t_crit(beta, lam)
t_mc = [0.25 * tc, 0.5 * tc]
model = causal.CausalInteraction(2, beta, lam)
ens = causal.prompt_ensemble(
    model, n_tok, n_prompts, t_mc[-1], dt=0.05, seed=7, save_times=[0.0, *t_mc], comm=comm
)
est = causal.correlation_mc(ens, n_mode)
s_d, c_d = causal.discrete_correlation(n_mode, beta, lam, est.t, n_tok)
fig, ax = plt.subplots(figsize=figsize("page", 0.5))
s_fine = np.linspace(0.01, 1.0, 300)
note("")
note(
    f"particles: N = {n_tok}, {n_prompts} prompts, mode {n_mode}, beta = {beta:g}, lambda = {lam:g}"
)
note("| t | s | Monte Carlo | 2 s.e. | N-token linearised | closed form |")
note("|---|---|---|---|---|---|")
for k_t, c in zip([1, 2], ["C0", "C1"], strict=True):
    t = est.t[k_t]
    ax.errorbar(
        est.s[:-1],
        est.value[k_t, :-1],
        2 * est.stderr[k_t, :-1],
        fmt="o",
        ms=3,
        color=c,
        label=f"particles, $t$ = {t:.2f}",
    )
    ax.plot(s_d[:-1], c_d[k_t, :-1], "x", color=c, label=f"$N$-token linearised, $t$ = {t:.2f}")
    ax.plot(
        s_fine,
        causal.correlation_kernel(n_mode, beta, lam, t, s_fine),
        "-",
        color=c,
        label=f"closed form, $t$ = {t:.2f}",
    )
    for k in [0, n_tok // 4, n_tok // 2, 3 * n_tok // 4, n_tok - 2]:
        cf = float(causal.correlation_kernel(n_mode, beta, lam, t, est.s[k]))
        note(
            f"| {t:.3f} | {est.s[k]:.4f} | {est.value[k_t, k]:.4f} | "
            f"{2 * est.stderr[k_t, k]:.4f} | {c_d[k_t, k]:.4f} | {cf:.4f} |"
        )
ax.set(
    xlabel="source position $s$",
    ylabel=r"$N\,\mathbb{E}[e^{-i\theta_N(t)} e^{i\theta_k(0)}]$",
    title=f"particles vs theory (N = {n_tok}, {n_prompts} prompts)",
)
ax.set_ylim(0, None)
ax.legend(fontsize=7)
if root:
    save_figure(fig, args.output / "litm_particles", args.format)
plt.close(fig)
# -

# ## (4) The kinetic equation, linear response
#
# `CausalSolver` with $n_s$ slices (slice $i$ at $s = i/n_s$; its coupling is exactly the
# $n_s$-token ALiBi matrix). Slice $l$ starts at $(1 + \varepsilon\cos\theta)/2\pi$, the others
# uniform; the mode-1 amplitude of the last slice at time $t$ divided by $\varepsilon/2$, times
# $n_s$, is the finite element value of $N\,[e^{tA}]_{N,l}$ with $N = n_s$: the FE route agrees
# with the discrete route up to the DG error on the circle, and both with the closed form at
# $O(1/n_s)$.

# +
n_s = 8 if args.small else 16
cells = 48 if args.small else 128
sources = [n_s // 2] if args.small else [1, n_s // 4, n_s // 2, 3 * n_s // 4]
eps = 1e-3
t_lin = 0.5 * tc
mesh = circle_mesh(cells, comm)
_, c_ns = causal.discrete_correlation(n_mode, beta, lam, t_lin, n_s)
note("")
note(f"kinetic FE linear response: {n_s} slices, {cells} cells DG1, t = {t_lin:.3f}")
note("| source slice | s | FE | N-token (N = n_s) | closed form at s = (l+1)/n_s |")
note("|---|---|---|---|---|")
fe_vals = []
for l0 in sources:

    def f0(s, x, l0=l0):
        th = np.arctan2(x[:, 1], x[:, 0])
        return 1.0 + (eps * np.cos(th) if abs(s - l0 / n_s) < 1e-12 else 0.0 * th)

    solver = CausalSolver(model, mesh, f0, n_slices=n_s, degree=1)
    ks = solver.solve(t_lin, save_times=[0.0, t_lin])
    m0 = ks.fourier_modes(1, 0)[l0]
    m1 = ks.fourier_modes(1, -1)[-1]
    fe = float((m1 / m0).real) * n_s
    fe_vals.append(fe)
    cf = float(causal.correlation_kernel(n_mode, beta, lam, t_lin, (l0 + 1) / n_s))
    note(f"| {l0} | {(l0 + 1) / n_s:.4f} | {fe:.5f} | {c_ns[0, l0]:.5f} | {cf:.5f} |")
fig, ax = plt.subplots(figsize=figsize("column", 0.8))
ax.plot(
    s_fine, causal.correlation_kernel(n_mode, beta, lam, t_lin, s_fine), "k-", label="closed form"
)
ax.plot((np.arange(n_s - 1) + 1) / n_s, c_ns[0, :-1], "x", label=f"$N$-token, $N$ = {n_s}")
ax.plot((np.array(sources) + 1) / n_s, fe_vals, "o", mfc="none", label="kinetic FE (linear)")
ax.set(
    xlabel="source position $s$",
    ylabel="$R_1(t; 1, s)$",
    title=f"linear response, $t$ = {t_lin:.2f}",
)
ax.legend()
if root:
    save_figure(fig, args.output / "litm_kinetic_linear", args.format)
plt.close(fig)
# -

# ## (5) The kinetic equation beyond the linear regime
#
# Every slice starts from $(1 + 0.9\cos 3\theta)/2\pi$; `CausalInteraction(..., rescale=True)`
# (the field times $e^{-\beta}$, time in units of $e^{\beta}$) at $\beta = 4$. Slice 0 attends
# to nothing and keeps its law; later slices feel the growing mode 3 of all earlier ones and
# cluster, the more so the later they are. The image shows $f(t, s, \theta)$ (rows: $\theta$,
# columns: $s$) at several times; the solver writes the slices to `kinetic/density.xdmf` and the
# whole $(s, \theta)$ density on the cylinder $(\cos\theta, \sin\theta, s)$ to
# `kinetic/kinetic.pvd` (ParaView).
#
# Particles: $N = n_s M$ tokens per prompt; the first token of every block of $M$ sees exactly
# the slice weights, so its law over the prompts is compared with its slice ($W_1$ on the
# circle, with the $W_1$ of as many exact samples of the slice as the sampling floor). The
# instability also amplifies the prompts' own fluctuations, $e^{a_n t}/\sqrt N$ against the
# initial $0.45$: the agreement improves only slowly with $N$ (measured at $n_s = 8$, $t = 3$:
# $W_1 \approx 0.24, 0.13, 0.14$ at $s = 0.75$ for $N = 16, 64, 256$).

# +
beta_nl = 4.0
model_nl = causal.CausalInteraction(2, beta_nl, lam, rescale=True)
law = af.PerturbedCircle(0.9, 3)
n_s_nl = 8 if args.small else 16
cells_nl = 48 if args.small else 256
t_nl = 3.0
saves = np.linspace(0.0, t_nl, 5)
solver = CausalSolver(model_nl, circle_mesh(cells_nl, comm), law, n_slices=n_s_nl, degree=0)
ks = solver.solve(t_nl, save_times=saves, output_dir=args.output / "kinetic")
drift = np.max(np.abs(ks.mass - ks.mass[0]))
note("")
note(
    f"nonlinear kinetic run: {n_s_nl} slices, {cells_nl} cells DG0, {ks.n_steps} steps, "
    f"{ks.wall_time:.1f} s, max slice mass drift {drift:.2e}"
)
theta = np.arctan2(ks.points[:, 1], ks.points[:, 0])
order = np.argsort(theta)
fig, axes = plt.subplots(1, saves.size, figsize=figsize("page", 1.6 / saves.size), sharey=True)
dens_all = ks.weights / ks.point_weights[None, None, :]
vmax = float(np.quantile(dens_all, 0.995))
for k, ax in enumerate(axes):
    img = dens_all[k][:, order].T  # (points, slices)
    im = ax.imshow(
        img,
        aspect="auto",
        origin="lower",
        extent=[0, 1, -np.pi, np.pi],
        vmin=0,
        vmax=vmax,
        interpolation="nearest",
    )
    ax.set(xlabel="source position $s$", title=f"$t$ = {ks.t[k]:.2f}")
axes[0].set_ylabel(r"angle $\theta$")
fig.colorbar(im, ax=axes, shrink=0.85).set_label(r"density $f(t, s, \theta)$")
if root:
    save_figure(fig, args.output / "litm_kinetic_density", args.format)
plt.close(fig)

m_block = 4 if args.small else 8
n_prompts_nl = 100 if args.small else 500
ens_nl = causal.prompt_ensemble(
    model_nl,
    n_s_nl * m_block,
    n_prompts_nl,
    t_nl,
    dt=0.05,
    seed=11,
    law=law,
    save_times=[0.0, t_nl],
    comm=comm,
)
note(
    "| slice | s | W1(particles, FE) t = 0 | t_final | sampling floor t_final "
    "| FE max density t_final |"
)
note("|---|---|---|---|---|---|")
rng = np.random.default_rng(5)
for i in range(0, n_s_nl, max(1, n_s_nl // 4)):
    w1 = [
        af.metrics.wasserstein(
            ens_nl.x[:, k, i * m_block], None, ks.points, ks.weights[kk, i], geometry="circle"
        ).value
        for k, kk in [(0, 0), (1, -1)]
    ]
    # the W1 of as many exact samples of the FE slice (resampled quadrature points)
    p_fe = np.maximum(ks.weights[-1, i], 0.0)
    draw = ks.points[rng.choice(p_fe.size, n_prompts_nl, p=p_fe / p_fe.sum())]
    floor = af.metrics.wasserstein(
        draw, None, ks.points, ks.weights[-1, i], geometry="circle"
    ).value
    note(
        f"| {i} | {ks.s[i]:.3f} | {w1[0]:.4f} | {w1[1]:.4f} | {floor:.4f} "
        f"| {dens_all[-1, i].max():.3f} |"
    )
if root:
    af.io.write_text_atomic(args.output / "summary.md", "\n".join(report) + "\n")
# -
