# # How many clusters?
#
# Tokens drawn i.i.d. uniform on $S^1$ or $S^2$ under SA ($Q = K = V = I$) first collapse into
# a number of clusters that then persists for a time exponentially long in $\beta$ (the
# metastable phase). Three predictions of that number, put side by side on the same runs
# (`attnflow.studies.cluster_counts`):
#
# **1. The most unstable mode.** By Funk–Hecke, a degree-$l$ spherical harmonic is an
# eigenfunction of the kernel, $\int e^{\beta\langle x,y\rangle} Y_l(y)\,dy = \mu_l Y_l(x)$ with
# $\mu_l = (2\pi)^{d/2}\beta^{-\nu} I_{l+\nu}(\beta)$, $\nu = d/2-1$, and linearising the
# continuity equation at the uniform density gives the growth rates
# $$\lambda_l^{SA} = \frac{l(l+d-2)\, I_{l+\nu}(\beta)}{\beta\, I_\nu(\beta)},\qquad
# \lambda_l^{USA} = \frac{l(l+d-2)\,2^\nu\Gamma(\nu+1)\, I_{l+\nu}(\beta)}{\beta^{\nu+1}},$$
# ($n^2 I_n/(\beta I_0)$ and $n^2 I_n/\beta$ on $S^1$), largest at $l^\star \approx \sqrt{2\beta}$
# in every dimension. On $S^1$ mode $n^\star$ has $n^\star$ maxima; on $S^2$ a random degree-$l$
# harmonic has about $l(l+1)/(2\sqrt3)$ local maxima.
#
# **2. KDE modes** (Geshkovski–Rigollet–Sun): the modes of the kernel density estimator of the
# $N$ initial tokens with the attention kernel. On the line with $N(0,1)$ samples and bandwidth
# $\beta^{-1/2}$ their expected number is $\Theta(\sqrt{\beta\log\beta})$; we count them by Monte
# Carlo and check the count against the Kac–Rice integral
# $\int E[(p'')^- \mid p' = 0]\, f_{p'}(0)\,dt$ with the exact finite-$n$ moments.
#
# **3. $\sqrt\beta$ fits**: a count $\sim c\,\beta^{(d-1)/2}$ (clusters of width $\beta^{-1/2}$).
#
# The observed counts: particles (gap criterion at $1/\sqrt\beta$) and finite elements (local
# maxima of the cell densities above the mean density), at the counting time
# $t = 1.5\log N/\lambda^\star$; the FE runs start from the fluctuation of $N$ tokens projected
# onto the band of modes growing at least half as fast as $l^\star$.

# +
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from mpi4py import MPI

from attnflow.app.style import add_format_argument, figsize, save_figure, use_style
from attnflow.studies.cluster_counts import cluster_count_study
from attnflow.studies.convergence import fit_slope
from attnflow.studies.kde import expected_modes, kac_rice_line

