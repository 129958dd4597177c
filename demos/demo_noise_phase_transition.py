# # Noisy transformers: stationary states and the phase transition on the circle
#
# Tokens on $S^1$ follow self-attention ($Q = K = V = I$) plus Brownian noise of strength
# $\sigma$; their density solves the McKean–Vlasov equation
#
# $$ \partial_t \rho + \operatorname{div}(\rho X_\beta[\rho]) = \sigma \Delta \rho, \qquad
#    X = \tfrac{1}{\beta} \nabla \Phi[\rho], \quad
#    \Phi = K\rho \ (\text{USA}), \ \log K\rho \ (\text{SA}), \quad
#    K\rho(x) = \int e^{\beta\langle x, y\rangle} \rho(y)\,dy. $$
#
# Stationary states satisfy $\rho \propto e^{\Phi[\rho]/(\beta\sigma)}$. The uniform state is
# always one; mode $n$ grows at $n^2 (I_n(\beta)/(\beta I_0(\beta)) - \sigma)$ (SA) or
# $n^2 (I_n(\beta)/\beta - \sigma)$ (USA), so it loses stability through mode 1 at
# $\sigma_c = I_1(\beta)/(\beta I_0(\beta))$ (SA), $I_1(\beta)/\beta$ (USA). The branch that
# bifurcates there has amplitude $m = |\int x \rho|$ with
# $(\sigma - \sigma_c)/\sigma_c = g\, m^2 + O(m^4)$; for USA
# $g = 2 (2 r - 1) / (4 (1 - r))$, $r = I_2(\beta)/I_1(\beta)$, which changes sign at
# $I_2(\beta_*)/I_1(\beta_*) = 1/2$, $\beta_* = 2.4469$: a continuous transition below, a
# discontinuous one (a fold at $\sigma_f > \sigma_c$, coexistence of the stable uniform and the
# stable clustered state) above. SA stays continuous for every $\beta$.
#
# This demo computes the branches three ways: the spectral reference
# (`attnflow.studies.phase_transitions`, Fourier collocation, spectrally accurate), the finite
# element continuation (`attnflow.fem.continuation`: Newton, pseudo-arclength, SLEPc
# stability), and noisy particles (`attnflow.simulate` with `Diffusion`).
#
# Run: `python demos/demo_noise_phase_transition.py [--small] [--output DIR]`, also under
# `mpiexec -n 2`.

# +
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

import attnflow as af
from attnflow.app.style import add_format_argument, figsize, save_figure, use_style
from attnflow.fem import circle_mesh, continuation, stationary_state
from attnflow.io import write_point_cloud_series
from attnflow.studies import phase_transitions as pt

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="Noise-driven phase transition on S^1.")
parser.add_argument("--output", type=Path, default=Path(__file__).parent / "output" / "noise")
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
args = parser.parse_args()
logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING)
logging.getLogger("attnflow").setLevel(logging.WARNING)
log = logging.getLogger("demo_noise_phase_transition")
out = args.output
if comm.rank == 0:
    out.mkdir(parents=True, exist_ok=True)

if args.small:
    n_cells, degree, steps, n_tokens, t_particles = 32, 1, 9, 200, 4.0
else:
    n_cells, degree, steps, n_tokens, t_particles = 128, 1, 30, 1500, 12.0
beta_star = pt.tricritical_beta(2)
cases = [  # (label, beta, normalized)
    ("USA, beta = 1.5 < beta_*", 1.5, False),
    ("USA, beta = 4 > beta_*", 4.0, False),
    ("SA, beta = 4", 4.0, True),
]
# -

# ## Theory

if comm.rank == 0:
    log.info("beta_* (USA, d = 2) = %.5f; d = 3: %.5f", beta_star, pt.tricritical_beta(3))
    for label, beta, norm in cases:
        log.info(
            "%-22s sigma_c = %.5f, Landau g = %+.4f (%s)",
            label,
            pt.critical_noise(beta, normalized=norm),
            pt.landau_coefficient(beta, normalized=norm),
            pt.transition_type(beta, normalized=norm),
        )

