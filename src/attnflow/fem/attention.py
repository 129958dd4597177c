"""The attention velocity of a finite element density, as a kernel convolution.

The density ``rho_h`` in DG_k is the weighted point cloud of the quadrature points ``y_q`` of
all cells with weights ``|det J| w_q rho_h(y_q)`` (DESIGN.md §2); its velocity is evaluated at
the nodes ``x_i`` of a continuous P1 vector space (the mesh vertices). Since neither the points
nor the targets move, the map from density dofs to (denominator, numerator) is linear and fixed:

* :class:`DenseKernel` assembles it **once** as a parallel dense PETSc matrix (rows: the
  ``(d + 1)`` sums at the owned nodes; columns: the global density dofs). Every stage is then
  one ``MatMult``, a pointwise division and the tangent projection. The row shift is the
  density-independent ``s_i = max_q (beta <Q x_i, K y_q> + log(|J| w_q))``; where the density
  has no mass within the kernel's reach of a node the shifted denominator underflows to 0 and
  the velocity there is set to 0 (that node carries no mass to move).
* :class:`SparseKernel` assembles the same map as a sparse (AIJ) PETSc matrix, dropping the
  cells whose kernel values are all below ``tol`` times the row's largest one: at low
  temperature the kernel vanishes beyond the angle ``arccos(1 - log(1/tol)/beta)`` (Q = K = I),
  so most entries go. The relative error of the sums is at most ``tol * n_cells * rho_max /
  rho_near`` where ``rho_near`` is the density near the row's best-aligned point.
* :class:`RecomputedKernel` calls the kernel-sum engine on the density-weighted cloud at every
  stage (exact per-stage shift; no matrix in memory): the choice for large meshes.

Both use :mod:`attnflow.kernels`, the engine the particle solver uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import dolfinx.fem
import numpy as np
from mpi4py import MPI
from petsc4py import PETSc

from attnflow.fem.transport import QuadratureCloud
from attnflow.kernels import kernel_matrix, kernel_matrix_sparse, kernel_sums
from attnflow.model import SelfAttention

__all__ = ["AttentionVelocity", "DenseKernel", "RecomputedKernel", "SparseKernel"]

#: Shifted denominators below this are "no mass in reach": the velocity is set to 0 there.
TINY_DENOMINATOR = 1e-290


@dataclass(frozen=True)
class DenseKernel:
    """Assemble the kernel once as a dense parallel PETSc matrix (small and medium meshes)."""


@dataclass(frozen=True)
class SparseKernel:
    """Assemble the kernel once as a sparse PETSc matrix, truncated at ``tol`` (large beta)."""

    tol: float = 1e-12

    def __post_init__(self) -> None:
        if not (0 < self.tol < 1):
            raise ValueError(f"tol must be in (0, 1), got {self.tol!r}")


@dataclass(frozen=True)
class RecomputedKernel:
    """Evaluate the kernel sums with the engine at every stage (no stored matrix)."""


def _allgather(comm: MPI.Comm, a: np.ndarray) -> np.ndarray:
    parts = comm.allgather(np.ascontiguousarray(a))
    return np.concatenate(parts, axis=0)


class AttentionVelocity:
    """Updates a P1 vector Function with the velocity of a DG density.

    Parameters
    ----------
    model : the attention model (``model.d`` must equal the mesh's geometric dimension).
    W : the DG density space; U : the P1 vector velocity space on the same mesh.
    cloud : quadrature of the owned cells of ``W`` (see :func:`cell_quadrature`).
    kernel : :class:`DenseKernel` or :class:`RecomputedKernel`.
    """

    def __init__(self, model: SelfAttention, W, U, cloud: QuadratureCloud, kernel) -> None:
        self.model = model
        self.comm = W.mesh.comm
        gdim = W.mesh.geometry.dim
        self.gdim = gdim
        self.n_nodes = U.dofmap.index_map.size_local
        self.targets = np.ascontiguousarray(U.tabulate_dof_coordinates()[: self.n_nodes, :gdim])
        self.a = model._scores_in(self.targets)
        self.cloud = cloud
        self.kernel = kernel
        n_cells, n_l = cloud.cell_dofs.shape
        n_q = cloud.n_q
        imap = W.dofmap.index_map
        self.n_dofs = imap.size_local
        # Sources: one group per (cell, local dof): the quadrature points of the cell weighted
        # by |J| w_q phi_l(y_q) (DG0: phi = 1). Gathered on every rank in rank order.
        pts = cloud.points.reshape(n_cells, n_q, gdim)
        w = cloud.weights.reshape(n_cells, n_q)
        src_pts = np.repeat(pts[:, None, :, :], n_l, axis=1).reshape(-1, gdim)
        src_w = (w[:, None, :] * cloud.tab.T[None, :, :]).reshape(-1)
        gdofs = imap.local_to_global(cloud.cell_dofs.reshape(-1).astype(np.int32))
        self.src_pts = _allgather(self.comm, src_pts)
        self.src_w = _allgather(self.comm, src_w)
        self.src_dofs = _allgather(self.comm, gdofs.astype(np.int64))
        self.n_q = n_q
        self.b, self.v = model._sources(self.src_pts)
        if isinstance(kernel, DenseKernel):
            self._assemble_dense()
        elif isinstance(kernel, SparseKernel):
            self._assemble_sparse(kernel.tol)
        elif not isinstance(kernel, RecomputedKernel):
            raise TypeError(
                "kernel must be DenseKernel(), SparseKernel(tol) or RecomputedKernel(), "
                f"got {kernel!r}"
            )

    # -- assembly --------------------------------------------------------------------------
    def _assemble_dense(self) -> None:
        n_groups = self.src_dofs.size
        starts = np.arange(n_groups + 1, dtype=np.int64) * self.n_q
        shift, mat = kernel_matrix(self.a, self.b, self.v, self.src_w, starts)
        self.shift = shift
        m = self.gdim + 1
        n_global = self.comm.allreduce(self.n_dofs)
        A = PETSc.Mat().createDense(
            ((self.n_nodes * m, PETSc.DETERMINE), (self.n_dofs, n_global)), comm=self.comm
        )
        A.setUp()
        arr = A.getDenseArray()
        arr[:, self.src_dofs] = mat.reshape(self.n_nodes * m, n_groups)
        A.assemble()
        self.A = A
        self._y = A.createVecLeft()

    def _assemble_sparse(self, tol: float) -> None:
        n_groups = self.src_dofs.size
        starts = np.arange(n_groups + 1, dtype=np.int64) * self.n_q
        shift, indptr, groups, values = kernel_matrix_sparse(
            self.a, self.b, self.v, self.src_w, starts, tol, candidates=self._candidates(tol)
        )
        self.shift = shift
        m = self.gdim + 1
        # Row i of the targets becomes rows i*m .. i*m + m - 1, all with the same columns.
        nnz_row = np.diff(indptr)
        row_ptr = np.zeros(self.n_nodes * m + 1, dtype=np.int32)
        row_ptr[1:] = np.cumsum(np.repeat(nnz_row, m))
        cols = (
            np.concatenate(
                [
                    np.tile(self.src_dofs[groups[indptr[i] : indptr[i + 1]]], m)
                    for i in range(self.n_nodes)
                ]
            )
            if self.n_nodes
            else np.zeros(0, dtype=np.int64)
        )
        vals = (
            np.concatenate(
                [values[indptr[i] : indptr[i + 1]].T.reshape(-1) for i in range(self.n_nodes)]
            )
            if self.n_nodes
            else np.zeros(0)
        )
        n_global = self.comm.allreduce(self.n_dofs)
        A = PETSc.Mat().createAIJWithArrays(
            ((self.n_nodes * m, PETSc.DETERMINE), (self.n_dofs, n_global)),
            (row_ptr, cols.astype(PETSc.IntType), vals),
            comm=self.comm,
        )
        A.assemble()
        self.A = A
        self._y = A.createVecLeft()

    def _candidates(self, tol: float):
        """Candidate cells per target from a ball query, when the scores are a multiple of
        ``<x, y>`` on the sphere (Q and K multiples of I); ``None`` (all pairs) otherwise.

        The kept sources satisfy ``x.y_j >= x.y_nn - slack`` with ``y_nn`` the source nearest
        in direction and ``slack = (log(1/tol) + spread of log w) / (beta' r_min) + 2(1 - r_min)
        / r_min`` (``beta' = beta q_Q q_K``, ``r_min`` the smallest ``|y|``: quadrature points
        lie inside the sphere); in chord length that is a ball of radius
        ``sqrt(d_nn^2 + 2 slack)`` around ``x``. It also contains the best source.
        """
        from scipy.spatial import cKDTree

        model = self.model
        d = self.gdim
        qq, kk = model.Q[0, 0], model.K[0, 0]
        if not (
            model.sphere
            and np.allclose(model.Q, qq * np.eye(d), rtol=0, atol=0)
            and np.allclose(model.K, kk * np.eye(d), rtol=0, atol=0)
            and qq * kk > 0
            and np.isfinite(model.beta)
        ):
            return None
        beta_eff = model.beta * qq * kk
        r = np.linalg.norm(self.src_pts, axis=1)
        r_min = float(r.min())
        lw = np.log(self.src_w[self.src_w > 0])
        slack = (np.log(1 / tol) + (lw.max() - lw.min())) / (beta_eff * r_min)
        slack += 2 * (1 - r_min) / r_min
        if slack >= 0.1:  # the balls would hold > ~5% of the sphere: all pairs is faster
            return None
        dirs = self.src_pts / r[:, None]
        tree = cKDTree(dirs)
        x = self.targets / np.linalg.norm(self.targets, axis=1, keepdims=True)
        d_nn, _ = tree.query(x)
        radius = np.sqrt(d_nn**2 + 2 * slack) * (1 + 1e-12) + 1e-15
        lists = tree.query_ball_point(x, radius)
        group = np.arange(self.src_pts.shape[0]) // self.n_q
        cand = [np.unique(group[np.asarray(li, dtype=np.int64)]) for li in lists]
        ptr = np.zeros(len(cand) + 1, dtype=np.int64)
        ptr[1:] = np.cumsum([c.size for c in cand])
        flat = np.concatenate(cand) if cand else np.zeros(0, dtype=np.int64)
        return ptr, flat

    @property
    def matrix_entries(self) -> int:
        """Global number of stored kernel-matrix entries (0 for RecomputedKernel); collective."""
        if isinstance(self.kernel, DenseKernel):
            return int(self.A.getSize()[0] * self.A.getSize()[1])
        if isinstance(self.kernel, SparseKernel):
            return int(self.A.getInfo(PETSc.Mat.InfoType.GLOBAL_SUM)["nz_used"])
        return 0

    # -- evaluation --------------------------------------------------------------------------
    def sums(self, rho: dolfinx.fem.Function) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(shift, den, num)`` at the owned nodes for the density ``rho``."""
        if isinstance(self.kernel, (DenseKernel, SparseKernel)):
            self.A.mult(rho.x.petsc_vec, self._y)
            y = self._y.array_r.reshape(self.n_nodes, self.gdim + 1)
            return self.shift, y[:, 0].copy(), y[:, 1:].copy()
        n_q = self.cloud.n_q
        w_local = self.cloud.weights.reshape(-1, n_q)
        n_cells = self.cloud.cell_dofs.shape[0]
        coef = rho.x.array[self.cloud.cell_dofs]  # (n_cells, n_l)
        w = (w_local.reshape(n_cells, 1, n_q) * self.cloud.tab.T[None] * coef[:, :, None]).reshape(
            -1
        )
        w_all = _allgather(self.comm, np.maximum(w, 0.0))
        s = kernel_sums(self.a, self.b, self.v, w_all)
        return s.shift, s.den, s.num

    def __call__(self, rho: dolfinx.fem.Function, u: dolfinx.fem.Function) -> None:
        """Set ``u`` (owned and ghost nodes) to the velocity of ``rho``."""
        shift, den, num = self.sums(rho)
        f = self.model._field(self.targets, shift, den, num, tiny=TINY_DENOMINATOR)
        u.x.array[: self.n_nodes * self.gdim] = f.reshape(-1)
        u.x.scatter_forward()
