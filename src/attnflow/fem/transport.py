"""Discontinuous Galerkin transport of the density: forms, quadrature clouds, the positivity
limiter and the CFL step.

Weak form of ``d_t rho + div(rho X) = 0`` for ``rho`` in DG_k, test functions ``phi``:

    (d_t rho, phi) = (rho X, grad phi)_cells - < F(rho), [phi] >_interior facets
                     - < max(X.n, 0) rho, phi >_boundary (outflow; no inflow)

with the upwind flux ``F = max(un, 0) rho('+') + min(un, 0) rho('-')`` of the *single-valued*
normal velocity ``un = (X('+').n('+') - X('-').n('-'))/2``. On a faceted manifold the two cells
at an edge are not coplanar, ``n('+') != -n('-')``, and a one-sided ``X.n`` would leak mass; with
``un`` the fluxes of the two sides cancel exactly, so mass is conserved to round-off. DG0 is the
upwind finite volume scheme (first order); the gradient term vanishes there.
"""

from __future__ import annotations

from dataclasses import dataclass

import basix
import dolfinx.fem
import dolfinx.mesh
import numpy as np
import ufl
from mpi4py import MPI

__all__ = [
    "QuadratureCloud",
    "cell_quadrature",
    "cfl_step",
    "check_scheme",
    "facet_measures",
    "positivity_limiter",
    "transport_form",
]


def check_scheme(degree: object, cfl: object) -> None:
    """Raise a ``ValueError`` unless ``degree`` is 0 or 1 and ``cfl`` is in ``(0, 1]``."""
    if degree not in (0, 1):
        raise ValueError(f"degree must be 0 or 1, got {degree!r}")
    if not (0 < cfl <= 1):  # type: ignore[operator]
        raise ValueError(f"cfl must be in (0, 1], got {cfl!r}")


def transport_form(rho, u, phi, mesh: dolfinx.mesh.Mesh, *, boundary: bool):
    """The right-hand side ``F(rho; phi)`` above (a UFL linear form in ``phi``)."""
    n = ufl.FacetNormal(mesh)
    un = 0.5 * (ufl.dot(u("+"), n("+")) - ufl.dot(u("-"), n("-")))
    flux = ufl.max_value(un, 0) * rho("+") + ufl.min_value(un, 0) * rho("-")
    form = -flux * (phi("+") - phi("-")) * ufl.dS
    if phi.ufl_element().embedded_superdegree > 0:
        form += rho * ufl.dot(u, ufl.grad(phi)) * ufl.dx
    if boundary:
        form += -ufl.max_value(ufl.dot(u, n), 0) * rho * phi * ufl.ds
    return form


@dataclass(frozen=True)
class QuadratureCloud:
    """Quadrature points of the owned cells, grouped by cell.

    points : (n_cells * n_q, gdim) physical points.
    weights : (n_cells * n_q,) ``|det J| * reference weight``.
    tab : (n_q, n_dofs_per_cell) DG basis at the reference points.
    cell_dofs : (n_cells, n_dofs_per_cell) local DG dof indices of each owned cell.
    """

    points: np.ndarray
    weights: np.ndarray
    tab: np.ndarray
    cell_dofs: np.ndarray

    @property
    def n_q(self) -> int:
        """Quadrature points per cell."""
        return self.tab.shape[0]

    def density_weights(self, dofs: np.ndarray, *, clip: bool = False) -> np.ndarray:
        """(n_cells * n_q,) weights ``|det J| w_q rho(y_q)`` of the density with dof array
        ``dofs`` (the density as a weighted cloud); ``clip`` sets negative ones to 0."""
        dens = dofs[self.cell_dofs] @ self.tab.T  # (cells, n_q): rho at the points
        w = (self.weights.reshape(-1, self.n_q) * dens).reshape(-1)
        return np.maximum(w, 0.0) if clip else w


