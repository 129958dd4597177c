"""Mesh files: ``.npz`` archives with ``points`` (n, gdim) and ``cells`` (m, k) arrays.

``attnflow mesh`` writes them (:func:`mesh_arrays` + :func:`save_mesh_file`), a configuration
reads them with ``[mesh] type = "file"`` (:func:`load_mesh`). Segments (k = 2), triangles
(k = 3) or tetrahedra (k = 4), affine; a manifold mesh when the cells' dimension is below the
points' (circle and sphere meshes, vertices on the unit sphere), a volume mesh otherwise. The
cell order of the file is the mesh's input order (``original_cell_index``), so checkpoints and
histograms refer to it whatever the partition.
"""

from __future__ import annotations

import os
from pathlib import Path

import dolfinx.mesh
import numpy as np
from mpi4py import MPI

from attnflow.config import read_mesh_arrays
from attnflow.fem.meshes import _manifold_mesh, _sphere_arrays

__all__ = ["load_mesh", "mesh_arrays", "save_mesh_file"]

_CELLS = {2: "interval", 3: "triangle", 4: "tetrahedron"}


def mesh_arrays(
    kind: str,
    *,
    cells: int | None = None,
    level: int | None = None,
    dim: int = 2,
    length: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(points, cells)`` of the meshes of :mod:`attnflow.fem.meshes`, serially.

    kind : ``"circle"`` (``cells`` segments), ``"sphere"`` (icosphere ``level``) or ``"box"``
        (``[-length, length]^dim`` with ``cells`` per direction, simplices).
    """
    if kind == "circle":
        if cells is None or cells < 3:
            raise ValueError(f"cells must be an int >= 3 for a circle, got {cells!r}")
        th = 2 * np.pi * np.arange(cells) / cells
        points = np.stack([np.cos(th), np.sin(th)], axis=1)
        segs = np.stack([np.arange(cells), (np.arange(cells) + 1) % cells], axis=1)
        return points, segs.astype(np.int64)
    if kind == "sphere":
        if level is None or not 0 <= level <= 7:
            raise ValueError(f"level must be an int in [0, 7], got {level!r}")
        points, tris = _sphere_arrays(int(level))
        return np.asarray(points, dtype=float), np.asarray(tris, dtype=np.int64)
    if kind == "box":
        from attnflow.fem.meshes import box_mesh

        if cells is None or cells < 1:
            raise ValueError(f"cells must be an int >= 1 for a box, got {cells!r}")
        mesh = box_mesh(dim, float(length), int(cells), MPI.COMM_SELF)
        tdim = mesh.topology.dim
        n = mesh.topology.index_map(tdim).size_local
        return (
            np.array(mesh.geometry.x[:, :dim], dtype=float),
            np.array(mesh.geometry.dofmaps[0][:n], dtype=np.int64),
        )
    raise ValueError(f'kind must be "circle", "sphere" or "box", got {kind!r}')


def save_mesh_file(path: str | Path, points: np.ndarray, cells: np.ndarray) -> Path:
    """Write a mesh file atomically (``path.tmp``, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, points=np.asarray(points, float), cells=np.asarray(cells, np.int64))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_mesh(path: str | Path, comm: MPI.Comm = MPI.COMM_WORLD) -> dolfinx.mesh.Mesh:
    """A distributed mesh from a mesh file (read on rank 0, ghosted for facet integrals)."""
    if comm.rank == 0:
        points, cells = read_mesh_arrays(path)
        shape = (points.shape[1], cells.shape[1])
    else:
        points = cells = None
        shape = None
    gdim, k = comm.bcast(shape, root=0)
    if comm.rank != 0:
        points, cells = np.zeros((0, gdim)), np.zeros((0, k), dtype=np.int64)
    return _manifold_mesh(comm, points, cells, _CELLS[k], gdim)
