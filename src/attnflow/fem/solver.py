"""``MeanFieldSolver``: the continuity equation of any dynamics on a mesh, with PETSc TS.

(One idea, one class: the module is the solver's set-up, its time loop, its records and its
restart state; the transport forms, limiter and CFL step, the kernel operators, the velocity
sum, the PETSc options and the cell ordering live in their own modules.)

Scheme: DG_k upwind transport (:mod:`attnflow.fem.transport`) with the velocity of the current
density (:mod:`attnflow.fem.velocity`: one kernel operator per attention term,
:mod:`attnflow.fem.kernel_operator`) evaluated at every stage; explicit SSP
Runge–Kutta from PETSc TS (default ``ssp`` / ``rks3`` with 4 stages: third order, SSP
coefficient 2) with a fixed step from the CFL bound

    dt = cfl * C_ssp * min_cells |c| / sum_{facets f of c} |f|  /  X_max,

where ``X_max`` is the dynamics' a priori speed bound, the sum of its terms' bounds
(``Dynamics.speed_bound``; SA: ``|V|_2 R`` with ``R`` the largest ``|y|`` on the mesh; USA:
``mass |V|_2 R e^{beta R^2 |Q^T K|_2 - c}``). Under it the forward
Euler step of DG0 keeps ``rho >= 0``, hence so does every SSP stage. Upwind DG0 is first order
in space (order 1/2 in Wasserstein distance once the density concentrates).

Noise (``dynamics.noisy``: a :class:`~attnflow.Diffusion` term) adds ``sigma Delta rho``:
``M d_t rho = F(rho) - sigma A rho`` with the diffusion matrix ``A`` of
:mod:`attnflow.fem.diffusion` (DG0 two-point fluxes, DG1 symmetric interior penalty),
assembled once. The default time stepping is then PETSc's IMEX ``arkimex`` (type ``1bee``,
:mod:`attnflow.fem.timestepping`): the diffusion implicit (``IFunction`` ``u' + sigma M^{-1} A
u``, ``IJacobian`` ``shift I + sigma M^{-1} A``, one direct solve per implicit stage), the
transport explicit (``RHSFunction``, as without noise), with the same transport CFL step: no
``sigma / h^2`` bound. An explicit TS type chosen through the options (``ts_type ssp``, ``rk``,
``euler``) integrates the diffusion explicitly too; its step is then capped by the explicit
diffusion bound ``2 C / (sigma |M^{-1} A|_inf)`` (combined harmonically with the CFL step) and a
warning says so. Pure diffusion (speed bound 0, e.g. ``Diffusion(s, d=3, sphere=True)``) has no
CFL step: the step is that of a unit speed, ``dt ~ h`` (or ``dt=``). With a
:class:`~attnflow.Piecewise` dynamics sigma is that of each interval between switching times.

The free energy ``F = sigma int rho log rho - E(rho)`` (E the interaction energy of the
attention term) is recorded at the save times (``FieldSolution.free_energy``, with the entropy
``int rho log rho`` in ``FieldSolution.entropy``).

Other TS choices through ``petsc_options`` (``{"ts_type": "rk", "ts_rk_type": "4"}``) or the
options prefix (default ``attnflow_``) on the command line (``-attnflow_ts_type rk``); the
options are inserted for the solve and removed afterwards (:mod:`attnflow.fem.timestepping`).
The solver never steps across a switching time of a :class:`~attnflow.Piecewise` dynamics.

Checkpoint and restart: ``solve(..., checkpoint_every=K, on_checkpoint=f)`` calls ``f`` with a
:class:`~attnflow.states.FieldState` every ``K`` steps (after the step and its limiter);
``solve(..., restart=state)`` continues from such a state with the same time grid, so the
result is bitwise that of an uninterrupted solve on the same number of ranks (and equal to
round-off on another: the dofs are stored by input cell index).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dolfinx.fem
import dolfinx.io
import dolfinx.mesh
import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

from attnflow.cloud import Cloud
from attnflow.dynamics import Dynamics
from attnflow.fem.diffusion import DiffusionOperator, StageSolves
from attnflow.fem.ordering import InputOrder
from attnflow.fem.timestepping import (
    DEFAULT_IMEX_OPTIONS,
    DEFAULT_TS_OPTIONS,
    EXPLICIT_TS_TYPES,
    IMEX_CFL_COEFFICIENT,
    SSP_COEFFICIENT,
    check_petsc_options,
    inserted_options,
)
from attnflow.fem.transport import (
    cell_quadrature,
    cfl_step,
    check_scheme,
    positivity_limiter,
    transport_form,
)
from attnflow.fem.velocity import NodalVelocity
from attnflow.io import VTUSeries
from attnflow.kernels.choice import KernelChoice, as_kernel_choice, plan_kernels
from attnflow.laws import Law
from attnflow.model import check_causal
from attnflow.resources import check_field_overflow, check_memory, check_steps, memory_budget
from attnflow.solutions import FieldSolution, Status
from attnflow.states import CheckpointError, FieldState
from attnflow.timegrid import TimeGrid, check_every, time_grid
from attnflow.validation import check_positive, check_real

__all__ = ["MAX_VTU_CELLS", "FieldSolution", "MeanFieldSolver"]

logger = logging.getLogger(__name__)

#: ``density.pvd`` (one grid with density and velocity, gathered to rank 0) is written for
#: meshes of at most this many cells; larger ones only get ``density.xdmf`` / ``density.bp``.
MAX_VTU_CELLS = 2_000_000


class MeanFieldSolver:
    """Solve ``d_t rho + div(rho X[rho]) = 0`` on a mesh of S^1, S^2 or a box.

    Parameters
    ----------
    model : the dynamics (any :class:`~attnflow.dynamics.Dynamics`: a
        :class:`~attnflow.SelfAttention`, a sum, a :class:`~attnflow.MultiHead`, a
        :class:`~attnflow.Piecewise`, ...); ``model.d`` is the mesh's geometric dimension and
        ``model.sphere`` must match the mesh (manifold mesh of the unit sphere, or a box).
    mesh : from :func:`circle_mesh`, :func:`sphere_mesh` or :func:`box_mesh` (ghosted).
    rho0 : initial density: a :class:`~attnflow.laws.Law` (its ``pdf``) or a callable mapping
        ``(n, d)`` points to ``(n,)`` values >= 0. L2-projected onto DG_k (then limited).
    degree : polynomial degree of the density: 0 (upwind finite volumes) or 1 (DG1 with the
        Zhang–Shu positivity limiter after every stage).
    kernel : how the kernel sums of every attention term are computed: ``"auto"`` (default:
        the cheapest method whose memory fits the budget, chosen per term from estimates of
        memory and cost, see :mod:`attnflow.kernels.choice`; the choice is logged and recorded
        in ``stats``), :class:`DenseKernel` (assembled once), :class:`SparseKernel` (assembled
        once, truncated; for large beta), :class:`SpectralKernel` (zonal kernels on S^1 and
        S^2) or :class:`RecomputedKernel` (the engine at every stage); or their names. An
        explicit choice that does not fit the memory budget is refused before assembly.
    cfl : fraction of the SSP time-step bound (0 < cfl <= 1).
    quadrature_degree : degree of the cell quadrature of the kernel integrals.
    petsc_options : PETSc options of the TS (keys without the dash and the prefix, e.g.
        ``{"ts_type": "rk", "ts_rk_type": "4"}``), inserted for each solve and removed after.
    petsc_options_prefix : the options prefix of the TS (default ``attnflow_``).
    normalize : scale the initial density to unit mass on the mesh (the total weight of a
        particle system), after evaluating ``rho0`` at the quadrature points.
    dt : the time step (default: the transport CFL step; for a dynamics without transport,
        speed bound 0, the CFL step of a unit speed, ``dt ~ h``). A ``dt`` above the CFL step
        of a dynamics with transport is refused (positivity); without transport any ``dt > 0``
        is allowed (the implicit diffusion is unconditionally stable and positive for DG0).

    Noise: a dynamics with a :class:`~attnflow.Diffusion` term (``model.noisy``) solves
    ``d_t rho + div(rho X[rho]) = sigma Delta rho`` (module docstring); the diffusion matrix is
    assembled at construction. DG0 needs an admissible mesh (``circle_mesh``, ``sphere_mesh``,
    ``box_mesh(1, ...)``); use ``degree=1`` on 2-D and 3-D boxes.

    :meth:`solve` can be called more than once: every call starts from ``rho0`` (or from its
    ``restart`` state) and leaves nothing behind that changes the next one.
    """

    def __init__(
        self,
        model: Dynamics,
        mesh: dolfinx.mesh.Mesh,
        rho0: Law | Callable[[np.ndarray], np.ndarray],
        *,
        degree: int = 0,
        kernel: KernelChoice | str = "auto",
        cfl: float = 0.9,
        quadrature_degree: int = 4,
        petsc_options: Mapping[str, Any] | None = None,
        petsc_options_prefix: str = "attnflow_",
        normalize: bool = False,
        dt: float | None = None,
    ) -> None:
        if check_causal(model):
            raise ValueError(
                "model is causal (token j sees earlier tokens only): its density lives on "
                "[0, 1] x S^{d-1}; use attnflow.fem.CausalSolver"
            )
        if not isinstance(model, Dynamics):
            raise TypeError(f"model must be a Dynamics, got {type(model).__name__}")
        kernel = as_kernel_choice(kernel)
        petsc_options = check_petsc_options(petsc_options, petsc_options_prefix)
        gdim, tdim = mesh.geometry.dim, mesh.topology.dim
        if model.d != gdim:
            raise ValueError(f"model.d must equal the mesh dimension {gdim}, got {model.d}")
        manifold = tdim < gdim
        if model.sphere != manifold:
            raise ValueError(
                "model.sphere must match the mesh: sphere=True needs a sphere mesh "
                f"(got a {'manifold' if manifold else 'volume'} mesh)"
            )
        check_scheme(degree, cfl)
        if dt is not None:
            dt = check_positive("dt", dt)
        if isinstance(rho0, Law) and (rho0.d != gdim or bool(rho0.on_sphere) != manifold):
            space = {True: "S^{} in R^{}", False: "R^{1}"}
            raise ValueError(
                f"rho0 must be a law on the mesh's space {space[manifold].format(gdim - 1, gdim)}, "
                f"got one on {space[bool(rho0.on_sphere)].format(rho0.d - 1, rho0.d)}"
            )
        self.model, self.mesh, self.comm = model, mesh, mesh.comm
        self.W = dolfinx.fem.functionspace(mesh, ("DG", degree))
        self.U = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, (gdim,)))
        self.rho = dolfinx.fem.Function(self.W, name="density")
        self.u = dolfinx.fem.Function(self.U, name="velocity")
        self.degree = degree
        self.cloud = cell_quadrature(self.W, max(quadrature_degree, 2 * degree))
        #: Gathers cell data of all ranks in the partition-independent input cell order.
        self.order = InputOrder(mesh, self.cloud.cell_dofs.shape[0])
        q = self.cloud
        w = q.weights.reshape(-1, q.n_q)
        # Cell mass matrices M_c = sum_q w_q phi(y_q) phi(y_q)^T (exact: affine cells), inverted.
        mass_matrices = np.einsum("cq,qi,qj->cij", w, q.tab, q.tab)
        self._minv = np.linalg.inv(mass_matrices)
        self._cell_volume = w.sum(axis=1)
        # int phi_l, from the same quadrature as M (so that 1^T M M^{-1} F = sum F exactly
        # up to round-off: a second, differently rounded set of volumes makes mass drift).
        self._phi_integrals = mass_matrices.sum(axis=2)
        self._set_initial(rho0, normalize=bool(normalize))
        self._rho0 = self.rho.x.array.copy()
        self._rhs_count = 0
        # A USA field that must overflow is refused before assembly (attnflow.resources).
        radius = float(np.max(np.linalg.norm(mesh.geometry.x, axis=1)))
        mass0 = float(np.sum(self._phi_integrals * self.rho.x.array[q.cell_dofs]))
        check_field_overflow(
            model, self.comm.allreduce(radius, op=MPI.MAX), self.comm.allreduce(mass0)
        )
        self.kernel = kernel
        #: The method of each attention term and the estimates behind it (``"auto"``).
        self.kernel_plan = plan_kernels(
            model,
            kernel,
            budget=self.comm.bcast(memory_budget(ranks=self.comm.size), root=0),
            n_targets=self.U.dofmap.index_map.size_global,
            n_sources=self.comm.allreduce(self.cloud.points.shape[0]),
            n_assembly_sources=self.comm.allreduce(
                self.cloud.points.shape[0] * self.cloud.cell_dofs.shape[1]
            ),
            solver="fem",
            n_dofs=self.W.dofmap.index_map.size_global,
            ranks=self.comm.size,
        )
        if self.comm.rank == 0:
            for r in self.kernel_plan.describe():
                logger.info(
                    "kernel: %s (requested %s; estimated %.3g MB per rank, %.3g s set-up, "
                    "%.3g s per evaluation)",
                    r["method"],
                    r["requested"],
                    r["memory"] / 1e6,
                    r["setup_estimate"],
                    r["evaluation_estimate"],
                )
        self.velocity = NodalVelocity(model, self.W, self.U, self.cloud, self.kernel_plan)
        phi = ufl.TestFunction(self.W)
        self._form = dolfinx.fem.form(
            transport_form(self.rho, self.u, phi, mesh, boundary=not manifold)
        )
        self.n_dofs = self.W.dofmap.index_map.size_local
        self.cell_volume = np.zeros(self.n_dofs)
        self.cell_volume[q.cell_dofs] = self._phi_integrals
        self._b = dolfinx.fem.Function(self.W)
        #: The transport CFL step (of a unit speed when the dynamics has no transport).
        self.cfl_dt = self._cfl_step(cfl)
        if dt is not None and self.transport_speed > 0 and dt > self.cfl_dt:
            raise ValueError(
                f"dt must be <= the transport CFL step {self.cfl_dt:.6g} (positivity), got {dt!r}"
            )
        #: The time step of the solves (``cfl_dt`` unless ``dt`` was given).
        self.dt = self.cfl_dt if dt is None else dt
        self.petsc_options = petsc_options
        self.petsc_options_prefix = petsc_options_prefix
        #: The largest diffusion coefficient of the dynamics over time (0 without noise).
        self.sigma_max = _max_diffusivity(model)
        self._noise: DiffusionOperator | None = None
        if model.noisy:  # assembled once, collectively, before any solve
            self._noise = DiffusionOperator(self.W, self.cloud.cell_dofs, self._minv)
        self._sigma = 0.0  # the diffusion coefficient of the current interval
        self._explicit_sigma = 0.0  # sigma when an explicit TS integrates the diffusion
        self._energy_term = _energy_term(model)
        self._stages: StageSolves | None = None

    # -- set-up ----------------------------------------------------------------------------
    def _set_initial(self, rho0, *, normalize: bool = False) -> None:
        f = rho0.pdf if isinstance(rho0, Law) else rho0
        if not callable(f):
            raise TypeError("rho0 must be a Law or a callable (n, d) -> (n,)")
        pts = self.cloud.points
        if self.model.sphere:  # the faceted mesh is mapped to the sphere by radial projection
            pts = pts / np.linalg.norm(pts, axis=1, keepdims=True)
        vals = check_real("rho0 values", f(pts)).reshape(-1)
        if vals.shape != (self.cloud.points.shape[0],) or not np.all(np.isfinite(vals)):
            raise ValueError("rho0 must return one finite value per point")
        if np.any(vals < 0):
            raise ValueError(f"rho0 must be >= 0 (min {vals.min():.3g})")
        q = self.cloud
        w = q.weights.reshape(-1, q.n_q)
        mass = self.comm.allreduce(float((w * vals.reshape(-1, q.n_q)).sum()))
        if not mass > 0:
            raise ValueError("rho0 must have positive mass on the mesh")
        if normalize:
            vals = vals / mass
        # L2 projection, cell by cell (DG0: cell averages), then the positivity limiter.
        b = np.einsum("cq,cq,ql->cl", w, vals.reshape(-1, q.n_q), q.tab)
        self.rho.x.array[q.cell_dofs] = np.einsum("cij,cj->ci", self._minv, b)
        self._limit(self.rho.x.array)
        self.rho.x.scatter_forward()

    def _limit(self, dofs: np.ndarray) -> None:
        """The positivity limiter on the owned dofs, in place (no-op for DG0)."""
        if self.degree > 0:
            positivity_limiter(dofs, self.cloud.cell_dofs)

    def _fix_negative_means(self, dofs: np.ndarray) -> None:
        """DG1 with noise, after a step: cells whose mean is negative are set to 0 and the
        other cells scaled by ``1 - deficit / positive mass``, so the mass is kept to
        round-off; collective (one reduction).

        The transport keeps the cell means >= 0 under the CFL step, and so does the DG0
        diffusion (an M-matrix), but the SIPG diffusion of DG1 does not: where the density is
        nearly 0 next to a steep slope (between clusters at small sigma, at the edge of a
        compact support) an implicit (or explicit) diffusion step can leave a slightly
        negative mean (measured -1e-6 with beta = 25, sigma = 1e-3 on S^1), which the
        limiter alone would clip, creating mass. The number of cells fixed and the mass
        moved are in ``stats``.
        """
        cd = self.cloud.cell_dofs
        means = dofs[cd].mean(axis=1)  # P1 Lagrange: the mean of the vertex values
        neg = means < 0
        mass = self._cell_volume * means
        local = np.array([-mass[neg].sum(), mass[~neg].sum(), np.count_nonzero(neg)], float)
        deficit, positive, count = self.comm.allreduce(local)
        if count == 0 or not positive > deficit:
            return
        dofs[cd[neg]] = 0.0
        dofs[cd[~neg]] *= (positive - deficit) / positive
        self._fixed_cells += int(count)
        self._fixed_mass += float(deficit)

    def _cfl_step(self, cfl: float) -> float:
        mesh = self.mesh
        R = self.comm.allreduce(float(np.max(np.linalg.norm(mesh.geometry.x, axis=1))), op=MPI.MAX)
        #: The a priori transport speed bound (0: no transport, e.g. pure diffusion).
        self.transport_speed = float(self.model.speed_bound(R, self.mass()))
        speed = self.transport_speed if self.transport_speed > 0 else 1.0
        c = IMEX_CFL_COEFFICIENT if self.model.noisy else SSP_COEFFICIENT
        return cfl_step(mesh, self._cell_volume, speed, self.degree, cfl * c)

    # -- evaluation --------------------------------------------------------------------------
    def mass(self) -> float:
        """Total mass ``int rho`` (global)."""
        return self.comm.allreduce(float(self.cell_volume @ self.rho.x.array[: self.n_dofs]))

    def rhs(self, ts, t, x: PETSc.Vec, f: PETSc.Vec) -> None:
        """``f = M^{-1} F(rho)`` for the density dofs ``x`` (PETSc TS signature); with an
        explicit TS and noise also ``- sigma M^{-1} A rho``."""
        self.rho.x.array[: self.n_dofs] = x.array_r
        # DG1: every stage is limited before its right-hand side is evaluated (PETSc locks the
        # stage vector, so the limited copy lives in rho), and the solution after every step
        # (_post_step). The limiter keeps cell means, so each stage's cell means equal those
        # of a forward Euler step from a limited state: >= 0 under the CFL bound.
        self._limit(self.rho.x.array)
        self.rho.x.scatter_forward()
        self._rhs_count += 1
        self._transport(float(t), f.array)
        if self._explicit_sigma > 0:
            y = f.duplicate()
            self._noise.B.mult(self.rho.x.petsc_vec, y)
            f.axpy(-self._explicit_sigma, y)
            y.destroy()

    def _transport(self, t: float, out: np.ndarray) -> None:
        """``out[:n_dofs] = M^{-1} F(rho)`` for the density in ``self.rho`` (ghosts
        up to date) at time ``t``; collective."""
        self.velocity(self.rho, self.u, t)
        b = self._b.x
        b.array[:] = 0.0
        dolfinx.fem.assemble_vector(b.array, self._form)
        b.scatter_reverse(dolfinx.la.InsertMode.add)
        cd = self.cloud.cell_dofs
        out[cd] = np.einsum("cij,cj->ci", self._minv, b.array[cd])

    def _ifunction(self, ts, t, x: PETSc.Vec, xdot: PETSc.Vec, f: PETSc.Vec) -> None:
        """IMEX implicit part ``f = xdot + sigma M^{-1} A x`` (PETSc TS signature)."""
        if self._sigma > 0:
            self.diffusion_operator.B.mult(x, f)
            f.scale(self._sigma)
            f.axpy(1.0, xdot)
        else:
            xdot.copy(f)

    def _ijacobian(self, ts, t, x, xdot, shift: float, J: PETSc.Mat, P: PETSc.Mat) -> None:
        """``J = shift I + sigma M^{-1} A``: with the default solver the stage is recorded and
        :class:`~attnflow.fem.diffusion.StageSolves` uses its cached factorisation; with a
        KSP/PC from the options ``J`` is rewritten (only when shift or sigma change)."""
        op = self.diffusion_operator
        op.stage = (float(shift), float(self._sigma))
        if self._stages is None:
            op.stage_matrix(shift, self._sigma)

    # -- public operators (e.g. for stationary states) -----------------------------------------
    @property
    def diffusion_operator(self) -> DiffusionOperator:
        """The diffusion operator (:class:`~attnflow.fem.diffusion.DiffusionOperator`: the
        PETSc matrices ``A``, ``M_inv`` and ``B = M^{-1} A``, rows distributed like the
        owned dofs). Assembled at construction for a noisy dynamics, else on first access
        (then collective: every rank must ask)."""
        if self._noise is None:
            self._noise = DiffusionOperator(self.W, self.cloud.cell_dofs, self._minv)
        return self._noise

    @property
    def diffusion_matrix(self) -> PETSc.Mat:
        """The symmetric PETSc matrix ``A`` of ``-Delta`` (``M d_t rho = F - sigma A rho``);
        see :attr:`diffusion_operator`."""
        return self.diffusion_operator.A

    def diffusivity(self, t: float = 0.0) -> float:
        """The diffusion coefficient ``sigma`` of the dynamics at time ``t`` (0 without
        noise)."""
        return float(self.model.diffusivity(float(t)))

    def tendency(self, dofs: np.ndarray, t: float = 0.0) -> np.ndarray:
        """The time derivative ``d rho / dt`` of the semi-discrete equation at ``rho = dofs``.

        ``M^{-1} (F(rho) - sigma(t) A rho)``: the upwind DG transport residual ``F`` with the
        velocity of ``rho`` of the dynamics active at time ``t`` (attention terms from the
        solver's kernel operators) and the diffusion matrix ``A`` (:attr:`diffusion_matrix`),
        ``sigma(t) = model.diffusivity(t)``, ``M`` the block diagonal mass matrix. This is
        the right-hand side the time stepper integrates, without the positivity limiter and
        without clipping (negative values of ``rho`` enter the transport as they are; the
        kernel sums use their positive part, as every stage does). Collective.

        Parameters
        ----------
        dofs : (n_dofs,) the owned density dofs in this rank's local order (the layout of
            ``solver.rho.x.array[:n_dofs]``; mass ``cell_volume @ dofs``, summed over ranks).
        t : the time (selects the piece of a :class:`~attnflow.Piecewise` dynamics and its
            ``sigma``).

        Returns
        -------
        (n_dofs,) the owned dofs of ``d rho / dt``. ``cell_volume @ result`` sums to 0 over
        the ranks up to round-off on spheres (mass conservation); on a box it is minus the
        advective outflow rate.

        The solver's working density ``rho`` (and velocity ``u``) are overwritten; its
        initial density and the next :meth:`solve` are not affected.
        """
        x = np.asarray(dofs, dtype=np.float64)
        if x.shape != (self.n_dofs,):
            raise ValueError(f"dofs must have shape ({self.n_dofs},), got {x.shape}")
        t = float(t)
        self.rho.x.array[: self.n_dofs] = x
        self.rho.x.scatter_forward()
        out = np.zeros(self.n_dofs)
        active = self.velocity.active
        self.velocity.active = self.model  # the piece active at t (Piecewise.terms(t))
        try:
            self._transport(t, out)
        finally:
            self.velocity.active = active
        sigma = self.diffusivity(t)
        if sigma > 0:
            B = self.diffusion_operator.B
            xv, yv = B.createVecs()
            xv.array[:] = x
            B.mult(xv, yv)
            out -= sigma * yv.array_r
            xv.destroy()
            yv.destroy()
        return out

    def _gather_cloud(self, w: np.ndarray) -> np.ndarray:
        """Per-point arrays of all ranks in input cell order, on every rank; collective."""
        return self.order.gather_points(w, self.cloud.n_q)

    # -- partition-independent dofs ------------------------------------------------------------
    @property
    def n_cells_global(self) -> int:
        """Number of cells of the whole mesh."""
        return self.order.n_cells_global

    def global_dofs(self, root: int | None = 0) -> np.ndarray | None:
        """The density dofs as a ``(n_cells, n_dofs_per_cell)`` array by input cell index.

        The input cell index and the DG dofs' order within a cell (that of the cell's input
        vertices) do not depend on the partition, so the array is the same on any number of
        ranks. Collective; the array is returned on ``root`` (``None`` elsewhere), or on every
        rank with ``root=None``.
        """
        return self.order.gather_cells(self.rho.x.array[self.cloud.cell_dofs], root)

    def set_global_dofs(self, dofs: np.ndarray) -> None:
        """Set the density from a :meth:`global_dofs` array (the whole array on every rank)."""
        dofs = np.asarray(dofs, dtype=np.float64)
        shape = (self.n_cells_global, self.cloud.cell_dofs.shape[1])
        if dofs.shape != shape:
            raise ValueError(f"dofs must have shape {shape}, got {dofs.shape}")
        self.rho.x.array[self.cloud.cell_dofs] = dofs[self.order.index]
        self.rho.x.scatter_forward()

    def set_initial_dofs(self, dofs: np.ndarray) -> None:
        """Make a :meth:`global_dofs` array (e.g. ``FieldSolution.dofs`` of an earlier solve on
        the same mesh and degree) the initial density of the next solves (whole array on every
        rank); e.g. to chain solves with different dynamics."""
        self.set_global_dofs(dofs)
        self._rho0 = self.rho.x.array.copy()

    # -- time stepping -------------------------------------------------------------------------
    def solve(
        self,
        t_final: float,
        save_times: Sequence[float] | None = None,
        output_dir: str | Path | None = None,
        *,
        energy: bool = True,
        checkpoint_every: int = 0,
        on_checkpoint: Callable[[FieldState], None] | None = None,
        restart: FieldState | None = None,
        progress: Callable[[float, int], None] | None = None,
    ) -> FieldSolution:
        """Integrate from ``rho0`` to ``t_final``; record the density at ``save_times``
        (default 0, t_final).

        ``energy=False`` skips the O(n_points^2) interaction energy at the save times (large
        meshes); dynamics without an energy record NaN.

        With ``output_dir`` the density and velocity time series are written there
        collectively: ``density.pvd`` + ``density/*.vtu`` (ONE grid per time carrying the
        cell data ``density`` (DG0; the cell means for DG1) and the point data ``velocity``,
        ``speed`` and, for DG1, ``density_vertex``: open it in ParaView and apply *Glyph*
        directly; gathered to rank 0, skipped with a warning above ``MAX_VTU_CELLS``
        cells), ``density.xdmf`` + ``.h5`` (the same fields as two functions, which
        ParaView's ``Xdmf3ReaderT`` shows as two blocks) and, when dolfinx has ADIOS2,
        ``density.bp`` (VTX, the density at its own degree; ParaView >= 5.12). Nothing is
        written otherwise, and nothing to the working directory. The files are closed when
        ``solve`` returns or raises.

        Checkpoint and restart
        ----------------------
        checkpoint_every : with ``K > 0``, ``on_checkpoint(state)`` is called on every rank
            (collectively) after every ``K``-th step with a
            :class:`~attnflow.states.FieldState` whose dof arrays are on rank 0 only (a
            step that PETSc shortened to reach an event postpones it by a step or two).
        restart : a :class:`~attnflow.states.FieldState` (arrays on every rank) from a
            solve of the same problem with the same ``t_final`` and ``save_times``: the solve
            continues from it (the ParaView files are rewritten from its recorded saves).
        progress : ``progress(t, step)`` after every step, on every rank (e.g. a progress bar).

        Returns a :class:`~attnflow.solutions.FieldSolution`; its ``stats`` hold ``steps``,
        ``rhs_evaluations``, ``wall_time``, ``dt`` (the step used), ``ts_type``, ``sigma``
        (the largest diffusion coefficient), ``implicit`` (whether the diffusion was
        implicit), ``degree``, ``kernel``, ``matrix_entries``, ``rows_recomputed``,
        ``spectral_recomputed`` (targets the spectral kernel recomputed exactly) and
        ``ranks``. Its ``free_energy`` and ``entropy`` are recorded at the save times.
        """
        grid = time_grid(t_final, save_times, breakpoints=self.model.breakpoints)
        every = check_every(checkpoint_every, on_checkpoint)
        noisy = self.model.noisy
        defaults = DEFAULT_IMEX_OPTIONS if noisy else DEFAULT_TS_OPTIONS
        scheme = self._scheme(defaults)
        time_step = self._time_step(scheme)
        # Without a KSP/PC of the user's, the implicit stages use cached LU factorisations.
        cached = scheme == "imex" and not self._user_option(
            "ksp_type", "pc_type", "pc_factor_mat_solver_type"
        )
        # Steps and the saved densities, before the run (attnflow.resources).
        if time_step == self.cfl_dt:
            origin = "its CFL step"
        elif time_step == self.dt:
            origin = "its time step dt"
        else:
            origin = "its step capped by the explicit diffusion bound"
        check_steps(grid.t_final, time_step, f"MeanFieldSolver.solve with {origin}")
        n_pts, n_save = self.n_cells_global * self.cloud.n_q, grid.save_times.size
        check_memory(
            f"MeanFieldSolver.solve: {n_save} saved densities of {n_pts} points",
            8 * n_pts * (2 * n_save + 4),
            self.comm.bcast(memory_budget(ranks=self.comm.size), root=0),
        )
        if restart is not None:
            self._check_restart(restart, grid)
        run = _Run(
            grid=grid,
            dt=time_step,
            sigma_steps=noisy,
            energy=bool(energy) and self._energy_term is not None,
            every=every,
            on_checkpoint=on_checkpoint,
            progress=progress,
            next_checkpoint=((0 if restart is None else restart.step) // every + 1) * every
            if every
            else 0,
        )
        self.rho.x.array[:] = self._rho0
        self._rhs_count = 0
        self._fixed_cells, self._fixed_mass = 0, 0.0
        rows0 = self.velocity.rows_recomputed
        spec0 = self.velocity.spectral_recomputed
        with contextlib.ExitStack() as stack:
            writers = self._open_output(output_dir, stack)
            run.start = time.perf_counter()
            rec = run.rec
            if restart is None:
                run.m0 = self.mass()
                t0, step0, time_step0, segment0 = 0.0, 0, time_step, 0
            else:
                if writers:  # the recorded saves, rewritten into the new files
                    for k, t_k in enumerate(restart.t_saved):
                        self.set_global_dofs(restart.saved_dofs[k])
                        self._write(writers, float(t_k))
                for k in range(len(restart.t_saved)):
                    rec["t"].append(float(restart.t_saved[k]))
                    rec["mass"].append(float(restart.mass[k]))
                    rec["energy"].append(float(restart.energy[k]))
                    rec["min"].append(float(restart.min_density[k]))
                    rec["w"].append(np.asarray(restart.weights[k]))
                    # The free energy of a recorded save, from its recorded density and energy.
                    self._set_sigma(*grid.segment(self._save_segment(grid, k)))
                    self._record_free_energy(run, rec["w"][-1], rec["energy"][-1])
                    if every and self.comm.rank == 0:
                        rec["dofs"].append(np.asarray(restart.saved_dofs[k]))
                self.set_global_dofs(restart.dofs)
                run.m0 = restart.mass0
                t0, step0, time_step0 = restart.t, restart.step, restart.time_step
                segment0, run.wall0 = restart.segment, restart.wall_time
            ts = PETSc.TS().create(comm=self.comm)
            stack.callback(ts.destroy)
            x = self.rho.x.petsc_vec.copy()
            stack.callback(x.destroy)
            ts.setOptionsPrefix(self.petsc_options_prefix)
            ts.setRHSFunction(self.rhs, x.duplicate())
            ts.setPostStep(lambda ts_: self._post_step(ts_, run))
            ts.setTimeStep(time_step0)
            ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)
            ts.setMaxSteps(10**9)
            with inserted_options(self.petsc_options_prefix, self.petsc_options, defaults):
                ts.setFromOptions()
                run.ts_type = str(ts.getType())
                if scheme == "imex":
                    # Diffusion implicit: u' + sigma M^{-1} A u = M^{-1} F(u) (transport).
                    ts.setIFunction(self._ifunction, x.duplicate())
                    J = self.diffusion_operator.stage_matrix(1.0 / time_step, self.sigma_max)
                    ts.setIJacobian(self._ijacobian, J, J)
                    snes = ts.getSNES()
                    snes.setFromOptions()
                    self._stages = None
                    if cached:
                        self._stages = StageSolves(self.diffusion_operator)
                        stack.callback(self._stages.destroy)
                        ksp = snes.getKSP()
                        ksp.setType(PETSc.KSP.Type.PREONLY)
                        ksp.getPC().setType(PETSc.PC.Type.PYTHON)
                        ksp.getPC().setPythonContext(self._stages)
            self._explicit_sigma = 0.0
            ts.setTime(t0)
            ts.setStepNumber(step0)
            if progress is not None:
                progress(t0, step0)
            for k in range(segment0, grid.events.size):
                a, t_next = grid.segment(k)
                run.segment = k
                self.velocity.set_interval(a, t_next)
                self._set_sigma(a, t_next)
                if scheme == "explicit":
                    self._explicit_sigma = self._sigma
                if t_next > ts.getTime():
                    # MATCHSTEP shortens the last step of an interval and TS keeps that step
                    # for the next solve: restore the step every time (a restarted interval
                    # continues with the step it was interrupted with, so the time grid is the
                    # same).
                    if restart is None or k != segment0:
                        ts.setTimeStep(time_step)
                    ts.setMaxTime(t_next)
                    ts.solve(x)
                self.rho.x.array[: self.n_dofs] = x.array_r
                self.rho.x.scatter_forward()
                if grid.is_save[k]:
                    self._record(run, t_next, writers)
            n_steps = ts.getStepNumber()
            self._explicit_sigma = 0.0
        wall = run.wall0 + time.perf_counter() - run.start
        mass = np.array(rec["mass"])
        status = Status.SUCCESS if np.all(np.isfinite(mass)) else Status.NONFINITE
        if status is Status.SUCCESS and run.energy and not np.all(np.isfinite(rec["energy"])):
            status = Status.OVERFLOW  # an energy that is NaN or inf never comes with success
        if self.comm.rank == 0:
            logger.info(
                "MeanFieldSolver: %d steps of dt=%.3g (%s), mass drift %.2e, %.2fs",
                n_steps,
                time_step,
                scheme,
                abs(mass[-1] - run.m0) / run.m0,
                wall,
            )
        stats = {
            "steps": int(n_steps),
            "rhs_evaluations": int(self._rhs_count),
            "wall_time": wall,
            "dt": float(time_step),
            "ts_type": run.ts_type,
            "sigma": float(self.sigma_max),
            "implicit": scheme == "imex",
            "negative_means_fixed": int(self._fixed_cells),
            "mass_moved": float(self._fixed_mass),
            "degree": int(self.degree),
            "kernel": "+".join(r["method"] for r in self.kernel_plan.describe()) or "none",
            "kernel_plan": self.kernel_plan.describe(),
            "matrix_entries": self.velocity.matrix_entries,
            "rows_recomputed": self.velocity.rows_recomputed - rows0,
            "spectral_recomputed": self.velocity.spectral_recomputed - spec0,
            "ranks": int(self.comm.size),
        }
        return FieldSolution(
            t=np.array(rec["t"]),
            mass=mass,
            outflow=run.m0 - mass,
            energy=np.array(rec["energy"]),
            min_density=np.array(rec["min"]),
            points=self._gather_cloud(self.cloud.points),
            point_weights=self._gather_cloud(self.cloud.weights),
            weights=np.stack(rec["w"]),
            points_per_cell=self.cloud.n_q,
            dofs=self.global_dofs(root=None),
            status=status,
            stats=stats,
            free_energy=np.array(rec["free"]),
            entropy=np.array(rec["entropy"]),
        )

    def _scheme(self, defaults: Mapping[str, str]) -> str:
        """``"imex"`` (ts_type arkimex) or ``"explicit"``, from the TS type the options will
        select (``petsc_options``, then the options database, then ``defaults``)."""
        opts = {str(k).lstrip("-"): v for k, v in self.petsc_options.items()}
        name = self.petsc_options_prefix + "ts_type"
        if "ts_type" in opts:
            ts_type = str(opts["ts_type"])
        elif PETSc.Options().hasName(name):
            ts_type = str(PETSc.Options().getString(name))
        else:
            ts_type = str(defaults["ts_type"])
        if ts_type == "arkimex":
            return "imex"
        if ts_type not in EXPLICIT_TS_TYPES and self.model.noisy:
            raise ValueError(
                f"petsc_options: ts_type {ts_type!r} cannot integrate the noise; use 'arkimex' "
                f"(IMEX, the default) or an explicit type ({', '.join(EXPLICIT_TS_TYPES)})"
            )
        return "explicit"

    def _user_option(self, *keys: str) -> bool:
        """Whether any of the options ``keys`` is given (``petsc_options`` or the database)."""
        opts = {str(k).lstrip("-") for k in self.petsc_options}
        db = PETSc.Options()
        return any(k in opts or db.hasName(self.petsc_options_prefix + k) for k in keys)

    def _time_step(self, scheme: str) -> float:
        """The step of a solve: ``dt``, capped by the explicit diffusion bound when an
        explicit scheme integrates the noise (logged on rank 0)."""
        if scheme != "explicit" or self.sigma_max <= 0:
            return self.dt
        dt_diff = self.diffusion_operator.explicit_step(self.sigma_max, SSP_COEFFICIENT)
        if self.transport_speed > 0:
            step = 1.0 / (1.0 / self.dt + 1.0 / dt_diff)
        else:
            step = min(self.dt, dt_diff)
        if self.comm.rank == 0:
            logger.warning(
                "explicit time stepping of the noise: the step is capped by the explicit "
                "diffusion bound 2 C / (sigma |M^-1 A|) = %.3g (sigma = %g) to %.3g (step "
                "without noise %.3g); the default IMEX stepping (ts_type arkimex) has no such "
                "bound",
                dt_diff,
                self.sigma_max,
                step,
                self.dt,
            )
        return step

    def _set_sigma(self, a: float, b: float) -> None:
        """The diffusion coefficient of the interval ``(a, b)`` between two events."""
        self._sigma = float(self.model.on_interval(a, b).diffusivity(0.5 * (a + b)))

    @staticmethod
    def _save_segment(grid: TimeGrid, k: int) -> int:
        """The event index of the ``k``-th save time."""
        return int(np.flatnonzero(grid.is_save)[k])

    def _record_free_energy(self, run: _Run, w: np.ndarray, log_energy: float) -> None:
        """Append the entropy ``int rho log rho`` and the free energy ``sigma S - E`` of the
        density with quadrature weights ``w`` (all points, every rank)."""
        if run.point_weights is None:
            run.point_weights = self._gather_cloud(self.cloud.weights)
        pos = w > 0
        entropy = float(np.sum(w[pos] * np.log(w[pos] / run.point_weights[pos])))
        with np.errstate(over="ignore"):
            e = float(np.exp(log_energy)) if np.isfinite(log_energy) else np.nan
        run.rec["entropy"].append(entropy)
        run.rec["free"].append(self._sigma * entropy - e)

    def _check_restart(self, state: FieldState, grid: TimeGrid) -> None:
        if not isinstance(state, FieldState):
            raise TypeError(f"restart must be a FieldState, got {type(state).__name__}")
        if state.dt != self.dt:
            raise CheckpointError(
                f"the checkpoint's time step (CFL step or dt) {state.dt!r} differs from this "
                f"solver's {self.dt!r} "
                "(a different mesh, model, degree, cfl or dt?)"
            )
        if state.t_final != grid.t_final or not np.array_equal(state.save_times, grid.save_times):
            raise CheckpointError("the checkpoint was made with other t_final or save_times")
        shape = (self.n_cells_global, self.cloud.cell_dofs.shape[1])
        if state.dofs is None or np.shape(state.dofs) != shape:
            raise CheckpointError(
                f"the checkpoint's dofs have shape {np.shape(state.dofs)}, this mesh needs {shape}"
            )
        n_rec = len(state.t_saved)
        if state.saved_dofs is None or np.shape(state.saved_dofs) != (n_rec, *shape):
            raise CheckpointError("the checkpoint's recorded dofs do not fit this mesh")
        if not 0 <= state.segment < grid.events.size or n_rec != int(
            np.count_nonzero(grid.is_save[: state.segment])
        ):
            raise CheckpointError("the checkpoint's segment does not fit its records")

    def _post_step(self, ts, run: _Run) -> None:
        x = ts.getSolution()
        if self.degree > 0 and run.sigma_steps:
            self._fix_negative_means(x.array)
        self._limit(x.array)
        step = ts.getStepNumber()
        if run.progress is not None:
            run.progress(ts.getTime(), step)
        if run.every and step >= run.next_checkpoint:
            # PETSc's MATCHSTEP splits the tail of an interval into shortened steps with some
            # state of its own: a state there would not resume bitwise. Checkpoint only where
            # the TS holds the CFL step (or the interval is complete), else a step or two later.
            done = ts.getTime() >= run.grid.events[run.segment]
            if ts.getTimeStep() == run.dt or done:
                run.on_checkpoint(self._state(ts, x, run))
                run.next_checkpoint = (step // run.every + 1) * run.every

    def _state(self, ts, x: PETSc.Vec, run: _Run) -> FieldState:
        """The state after the current step (collective; dof arrays on rank 0)."""
        rec = run.rec
        dofs = self.order.gather_cells(x.array_r[self.cloud.cell_dofs], root=0)
        n_pts = self.n_cells_global * self.cloud.n_q
        if self.comm.rank == 0:
            shape = (0, *dofs.shape)
            saved = np.stack(rec["dofs"]) if rec["dofs"] else np.zeros(shape)
        else:
            saved = None
        return FieldState(
            t=float(ts.getTime()),
            step=int(ts.getStepNumber()),
            time_step=float(ts.getTimeStep()),
            segment=int(run.segment),
            dt=float(self.dt),
            t_final=run.grid.t_final,
            save_times=run.grid.save_times.copy(),
            dofs=dofs,
            saved_dofs=saved,
            t_saved=np.array(rec["t"], dtype=float),
            mass=np.array(rec["mass"], dtype=float),
            energy=np.array(rec["energy"], dtype=float),
            min_density=np.array(rec["min"], dtype=float),
            weights=np.stack(rec["w"]) if rec["w"] else np.zeros((0, n_pts)),
            mass0=float(run.m0),
            wall_time=run.wall0 + time.perf_counter() - run.start,
        )

    def _record(self, run: _Run, t: float, writers) -> None:
        rec = run.rec
        w = self._gather_cloud(self.cloud.density_weights(self.rho.x.array))
        rec["t"].append(t)
        rec["mass"].append(self.mass())
        rec["w"].append(w)
        local_min = float(self.rho.x.array[: self.n_dofs].min()) if self.n_dofs else np.inf
        rec["min"].append(self.comm.allreduce(local_min, op=MPI.MIN))
        if run.energy:
            pts = self._gather_cloud(self.cloud.points)
            rec["energy"].append(self._energy_term.log_energy(Cloud(pts, np.maximum(w, 0.0))))
        else:
            rec["energy"].append(np.nan)
        self._record_free_energy(run, w, rec["energy"][-1])
        if run.every:
            dofs = self.global_dofs(root=0)
            if dofs is not None:
                rec["dofs"].append(dofs)
        self._write(writers, t)

    def _write(self, writers, t: float) -> None:
        if writers:
            self.velocity(self.rho, self.u, t)
            for wr in writers:
                if isinstance(wr, dolfinx.io.XDMFFile):
                    if self.degree > 0:
                        self._rho_mean.interpolate(self.rho)
                        wr.write_function(self._rho_mean, t)
                    else:
                        wr.write_function(self.rho, t)
                    wr.write_function(self.u, t)
                elif isinstance(wr, _OneGrid):
                    self._write_vtu(wr, t)
                else:
                    wr.write(t)

    def _write_vtu(self, wr: _OneGrid, t: float) -> None:
        """Gather the mesh, the density and the velocity to rank 0 and write one ``.vtu`` with
        all of them on one grid (``density.pvd``); collective."""
        mesh = self.mesh
        n_loc = mesh.topology.index_map(mesh.topology.dim).size_local
        geo = mesh.geometry.dofmaps[0][:n_loc]
        gdim = mesh.geometry.dim
        nodes = np.asarray(mesh.geometry.input_global_indices, dtype=np.int64)[geo]
        coords = mesh.geometry.x[geo][..., :gdim]
        vel = self.u.x.array.reshape(-1, gdim)[self.U.dofmap.list[:n_loc]]
        rho = self.rho.x.array[self.W.dofmap.list[:n_loc]]  # (cells, 1) or (cells, vertices)
        cell_index = np.asarray(mesh.topology.original_cell_index[:n_loc], dtype=np.int64)
        parts = self.comm.gather((cell_index, nodes, coords, vel, rho), root=0)
        if wr.series is None:
            return
        cell_index, nodes, coords, vel, rho = (
            np.concatenate([p[i] for p in parts]) for i in range(5)
        )
        order = np.argsort(cell_index, kind="stable")  # cells in input order on any ranks
        nodes, coords, vel, rho = nodes[order], coords[order], vel[order], rho[order]
        ids, cells = np.unique(nodes, return_inverse=True)
        cells = cells.reshape(nodes.shape)
        points = np.zeros((ids.size, gdim))
        velocity = np.zeros((ids.size, gdim))
        points[cells.ravel()] = coords.reshape(-1, gdim)
        velocity[cells.ravel()] = vel.reshape(-1, gdim)
        # DG0: the cell values; DG1 (Lagrange dofs at the vertices of affine simplices): the
        # cell mean is the mean of the vertex values, the point density their mean over cells.
        point_data = {"velocity": velocity, "speed": np.linalg.norm(velocity, axis=1)}
        if self.degree > 0:
            total = np.zeros(ids.size)
            count = np.zeros(ids.size)
            np.add.at(total, cells.ravel(), rho.ravel())
            np.add.at(count, cells.ravel(), 1.0)
            point_data["density_vertex"] = total / np.maximum(count, 1.0)
        wr.series.write(
            t, points, cells, cell_data={"density": rho.mean(axis=1)}, point_data=point_data
        )

    def _open_output(self, output_dir, stack: contextlib.ExitStack) -> list:
        """Open the ParaView writers in ``output_dir`` (closed by ``stack``); collective."""
        if output_dir is None:
            return []
        out = Path(output_dir)
        if self.comm.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        self.comm.Barrier()
        xdmf = stack.enter_context(dolfinx.io.XDMFFile(self.comm, str(out / "density.xdmf"), "w"))
        xdmf.write_mesh(self.mesh)
        if self.degree > 0:  # XDMF holds cell data: write the cell means
            self._rho_mean = dolfinx.fem.Function(
                dolfinx.fem.functionspace(self.mesh, ("DG", 0)), name="density"
            )
        writers: list = [xdmf]
        if hasattr(dolfinx.io, "VTXWriter"):
            vtx = dolfinx.io.VTXWriter(self.comm, str(out / "density.bp"), [self.rho])
            stack.enter_context(vtx)
            writers.append(vtx)
        n_cells = self.n_cells_global
        if n_cells <= MAX_VTU_CELLS:
            series = VTUSeries(out, "density") if self.comm.rank == 0 else None
            writers.append(_OneGrid(series))
        elif self.comm.rank == 0:
            logger.warning(
                "density.pvd not written: %d cells > %d (gathered to one rank); open "
                "density.xdmf or density.bp",
                n_cells,
                MAX_VTU_CELLS,
            )
        return writers


@dataclass
class _OneGrid:
    """The ``density.pvd`` writer: a :class:`~attnflow.io.VTUSeries` on rank 0, None on the
    others (they send their part to rank 0)."""

    series: VTUSeries | None


@dataclass
class _Run:
    """The state of one call of :meth:`MeanFieldSolver.solve` (nothing of it outlives it)."""

    grid: TimeGrid
    dt: float
    energy: bool
    every: int
    on_checkpoint: Callable[[FieldState], None] | None
    progress: Callable[[float, int], None] | None
    next_checkpoint: int
    segment: int = 0
    ts_type: str = ""
    sigma_steps: bool = False
    point_weights: np.ndarray | None = None
    m0: float = 0.0
    wall0: float = 0.0
    start: float = 0.0
    rec: dict[str, list] = field(
        default_factory=lambda: {
            k: [] for k in ("t", "mass", "energy", "min", "w", "dofs", "entropy", "free")
        }
    )


def _max_diffusivity(model: Dynamics) -> float:
    """The largest diffusion coefficient of ``model`` over time (one value per piece)."""
    b = sorted(model.breakpoints)
    times = [0.0, *(0.5 * (x + y) for x, y in itertools.pairwise(b))]
    if b:
        times += [0.5 * b[0], b[-1] + 1.0]
    return max(float(model.diffusivity(t)) for t in times)


def _energy_term(model: Dynamics) -> Dynamics | None:
    """The dynamics whose interaction energy the solver records (a sum such as
    ``SelfAttention(...) + Diffusion(s)`` has its attention term's), ``None`` when it has none
    (NaN records)."""
    return model if model.has_energy else None
