"""The summary figure of a run (matplotlib, optional): energies, final densities, W1.

``figures/summary.png`` has one panel per quantity: the interaction energy ``log E`` over time
(finite elements, and the particle runs' mean with their standard deviation as error bars), the
densities at the last save time (by angle on S^1, in longitude and latitude on S^2, in the
first two coordinates in R^d) and, for runs with both solvers, ``W1`` between them; with
noise also the finite element free energy ``sigma int rho log rho - E``. Without matplotlib
it logs a warning and writes nothing.

A causal run has :func:`causal_figure` instead: the density over the position ``s`` and the
angle (S^1: theta; S^2: the latitude arcsin z) at the last save time, as images — the kinetic
finite element density and the histogram of the tokens of all prompts — and, when recorded,
the retrieval correlation against ``s`` and the W1 distance of every slice.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attnflow.app.build import geometry

if TYPE_CHECKING:
    from attnflow.app.config import Config, ModelSection
    from attnflow.compare import Comparison
    from attnflow.solutions import EnsembleSolution, FieldSolution

__all__ = ["causal_figure", "summary_figure"]

logger = logging.getLogger(__name__)


def summary_figure(
    cfg: Config,
    out: Path,
    fem: FieldSolution | None,
    ens: EnsembleSolution | None,
    cmp: Comparison | None,
    *,
    particle_log_energy: np.ndarray | None = None,
) -> Path | None:
    """Draw the summary of a run into ``out/summary.png`` (written atomically).

    Parameters
    ----------
    cfg : the run's configuration (titles, geometry, save times).
    out : the figure directory (created if needed).
    fem, ens, cmp : the finite element solution, the particle ensemble and their comparison
        (each may be ``None``).
    particle_log_energy : (R, n_saved) ``log E`` of every particle run at every save time
        (``None``: no particle energy panel, e.g. hardmax).

    Returns
    -------
    The path of the figure, or ``None`` without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no figures (pip install attnflow[viz])")
        return None
    free = getattr(fem, "free_energy", None) if fem is not None and cfg.model.noise else None
    panels = (
        ["energy", "density"]
        + (["w1"] if cmp is not None else [])
        + (["free"] if free is not None else [])
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    fem_energy = fem is not None and bool(np.isfinite(fem.energy).any())
    if fem_energy:
        ax.plot(fem.t, fem.energy, "k-", label="finite elements")
    if ens is not None and particle_log_energy is not None:
        e = particle_log_energy
        ax.errorbar(ens.t, e.mean(0), yerr=e.std(0), capsize=2, label="particles")
    ax.set(xlabel="t", ylabel=r"$\log E$", title="interaction energy")
    if not fem_energy and (ens is None or particle_log_energy is None):
        ax.text(0.5, 0.5, "no interaction energy", ha="center", transform=ax.transAxes)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax = axes[1]
    geom = geometry(cfg)
    if geom == "circle":
        if fem is not None:  # the density at the quadrature points, by angle
            th = np.arctan2(fem.points[:, 1], fem.points[:, 0])
            dens = fem.weights[-1] / fem.point_weights / fem.mass[-1]
            order = np.argsort(th)
            ax.plot(th[order], dens[order], "k-", label="finite elements")
        if ens is not None:
            th = np.arctan2(ens.x[0, -1, :, 1], ens.x[0, -1, :, 0])
            bins = np.linspace(-np.pi, np.pi, max(8, min(90, ens.x.shape[2] // 20)) + 1)
            ax.hist(th, bins=bins, density=True, alpha=0.5, label="particles (run 0)")
        ax.set(xlabel=r"$\theta$", title=f"density at t = {cfg.time.save_times[-1]:g}")
        ax.legend()
    else:
        if geom == "sphere":

            def proj(x):
                return np.arctan2(x[:, 1], x[:, 0]), np.arcsin(np.clip(x[:, 2], -1, 1))

            ax.set(xlabel="longitude", ylabel="latitude")
        else:

            def proj(x):
                return x[:, 0], x[:, 1] if x.shape[1] > 1 else np.zeros(len(x))

            ax.set(xlabel="x", ylabel="y")
        if fem is not None:
            u, v = proj(fem.points)
            ax.scatter(u, v, c=fem.weights[-1] / fem.point_weights, s=4, cmap="magma")
        if ens is not None:
            u, v = proj(ens.x[0, -1])
            ax.scatter(u, v, s=2, c="tab:cyan", alpha=0.6)
        ax.set_title(f"t = {cfg.time.save_times[-1]:g}")
    if cmp is not None:
        ax = axes[2]
        m, s = cmp.mean_sd(cmp.w1)
        ax.errorbar(cmp.t, m, yerr=s, capsize=2)
        ax.set(xlabel="t", ylabel=r"$W_1$", title="W1(finite elements, particles)")
    if free is not None:
        ax = axes[panels.index("free")]
        ax.plot(fem.t, free, "k-")
        ax.set(
            xlabel="t",
            ylabel=r"$\sigma\int\rho\log\rho - E$",
            title=f"free energy (finite elements), sigma = {cfg.model.noise:g}",
        )
    fig.suptitle(f"{cfg.run.name}: {_describe(cfg.model)}, d = {cfg.model.d}, {cfg.model.space}")
    fig.tight_layout()
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.png"
    tmp = out / "summary.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


def _angle(x: np.ndarray) -> np.ndarray:
    """theta on S^1, the latitude on S^2 (points projected radially)."""
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    if x.shape[-1] == 2:
        return np.arctan2(x[..., 1], x[..., 0])
    return np.arcsin(np.clip(x[..., 2], -1.0, 1.0))


def causal_figure(cfg: Config, out: Path, fem, ens, summary: dict) -> Path | None:
    """The summary figure of a causal run into ``out/summary.png`` (see the module docstring);
    ``fem`` a :class:`~attnflow.fem.causal.KineticSolution` or ``None``, ``ens`` the prompts
    or ``None``, ``summary`` the run's summary (``retrieval``, ``comparison``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no figures (pip install attnflow[viz])")
        return None
    d = cfg.model.d
    lo, hi = (-np.pi, np.pi) if d == 2 else (-np.pi / 2, np.pi / 2)
    name = r"$\theta$" if d == 2 else "latitude"
    panels = [p for p, on in (("fem", fem), ("particles", ens)) if on is not None]
    # S^2: the latitude bands of the points are of unequal area; the images are mean densities
    # per band (finite elements) and token histograms normalised per row (particles).
    panels += [p for p in ("retrieval", "comparison") if p in summary]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    axes = np.atleast_1d(axes)
    t = cfg.time.save_times[-1]
    bins = 64
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "fem":  # the mean density of every angle band (band mass / band size)
            ang = _angle(fem.points)
            cells = max(1, fem.points.shape[0] // fem.points_per_cell)
            nb = min(bins, max(4, cells if d == 2 else int(math.sqrt(cells))))
            size = np.histogram(ang, nb, (lo, hi), weights=fem.point_weights)[0]
            mass = [
                np.histogram(ang, nb, (lo, hi), weights=np.maximum(w, 0))[0]
                for w in fem.weights[-1]
            ]
            with np.errstate(invalid="ignore", divide="ignore"):
                img = np.stack(mass) / size
            ax.imshow(
                img,
                origin="lower",
                aspect="auto",
                extent=(lo, hi, 0, 1),
                cmap="magma",
                vmin=0,
                vmax=max(float(np.nanmax(img)), 1e-300),
                interpolation="nearest",
            )
            ax.set(xlabel=name, ylabel="s", title=f"kinetic density, t = {t:g}")
        elif panel == "particles":
            n = ens.x.shape[2]
            rows = min(n, 64)
            slot = (np.arange(n) * rows) // n
            ang = _angle(ens.x[:, -1])  # (P, N)
            img = np.stack(
                [np.histogram(ang[:, slot == r], bins, (lo, hi))[0] for r in range(rows)]
            ).astype(float)
            img /= np.maximum(img.sum(axis=1, keepdims=True), 1) * (hi - lo) / bins
            ax.imshow(
                img,
                origin="lower",
                aspect="auto",
                extent=(lo, hi, 0, 1),
                cmap="magma",
                vmin=0,
                interpolation="nearest",
            )
            ax.set(xlabel=name, ylabel="s", title=f"{ens.n_runs} prompts of {n} tokens")
        elif panel == "retrieval":
            r = summary["retrieval"]
            s_k, v, e = (np.asarray(r[k], dtype=float) for k in ("s", "mc", "mc_stderr"))
            keep = s_k < 1
            ax.errorbar(s_k[keep], v[keep], yerr=e[keep], fmt=".", capsize=1, label="prompts")
            if r.get("closed_form") is not None:
                c = np.asarray(r["closed_form"], dtype=float)
                ax.plot(s_k[keep], c[keep], "k-", label="closed form (N = inf)")
            ax.set(xlabel="s", ylabel="correlation", title=f"retrieval, mode 1, t = {r['t']:g}")
            ax.legend()
        else:
            c = summary["comparison"]
            ax.plot(c["s"], c["w1_slices_final"], "o-")
            ax.set(xlabel="s", ylabel=r"$W_1$", title="W1(slice, tokens of the slice)")
    m = cfg.model
    fig.suptitle(
        f"{cfg.run.name}: causal {m.form}, beta = {m.beta:g}, alibi = {m.alibi:g}, d = {d}"
    )
    fig.tight_layout()
    return _save(fig, out)


def _describe(m: ModelSection) -> str:
    """The dynamics in a few words: ``SA, beta = 4`` (one head and nothing else), else e.g.
    ``2 heads + 1 perceptron + 3 controls``; ``+ noise sigma = 0.1`` with noise."""
    noise = f" + noise sigma = {m.noise:g}" if m.noise else ""
    return _terms_text(m) + noise


def _terms_text(m: ModelSection) -> str:
    heads = m.heads()
    n_perc = len(m.terms) - sum(p != "model" for p, _ in heads)
    if len(heads) == 1 and not n_perc and not m.controls:
        h = heads[0][1]
        return f"{h.attention}, beta = {h.beta:g}"
    parts = [(len(heads), "head"), (n_perc, "perceptron"), (len(m.controls), "control")]
    return " + ".join(f"{n} {w}{'s' if n > 1 else ''}" for n, w in parts if n)
