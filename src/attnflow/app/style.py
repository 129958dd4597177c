"""One matplotlib style for attnflow's figures (demos, run summaries).

* :func:`use_style` sets fonts, paper sizes, a colour map whose lightness grows monotonically
  (``viridis``: it prints as a monotone grey ramp), a line cycle whose members differ by dash
  pattern as well as by colour (readable in grey), and constrained layout (colour bars and
  labels do not overlap).
* :func:`save_figure` writes one figure in several formats (``png``, ``pdf``, ``svg``) and first
  checks it (:func:`check_figure`): every rectilinear axes that shows data names its quantity on
  both axes, every colour bar has a label.
* :func:`sphere_views` draws a field on S^2 as two opposite orthographic views (smooth Gouraud
  shading on a refined icosphere), :func:`refine_sphere` and :func:`cell_to_vertex` prepare it;
  :func:`sphere_scatter` adds points (tokens) to the same views.
* :func:`add_format_argument` gives a demo its ``--format`` option.

matplotlib is imported inside the functions (the module is light at import).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CMAP",
    "COLUMN_WIDTH",
    "FORMATS",
    "PAGE_WIDTH",
    "FigureLabelError",
    "add_format_argument",
    "cell_to_vertex",
    "check_figure",
    "figsize",
    "refine_sphere",
    "save_figure",
    "sphere_scatter",
    "sphere_views",
    "style_params",
    "use_style",
]

log = logging.getLogger(__name__)

#: Width of one column of a two-column paper, inches.
COLUMN_WIDTH = 3.4
#: Width of a full page (text width), inches.
PAGE_WIDTH = 7.0
#: The sequential colour map: lightness increases monotonically (prints as a grey ramp).
CMAP = "viridis"
#: The figure formats a demo can write.
FORMATS = ("png", "pdf", "svg")

# Colours of the Okabe-Ito palette (colour-blind safe), ordered so that neighbours differ in
# luminance by > 0.14; each also gets its own dash pattern, so curves stay apart in grey.
_COLORS = ["#000000", "#D55E00", "#E69F00", "#009E73", "#56B4E9", "#0072B2", "#CC79A7"]
_DASHES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 1))]

# Projections whose axes are not labelled x/y (sphere maps, 3-D views).
_EXEMPT_PROJECTIONS = {"3d", "mollweide", "aitoff", "hammer", "lambert", "polar"}


def style_params() -> dict[str, Any]:
    """The rcParams of the attnflow style (a dict for ``matplotlib.rc_context``)."""
    from cycler import cycler

    # No markers in the cycle: a float ``markevery`` hides the marker of a one-point line, and
    # markers at every point of a dense curve hide it. Data points set their markers explicitly.
    cyc = cycler(color=_COLORS) + cycler(linestyle=_DASHES)
    return {
        "figure.figsize": (PAGE_WIDTH / 2, PAGE_WIDTH / 2 * 0.78),
        "figure.dpi": 100,
        "figure.constrained_layout.use": True,
        "savefig.dpi": 200,
        "savefig.bbox": "standard",
        "font.family": "sans-serif",
        "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
        "font.size": 9.0,
        "axes.titlesize": 9.0,
        "axes.labelsize": 9.0,
        "xtick.labelsize": 8.0,
        "ytick.labelsize": 8.0,
        "legend.fontsize": 7.5,
        "legend.frameon": False,
        "figure.titlesize": 10.0,
        "mathtext.fontset": "dejavusans",
        "axes.prop_cycle": cyc,
        "axes.grid": False,
        "axes.linewidth": 0.7,
        "lines.linewidth": 1.3,
        "lines.markersize": 4.0,
        "image.cmap": CMAP,
        "pdf.fonttype": 42,
        "svg.fonttype": "none",
    }


def use_style() -> None:
    """Apply the attnflow style to matplotlib's global rcParams (call once, before plotting)."""
    import matplotlib

    matplotlib.rcParams.update(style_params())


