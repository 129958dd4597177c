"""The kernel sums of one attention term of a finite element density, as a PETSc operator.

The density ``rho_h`` in DG_k is the weighted point cloud of the quadrature points ``y_q`` of
all cells with weights ``|det J| w_q rho_h(y_q)`` (DESIGN.md §2); the kernel sums of a
:class:`~attnflow.dynamics.KernelTerm` (an attention head) are evaluated at the nodes ``x_i``
of a continuous P1 vector space (the mesh vertices). Since neither the points nor the targets
move, the map from density dofs to (denominator, numerator) is linear and fixed; this module
holds the PETSc side of it (one :class:`KernelOperator` per term; the velocity itself is
summed over the terms in :mod:`attnflow.fem.velocity`):

* :class:`DenseKernel` assembles it **once** as a parallel dense PETSc matrix (rows: the
  ``(d + 1)`` sums at the owned nodes; columns: the global density dofs). Every stage is then
  one ``MatMult``, a pointwise division and the tangent projection. The row shift is the
  density-independent ``s_i = max_q (beta <Q x_i, K y_q> + log(|J| w_q))``.
* :class:`SparseKernel` assembles the same map as a sparse (AIJ) PETSc matrix, dropping the
  cells whose kernel values are all below ``tol`` times the row's largest one: at low
  temperature the kernel vanishes beyond the angle ``arccos(1 - log(1/tol)/beta)`` (Q = K = I
  on the sphere), so most entries go. A bounding-ball tree over the cells finds the kept
  entries of each row for any Q, K, on the sphere or in R^d, so the assembly costs in
  proportion to the entries kept (:func:`attnflow.kernels.kernel_matrix_sparse`).
* :class:`RecomputedKernel` calls the kernel-sum engine on the density-weighted cloud at every
  stage (exact per-stage shift; no matrix in memory): the choice for large meshes.

The fixed row shift is what makes an assembled kernel density-independent, and what it costs:

* on the sphere with Q, K positive multiples of I (:attr:`KernelOperator.local`) the row
  maximum is at the node itself. A shifted denominator that underflows then means that the
  density has no mass within the kernel's reach of the node: the velocity there is set to 0
  (``TINY_DENOMINATOR``; the node carries no mass to move);
* otherwise (R^d, general Q and K) the scores are not peaked at the node: ``<Q x, K y>`` is
  largest at the far end of the mesh, where at low temperature the density may have no mass
  at all. Rows whose denominator underflowed (dense) or could be outweighed by the dropped
  entries (sparse: ``den <= tol * n_q * sum(rho dofs) / TRUNCATION_RTOL``) are recomputed
  with the engine at that evaluation (``rows_recomputed`` counts them). The velocity is then
  right at every ``beta``; at large ``beta`` in R^d most rows may need it, and
  :class:`RecomputedKernel` is the better choice there.

Both use :mod:`attnflow.kernels`, the engine the particle solver uses.
"""

from __future__ import annotations

from typing import Any

import dolfinx.fem
import numpy as np
from mpi4py import MPI
from petsc4py import PETSc

from attnflow.dynamics import KernelTerm
from attnflow.fem.transport import QuadratureCloud
from attnflow.kernels import kernel_matrix, kernel_matrix_sparse, kernel_sums
from attnflow.kernels.choice import (
    DenseKernel,
    RecomputedKernel,
    SparseKernel,
    SpectralKernel,
    kernel_name,
)

__all__ = [
    "TINY_DENOMINATOR",
    "DenseKernel",
    "KernelOperator",
    "RecomputedKernel",
    "SparseKernel",
    "allgather",
    "kernel_choice_name",
]

#: Shifted denominators below this are "no mass in reach": the velocity is set to 0 there.
TINY_DENOMINATOR = 1e-290
#: Assembled, non-local kernels: a dense row whose denominator is below this is recomputed.
UNDERFLOW_DENOMINATOR = 1e-270
#: Assembled, non-local kernels: a sparse row is recomputed when the entries it dropped could
#: change its denominator by more than this relative amount.
TRUNCATION_RTOL = 1e-8


