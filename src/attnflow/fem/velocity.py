"""The velocity of a finite element density at the P1 nodes, summed over the dynamics' terms.

For a dynamics ``X = P_x sum_k F_k`` (:mod:`attnflow.dynamics`) the finite element solver
evaluates every term at the nodes ``x_i`` of the P1 vector velocity space:

* a :class:`~attnflow.dynamics.KernelTerm` (an attention head) through its own
  :class:`~attnflow.fem.kernel_operator.KernelOperator`, assembled once (dense or sparse PETSc
  matrix) or recomputed by the engine: a sum of H heads costs one matrix product per head;
* a term that does not depend on the measure (``needs_measure = False``, e.g. a perceptron)
  directly at the nodes;
* any other term from the density's quadrature cloud (gathered on every rank), through the
  term's own ``ambient_velocity``.

The sum is projected once by the geometry (tangent projection on the sphere). With a
time-dependent dynamics the solver sets the dynamics of each interval between events
(:meth:`NodalVelocity.set_interval`); operators are built for every kernel term of every piece
at construction, once.
"""

from __future__ import annotations

import dolfinx.fem
import numpy as np

from attnflow.cloud import Cloud
from attnflow.dynamics import Dynamics, KernelTerm
from attnflow.fem.kernel_operator import TINY_DENOMINATOR, KernelOperator, allgather
from attnflow.fem.transport import QuadratureCloud

__all__ = ["NodalVelocity"]


class NodalVelocity:
    """Sets a P1 vector Function to the velocity of a DG density, for any dynamics.

    Parameters
    ----------
    dynamics : the :class:`~attnflow.dynamics.Dynamics` (``d`` = the mesh's geometric
        dimension).
    W : the DG density space; U : the P1 vector velocity space on the same mesh.
    cloud : quadrature of the owned cells of ``W``.
    kernel : the concrete kernel choice of every kernel term (``DenseKernel()``,
        ``SparseKernel(tol)``, ``RecomputedKernel()``, ``SpectralKernel(tol)``), or a
        :class:`~attnflow.kernels.choice.KernelPlan` (one choice per term).
    """

    def __init__(self, dynamics: Dynamics, W, U, cloud: QuadratureCloud, kernel) -> None:
        self.dynamics = dynamics
        self.comm = W.mesh.comm
        self.gdim = W.mesh.geometry.dim
        self.n_nodes = U.dofmap.index_map.size_local
        self.targets = np.ascontiguousarray(
            U.tabulate_dof_coordinates()[: self.n_nodes, : self.gdim]
        )
        self.cloud = cloud
        self.kernel = kernel
        #: One operator per distinct kernel term (by identity), in order of appearance.
        self.operators: dict[int, KernelOperator] = {}
        for term in dynamics.terms(None):
            if isinstance(term, KernelTerm) and id(term) not in self.operators:
                choice = kernel.for_term(term) if hasattr(kernel, "for_term") else kernel
                self.operators[id(term)] = KernelOperator(term, W, U, cloud, choice)
        self._points: np.ndarray | None = None
        self.active = dynamics

    def set_interval(self, a: float, b: float) -> None:
        """Use the dynamics of the interval ``(a, b)`` between two events."""
        self.active = self.dynamics.on_interval(a, b)

    # -- aggregates over the operators ---------------------------------------------------------
    @property
    def local(self) -> bool:
        """Whether every kernel operator is local (see ``KernelOperator.local``)."""
        return all(op.local for op in self.operators.values())

    @property
    def rows_recomputed(self) -> int:
        """Rows recomputed with the engine so far, over all operators and ranks."""
        return int(sum(op.rows_recomputed for op in self.operators.values()))

    @property
    def spectral_recomputed(self) -> int:
        """Targets the spectral method could not trust and recomputed exactly, so far."""
        return int(sum(op.spectral_recomputed for op in self.operators.values()))

    @property
    def matrix_entries(self) -> int:
        """Global number of stored kernel-matrix entries over all operators; collective."""
        return int(sum(op.matrix_entries for op in self.operators.values()))

    def sums(self, rho: dolfinx.fem.Function) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(shift, den, num)`` of the first kernel term (single-head models); collective."""
        return next(iter(self.operators.values())).sums(rho)

    # -- evaluation ----------------------------------------------------------------------------
    def _quadrature_cloud(self, rho: dolfinx.fem.Function) -> Cloud:
        """The density as the cloud of all quadrature points (every rank); collective."""
        if self._points is None:
            self._points = allgather(self.comm, self.cloud.points)
        w = allgather(self.comm, self.cloud.density_weights(rho.x.array, clip=True))
        return Cloud(self._points, w)

    def __call__(self, rho: dolfinx.fem.Function, u: dolfinx.fem.Function, t: float = 0.0) -> None:
        """Set ``u`` (owned and ghost nodes) to the velocity of ``rho`` at time ``t``;
        collective."""
        x = self.targets
        terms = self.active.terms(t)
        cloud = None
        f = None
        for term in terms:
            op = self.operators.get(id(term))
            if op is not None:
                shift, den, num = op.sums(rho)
                g = term.field(x, shift, den, num, tiny=TINY_DENOMINATOR)
            elif not term.needs_measure:
                g = term.ambient_velocity(x, None, t)
            else:
                if cloud is None:
                    cloud = self._quadrature_cloud(rho)
                g = term.ambient_velocity(x, cloud, t)
            f = g if f is None else f + g
        f = self.dynamics.geometry.project(x, f)
        u.x.array[: self.n_nodes * self.gdim] = f.reshape(-1)
        u.x.scatter_forward()