# ## Spectral reference branches (amplitude-parametrised: they pass the folds)

amps = np.linspace(0.01, 0.9, 60)
ref = {label: pt.spectral_branch(beta, amps, normalized=norm, n=65) for label, beta, norm in cases}

# ## Finite element continuation: from the uniform state through the bifurcation

fe = {}
t0 = time.perf_counter()
for label, beta, norm in cases:
    sc = pt.critical_noise(beta, normalized=norm)
    dyn = af.SelfAttention(2, beta=beta, normalized=norm) + af.Diffusion(1.1 * sc)
    fe[label] = continuation(
        dyn,
        circle_mesh(n_cells),
        stop=0.3 * sc,
        ds=max(0.06 * sc, 0.05),  # arclength in (L2 density, sigma): ~0.09 in m per step
        degree=degree,
        kernel="dense",
        max_steps=steps,
        max_amplitude=0.85,
        output_dir=out / ("fe_" + label.split(",")[0].lower() + f"_beta{beta:g}"),
    )
wall = time.perf_counter() - t0
if comm.rank == 0:
    log.info("FE continuation (DG%d, %d cells): %.1f s", degree, n_cells, wall)
    log.info("%-22s %10s %10s %9s %10s %10s", "case", "sigma_c", "FE", "rel", "fold ref", "fold FE")
    for label, beta, norm in cases:
        sc = pt.critical_noise(beta, normalized=norm)
        b = fe[label]
        sb = b.bifurcations[0]["sigma"] if b.bifurcations else np.nan
        f_ref = ref[label].folds()
        f_fe = b.folds
        log.info(
            "%-22s %10.5f %10.5f %+9.2e %10s %10s",
            label,
            sc,
            sb,
            (sb - sc) / sc,
            f"{f_ref[0][1]:.4f}" if f_ref else "-",
            f"{f_fe[0]['sigma']:.4f}" if f_fe else "-",
        )

# ## Noisy particles on both sides of the hysteresis loop
#
# USA at $\beta = 4$ and $\sigma$ between $\sigma_c$ and the fold $\sigma_f$: the uniform state
# and the clustered state are both stable, separated by the unstable branch. Particles started
# clustered stay on the predicted clustered profile. Particles started uniform fluctuate about
# the uniform state: it is only weakly stable (mode 1 decays at $\sigma_c - \sigma$), so with
# $N$ tokens the mode-1 amplitude fluctuates by about $(\sigma / (N |\sigma_c - \sigma|))^{1/2}$,
# and a fluctuation that reaches the unstable branch sends the ensemble to the clustered state
# (the metastability of a first-order transition: the larger $N$, the rarer).

label_h = cases[1][0]
beta_h = cases[1][1]
sc_h = pt.critical_noise(beta_h, normalized=False)
(m_fold, s_fold) = ref[label_h].folds()[0]
sigma_h = sc_h + 0.75 * (s_fold - sc_h)
m_unstable = float(
    np.interp(
        sigma_h,
        ref[label_h].sigma[ref[label_h].amplitude < m_fold],
        ref[label_h].amplitude[ref[label_h].amplitude < m_fold],
    )
)
prof = pt.spectral_stationary_state(beta_h, sigma_h, normalized=False, n=129, guess=0.8)
noisy = af.SelfAttention(2, beta=beta_h, normalized=False) + af.Diffusion(sigma_h)
rng = np.random.default_rng(5)
th_u = rng.uniform(0, 2 * np.pi, n_tokens)
x_uniform = np.stack([np.cos(th_u), np.sin(th_u)], axis=1)
x_cluster = af.VonMisesFisher([1.0, 0.0], 4.0).sample(n_tokens, rng=6)
save = np.linspace(0, t_particles, 25)
runs = {}
for name, x0, seed in (("from uniform", x_uniform, 11), ("from cluster", x_cluster, 12)):
    runs[name] = af.simulate(noisy, x0, t_particles, dt=0.01, save_times=save, rng=seed)
