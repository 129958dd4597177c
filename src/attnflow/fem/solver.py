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
    dt : the time step; n_steps : steps taken; wall_time : seconds in ``solve``.
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
        self._set_initial(rho0)
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
    def _set_initial(self, rho0) -> None:
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

    def _post_step(self, ts) -> None:
        self._limit(ts.getSolution().array)

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

    # -- time stepping -------------------------------------------------------------------------
    def solve(
        self,
        t_final: float,
        save_times: Sequence[float] | None = None,
        output_dir: str | Path | None = None,
        *,
        energy: bool = True,
    ) -> FieldSolution:
        """Integrate to ``t_final``; record the density at ``save_times`` (default 0, t_final).

        ``energy=False`` skips the O(n_points^2) interaction energy at the save times (large
        meshes).

        With ``output_dir`` the density and velocity time series are written there
        collectively: ``density.xdmf`` + ``.h5`` (the density as DG0 cell data, cell means for
        DG1, and the P1 velocity; ParaView's ``Xdmf3ReaderT``) and, when dolfinx has ADIOS2,
        ``density.bp`` (VTX, the density at its own degree; ParaView >= 5.12). Nothing is
        written otherwise, and nothing to the working directory.
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
        self._energy = bool(energy)
        writers = self._open_output(output_dir)
        m0 = self.mass()
        start = time.perf_counter()
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
        if self.degree > 0:
            ts.setPostStep(self._post_step)
        ts.setTimeStep(self.dt)
        ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)
        ts.setMaxSteps(10**9)
        ts.setFromOptions()
        for k, _ in defaults:  # leave the global options database as we found it
            opts.delValue(k)
        ts.setTime(0.0)
        rec = {k: [] for k in ("t", "mass", "energy", "min", "w")}
        n_steps = 0
        for t_next in ts_save:
            if t_next > ts.getTime():
                # MATCHSTEP shortens the last step of a segment and TS keeps that step for the
                # next solve: restore the CFL step every time.
                ts.setTimeStep(self.dt)
                ts.setMaxTime(float(t_next))
                ts.solve(x)
                n_steps = ts.getStepNumber()
            self.rho.x.array[: self.n_dofs] = x.array_r
            self.rho.x.scatter_forward()
            self._record(rec, float(t_next), writers)
        for w in writers:
            w.close()
        wall = time.perf_counter() - start
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