def figsize(width: str | float = "page", aspect: float = 0.35) -> tuple[float, float]:
    """A figure size (inches) for a paper.

    Parameters
    ----------
    width
        ``"page"`` (:data:`PAGE_WIDTH`), ``"column"`` (:data:`COLUMN_WIDTH`) or inches.
    aspect
        Height over width.
    """
    w = {"page": PAGE_WIDTH, "column": COLUMN_WIDTH}.get(width, width)  # type: ignore[arg-type]
    if not isinstance(w, int | float) or w <= 0:
        raise ValueError(f"width: 'page', 'column' or a positive number of inches, got {width!r}")
    if not aspect > 0:
        raise ValueError(f"aspect: a positive height/width ratio, got {aspect!r}")
    return float(w), float(w) * float(aspect)


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the option ``--format png [pdf svg]`` (default png): ``args.format``."""
    parser.add_argument(
        "--format",
        nargs="+",
        choices=FORMATS,
        default=["png"],
        help="figure formats to write (one or more of png, pdf, svg; default png)",
    )


class FigureLabelError(ValueError):
    """An axes showing data does not name its quantity, or a colour bar has no label."""


def _has_data(ax) -> bool:
    return bool(ax.lines or ax.collections or ax.images or ax.patches or ax.containers)


def _label_in_group(ax, which: str) -> bool:
    shared = ax.get_shared_x_axes() if which == "x" else ax.get_shared_y_axes()
    for other in shared.get_siblings(ax):
        label = other.get_xlabel() if which == "x" else other.get_ylabel()
        if label.strip():
            return True
    return False


def check_figure(fig) -> None:
    """Raise :class:`FigureLabelError` if an axes of ``fig`` with data lacks an x or y label.

    Shared axes count as labelled if one of the group is (``sharey=True`` rows). Exempt: axes
    switched off (images of sphere views), 3-D and map projections. A colour bar needs a label
    on its long axis.
    """
    problems = []
    for i, ax in enumerate(fig.axes):
        name = f"axes {i} ({ax.get_title()!r})" if ax.get_title() else f"axes {i}"
        if ax.get_label() == "<colorbar>":
            if not (ax.get_xlabel().strip() or ax.get_ylabel().strip()):
                problems.append(f"colour bar {i} has no label")
            continue
        if not ax.axison or ax.name in _EXEMPT_PROJECTIONS or not _has_data(ax):
            continue
        for which in "xy":
            if not _label_in_group(ax, which):
                problems.append(f"{name} has no {which}label")
    if problems:
        raise FigureLabelError("figure not labelled: " + "; ".join(problems))


def save_figure(
    fig,
    path: str | Path,
    formats: Iterable[str] = ("png",),
    *,
    dpi: float | None = None,
    check: bool = True,
    close: bool = True,
) -> list[Path]:
    """Write ``fig`` as ``path.<fmt>`` for each format, after :func:`check_figure`.

    Parameters
    ----------
    fig
        A matplotlib figure.
    path
        The file path without suffix (a suffix given is replaced); parent directories are made.
    formats
        Some of :data:`FORMATS`.
    dpi
        Resolution of raster output (default the style's ``savefig.dpi``).
    check
        Check the labels first (:func:`check_figure`).
    close
        Close the figure afterwards.

    Returns
    -------
    list of Path
        The files written.
    """
    formats = [formats] if isinstance(formats, str) else list(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats: one or more of {', '.join(FORMATS)}, got {formats!r}")
    if check:
        check_figure(fig)
    base = Path(path)
    if base.suffix.lstrip(".") in FORMATS:
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = base.parent / f"{base.name}.{fmt}"
        fig.savefig(target, format=fmt, dpi=dpi)
        written.append(target)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    log.info("wrote %s (%s)", base, ", ".join(formats))
    return written


# -- fields on S^2 ---------------------------------------------------------------------------


def cell_to_vertex(v: np.ndarray, f: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Area-weighted average of cell values at the vertices of a triangulated surface.

    Parameters
    ----------
    v : (n_vertices, 3) vertex coordinates
    f : (n_cells, 3) vertex indices of the triangles
    values : (n_cells,) one value per cell

    Returns
    -------
    (n_vertices,) the vertex values
    """
    v, f, values = np.asarray(v, float), np.asarray(f), np.asarray(values, float)
    if values.shape != (f.shape[0],):
        raise ValueError(f"values: one per cell, shape ({f.shape[0]},), got {values.shape}")
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    num = np.zeros(v.shape[0])
    den = np.zeros(v.shape[0])
    for k in range(3):
        np.add.at(num, f[:, k], area * values)
        np.add.at(den, f[:, k], area)
    return num / np.maximum(den, np.finfo(float).tiny)


def refine_sphere(
    v: np.ndarray, f: np.ndarray, values: np.ndarray, levels: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each triangle into 4 ``levels`` times, new vertices projected onto S^2.

    Vertex values are interpolated linearly along the edges (for display only: the
    computation's mesh is unchanged).

    Parameters
    ----------
    v : (n_vertices, 3) vertices on the unit sphere
    f : (n_cells, 3) triangles
    values : (n_vertices,) vertex values
    levels : number of 1-to-4 splits

    Returns
    -------
    v : (m_vertices, 3), f : (4**levels n_cells, 3), values : (m_vertices,)
    """
    v, f, values = np.asarray(v, float), np.asarray(f, np.int64), np.asarray(values, float)
    if values.shape != (v.shape[0],):
        raise ValueError(f"values: one per vertex, shape ({v.shape[0]},), got {values.shape}")
    for _ in range(int(levels)):
        edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        edges.sort(axis=1)
        uniq, inverse = np.unique(edges, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        mid = v[uniq[:, 0]] + v[uniq[:, 1]]
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        n = v.shape[0]
        values = np.concatenate([values, 0.5 * (values[uniq[:, 0]] + values[uniq[:, 1]])])
        v = np.concatenate([v, mid])
        m = f.shape[0]
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        ab, bc, ca = (n + inverse[:m], n + inverse[m : 2 * m], n + inverse[2 * m :])
        f = np.concatenate(
            [
                np.stack([a, ab, ca], 1),
                np.stack([ab, b, bc], 1),
                np.stack([ca, bc, c], 1),
                np.stack([ab, bc, ca], 1),
            ]
        )
    return v, f, values


def _view_frame(direction: Sequence[float]) -> np.ndarray:
    """Rows: screen right, screen up, towards the viewer (orthonormal)."""
    n = np.asarray(direction, float)
    n = n / np.linalg.norm(n)
    up = np.array([0.0, 0.0, 1.0]) if abs(n[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    right = np.cross(up, n)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(n, right), n])


_DEFAULT_DIRECTIONS = ((1.0, 1.0, 0.6), (-1.0, -1.0, -0.6))


def sphere_scatter(
    axes: Sequence,
    x: np.ndarray,
    *,
    directions: Sequence[Sequence[float]] = _DEFAULT_DIRECTIONS,
    **kwargs: Any,
) -> None:
    """Draw the points of ``x`` that face each view of :func:`sphere_views` (same directions).

    Parameters
    ----------
    axes : one matplotlib axes per direction
    x : (n, 3) points on the unit sphere
    directions : view directions (as given to :func:`sphere_views`)
    **kwargs : passed to ``ax.scatter`` (default: small black dots)
    """
    if len(axes) != len(directions):
        raise ValueError(f"axes: one per direction ({len(directions)}), got {len(axes)}")
    kw = {"s": 0.5, "c": "k", "alpha": 0.6, "linewidths": 0} | kwargs
    for ax, direction in zip(axes, directions, strict=True):
        p = np.asarray(x, float) @ _view_frame(direction).T
        front = p[:, 2] > 0
        ax.scatter(p[front, 0], p[front, 1], **kw)


def sphere_views(
    axes: Sequence,
    v: np.ndarray,
    f: np.ndarray,
    values: np.ndarray,
    *,
    directions: Sequence[Sequence[float]] = _DEFAULT_DIRECTIONS,
    titles: Sequence[str] | None = None,
    refine: int = 0,
    cmap: str = CMAP,
    vmin: float | None = None,
    vmax: float | None = None,
):
    """Draw a vertex field on S^2 seen from ``directions`` (orthographic, Gouraud shading).

    The default directions are opposite, so the two views together show the whole sphere. A
    circle outlines the disc; the equator and the meridian of longitude 0 are drawn thin for
    orientation. The axes are switched off (no x/y quantity).

    Parameters
    ----------
    axes : one matplotlib axes per direction
    v : (n_vertices, 3) vertices on the unit sphere
    f : (n_cells, 3) triangles
    values : (n_vertices,) the field at the vertices (see :func:`cell_to_vertex`)
    directions : view directions (from the centre towards the viewer)
    titles : one title per view (default: front / back (opposite))
    refine : 1-to-4 splits of the mesh for display (:func:`refine_sphere`)
    cmap, vmin, vmax : colour scale (shared by all views)

    Returns
    -------
    The last ``TriMesh`` drawn (a mappable for ``fig.colorbar``).
    """
    import matplotlib.tri as mtri

    if len(axes) != len(directions):
        raise ValueError(f"axes: one per direction ({len(directions)}), got {len(axes)}")
    v, f, values = refine_sphere(v, f, values, refine) if refine else (v, f, values)
    vmin = float(np.nanmin(values)) if vmin is None else vmin
    vmax = float(np.nanmax(values)) if vmax is None else vmax
    mappable = None
    s = np.linspace(0, 2 * np.pi, 361)
    circle = np.stack([np.cos(s), np.sin(s), np.zeros_like(s)], 1)
    meridian = np.stack([np.cos(s), np.zeros_like(s), np.sin(s)], 1)
    for k, (ax, direction) in enumerate(zip(axes, directions, strict=True)):
        frame = _view_frame(direction)
        p = v @ frame.T  # (n, 3): screen x, screen y, depth
        # A triangle is drawn if any vertex faces the viewer (the rim is covered completely).
        # The shaded surface is rasterised in PDF/SVG (thousands of Gouraud triangles would make
        # files of tens of MB); outlines and text stay vector graphics.
        # Drawn back to front, so the rim's far triangles lie under the near ones.
        depth = p[f, 2]
        vis = f[(depth > -0.05).any(axis=1)]
        vis = vis[np.argsort(p[vis, 2].mean(axis=1))]
        tri = mtri.Triangulation(p[:, 0], p[:, 1], vis)
        mappable = ax.tripcolor(
            tri, values, shading="gouraud", cmap=cmap, vmin=vmin, vmax=vmax, rasterized=True
        )
        for curve in (circle, meridian):
            q = curve @ frame.T
            q[q[:, 2] < 0] = np.nan
            ax.plot(q[:, 0], q[:, 1], color="white", lw=0.5, alpha=0.6, ls="-", marker="")
        ax.plot(np.cos(s), np.sin(s), color="black", lw=0.7, ls="-", marker="")
        ax.set_xlim(-1.03, 1.03)
        ax.set_ylim(-1.03, 1.03)
        ax.set_aspect("equal")
        ax.set_axis_off()
        default = ("front", "back (opposite)")[k] if len(axes) == 2 else f"view {k + 1}"
        ax.set_title(titles[k] if titles is not None else default)
    return mappable
