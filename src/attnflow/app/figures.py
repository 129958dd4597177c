"""The summary figure of a run (matplotlib, optional): final densities, energies, W1.

``figures/summary.png`` (:func:`summary_plot` draws it, in the package style of
:mod:`attnflow.app.style`) shows at the top the finite element density at the last save time
as a field (S^1: a curve against the angle; S^2: two opposite smooth-shaded views with a
labelled colour bar; a 2-D box: an image of square-bin averages with a labelled colour bar,
the (x, y) marginal for a 3-D box; a 1-D box: a curve) and beside it the particles of run 0
(histogram on S^1 and in 1-D, longitude/latitude on S^2, x/y in a box); below, the interaction
energy ``log E`` over time (finite elements, and the particle runs' mean with their standard
deviation as error bars), for runs with both solvers ``W1`` between them, and with noise the
finite element free energy ``sigma int rho log rho - E``. Every axis is labelled. Without
matplotlib it logs a warning and writes nothing.

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

__all__ = ["causal_figure", "summary_figure", "summary_plot"]

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
    except ImportError:
        logger.warning("matplotlib is not installed: no figures (pip install attnflow[viz])")
        return None
    fig = summary_plot(cfg, fem, ens, cmp, particle_log_energy=particle_log_energy)
    return _save(fig, out, dpi=110)


def summary_plot(
    cfg: Config,
    fem: FieldSolution | None,
    ens: EnsembleSolution | None,
    cmp: Comparison | None,
    *,
    particle_log_energy: np.ndarray | None = None,
):
    """The summary figure (a matplotlib ``Figure``, not saved; arguments of
    :func:`summary_figure`), in the package style (:mod:`attnflow.app.style`).

    Top row, at the last save time: the finite element density as a field — S^1 a curve
    against the angle, S^2 two opposite smooth-shaded views (:func:`~attnflow.app.style.
    sphere_views`), a 2-D box (or the (x, y) marginal of a 3-D one) an image of square-bin
    averages, a 1-D box a curve — with a labelled colour bar where colour carries the value,
    and beside it the particles of run 0 (S^1 and 1-D: a histogram; S^2: longitude and latitude;
    boxes: x and y). Bottom row: the interaction energy, W1 between the solvers, the free
    energy (noise). Every axis is labelled (checked: :func:`~attnflow.app.style.check_figure`).
    """
    import matplotlib.pyplot as plt

    from attnflow.app.style import check_figure, style_params

    free = getattr(fem, "free_energy", None) if fem is not None and cfg.model.noise else None
    lines = (
        ["energy"] + (["w1"] if cmp is not None else []) + (["free"] if free is not None else [])
    )
    with plt.rc_context(style_params()):
        fig = plt.figure(figsize=(10.0, 7.0))
        top, bottom = fig.subfigures(2, 1, height_ratios=[1.25, 1.0])
        _density_row(top, cfg, fem, ens)
        axes = np.atleast_1d(bottom.subplots(1, len(lines)))
        _line_panels(axes, lines, cfg, fem, ens, cmp, free, particle_log_energy)
        fig.suptitle(
            f"{cfg.run.name}: {_describe(cfg.model)}, d = {cfg.model.d}, {cfg.model.space}"
        )
    check_figure(fig)
    return fig


def _line_panels(axes, lines, cfg, fem, ens, cmp, free, particle_log_energy) -> None:
    ax = axes[0]
    fem_energy = fem is not None and bool(np.isfinite(fem.energy).any())
    if fem_energy:
        ax.plot(fem.t, fem.energy, label="finite elements")
    if ens is not None and particle_log_energy is not None:
        e = particle_log_energy
        ax.errorbar(ens.t, e.mean(0), yerr=e.std(0), capsize=2, marker="o", label="particles")
    ax.set(xlabel="t", ylabel=r"$\log E$", title="interaction energy")
    if not fem_energy and (ens is None or particle_log_energy is None):
        ax.text(0.5, 0.5, "no interaction energy", ha="center", transform=ax.transAxes)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    if "w1" in lines:
        ax = axes[lines.index("w1")]
        m, s = cmp.mean_sd(cmp.w1)
        ax.errorbar(cmp.t, m, yerr=s, capsize=2, marker="o")
        ax.set(xlabel="t", ylabel=r"$W_1$", title="W1(finite elements, particles)")
    if "free" in lines:
        ax = axes[lines.index("free")]
        ax.plot(fem.t, free)
        ax.set(
            xlabel="t",
            ylabel=r"$\sigma\int\rho\log\rho - E$",
            title=f"free energy, sigma = {cfg.model.noise:g}",
        )


def _cell_means(fem: FieldSolution) -> tuple[np.ndarray, np.ndarray]:
    """Cell centroids (m, d) and the cell means of the last saved density, normalised to unit
    mass (m,), from the quadrature cloud (``points_per_cell`` points per cell)."""
    k = fem.points_per_cell
    m = fem.points.shape[0] // k
    pw = fem.point_weights.reshape(m, k)
    area = np.maximum(pw.sum(1), np.finfo(float).tiny)
    centroid = np.einsum("cq,cqd->cd", pw, fem.points.reshape(m, k, -1)) / area[:, None]
    mass = fem.mass[-1] if fem.mass[-1] > 0 else 1.0
    return centroid, fem.weights[-1].reshape(m, k).sum(1) / area / mass


def _density_row(sub, cfg: Config, fem, ens) -> None:
    """The density field and the particles beside it (see :func:`summary_plot`)."""
    geom = geometry(cfg)
    d = cfg.model.d
    t = cfg.time.save_times[-1]
    x = ens.x[0, -1] if ens is not None else None
    flat = geom == "euclidean" and d >= 2
    n_fem = 0 if fem is None else (2 if geom == "sphere" else 1)
    widths = [1.0] * n_fem + ([1.2 if flat or geom == "sphere" else 1.0] if x is not None else [])
    axes = list(np.atleast_1d(sub.subplots(1, len(widths), width_ratios=widths)))
    label = "density (unit mass)"
    lim = None
    if fem is not None:
        centroid, rho = _cell_means(fem)
        if geom == "circle":
            th = np.arctan2(centroid[:, 1], centroid[:, 0])
            o = np.argsort(th)
            axes[0].plot(th[o], rho[o], label="finite elements")
            axes[0].set(
                xlabel=r"angle $\theta$",
                ylabel=r"density $\rho(\theta)$",
                title=f"finite element density, t = {t:g}",
                xlim=(-np.pi, np.pi),
            )
        elif geom == "sphere":
            v, f, values = _sphere_display(centroid, rho)
            from attnflow.app.style import sphere_views

            mappable = sphere_views(axes[:2], v, f, values, vmin=0.0)
            axes[0].set_title(f"finite element density, t = {t:g}\nfront")
            sub.colorbar(mappable, ax=axes[:2], label=label, shrink=0.85)
        elif d == 1:
            o = np.argsort(centroid[:, 0])
            axes[0].plot(centroid[o, 0], rho[o])
            axes[0].set(
                xlabel="x", ylabel=r"density $\rho(x)$", title=f"finite element density, t = {t:g}"
            )
        else:
            img, edges = _box_image(cfg, fem)
            mesh = axes[0].pcolormesh(edges[0], edges[1], img.T, cmap=None, vmin=0.0)
            axes[0].set(xlabel="x", ylabel="y", aspect="equal")
            axes[0].set_title(
                f"finite element density{' (x, y marginal)' if d > 2 else ''}, t = {t:g}"
            )
            sub.colorbar(mesh, ax=axes[0], label=label, shrink=0.85)
            lim = (edges[0][[0, -1]], edges[1][[0, -1]])
    if x is None:
        return
    ax = axes[-1]
    n = x.shape[0]
    title = f"particles (run 0, N = {n}), t = {t:g}"
    if geom == "circle" or d == 1:
        u = np.arctan2(x[:, 1], x[:, 0]) if geom == "circle" else x[:, 0]
        rng = (-np.pi, np.pi) if geom == "circle" else (float(u.min()), float(u.max()) + 1e-12)
        ax.hist(u, bins=max(8, min(90, n // 20)), range=rng, density=True, color="0.55")
        name = r"angle $\theta$" if geom == "circle" else "x"
        ax.set(xlabel=name, ylabel="particle density (histogram)", title=title)
        if geom == "circle":
            ax.set_xlim(-np.pi, np.pi)
    elif geom == "sphere":
        lon = np.degrees(np.arctan2(x[:, 1], x[:, 0]))
        lat = np.degrees(np.arcsin(np.clip(x[:, 2], -1.0, 1.0)))
        ax.scatter(lon, lat, s=3, c="black", alpha=0.6, linewidths=0)
        ax.set(
            xlabel="longitude (degrees)",
            ylabel="latitude (degrees)",
            title=title,
            xlim=(-180, 180),
            ylim=(-90, 90),
        )
        ax.set_aspect("equal")
    else:
        ax.scatter(x[:, 0], x[:, 1], s=3, c="black", alpha=0.6, linewidths=0)
        ax.set(xlabel="x", ylabel="y", title=title)
        if lim is not None:
            ax.set(xlim=lim[0], ylim=lim[1])
        ax.set_aspect("equal")


def _sphere_display(centroid: np.ndarray, rho: np.ndarray):
    """A display icosphere with about 4 vertices per cell and, at each vertex, the inverse
    distance weighted mean of the 3 nearest cell means (for display only)."""
    from scipy.spatial import cKDTree

    from attnflow.meshdata import icosphere

    level = int(min(5, max(2, math.ceil(math.log(max(4 * rho.size, 12) / 10.0, 4)))))
    v, f = icosphere(level)
    c = centroid / np.linalg.norm(centroid, axis=1, keepdims=True)
    dist, idx = cKDTree(c).query(v, k=min(3, rho.size))
    dist, idx = np.atleast_2d(dist), np.atleast_2d(idx)
    w = 1.0 / np.maximum(dist, 1e-9)
    return v, f, (w * rho[idx]).sum(1) / w.sum(1)


def _box_image(cfg: Config, fem: FieldSolution):
    """Square-bin averages of the last density in (x, y) (for d = 3 the (x, y) marginal):
    bin mass / bin area, unit total mass; the bins are as many as the mesh's squares."""
    pts = fem.points
    k = fem.points_per_cell
    n_cells = pts.shape[0] // k
    d = pts.shape[1]
    per_axis = max(4, round((n_cells / (2 if d == 2 else 6)) ** (1.0 / d)))
    length = cfg.mesh.length
    edges = []
    for j in range(2):
        lo, hi = (-length, length) if length else (pts[:, j].min(), pts[:, j].max())
        edges.append(np.linspace(lo, hi, per_axis + 1))
    mass = np.histogram2d(pts[:, 0], pts[:, 1], bins=edges, weights=fem.weights[-1])[0]
    area = np.outer(np.diff(edges[0]), np.diff(edges[1]))
    total = fem.mass[-1] if fem.mass[-1] > 0 else 1.0
    return mass / area / total, edges


def _save(fig, out: Path, dpi: float = 90) -> Path:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.png"
    tmp = out / "summary.tmp.png"
    fig.savefig(tmp, dpi=dpi)
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
