"""``MeanFieldSolver``: the continuity equation of self-attention on a mesh, with PETSc TS.

Scheme: DG_k upwind transport (:mod:`attnflow.fem.transport`) with the attention velocity of
the current density (:mod:`attnflow.fem.attention`) evaluated at every stage; explicit SSP
Runge–Kutta from PETSc TS (default ``ssp`` / ``rks3`` with 4 stages: third order, SSP
coefficient 2) with a fixed step from the CFL bound

    dt = cfl * C_ssp * min_cells |c| / sum_{facets f of c} |f|  /  X_max,

where ``X_max`` is an a priori bound of the speed (SA: ``|V|_2 R`` with ``R`` the largest
``|y|`` on the mesh; USA: ``mass |V|_2 R e^{beta R^2 |Q^T K|_2 - c}``). Under it the forward
Euler step of DG0 keeps ``rho >= 0``, hence so does every SSP stage. Upwind DG0 is first order
in space (order 1/2 in Wasserstein distance once the density concentrates).

Other TS choices through the options prefix (default ``attnflow_``), e.g.
``-attnflow_ts_type rk -attnflow_ts_rk_type 4``.

Checkpoint and restart: ``solve(..., checkpoint_every=K, on_checkpoint=f)`` calls ``f`` with a
:class:`~attnflow.checkpoint.FieldState` every ``K`` steps (after the step and its limiter);
``solve(..., restart=state)`` continues from such a state with the same time grid, so the
result is bitwise that of an uninterrupted solve on the same number of ranks (and equal to
round-off on another: the dofs are stored by input cell index).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dolfinx.fem
import dolfinx.io
import dolfinx.mesh
import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

from attnflow.fem.attention import AttentionVelocity, DenseKernel, RecomputedKernel, SparseKernel
from attnflow.fem.transport import cell_quadrature, transport_form
from attnflow.laws import Law
from attnflow.model import SelfAttention
from attnflow.states import CheckpointError, FieldState

__all__ = ["FieldSolution", "MeanFieldSolver"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldSolution:
    """Finite element solution at the save times (identical on every rank).

    Attributes
    ----------
    t : (n_saved,) save times.
    mass : (n_saved,) total mass ``int rho``.
    outflow : (n_saved,) mass that has left the domain (boxes; 0 on spheres).
    energy : (n_saved,) ``log E`` of the density (see ``SelfAttention.log_energy``), over the
        quadrature cloud (O(n_points^2) per save; NaN when ``solve(..., energy=False)``).
    min_density : (n_saved,) minimum of ``rho`` over the quadrature points.
    points : (n_points, d) quadrature points of all cells (input cell order, the same on any
        number of ranks).
    point_weights : (n_points,) quadrature weights ``|J| w_q`` (``weights / point_weights`` is
        the density at the points).
    weights : (n_saved, n_points) weights ``|J| w_q rho(y_q)``: each saved density as a
        weighted point cloud, compared with particles like any other cloud.
    dt : the time step; n_steps : steps taken; wall_time : seconds in ``solve`` (summed over
        the pieces of a restarted solve).
    dofs : (n_cells, n_dofs_per_cell) density dofs at the last save time, by input cell index
        (partition-independent; ``None`` for solutions built elsewhere).
    """

    t: np.ndarray
    mass: np.ndarray
    outflow: np.ndarray
    energy: np.ndarray
    min_density: np.ndarray
    points: np.ndarray
    point_weights: np.ndarray
    weights: np.ndarray
    dt: float
    n_steps: int
    wall_time: float = field(default=0.0)
    points_per_cell: int = 1
    dofs: np.ndarray | None = None

    def cell_masses(self, k: int = -1) -> np.ndarray:
        """(n_cells,) mass of every cell at save ``k``, in the mesh's input cell order (for
        ``circle_mesh``/``sphere_mesh`` the order of the generator, as in the histograms of
        :mod:`attnflow.metrics`)."""
        return self.weights[k].reshape(-1, self.points_per_cell).sum(axis=1)


class MeanFieldSolver:
    """Solve ``d_t rho + div(rho X[rho]) = 0`` on a mesh of S^1, S^2 or a box.

    Parameters
    ----------
    model : attention model; ``model.d`` is the mesh's geometric dimension and
        ``model.sphere`` must match the mesh (manifold mesh of the unit sphere, or a box).
    mesh : from :func:`circle_mesh`, :func:`sphere_mesh` or :func:`box_mesh` (ghosted).
    rho0 : initial density: a :class:`~attnflow.laws.Law` (its ``pdf``) or a callable mapping
        ``(n, d)`` points to ``(n,)`` values >= 0. L2-projected onto DG_k (then limited).
    degree : polynomial degree of the density: 0 (upwind finite volumes) or 1 (DG1 with the
        Zhang–Shu positivity limiter after every stage).
    kernel : :class:`DenseKernel` (assembled once), :class:`SparseKernel` (assembled once,
        truncated; for large beta) or :class:`RecomputedKernel` (engine at every stage).
    cfl : fraction of the SSP time-step bound (0 < cfl <= 1).
    quadrature_degree : degree of the cell quadrature of the kernel integrals.
    options_prefix : PETSc options prefix of the TS.
    normalize : scale the initial density to unit mass on the mesh (the total weight of a
        particle system), after evaluating ``rho0`` at the quadrature points.
    """

    def __init__(
        self,
        model: SelfAttention,
        mesh: dolfinx.mesh.Mesh,
        rho0: Law | Callable[[np.ndarray], np.ndarray],
        *,
        degree: int = 0,
        kernel: DenseKernel | SparseKernel | RecomputedKernel = DenseKernel(),
        cfl: float = 0.9,
        quadrature_degree: int = 4,
        options_prefix: str = "attnflow_",
        normalize: bool = False,
    ) -> None:
        if not isinstance(model, SelfAttention):
            raise TypeError(f"model must be a SelfAttention, got {type(model).__name__}")
        gdim, tdim = mesh.geometry.dim, mesh.topology.dim
        if model.d != gdim:
            raise ValueError(f"model.d must equal the mesh dimension {gdim}, got {model.d}")
        manifold = tdim < gdim
        if model.sphere != manifold:
            raise ValueError(
                "model.sphere must match the mesh: sphere=True needs a sphere mesh "
                f"(got a {'manifold' if manifold else 'volume'} mesh)"
            )
        if degree not in (0, 1):
            raise ValueError(f"degree must be 0 or 1, got {degree!r}")
        if not (0 < cfl <= 1):
            raise ValueError(f"cfl must be in (0, 1], got {cfl!r}")
        self.model, self.mesh, self.comm = model, mesh, mesh.comm
        self.W = dolfinx.fem.functionspace(mesh, ("DG", degree))
        self.U = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, (gdim,)))
        self.rho = dolfinx.fem.Function(self.W, name="density")
        self.u = dolfinx.fem.Function(self.U, name="velocity")
        self.degree = degree
        self.cloud = cell_quadrature(self.W, max(quadrature_degree, 2 * degree))
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
        self.velocity = AttentionVelocity(model, self.W, self.U, self.cloud, kernel)
        phi = ufl.TestFunction(self.W)
        self._form = dolfinx.fem.form(
            transport_form(self.rho, self.u, phi, mesh, boundary=not manifold)
        )
        self.n_dofs = self.W.dofmap.index_map.size_local
        self.cell_volume = np.zeros(self.n_dofs)
        self.cell_volume[q.cell_dofs] = self._phi_integrals
        self._b = dolfinx.fem.Function(self.W)
        self.dt = self._cfl_step(cfl)
        self.options_prefix = options_prefix

    # -- set-up ----------------------------------------------------------------------------
    def _set_initial(self, rho0, *, normalize: bool = False) -> None:
        f = rho0.pdf if isinstance(rho0, Law) else rho0
        if not callable(f):
            raise TypeError("rho0 must be a Law or a callable (n, d) -> (n,)")
        pts = self.cloud.points
        if self.model.sphere:  # the faceted mesh is mapped to the sphere by radial projection
            pts = pts / np.linalg.norm(pts, axis=1, keepdims=True)
        vals = np.asarray(f(pts), dtype=float).reshape(-1)
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
        """Zhang–Shu positivity limiter, in place on the owned dofs (no-op for DG0).

        In each cell, ``rho <- mean + theta (rho - mean)`` with the largest ``theta`` in
        [0, 1] that makes the vertex values (where a P1 function attains its minimum) >= 0.
        The cell mean, hence the mass, is unchanged; it is >= 0 under the CFL bound.
        """
        if self.degree == 0:
            return
        cd = self.cloud.cell_dofs
        vals = dofs[cd]
        mean = vals.mean(axis=1)  # P1 Lagrange: the mean is the average of the vertex values
        low = vals.min(axis=1)
        bad = low < 0
        if np.any(bad):
            gap = np.where(bad, mean - low, 1.0)
            theta = np.where(bad, np.clip(mean / gap, 0.0, 1.0), 1.0)
            # Round-off can leave -1e-32 where theta makes the minimum exactly 0: clip it.
            dofs[cd] = np.maximum(mean[:, None] + theta[:, None] * (vals - mean[:, None]), 0.0)

    def _cfl_step(self, cfl: float) -> float:
        mesh, model = self.mesh, self.model
        tdim = mesh.topology.dim
        mesh.topology.create_connectivity(tdim, tdim - 1)
        n_cells = mesh.topology.index_map(tdim).size_local
        if tdim == 1:
            perim = np.full(n_cells, 2.0)  # two end points, each of measure 1
        else:
            c2f = mesh.topology.connectivity(tdim, tdim - 1)
            facet_measure = self._facet_measures()
            # Simplices: every cell has tdim + 1 facets.
            perim = facet_measure[c2f.array.reshape(-1, tdim + 1)[:n_cells]].sum(axis=1)
        ratio = self.comm.allreduce(float(np.min(self._cell_volume / perim)), op=MPI.MIN)
        x = mesh.geometry.x
        R = self.comm.allreduce(float(np.max(np.linalg.norm(x, axis=1))), op=MPI.MAX)
        # |V (y - c x)| <= |V| (1 + c) R with c = 1 for the centered form.
        vnorm = float(np.linalg.norm(model.V, 2)) * (2.0 if model.centered else 1.0)
        if model.normalized:
            speed = vnorm * R
        else:
            mass = self.mass()
            qk = float(np.linalg.norm(model.Q.T @ model.K, 2))
            c = model.beta if model.rescale_usa else 0.0
            speed = mass * vnorm * R * math.exp(min(model.beta * R * R * qk - c, 700.0))
        c_ssp = 2.0  # SSPRK(4,3)
        # DG1: the cell means stay >= 0 under a (tdim + 1) times smaller forward Euler step
        # (the vertex-quadrature weight of P1, Zhang–Shu); the limiter then restores rho >= 0.
        dg = 1.0 if self.degree == 0 else 1.0 / (tdim + 1)
        return cfl * c_ssp * dg * ratio / max(speed, 1e-300)

    def _facet_measures(self) -> np.ndarray:
        """Length (segments) or area (triangles) of every local facet."""
        mesh = self.mesh
        fdim = mesh.topology.dim - 1
        imap = mesh.topology.index_map(fdim)
        facets = np.arange(imap.size_local + imap.num_ghosts, dtype=np.int32)
        x = mesh.geometry.x[dolfinx.mesh.entities_to_geometry(mesh, fdim, facets)]
        if fdim == 1:
            return np.linalg.norm(x[:, 1] - x[:, 0], axis=1)
        return 0.5 * np.linalg.norm(np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]), axis=1)

    # -- evaluation --------------------------------------------------------------------------
    def mass(self) -> float:
        """Total mass ``int rho`` (global)."""
        return self.comm.allreduce(float(self.cell_volume @ self.rho.x.array[: self.n_dofs]))

    def rhs(self, ts, t, x: PETSc.Vec, f: PETSc.Vec) -> None:
        """``f = M^{-1} F(rho)`` for the density dofs ``x`` (PETSc TS signature)."""
        self.rho.x.array[: self.n_dofs] = x.array_r
        # DG1: every stage is limited before its right-hand side is evaluated (PETSc locks the
        # stage vector, so the limited copy lives in rho), and the solution after every step
        # (_post_step). The limiter keeps cell means, so each stage's cell means equal those
        # of a forward Euler step from a limited state: >= 0 under the CFL bound.
        self._limit(self.rho.x.array)
        self.rho.x.scatter_forward()
        self.velocity(self.rho, self.u)
        b = self._b.x
        b.array[:] = 0.0
        dolfinx.fem.assemble_vector(b.array, self._form)
        b.scatter_reverse(dolfinx.la.InsertMode.add)
        cd = self.cloud.cell_dofs
        f.array[cd] = np.einsum("cij,cj->ci", self._minv, b.array[cd])

    def _cloud_weights(self) -> np.ndarray:
        q = self.cloud
        dens = self.rho.x.array[q.cell_dofs] @ q.tab.T  # (cells, n_q): rho at the points
        return (q.weights.reshape(-1, q.n_q) * dens).reshape(-1)

    def _gather_cloud(self, w: np.ndarray) -> np.ndarray:
        """Gather per-cell arrays on all ranks, ordered by the mesh's input cell index.

        The input (original) cell index does not depend on the partition, so the gathered
        cloud is the same array on 1, 2 or 3 ranks.
        """
        n_q = self.cloud.n_q
        gd = np.asarray(self.mesh.topology.original_cell_index[: self.cloud.cell_dofs.shape[0]])
        parts = self.comm.allgather((gd, w.reshape(len(gd), n_q, *w.shape[1:])))
        g = np.concatenate([p[0] for p in parts])
        v = np.concatenate([p[1] for p in parts])
        return v[np.argsort(g, kind="stable")].reshape(-1, *w.shape[1:])

    # -- partition-independent dofs ------------------------------------------------------------
    @property
    def n_cells_global(self) -> int:
        """Number of cells of the whole mesh."""
        return self.mesh.topology.index_map(self.mesh.topology.dim).size_global

    def _owned_input_index(self) -> np.ndarray:
        n = self.cloud.cell_dofs.shape[0]
        return np.asarray(self.mesh.topology.original_cell_index[:n], dtype=np.int64)

    def _gather_cells(self, a: np.ndarray, root: int | None = 0) -> np.ndarray | None:
        """Per-owned-cell rows ``a`` (n_owned, ...) of all ranks, ordered by input cell index,
        on ``root`` (``None`` elsewhere), or on every rank with ``root=None``."""
        g = self._owned_input_index()
        if root is None:
            parts = self.comm.allgather((g, a))
        else:
            parts = self.comm.gather((g, a), root=root)
            if self.comm.rank != root:
                return None
        idx = np.concatenate([p[0] for p in parts])
        out = np.empty((idx.size, *a.shape[1:]), dtype=a.dtype)
        out[idx] = np.concatenate([p[1] for p in parts])
        return out

    def global_dofs(self, root: int | None = 0) -> np.ndarray | None:
        """The density dofs as a ``(n_cells, n_dofs_per_cell)`` array by input cell index.

        The input cell index and the DG dofs' order within a cell (that of the cell's input
        vertices) do not depend on the partition, so the array is the same on any number of
        ranks. Collective; the array is returned on ``root`` (``None`` elsewhere), or on every
        rank with ``root=None``.
        """
        return self._gather_cells(self.rho.x.array[self.cloud.cell_dofs], root)

    def set_global_dofs(self, dofs: np.ndarray) -> None:
        """Set the density from a :meth:`global_dofs` array (the whole array on every rank)."""
        dofs = np.asarray(dofs, dtype=np.float64)
        shape = (self.n_cells_global, self.cloud.cell_dofs.shape[1])
        if dofs.shape != shape:
            raise ValueError(f"dofs must have shape {shape}, got {dofs.shape}")
        self.rho.x.array[self.cloud.cell_dofs] = dofs[self._owned_input_index()]
        self.rho.x.scatter_forward()

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
        """Integrate to ``t_final``; record the density at ``save_times`` (default 0, t_final).

        ``energy=False`` skips the O(n_points^2) interaction energy at the save times (large
        meshes).

        With ``output_dir`` the density and velocity time series are written there
        collectively: ``density.xdmf`` + ``.h5`` (the density as DG0 cell data, cell means for
        DG1, and the P1 velocity; ParaView's ``Xdmf3ReaderT``) and, when dolfinx has ADIOS2,
        ``density.bp`` (VTX, the density at its own degree; ParaView >= 5.12). Nothing is
        written otherwise, and nothing to the working directory.

        Checkpoint and restart
        ----------------------
        checkpoint_every : with ``K > 0``, ``on_checkpoint(state)`` is called on every rank
            (collectively) after every ``K``-th step with a
            :class:`~attnflow.checkpoint.FieldState` whose dof arrays are on rank 0 only (a
            step that PETSc shortened to reach a save time postpones it by a step or two).
        restart : a :class:`~attnflow.checkpoint.FieldState` (arrays on every rank) from a
            solve of the same problem with the same ``t_final`` and ``save_times``: the solve
            continues from it (the ParaView files are rewritten from its recorded saves).
        progress : ``progress(t, step)`` after every step, on every rank (e.g. a progress bar).
        """
        t_final = float(t_final)
        if not (math.isfinite(t_final) and t_final >= 0):
            raise ValueError(f"t_final must be finite and >= 0, got {t_final!r}")
        ts_save = np.asarray([0.0, t_final] if save_times is None else save_times, float)
        if (
            ts_save.size == 0
            or np.any(np.diff(ts_save) <= 0)
            or ts_save[0] < 0
            or ts_save[-1] > t_final * (1 + 1e-12)
        ):
            raise ValueError("save_times must be increasing and lie in [0, t_final]")
        every = checkpoint_every
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 0:
            raise ValueError(f"checkpoint_every must be an int >= 0, got {every!r}")
        if every and on_checkpoint is None:
            raise ValueError("checkpoint_every > 0 needs an on_checkpoint callback")
        if restart is not None:
            self._check_restart(restart, t_final, ts_save)
        self._energy = bool(energy)
        self._every, self._on_checkpoint, self._progress = int(every), on_checkpoint, progress
        step_start = 0 if restart is None else restart.step
        self._next_checkpoint = (step_start // every + 1) * every if every else 0
        self._t_final, self._ts_save = t_final, ts_save
        writers = self._open_output(output_dir)
        start = time.perf_counter()
        rec: dict[str, list] = {k: [] for k in ("t", "mass", "energy", "min", "w", "dofs")}
        if restart is None:
            m0 = self.mass()
            t0, step0, time_step0, segment0, wall0 = 0.0, 0, self.dt, 0, 0.0
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
                if every and self.comm.rank == 0:
                    rec["dofs"].append(np.asarray(restart.saved_dofs[k]))
            self.set_global_dofs(restart.dofs)
            m0 = restart.mass0
            t0, step0, time_step0 = restart.t, restart.step, restart.time_step
            segment0, wall0 = restart.segment, restart.wall_time
        self._rec, self._m0, self._wall0, self._start = rec, m0, wall0, start
        ts = PETSc.TS().create(comm=self.comm)
        ts.setOptionsPrefix(self.options_prefix)
        opts = PETSc.Options()
        defaults = [
            (self.options_prefix + k, v)
            for k, v in (("ts_type", "ssp"), ("ts_ssp_type", "rks3"), ("ts_ssp_num_stages", "4"))
            if not opts.hasName(self.options_prefix + k)
        ]
        for k, v in defaults:
            opts.setValue(k, v)
        x = self.rho.x.petsc_vec.copy()
        ts.setRHSFunction(self.rhs, x.duplicate())
        ts.setPostStep(self._post_step)
        ts.setTimeStep(time_step0)
        ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)
        ts.setMaxSteps(10**9)
        ts.setFromOptions()
        for k, _ in defaults:  # leave the global options database as we found it
            opts.delValue(k)
        ts.setTime(t0)
        ts.setStepNumber(step0)
        if progress is not None:
            progress(t0, step0)
        for k in range(segment0, ts_save.size):
            t_next = float(ts_save[k])
            self._segment = k
            if t_next > ts.getTime():
                # MATCHSTEP shortens the last step of a segment and TS keeps that step for the
                # next solve: restore the CFL step every time (a restarted segment continues
                # with the step it was interrupted with, so the time grid is the same).
                if restart is None or k != segment0:
                    ts.setTimeStep(self.dt)
                ts.setMaxTime(t_next)
                ts.solve(x)
            self.rho.x.array[: self.n_dofs] = x.array_r
            self.rho.x.scatter_forward()
            self._record(rec, t_next, writers)
        n_steps = ts.getStepNumber()
        for w in writers:
            w.close()
        wall = wall0 + time.perf_counter() - start
        mass = np.array(rec["mass"])
        if self.comm.rank == 0:
            logger.info(
                "MeanFieldSolver: %d steps of dt=%.3g, mass drift %.2e, %.2fs",
                n_steps,
                self.dt,
                abs(mass[-1] - m0) / m0,
                wall,
            )
        return FieldSolution(
            t=np.array(rec["t"]),
            mass=mass,
            outflow=m0 - mass,
            energy=np.array(rec["energy"]),
            min_density=np.array(rec["min"]),
            points=self._gather_cloud(self.cloud.points),
            point_weights=self._gather_cloud(self.cloud.weights),
            weights=np.stack(rec["w"]),
            dt=self.dt,
            n_steps=n_steps,
            wall_time=wall,
            points_per_cell=self.cloud.n_q,
            dofs=self.global_dofs(root=None),
        )

    def _check_restart(self, state: FieldState, t_final: float, ts_save: np.ndarray) -> None:
        if not isinstance(state, FieldState):
            raise TypeError(f"restart must be a FieldState, got {type(state).__name__}")
        if state.dt != self.dt:
            raise CheckpointError(
                f"the checkpoint's CFL step {state.dt!r} differs from this solver's {self.dt!r} "
                "(a different mesh, model, degree or cfl?)"
            )
        if state.t_final != t_final or not np.array_equal(state.save_times, ts_save):
            raise CheckpointError("the checkpoint was made with other t_final or save_times")
        shape = (self.n_cells_global, self.cloud.cell_dofs.shape[1])
        if state.dofs is None or np.shape(state.dofs) != shape:
            raise CheckpointError(
                f"the checkpoint's dofs have shape {np.shape(state.dofs)}, this mesh needs {shape}"
            )
        n_rec = len(state.t_saved)
        if state.saved_dofs is None or np.shape(state.saved_dofs) != (n_rec, *shape):
            raise CheckpointError("the checkpoint's recorded dofs do not fit this mesh")
        if not 0 <= state.segment < ts_save.size or n_rec != state.segment:
            raise CheckpointError("the checkpoint's segment does not fit its records")

    def _post_step(self, ts) -> None:
        x = ts.getSolution()
        self._limit(x.array)
        step = ts.getStepNumber()
        if self._progress is not None:
            self._progress(ts.getTime(), step)
        if self._every and step >= self._next_checkpoint:
            # PETSc's MATCHSTEP splits the tail of a segment into shortened steps with some
            # state of its own: a state there would not resume bitwise. Checkpoint only where
            # the TS holds the CFL step (or the segment is complete), else a step or two later.
            done = ts.getTime() >= self._ts_save[self._segment]
            if ts.getTimeStep() == self.dt or done:
                self._on_checkpoint(self._state(ts, x))
                self._next_checkpoint = (step // self._every + 1) * self._every

    def _state(self, ts, x: PETSc.Vec) -> FieldState:
        """The state after the current step (collective; dof arrays on rank 0)."""
        rec = self._rec
        dofs = self._gather_cells(x.array_r[self.cloud.cell_dofs], root=0)
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
            segment=int(self._segment),
            dt=float(self.dt),
            t_final=self._t_final,
            save_times=self._ts_save.copy(),
            dofs=dofs,
            saved_dofs=saved,
            t_saved=np.array(rec["t"], dtype=float),
            mass=np.array(rec["mass"], dtype=float),
            energy=np.array(rec["energy"], dtype=float),
            min_density=np.array(rec["min"], dtype=float),
            weights=np.stack(rec["w"]) if rec["w"] else np.zeros((0, n_pts)),
            mass0=float(self._m0),
            wall_time=self._wall0 + time.perf_counter() - self._start,
        )

    def _record(self, rec, t, writers) -> None:
        w = self._gather_cloud(self._cloud_weights())
        rec["t"].append(t)
        rec["mass"].append(self.mass())
        rec["w"].append(w)
        local_min = float(self.rho.x.array[: self.n_dofs].min()) if self.n_dofs else np.inf
        rec["min"].append(self.comm.allreduce(local_min, op=MPI.MIN))
        pts = self._gather_cloud(self.cloud.points)
        rec["energy"].append(
            self.model._log_energy(pts, np.maximum(w, 0.0)) if self._energy else np.nan
        )
        if self._every:
            dofs = self.global_dofs(root=0)
            if dofs is not None:
                rec["dofs"].append(dofs)
        self._write(writers, t)

    def _write(self, writers, t: float) -> None:
        if writers:
            self.velocity(self.rho, self.u)
            for wr in writers:
                if isinstance(wr, dolfinx.io.XDMFFile):
                    if self.degree > 0:
                        self._rho_mean.interpolate(self.rho)
                        wr.write_function(self._rho_mean, t)
                    else:
                        wr.write_function(self.rho, t)
                    wr.write_function(self.u, t)
                else:
                    wr.write(t)

    def _open_output(self, output_dir) -> list:
        if output_dir is None:
            return []
        out = Path(output_dir)
        if self.comm.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        self.comm.Barrier()
        xdmf = dolfinx.io.XDMFFile(self.comm, str(out / "density.xdmf"), "w")
        xdmf.write_mesh(self.mesh)
        if self.degree > 0:  # XDMF holds cell data: write the cell means
            self._rho_mean = dolfinx.fem.Function(
                dolfinx.fem.functionspace(self.mesh, ("DG", 0)), name="density"
            )
        writers: list = [xdmf]
        if hasattr(dolfinx.io, "VTXWriter"):
            writers.append(dolfinx.io.VTXWriter(self.comm, str(out / "density.bp"), [self.rho]))
        return writers