def kernel_choice_name(kernel: Any) -> str:
    """``"dense"``, ``"sparse"``, ``"recomputed"`` or ``"spectral"``."""
    return kernel_name(kernel)


def allgather(comm: MPI.Comm, a: np.ndarray) -> np.ndarray:
    """The rows ``a`` of every rank, concatenated in rank order, on every rank (collective)."""
    parts = comm.allgather(np.ascontiguousarray(a))
    return np.concatenate(parts, axis=0)


class KernelOperator:
    """The kernel sums ``(shift, den, num)`` of one kernel term at the P1 nodes, for a DG
    density: an assembled PETSc matrix (dense or sparse) or the engine at every call.

    Parameters
    ----------
    model : a :class:`~attnflow.dynamics.KernelTerm` (e.g. one attention head); ``model.d``
        equals the mesh's geometric dimension.
    W : the DG density space; U : the P1 vector velocity space on the same mesh.
    cloud : quadrature of the owned cells of ``W`` (see :func:`cell_quadrature`).
    kernel : :class:`DenseKernel`, :class:`SparseKernel`, :class:`RecomputedKernel` or
        :class:`SpectralKernel` (a concrete choice: ``"auto"`` is resolved by the solver).

    The engine (recomputed kernel, and the rows an assembled kernel cannot trust) sums over the
    distinct quadrature points with the density's weights ``|J| w_q rho(y_q)``; the assembled
    matrices have one column group per (cell, local dof). The spectral kernel evaluates the
    zonal kernel at the quadrature points mapped radially onto the sphere (the map by which
    ``rho0`` is evaluated too; it differs from the assembled kernel by O(h^2), the geometric
    error of the faceted mesh) and needs no gathering: each rank transforms its own points.
    """

    def __init__(self, model: KernelTerm, W, U, cloud: QuadratureCloud, kernel) -> None:
        if not isinstance(model, KernelTerm):
            raise TypeError(f"model must be a KernelTerm, got {type(model).__name__}")
        if model.hardmax:
            raise ValueError(
                "model.beta must be finite for the finite element solver "
                "(beta = inf, hardmax, is for particles)"
            )
        self.model = model
        self.comm = W.mesh.comm
        gdim = W.mesh.geometry.dim
        self.gdim = gdim
        self.n_nodes = U.dofmap.index_map.size_local
        self.targets = np.ascontiguousarray(U.tabulate_dof_coordinates()[: self.n_nodes, :gdim])
        self.a = model.scores(self.targets)
        self.cloud = cloud
        self.kernel = kernel
        n_cells, n_l = cloud.cell_dofs.shape
        n_q = cloud.n_q
        imap = W.dofmap.index_map
        self.n_dofs = imap.size_local
        self.n_q = n_q
        assembled = isinstance(kernel, (DenseKernel, SparseKernel))
        if assembled:
            # Sources: one group per (cell, local dof): the quadrature points of the cell
            # weighted by |J| w_q phi_l(y_q) (DG0: phi = 1). Gathered on every rank in rank
            # order.
            pts = cloud.points.reshape(n_cells, n_q, gdim)
            w = cloud.weights.reshape(n_cells, n_q)
            src_pts = np.repeat(pts[:, None, :, :], n_l, axis=1).reshape(-1, gdim)
            src_w = (w[:, None, :] * cloud.tab.T[None, :, :]).reshape(-1)
            gdofs = imap.local_to_global(cloud.cell_dofs.reshape(-1).astype(np.int32))
            self.src_pts = allgather(self.comm, src_pts)
            self.src_w = allgather(self.comm, src_w)
            self.src_dofs = allgather(self.comm, gdofs.astype(np.int64))
            self.b, self.v = model.sources(self.src_pts)
        if not isinstance(kernel, SpectralKernel):
            #: All distinct quadrature points (every rank, rank order) and their sources, for
            #: the engine (the recomputed kernel, and the rows an assembled one cannot trust).
            self.pts = allgather(self.comm, np.ascontiguousarray(cloud.points))
            self.b_pts, self.v_pts = model.sources(self.pts)
        #: Number of targets the spectral method could not trust (recomputed exactly).
        self.spectral_recomputed = 0
        #: Whether every row's largest kernel value sits at the node itself (sphere, Q and K
        #: positive multiples of I): then a small shifted denominator means no mass near the
        #: node, and the velocity there moves no mass. Otherwise (R^d, general Q, K) the row
        #: maximum lies wherever <Q x, K y> peaks on the mesh, possibly where the density has
        #: no mass, and rows are checked at every evaluation (see :meth:`sums`).
        self.local = bool(model.peaked_at_target)
        #: Number of rows recomputed with the engine so far (summed over ranks).
        self.rows_recomputed = 0
        if isinstance(kernel, DenseKernel):
            self._assemble_dense()
        elif isinstance(kernel, SparseKernel):
            self._assemble_sparse(kernel.tol)
        elif isinstance(kernel, SpectralKernel):
            zonal = model.zonal()
            if zonal is None:
                raise ValueError(
                    "kernel: 'spectral' needs a zonal kernel (Q = qI, K = kI) on S^1 or S^2"
                )
            self.kappa, self.V = zonal
            p = np.ascontiguousarray(cloud.points)
            self.sphere_pts = p / np.linalg.norm(p, axis=1, keepdims=True)
        elif not isinstance(kernel, RecomputedKernel):
            raise TypeError(
                "kernel must be DenseKernel(), SparseKernel(tol), RecomputedKernel() or "
                f"SpectralKernel(tol), got {kernel!r}"
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
            self.a, self.b, self.v, self.src_w, starts, tol
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
        """``(shift, den, num)`` at the owned nodes for the density ``rho``; collective.

        With an assembled kernel that is not local (see :attr:`local`), rows whose shifted
        denominator is too small to trust (it underflowed, or the truncated entries could
        outweigh the kept ones) are recomputed with the engine, with the exact per-row shift.
        """
        if isinstance(self.kernel, SpectralKernel):
            return self._spectral_sums(rho)
        if not isinstance(self.kernel, (DenseKernel, SparseKernel)):
            s = kernel_sums(self.a, self.b_pts, self.v_pts, self.cloud_weights(rho))
            return s.shift, s.den, s.num
        self.A.mult(rho.x.petsc_vec, self._y)
        y = self._y.array_r.reshape(self.n_nodes, self.gdim + 1)
        shift, den, num = self.shift.copy(), y[:, 0].copy(), y[:, 1:].copy()
        if self.local:
            return shift, den, num
        if isinstance(self.kernel, SparseKernel):
            # Each dropped term is < tol (shifted) times its dof value.
            local_sum = float(np.maximum(rho.x.array[: self.n_dofs], 0.0).sum())
            total = self.comm.allreduce(local_sum)
            guard = self.kernel.tol * self.n_q * total / TRUNCATION_RTOL
        else:
            guard = UNDERFLOW_DENOMINATOR
        bad = den <= guard
        n_bad = self.comm.allreduce(int(bad.sum()))
        if n_bad:  # the same branch on every rank: the gather below is collective
            w_all = self.cloud_weights(rho)
            if bad.any():
                s = kernel_sums(self.a[bad], self.b_pts, self.v_pts, w_all)
                shift[bad], den[bad], num[bad] = s.shift, s.den, s.num
            self.rows_recomputed += n_bad
        return shift, den, num

    def _spectral_sums(self, rho: dolfinx.fem.Function) -> tuple[np.ndarray, ...]:
        from attnflow.kernels.spectral import zonal_sums

        s = zonal_sums(
            self.targets,
            self.sphere_pts,
            self._local_weights(rho),
            self.kappa,
            tol=self.kernel.tol,
            comm=self.comm,
        )
        self.spectral_recomputed += int(getattr(s, "recomputed", 0) or 0)
        return s.shift, s.den, s.num @ self.V.T

    def _local_weights(self, rho: dolfinx.fem.Function) -> np.ndarray:
        """(n_owned_points,) weights ``|J| w_q max(rho(y_q), 0)`` of the owned cells."""
        return self.cloud.density_weights(rho.x.array, clip=True)

    def cloud_weights(self, rho: dolfinx.fem.Function) -> np.ndarray:
        """Weights of all distinct quadrature points (every rank, rank order) for ``rho``;
        collective."""
        return allgather(self.comm, self._local_weights(rho))