def cell_quadrature(W: dolfinx.fem.FunctionSpace, degree: int) -> QuadratureCloud:
    """Gauss quadrature of the given degree on every owned cell of ``W``'s (affine) mesh."""
    mesh = W.mesh
    tdim, gdim = mesh.topology.dim, mesh.geometry.dim
    n_cells = mesh.topology.index_map(tdim).size_local
    cell_type = mesh.basix_cell()
    ref_pts, ref_w = basix.make_quadrature(cell_type, degree)
    x = mesh.geometry.x[:, :gdim]
    nodes = mesh.geometry.dofmaps[0][:n_cells]
    x0 = x[nodes[:, 0]]
    J = np.stack([x[nodes[:, k + 1]] - x0 for k in range(tdim)], axis=2)  # (c, gdim, tdim)
    vol = np.sqrt(np.abs(np.linalg.det(np.einsum("cij,cik->cjk", J, J))))
    pts = x0[:, None, :] + np.einsum("cij,qj->cqi", J, ref_pts)
    w = vol[:, None] * ref_w[None, :]
    tab = W.element.basix_element.tabulate(0, ref_pts)[0, :, :, 0]
    dofs = W.dofmap.list[:n_cells]
    return QuadratureCloud(pts.reshape(-1, gdim), w.reshape(-1), tab, np.asarray(dofs))


def positivity_limiter(dofs: np.ndarray, cell_dofs: np.ndarray) -> None:
    """Zhang–Shu positivity limiter of a DG1 (P1 Lagrange) density, in place.

    ``dofs`` : the dof array (owned entries are read and written through ``cell_dofs``
    (n_cells, n_dofs_per_cell)). In each cell, ``rho <- mean + theta (rho - mean)`` with the
    largest ``theta`` in [0, 1] that makes the vertex values (where a P1 function attains its
    minimum) >= 0. The cell mean, hence the mass, is unchanged; it is >= 0 under the CFL bound.
    """
    vals = dofs[cell_dofs]
    mean = vals.mean(axis=1)  # P1 Lagrange: the mean is the average of the vertex values
    low = vals.min(axis=1)
    bad = low < 0
    if np.any(bad):
        gap = np.where(bad, mean - low, 1.0)
        theta = np.where(bad, np.clip(mean / gap, 0.0, 1.0), 1.0)
        # Round-off can leave -1e-32 where theta makes the minimum exactly 0: clip it.
        dofs[cell_dofs] = np.maximum(mean[:, None] + theta[:, None] * (vals - mean[:, None]), 0.0)


def facet_measures(mesh: dolfinx.mesh.Mesh) -> np.ndarray:
    """Length (segments) or area (triangles) of every local facet (owned and ghost)."""
    fdim = mesh.topology.dim - 1
    imap = mesh.topology.index_map(fdim)
    facets = np.arange(imap.size_local + imap.num_ghosts, dtype=np.int32)
    x = mesh.geometry.x[dolfinx.mesh.entities_to_geometry(mesh, fdim, facets)]
    if fdim == 1:
        return np.linalg.norm(x[:, 1] - x[:, 0], axis=1)
    return 0.5 * np.linalg.norm(np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]), axis=1)


def cfl_step(
    mesh: dolfinx.mesh.Mesh, cell_volume: np.ndarray, speed: float, degree: int, c: float
) -> float:
    """The positivity-preserving step ``c * min_cells |cell| / sum_facets |f| / speed``.

    ``cell_volume`` (n_owned_cells,) the cell measures, ``speed`` an a priori bound of the
    velocity, ``c`` the CFL fraction times the SSP coefficient of the time stepper. DG1: the
    cell means stay >= 0 under a ``(tdim + 1)`` times smaller forward Euler step (the
    vertex-quadrature weight of P1, Zhang–Shu); the limiter then restores ``rho >= 0``.
    Collective (the minimum is global).
    """
    tdim = mesh.topology.dim
    mesh.topology.create_connectivity(tdim, tdim - 1)
    n_cells = mesh.topology.index_map(tdim).size_local
    if tdim == 1:
        perim = np.full(n_cells, 2.0)  # two end points, each of measure 1
    else:
        c2f = mesh.topology.connectivity(tdim, tdim - 1)
        # Simplices: every cell has tdim + 1 facets.
        perim = facet_measures(mesh)[c2f.array.reshape(-1, tdim + 1)[:n_cells]].sum(axis=1)
    ratio = mesh.comm.allreduce(float(np.min(cell_volume / perim)), op=MPI.MIN)
    dg = 1.0 if degree == 0 else 1.0 / (tdim + 1)
    return c * dg * ratio / max(speed, 1e-300)
