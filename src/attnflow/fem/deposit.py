"""Deposit a weighted point cloud onto a volume mesh (boxes): a DG0 histogram of cell masses.

For S^1 and S^2 use :func:`attnflow.metrics.circle_histogram` / ``sphere_histogram`` (no
dolfinx needed; they match ``circle_mesh``/``sphere_mesh`` cell for cell).
"""

from __future__ import annotations

import dolfinx.geometry
import dolfinx.mesh
import numpy as np
from mpi4py import MPI

__all__ = ["deposit"]


def deposit(
    mesh: dolfinx.mesh.Mesh, points: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Cell masses of ``sum_j w_j delta_{x_j}`` on ``mesh``, in the mesh's input cell order.

    Collective. Every rank passes the same cloud (shape ``(n, d)``, d the mesh's geometric
    dimension); each point is given to the first owned cell that contains it, so points on
    shared facets count once. Returns ``(masses (n_cells_global,), outside)``: the masses of
    the normalised measure on every rank, and the mass of the points outside the mesh (they
    left a box through its outflow boundary).
    """
    comm = mesh.comm
    x = np.asarray(points, dtype=float)
    gdim, tdim = mesh.geometry.dim, mesh.topology.dim
    if x.ndim != 2 or x.shape[1] != gdim:
        raise ValueError(f"points must have shape (n, {gdim}), got {x.shape}")
    if tdim != gdim:
        raise ValueError("deposit needs a volume mesh; on spheres use metrics.*_histogram")
    w = np.full(x.shape[0], 1.0) if weights is None else np.asarray(weights, dtype=float)
    w = w / w.sum()
    x3 = np.zeros((x.shape[0], 3))
    x3[:, :gdim] = x
    n_owned = mesh.topology.index_map(tdim).size_local
    tree = dolfinx.geometry.bb_tree(mesh, tdim, entities=np.arange(n_owned, dtype=np.int32))
    cand = dolfinx.geometry.compute_collisions_points(tree, x3)
    hits = dolfinx.geometry.compute_colliding_cells(mesh, cand, x3)
    cell = np.full(x.shape[0], -1, dtype=np.int64)
    for i in range(x.shape[0]):
        links = hits.links(i)
        if links.size:
            cell[i] = links[0]
    # A point on a facet between ranks is claimed by the lowest rank that contains it.
    found = cell >= 0
    owner = np.where(found, comm.rank, comm.size).astype(np.int64)
    first = np.empty_like(owner)
    comm.Allreduce(owner, first, op=MPI.MIN)
    mine = found & (first == comm.rank)
    n_global = mesh.topology.index_map(tdim).size_global
    orig = np.asarray(mesh.topology.original_cell_index)
    local = np.zeros(n_global)
    np.add.at(local, orig[cell[mine]], w[mine])
    masses = np.empty_like(local)
    comm.Allreduce(local, masses, op=MPI.SUM)
    outside = float(w[first == comm.size].sum())
    return masses, outside