comm = MPI.COMM_WORLD
parser = argparse.ArgumentParser(description="Cluster counts against three predictions.")
parser.add_argument(
    "--output", type=Path, default=Path(__file__).parent / "output" / "cluster_counts"
)
parser.add_argument("--small", action="store_true", help="small sizes (CI)")
add_format_argument(parser)
args = parser.parse_args()
logging.basicConfig(
    level=logging.INFO if comm.rank == 0 else logging.WARNING,
    format="%(relativeCreated)8.0f ms %(name)s: %(message)s",
)
for noisy in ("attnflow.fem", "attnflow.particles", "attnflow.kernels"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
log = logging.getLogger("demo_cluster_counts")
out = args.output
if comm.rank == 0:
    out.mkdir(parents=True, exist_ok=True)

if args.small:
    kde_betas, kde_runs, window_runs = [100.0, 1000.0], [8, 4], 100
    s1 = dict(betas=[4.0, 16.0], n_tokens=256, n_runs=2, n_fem_runs=1, n_kde_runs=2, fit_from=4.0)
    s2 = dict(betas=[4.0, 9.0], n_tokens=256, n_runs=2, n_fem_runs=1, n_kde_runs=1, fit_from=4.0)
    s2["fem_sizes"] = [2, 2]
else:
    kde_betas = [1e2, 10**2.5, 1e3, 10**3.5, 1e4]
    kde_runs, window_runs = [200, 100, 60, 30, 16], 800
    s1 = dict(
        betas=[4.0, 10.0, 25.0, 63.0, 160.0, 400.0, 1000.0],
        n_tokens=4096,
        n_runs=4,
        n_fem_runs=2,
        n_kde_runs=16,
    )
    s2 = dict(betas=[4.0, 10.0, 25.0, 50.0, 100.0], n_tokens=4096, n_runs=4, n_fem_runs=2)
    s2["n_kde_runs"] = 4
# -

# ## 1. KDE modes on the line
#
# $n = \beta$ samples (the middle of the range $n^c \lesssim \beta \lesssim n^{2-c}$). The
# Monte Carlo count over the whole line, divided by $\sqrt{\beta\log\beta}$, and the bulk
# window $[-1/2, 1/2]$ at $\beta = 100$, $n = 4000$ against Kac–Rice.

# +
kde = [
    expected_modes(b, int(b), n_runs=r, seed=11)
    for k, (b, r) in enumerate(zip(kde_betas, kde_runs, strict=True))
    if k % comm.size == comm.rank
]
kde = sorted((m for part in comm.allgather(kde) for m in part), key=lambda m: m.beta)
kb = np.array([m.beta for m in kde])
km = np.array([m.mean for m in kde])
ks = np.array([m.sem for m in kde])
const = km / np.sqrt(kb * np.log(kb))
window = expected_modes(100.0, 4000, window=(-0.5, 0.5), n_runs=window_runs, seed=12)
window_kr = kac_rice_line(100.0, 4000, (-0.5, 0.5))
if comm.rank == 0:
    for b, m, s, c in zip(kb, km, ks, const, strict=True):
        log.info(
            "line KDE beta=%g n=%d: %.2f +- %.2f modes, / sqrt(beta log beta) = %.3f", b, b, m, s, c
        )
    log.info(
        "KDE constant drift over beta = %g..%g: %.3f -> %.3f; exponent of the count %.3f",
        kb[0],
        kb[-1],
        const[0],
        const[-1],
        fit_slope(kb, km),
    )
    log.info(
        "bulk window: Monte Carlo %.3f +- %.3f, Kac-Rice %.3f (%.2f standard errors)",
        window.mean,
        window.sem,
        window_kr,
        (window.mean - window_kr) / window.sem,
    )
    assert abs(window.mean - window_kr) < 3 * window.sem
    assert np.all((const > 0.3) & (const < 0.7)), const
# -

# ## 2. and 3. Cluster counts on $S^1$ and $S^2$

# +
study = {
    2: cluster_count_study(d=2, comm=comm, **s1),
    3: cluster_count_study(d=3, comm=comm, fem_output=out / "fem_s2", **s2),
}
if comm.rank == 0:
    for d, s in study.items():
        log.info("S^%d: betas %s", d - 1, s.betas.tolist())
        log.info("  particles %s +- %s", np.round(s.particle_mean, 2), np.round(s.particle_sem, 2))
        log.info("  FE        %s +- %s", np.round(s.fem_mean, 2), np.round(s.fem_sem, 2))
        log.info("  KDE       %s +- %s", np.round(s.kde_mean, 2), np.round(s.kde_sem, 2))
        log.info("  mode      %s (l* = %s)", np.round(s.mode_prediction, 2), s.l_star.tolist())
        log.info("  exponents %s", {k: round(v, 3) for k, v in s.exponents.items()})
        log.info(
            "  count / beta^%.1f: %s",
            (d - 1) / 2,
            {k: round(v, 3) for k, v in s.sqrt_constants.items()},
        )
        for name, y in (("FE", s.fem_mean), ("KDE", s.kde_mean), ("mode", s.mode_prediction)):
            rel = np.abs(y / s.particle_mean - 1)
            log.info("  |%s / particles - 1|: mean %.3f, max %.3f", name, rel.mean(), rel.max())
        assert np.all(s.particle_counts >= 1) and np.all(s.fem_counts >= 1)
        assert s.particle_mean[-1] > s.particle_mean[0] and s.fem_mean[-1] > s.fem_mean[0]
# -

# ## Pictures

# +
if comm.rank == 0:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullLocator, ScalarFormatter

    use_style()

    def panel(ax, s) -> None:
        b = s.betas
        grid = np.geomspace(b[0], b[-1], 100)
        ax.errorbar(b, s.particle_mean, 2 * s.particle_sem, fmt="o-", capsize=3, label="particles")
        ax.errorbar(b, s.fem_mean, 2 * s.fem_sem, fmt="s-", capsize=3, label="finite elements")
        ax.errorbar(
            b, s.kde_mean, 2 * s.kde_sem, fmt="^--", capsize=3, label=f"KDE modes, n = {s.n_tokens}"
        )
        lbl = r"$n^\star$" if s.d == 2 else r"$l^\star(l^\star+1)/(2\sqrt{3})$"
        ax.plot(b, s.mode_prediction, "kx:", label=f"most unstable mode {lbl}")
        p = (s.d - 1) / 2
        c = s.sqrt_constants["particles"]
        ax.plot(grid, c * grid**p, "C0", alpha=0.4, lw=4, label=rf"fit ${c:.2f}\,\beta^{{{p:g}}}$")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=r"inverse temperature $\beta$",
            ylabel="number of clusters",
        )
        ex = s.exponents
        ax.set_title(
            f"$S^{s.d - 1}$: exponents particles {ex['particles']:.2f}, FE {ex['fem']:.2f}"
        )
        # Plain numbers on the log axes: the betas and a few integer counts.
        ax.set_xticks(b, [f"{x:g}" for x in b])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, min_n_ticks=2))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_locator(NullLocator())
        ax.legend(fontsize=6.5, loc="upper left")

    for d, s in study.items():
        fig, ax = plt.subplots(figsize=figsize("column", 0.9))
        panel(ax, s)
        save_figure(fig, out / f"cluster_counts_s{d - 1}", args.format)
    fig, axes = plt.subplot_mosaic([["s1", "s2"], ["kde", "kde"]], figsize=figsize("page", 0.85))
    panel(axes["s1"], study[2])
    panel(axes["s2"], study[3])
    ax = axes["kde"]
    ax.errorbar(kb, const, 2 * ks / np.sqrt(kb * np.log(kb)), fmt="o-", capsize=3)
    ax.set(
        xscale="log",
        xlabel=r"inverse temperature $\beta$ ($n = \beta$ samples)",
        ylabel=r"modes / $\sqrt{\beta\log\beta}$",
        title="Gaussian KDE on the line (2 s.e.)",
    )
    ax.set_ylim(0, 1.2 * const.max())
    save_figure(fig, out / "cluster_counts", args.format)
    log.info("wrote %s", out)
# -
