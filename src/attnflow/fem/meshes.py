"""Meshes for the mean-field solver: S^1, S^2 and boxes, ghosted for interior-facet forms.

* ``circle_mesh(n)``: the circle S^1 in R^2 as ``n`` straight segments (vertices on the circle).
* ``sphere_mesh(level)``: the icosahedron refined ``level`` times (each triangle split in four,
  new vertices projected to the sphere): ``20 * 4**level`` triangles, level 6 = 81920.
* ``box_mesh(d, L, n)``: ``[-L, L]^d`` for d = 1, 2, 3 with ``n`` cells per direction.

Every mesh is partitioned with ``GhostMode.shared_facet`` so that interior-facet (``dS``)
integrals assemble in parallel (DESIGN.md §4). The point and cell arrays of the sphere meshes
come from :func:`icosphere`; levels <= 4 are committed under ``meshes/`` (made by
``meshes/generate.py``), larger ones are generated on demand and cached under
``$XDG_CACHE_HOME/attnflow/meshes`` (written atomically by one rank).
"""

from __future__ import annotations

import os
from pathlib import Path

import basix.ufl
import dolfinx.mesh
import numpy as np
import ufl
from mpi4py import MPI

__all__ = ["box_mesh", "circle_mesh", "icosphere", "sphere_mesh"]

#: Committed meshes (the repository's ``meshes/`` folder).
MESH_DIR = Path(__file__).resolve().parents[3] / "meshes"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attnflow" / "meshes"


def icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(n_v, 3)`` on the unit sphere and triangles ``(20 * 4**level, 3)``."""
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
        raise ValueError(f"level must be an int >= 0, got {level!r}")
    t = (1.0 + 5.0**0.5) / 2.0
    v = np.array(
        [
            [-1, t, 0],
            [1, t, 0],
            [-1, -t, 0],
            [1, -t, 0],
            [0, -1, t],
            [0, 1, t],
            [0, -1, -t],
            [0, 1, -t],
            [t, 0, -1],
            [t, 0, 1],
            [-t, 0, -1],
            [-t, 0, 1],
        ],
        dtype=float,
    )
    f = np.array(
        [
            [0, 11, 5],
            [0, 5, 1],
            [0, 1, 7],
            [0, 7, 10],
            [0, 10, 11],
            [1, 5, 9],
            [5, 11, 4],
            [11, 10, 2],
            [10, 7, 6],
            [7, 1, 8],
            [3, 9, 4],
            [3, 4, 2],
            [3, 2, 6],
            [3, 6, 8],
            [3, 8, 9],
            [4, 9, 5],
            [2, 4, 11],
            [6, 2, 10],
            [8, 6, 7],
            [9, 8, 1],
        ],
        dtype=np.int64,
    )
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for _ in range(int(level)):
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        uniq, inv = np.unique(edges, axis=0, return_inverse=True)
        mid = v[uniq[:, 0]] + v[uniq[:, 1]]
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        m = inv.reshape(3, -1).T + v.shape[0]  # midpoints of edges 01, 12, 20
        v = np.concatenate([v, mid])
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        f = np.concatenate(
            [
                np.stack([a, m[:, 0], m[:, 2]], 1),
                np.stack([b, m[:, 1], m[:, 0]], 1),
                np.stack([c, m[:, 2], m[:, 1]], 1),
                np.stack([m[:, 0], m[:, 1], m[:, 2]], 1),
            ]
        )
    return v, f


def _sphere_arrays(level: int) -> tuple[np.ndarray, np.ndarray]:
    name = f"sphere_{level}.npz"
    for path in (MESH_DIR / name, _cache_dir() / name):
        if path.exists():
            data = np.load(path)
            return data["points"], data["cells"]
    points, cells = icosphere(level)
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{name}.{os.getpid()}.tmp.npz"
    np.savez(tmp, points=points, cells=cells)
    os.replace(tmp, cache / name)
    return points, cells


def _partitioner():
    return dolfinx.mesh.create_cell_partitioner(dolfinx.mesh.GhostMode.shared_facet, 2)


def _manifold_mesh(comm, points, cells, cell: str, gdim: int) -> dolfinx.mesh.Mesh:
    element = basix.ufl.element("Lagrange", cell, 1, shape=(gdim,))
    if comm.rank != 0:
        points = np.zeros((0, gdim))
        cells = np.zeros((0, cells.shape[1]), dtype=np.int64)
    return dolfinx.mesh.create_mesh(
        comm, cells, ufl.Mesh(element), points, partitioner=_partitioner()
    )


def circle_mesh(n: int, comm: MPI.Comm = MPI.COMM_WORLD) -> dolfinx.mesh.Mesh:
    """The unit circle S^1 in R^2 as ``n >= 3`` segments."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3:
        raise ValueError(f"n must be an int >= 3 (segments of the circle), got {n!r}")
    th = 2 * np.pi * np.arange(n) / n
    points = np.stack([np.cos(th), np.sin(th)], axis=1)
    cells = np.stack([np.arange(n), (np.arange(n) + 1) % n], axis=1).astype(np.int64)
    return _manifold_mesh(comm, points, cells, "interval", 2)


def sphere_mesh(level: int, comm: MPI.Comm = MPI.COMM_WORLD) -> dolfinx.mesh.Mesh:
    """The unit sphere S^2 in R^3: icosahedron refined ``level`` times (0 <= level <= 7)."""
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= 7:
        raise ValueError(f"level must be an int in [0, 7] (20 * 4**level cells), got {level!r}")
    if comm.rank == 0:
        points, cells = _sphere_arrays(int(level))
    else:
        points, cells = np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return _manifold_mesh(comm, points, cells, "triangle", 3)


def box_mesh(d: int, L: float, n: int, comm: MPI.Comm = MPI.COMM_WORLD) -> dolfinx.mesh.Mesh:
    """The box ``[-L, L]^d`` (d = 1, 2, 3) with ``n`` cells per direction (simplices)."""
    if d not in (1, 2, 3):
        raise ValueError(f"d must be 1, 2 or 3, got {d!r}")
    if not (np.isfinite(L) and L > 0):
        raise ValueError(f"L must be finite and > 0, got {L!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    gm = dolfinx.mesh.GhostMode.shared_facet
    if d == 1:
        return dolfinx.mesh.create_interval(comm, n, [-L, L], ghost_mode=gm)
    lo, hi = np.full(d, -float(L)), np.full(d, float(L))
    if d == 2:
        return dolfinx.mesh.create_rectangle(
            comm, [lo, hi], [n, n], dolfinx.mesh.CellType.triangle, ghost_mode=gm
        )
    return dolfinx.mesh.create_box(
        comm, [lo, hi], [n, n, n], dolfinx.mesh.CellType.tetrahedron, ghost_mode=gm
    )