if comm.rank == 0:
    for name, sol in runs.items():
        m_t = [float(np.linalg.norm(sol.x[k].mean(axis=0))) for k in range(save.size)]
        log.info("particles %s: |mean x| over time %s", name, np.round(m_t[::4], 3))
    log.info(
        "predicted: uniform m = 0, unstable m = %.3f, clustered m = %.3f "
        "(sigma = %.4f in (%.4f, %.4f)); fluctuation scale (sigma/(N|lambda_1|))^1/2 = %.3f",
        m_unstable,
        prof.amplitude,
        sigma_h,
        sc_h,
        s_fold,
        np.sqrt(sigma_h / (n_tokens * (sigma_h - sc_h))),
    )

# The FE stationary state at the same place in the FE's own hysteresis window
# $(\sigma_c^h, \sigma_f^h)$ (on a coarse mesh both are shifted by O(h^2); ParaView:
# hysteresis/stationary.xdmf)
b_h = fe[label_h]
if b_h.folds and b_h.bifurcations:
    sb_h, sf_h = b_h.bifurcations[0]["sigma"], b_h.folds[0]["sigma"]
else:  # no fold found on this branch: use the reference window
    sb_h, sf_h = sc_h, s_fold
sigma_fe = sb_h + 0.75 * (sf_h - sb_h)
st_h = stationary_state(
    noisy,
    circle_mesh(n_cells),
    af.VonMisesFisher([1.0, 0.0], 4.0),
    degree=degree,
    kernel="dense",
    sigma=sigma_fe,
    output_dir=out / "hysteresis",
)
if comm.rank == 0:
    log.info(
        "FE stationary state at sigma = %.4f (converged: %s): m = %.4f (spectral %.4f), "
        "%d Newton iterations, |R| = %.1e, leading eigenvalue %.3f",
        sigma_fe,
        st_h.converged,
        st_h.amplitude,
        prof.amplitude,
        st_h.iterations,
        st_h.residual_norm,
        st_h.leading_eigenvalue,
    )
    for name, sol in runs.items():  # ParaView: particles_*.pvd
        write_point_cloud_series(out, save, sol.x, name="particles_" + name.replace(" ", "_"))

# ## Figures

