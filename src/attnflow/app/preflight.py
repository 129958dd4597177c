"""Checks of a configuration that need its mesh: before anything is written, on every rank.

The configuration checks (:mod:`attnflow.app.config`) evaluate the initial density at probe
points of the domain; an expression can still be negative between them. The finite element
solver evaluates it at the quadrature points of its cells, and would refuse it there only
after the run directory exists (and on the ranks that own the bad cells only).
:func:`check_initial_on_quadrature` therefore computes those very points in numpy — the mesh's
arrays (:mod:`attnflow.meshdata`, the box through :func:`attnflow.fem.meshes.mesh_arrays`),
the solver's Gauss rule of degree ``max(fem.quadrature_degree, 2 fem.degree)`` from basix,
mapped affinely into every cell and, on the sphere, projected radially as the solver does — and
checks the density there with :func:`attnflow.app.config.density.check_density`. Every rank
computes the same points and reaches the same verdict (no communication).
"""

from __future__ import annotations

import numpy as np

from attnflow import meshdata
from attnflow.app import build
from attnflow.app.config import Config, ConfigError
from attnflow.app.config.density import check_density

__all__ = ["check_initial_on_quadrature", "mesh_arrays", "quadrature_points"]

_CELLS = {1: "interval", 2: "triangle", 3: "tetrahedron"}


def mesh_arrays(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """``(points, cells)`` of the mesh of ``cfg`` (serial numpy arrays)."""
    m = cfg.mesh
    if m is None:
        raise ValueError("the configuration has no mesh")
    if m.type == "circle":
        return meshdata.circle_arrays(int(m.cells))
    if m.type == "sphere":
        return meshdata.sphere_arrays(int(m.level))
    if m.type == "box":
        from attnflow.fem.meshes import mesh_arrays as fem_mesh_arrays

        return fem_mesh_arrays("box", cells=m.cells, dim=cfg.model.d, length=m.length)
    try:
        return meshdata.read_mesh(m.path)
    except meshdata.MeshError as e:
        raise ConfigError("mesh.path", str(e)) from None


def quadrature_points(cfg: Config) -> np.ndarray:
    """(n_cells n_q, d) quadrature points of the finite element solver of ``cfg`` (on the
    sphere projected onto it, where the solver evaluates the initial density)."""
    import basix

    points, cells = mesh_arrays(cfg)
    tdim = cells.shape[1] - 1
    cell = getattr(basix.CellType, _CELLS[tdim])
    degree = max(cfg.fem.quadrature_degree, 2 * cfg.fem.degree)
    ref, _ = basix.make_quadrature(cell, degree)
    x0 = points[cells[:, 0]]
    J = np.stack([points[cells[:, k + 1]] - x0 for k in range(tdim)], axis=2)
    pts = (x0[:, None, :] + np.einsum("cij,qj->cqi", J, ref)).reshape(-1, points.shape[1])
    if cfg.model.sphere:
        pts = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    return pts


def check_initial_on_quadrature(cfg: Config) -> None:
    """Raise :class:`ConfigError` unless the initial density of ``cfg`` is finite and
    non-negative at the finite element solver's quadrature points (runs with ``"fem"``)."""
    if not cfg.run.fem or cfg.mesh is None:
        return
    ini = cfg.initial
    key = {"expression": "initial.expression", "circle_modes": "initial.amplitudes"}.get(
        ini.type, "initial"
    )
    f = build.initial_density(ini, cfg.model.d)
    check_density(key, f, cfg.model.d, cfg.model.sphere, None, quadrature_points(cfg))
