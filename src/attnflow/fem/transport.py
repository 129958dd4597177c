"""Discontinuous Galerkin transport of the density: forms, mass, CFL, quadrature clouds.

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

__all__ = ["QuadratureCloud", "cell_quadrature", "transport_form"]


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
        return self.tab.shape[0]


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
