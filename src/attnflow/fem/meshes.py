"""Finite element meshes (dolfinx): S^1, S^2, boxes and mesh files, ghosted for facet forms.

* ``circle_mesh(n)``: the circle S^1 in R^2 as ``n`` straight segments (vertices on the circle).
* ``sphere_mesh(level)``: the icosahedron refined ``level`` times (each triangle split in four,
  new vertices projected to the sphere): ``20 * 4**level`` triangles, level 6 = 81920.
* ``box_mesh(d, L, n)``: ``[-L, L]^d`` for d = 1, 2, 3 with ``n`` cells per direction.
* ``load_mesh(path)``: a mesh file (``.npz`` with ``points`` and ``cells``, read and checked by
  :func:`attnflow.meshdata.read_mesh`); ``mesh_arrays(kind, ...)`` gives the arrays of the
  meshes above for writing such a file (``attnflow mesh``, :func:`attnflow.meshdata.write_mesh`).

Every mesh is partitioned with ``GhostMode.shared_facet`` so that interior-facet (``dS``)
integrals assemble in parallel (DESIGN.md §4). The point and cell arrays of the circle and
sphere meshes come from :mod:`attnflow.meshdata` (numpy only; the sphere levels <= 4 ship with
the package, larger ones are cached), read on rank 0 and distributed. The cell order of the
arrays is the mesh's input order (``original_cell_index``), so checkpoints and histograms refer
to it whatever the partition.
"""

from __future__ import annotations

from pathlib import Path

import basix.ufl
import dolfinx.mesh
import numpy as np
import ufl
from mpi4py import MPI

from attnflow import meshdata
from attnflow.meshdata import icosphere

__all__ = [
    "box_mesh",
    "circle_mesh",
    "icosphere",
    "load_mesh",
    "mesh_arrays",
    "mesh_from_arrays",
    "sphere_mesh",
]

#: Basix cell names by number of vertices per cell.
_CELLS = {2: "interval", 3: "triangle", 4: "tetrahedron"}


def _partitioner():
    return dolfinx.mesh.create_cell_partitioner(dolfinx.mesh.GhostMode.shared_facet, 2)


def mesh_from_arrays(
    points: np.ndarray, cells: np.ndarray, comm: MPI.Comm = MPI.COMM_WORLD
) -> dolfinx.mesh.Mesh:
    """An affine simplex mesh from arrays given on rank 0, ghosted for facet integrals.

    Parameters
    ----------
    points : ndarray of float, shape (n, gdim)
        Vertices (used on rank 0 only; the other ranks pass any array of the same ``gdim``).
    cells : ndarray of int, shape (m, k)
        Cells, ``k`` = 2 (segments), 3 (triangles) or 4 (tetrahedra), ``k - 1 <= gdim``
        (used on rank 0 only; the other ranks pass any array with the same ``k``).
    comm : MPI.Comm
        The communicator of the mesh.

    Returns
    -------
    dolfinx.mesh.Mesh
        The distributed mesh (a manifold mesh when ``k - 1 < gdim``), cells in input order.
    """
    gdim, k = points.shape[1], cells.shape[1]
    element = basix.ufl.element("Lagrange", _CELLS[k], 1, shape=(gdim,))
    if comm.rank != 0:
        points = np.zeros((0, gdim))
        cells = np.zeros((0, k), dtype=np.int64)
    return dolfinx.mesh.create_mesh(
        comm, np.asarray(cells, np.int64), ufl.Mesh(element), points, partitioner=_partitioner()
    )


def circle_mesh(n: int, comm: MPI.Comm = MPI.COMM_WORLD) -> dolfinx.mesh.Mesh:
    """The unit circle S^1 in R^2 as ``n >= 3`` segments (:func:`meshdata.circle_arrays`)."""
    points, cells = meshdata.circle_arrays(n)
    return mesh_from_arrays(points, cells, comm)


def sphere_mesh(level: int, comm: MPI.Comm = MPI.COMM_WORLD) -> dolfinx.mesh.Mesh:
    """The unit sphere S^2 in R^3: icosahedron refined ``level`` times (0 <= level <= 7).

    The arrays are :func:`attnflow.meshdata.sphere_arrays` (read on rank 0).
    """
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= 7:
        raise ValueError(f"level must be an int in [0, 7] (20 * 4**level cells), got {level!r}")
    if comm.rank == 0:
        points, cells = meshdata.sphere_arrays(int(level))
    else:
        points, cells = np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return mesh_from_arrays(points, cells, comm)


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


def mesh_arrays(
    kind: str,
    *,
    cells: int | None = None,
    level: int | None = None,
    dim: int = 2,
    length: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The arrays of :func:`circle_mesh`, :func:`sphere_mesh` or :func:`box_mesh`, serially.

    Parameters
    ----------
    kind : {"circle", "sphere", "box"}
        ``"circle"``: ``cells`` segments; ``"sphere"``: icosphere ``level`` (0..7); ``"box"``:
        ``[-length, length]^dim`` with ``cells`` per direction, simplices (built by dolfinx on
        ``MPI.COMM_SELF``).
    cells, level, dim, length
        As above.

    Returns
    -------
    points : ndarray of float64, shape (n, gdim)
        Vertices (gdim = 2 for the circle, 3 for the sphere, ``dim`` for a box).
    cells : ndarray of int64, shape (m, k)
        Cells (k = 2 segments, 3 triangles, ``dim + 1`` for a box).
    """
    if kind == "circle":
        if cells is None or cells < 3:
            raise ValueError(f"cells must be an int >= 3 for a circle, got {cells!r}")
        return meshdata.circle_arrays(int(cells))
    if kind == "sphere":
        if level is None or not 0 <= level <= 7:
            raise ValueError(f"level must be an int in [0, 7], got {level!r}")
        return meshdata.sphere_arrays(int(level))
    if kind == "box":
        if cells is None or cells < 1:
            raise ValueError(f"cells must be an int >= 1 for a box, got {cells!r}")
        mesh = box_mesh(dim, float(length), int(cells), MPI.COMM_SELF)
        tdim = mesh.topology.dim
        n = mesh.topology.index_map(tdim).size_local
        return (
            np.array(mesh.geometry.x[:, :dim], dtype=np.float64),
            np.array(mesh.geometry.dofmaps[0][:n], dtype=np.int64),
        )
    raise ValueError(f'kind must be "circle", "sphere" or "box", got {kind!r}')


def load_mesh(path: str | Path, comm: MPI.Comm = MPI.COMM_WORLD) -> dolfinx.mesh.Mesh:
    """A distributed mesh from a mesh file (read on rank 0, ghosted for facet integrals).

    Parameters
    ----------
    path : str or Path
        An ``.npz`` mesh file, read and checked by :func:`attnflow.meshdata.read_mesh`.
    comm : MPI.Comm
        The communicator of the mesh.

    Returns
    -------
    dolfinx.mesh.Mesh
        The mesh, cells in the file's order.

    Raises
    ------
    attnflow.meshdata.MeshError
        On every rank, if the file is missing or malformed (the message names the file).
    """
    points = cells = None
    result: tuple[int, int] | str | None = None
    if comm.rank == 0:
        try:
            points, cells = meshdata.read_mesh(path)
            result = (points.shape[1], cells.shape[1])
        except meshdata.MeshError as e:
            result = str(e)
    result = comm.bcast(result, root=0)
    if isinstance(result, str):
        raise meshdata.MeshError(result)
    gdim, k = result
    if comm.rank != 0:
        points, cells = np.zeros((0, gdim)), np.zeros((0, k), dtype=np.int64)
    return mesh_from_arrays(points, cells, comm)
