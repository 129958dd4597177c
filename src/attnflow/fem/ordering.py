"""Partition-independent order of cell data: the mesh's input cell index.

dolfinx renumbers and distributes the cells; ``mesh.topology.original_cell_index`` keeps, for
every owned cell, its index in the input mesh, which does not depend on the partition. Arrays
gathered in that order (the density dofs, the quadrature cloud) are the same on 1, 2 or 3 ranks:
checkpoints, solutions and comparisons use it, so serial and parallel results can be compared
entry by entry.
"""

from __future__ import annotations

import dolfinx.mesh
import numpy as np

__all__ = ["InputOrder"]


class InputOrder:
    """Gathers per-owned-cell arrays of all ranks in input cell order.

    Parameters
    ----------
    mesh : the distributed mesh; n_owned : the number of owned cells on this rank.
    """

    def __init__(self, mesh: dolfinx.mesh.Mesh, n_owned: int) -> None:
        self.comm = mesh.comm
        self.index = np.asarray(mesh.topology.original_cell_index[:n_owned], dtype=np.int64)
        self.n_cells_global = int(mesh.topology.index_map(mesh.topology.dim).size_global)

    def gather_cells(self, a: np.ndarray, root: int | None = 0) -> np.ndarray | None:
        """Per-owned-cell rows ``a`` (n_owned, ...) of all ranks, ordered by input cell index,
        on ``root`` (``None`` elsewhere), or on every rank with ``root=None``; collective."""
        if root is None:
            parts = self.comm.allgather((self.index, a))
        else:
            parts = self.comm.gather((self.index, a), root=root)
            if self.comm.rank != root:
                return None
        idx = np.concatenate([p[0] for p in parts])
        out = np.empty((idx.size, *a.shape[1:]), dtype=a.dtype)
        out[idx] = np.concatenate([p[1] for p in parts])
        return out

    def gather_points(self, w: np.ndarray, n_q: int) -> np.ndarray:
        """Per-point arrays ``w`` (n_owned * n_q, ...) (cell-major) of all ranks, ordered by
        input cell index, on every rank; collective."""
        parts = self.comm.allgather((self.index, w.reshape(self.index.size, n_q, *w.shape[1:])))
        g = np.concatenate([p[0] for p in parts])
        v = np.concatenate([p[1] for p in parts])
        return v[np.argsort(g, kind="stable")].reshape(-1, *w.shape[1:])