if comm.rank == 0:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_style()

    fig, axes = plt.subplots(1, 3, figsize=figsize("page", 0.48), sharey=True)
    for ax, (label, beta, norm) in zip(axes, cases, strict=True):
        sc = pt.critical_noise(beta, normalized=norm)
        r = ref[label]
        s = r.sigma / sc
        st = r.stable
        # solid: stable, dashed: unstable (split where the stability changes)
        for k in range(s.size - 1):
            ax.plot(s[k : k + 2], r.amplitude[k : k + 2], "C0", ls="-" if st[k + 1] else "--")
        ax.plot([1.0, s.max() * 1.02 + 0.1], [0, 0], "C0-")
        ax.plot([s.min(), 1.0], [0, 0], "C0--")
        b = fe[label]
        sb = b.bifurcations[0]["sigma"] if b.bifurcations else sc
        for stb, mk in ((True, "o"), (False, "o")):
            sel = b.stable == stb
            ax.plot(
                b.sigma[sel] / sb,
                b.amplitude[sel],
                mk,
                ms=5,
                color="C3",
                mfc="C3" if stb else "none",
                label=f"FE DG{degree} ({'stable' if stb else 'unstable'})",
            )
        for f in r.folds():
            ax.plot(f[1] / sc, f[0], "k^", label="fold (spectral)")
        ax.axvline(1.0, color="0.7", lw=0.8)
        ax.set_title(f"{label}\n$\\sigma_c$ = {sc:.4f}, $g$ = {r.g:+.3f}")
        ax.set_xlabel(r"noise $\sigma / \sigma_c$ (FE: $/\sigma_c^h$)")
        ax.set_xlim(0.3, 1.25)
    axes[0].set_ylabel(r"amplitude $m = |\int x \rho|$")
    axes[0].legend(fontsize=6.5, loc="upper right")
    fig.suptitle(
        "Bifurcation diagram: spectral reference (solid: stable, dashed: unstable), "
        "finite elements (dots)"
    )
    save_figure(fig, out / "bifurcation_diagram", args.format)

    fig, axes = plt.subplots(1, 3, figsize=figsize("page", 0.45))
    th = np.linspace(-np.pi, np.pi, 400)
    xx = np.stack([np.cos(th), np.sin(th)], axis=1)
    ax = axes[0]
    b = fe[cases[2][0]]
    sb = b.bifurcations[0]["sigma"]
    picks = np.flatnonzero(b.branch == 1)[[1, len(np.flatnonzero(b.branch == 1)) // 2, -1]]
    for i, k in enumerate(picks):
        stk = b.states[k]
        m = stk.weights @ stk.points
        phi = np.arctan2(m[1], m[0])
        ang = np.angle(np.exp(1j * (np.arctan2(stk.points[:, 1], stk.points[:, 0]) - phi)))
        order = np.argsort(ang)
        ax.plot(ang[order], (stk.weights / stk.point_weights)[order], ".", ms=2, color=f"C{i}")
        sref = pt.spectral_stationary_state(
            cases[2][1],
            stk.sigma * pt.critical_noise(cases[2][1]) / sb,
            n=129,
            guess=stk.amplitude,
        )
        ax.plot(
            th,
            sref(xx),
            "-",
            color=f"C{i}",
            lw=0.8,
            label=f"$\\sigma/\\sigma_c$ = {stk.sigma / sb:.3f}",
        )
    ax.set_title("SA, $\\beta$ = 4: FE states (dots),\nspectral profiles (lines)")
    ax.set_xlabel(r"angle $\theta$ from the mean direction")
    ax.set_ylabel(r"density $\rho$")
    ax.legend(fontsize=6.5)
    ax = axes[1]
    for name, sol in runs.items():
        xs = sol.x[-1]
        m = xs.mean(axis=0)
        ang = np.angle(np.exp(1j * (np.arctan2(xs[:, 1], xs[:, 0]) - np.arctan2(m[1], m[0]))))
        ax.hist(
            ang,
            bins=40,
            range=(-np.pi, np.pi),
            density=True,
            histtype="step",
            label=f"particles {name}, t = {save[-1]:g}",
        )
    ax.plot(th, prof(xx), "k-", lw=1.2, label="clustered stationary state")
    ax.axhline(1 / (2 * np.pi), color="k", ls=":", lw=1.0, label="uniform state")
    ax.set_title(
        f"USA, $\\beta$ = 4, $\\sigma$ = {sigma_h:.3f}\nin ($\\sigma_c$, $\\sigma_f$): bistability"
    )
    ax.set_xlabel(r"angle $\theta$ from the mean direction")
    ax.set_ylabel(r"density $\rho$")
    ax.legend(fontsize=6.5)
    ax = axes[2]
    for name, sol in runs.items():
        ax.plot(
            save,
            [np.linalg.norm(sol.x[k].mean(axis=0)) for k in range(save.size)],
            ".-",
            label=f"particles {name}".replace("particles from", "from"),
        )
    ax.axhline(prof.amplitude, color="k", lw=1.0, label="stable cluster")
    ax.axhline(m_unstable, color="k", ls="--", lw=1.0, label="unstable branch")
    ax.axhline(0.0, color="k", ls=":", lw=1.0, label="uniform state")
    ax.set_xlabel("time $t$")
    ax.set_ylabel(r"order parameter $|\frac{1}{N}\sum_i x_i|$")
    ax.set_title(f"order parameter of the\nparticles ($N$ = {n_tokens})")
    ax.set_ylim(-0.02, 1.45)  # room for the legend above the curves
    ax.legend(fontsize=6, loc="upper left")
    save_figure(fig, out / "stationary_profiles", args.format)
    log.info("figures in %s", out)
