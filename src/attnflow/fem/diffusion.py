"""The diffusion operator ``-sigma Delta`` of a DG density: two-point fluxes (DG0) and the
symmetric interior penalty method (DG1), on manifold meshes of S^1, S^2 and on boxes.

Semi-discrete form. For the density ``rho`` in DG_k with mass matrix ``M`` (block diagonal,
one block per cell) the noise adds ``-sigma A rho`` to the transport right-hand side:

    M d_t rho = F_transport(rho) - sigma A rho,

with ``A`` symmetric positive semi-definite, ``A 1 = 0`` and ``1^T A = 0`` to round-off (the
constants are its kernel): the diffusion moves mass between cells and creates or destroys none.
``A`` is assembled once as a PETSc matrix (:func:`diffusion_matrix`).

DG0: the two-point flux (finite volumes). Across an interior facet ``f`` between the cells
``K`` and ``L`` the flux is ``|f| (rho_K - rho_L) / d_KL``, so

    (A rho)_K = sum_{L ~ K} |f_KL| (rho_K - rho_L) / d_KL,

an M-matrix (positive diagonal, non-positive off-diagonal, zero row sums): implicit Euler
steps ``(M + tau sigma A)^{-1}`` keep ``rho >= 0``. ``d_KL = d_K + d_L`` with ``d_K`` the
distance from the *circumcentre* of ``K`` to the facet, measured in the plane of ``K`` (the
two cells are unfolded about their common facet: on a faceted sphere they are not coplanar).
The circumcentres of two neighbours both lie on the perpendicular bisector of their common
facet, so after unfolding the segment joining them crosses the facet at a right angle: the flux
is consistent when ``d_K > 0`` for every cell and facet (an *admissible* mesh in the sense of
Eymard–Gallouët–Herbin: acute triangles, or more generally Delaunay). The cell mean stands for
the value at the circumcentre (an O(h) shift where they differ; none on S^1 and on
equilateral cells):

* S^1 (``circle_mesh``): circumcentre = midpoint, ``d_KL = |K|/2 + |L|/2``; on the uniform
  polygon the scheme is the three-point Laplacian of the polygon, and the mode ``e^{i n theta}``
  decays at ``sigma sin^2(n pi/N) / sin^2(pi/N)`` (exact for n = 1; ``n^2 (1 - (n^2 - 1)
  (pi/N)^2 / 3)``: second order);
* icospheres (``sphere_mesh``): all triangles are acute (min angle about 52 degrees), the
  mesh is admissible; what remains is the O(h^2) distance of the facets to the sphere and the
  gap between centroid and circumcentre (measured in tests/fem/test_diffusion.py);
* boxes: intervals are exact as on S^1. The triangles of ``box_mesh(2)`` are right triangles
  whose circumcentre lies on the diagonal (``d_KL = 0`` there), and the Kuhn tetrahedra of
  ``box_mesh(3)`` are not admissible either: the two-point flux is refused there with a
  ``ValueError`` (use ``degree=1``).

DG1: the symmetric interior penalty method (SIPG),

    a(u, v) = sum_K int_K grad u . grad v
              - int_F {d_n u} [v] - int_F {d_n v} [u] + int_F eta_F [u] [v],

with the jump ``[v] = v('+') - v('-')`` and the *single-valued* normal derivative
``{d_n u} = (grad u('+') . n('+') - grad u('-') . n('-')) / 2`` (``n`` the outward co-normal of
each side, in the plane of its cell). On a faceted manifold ``n('+') != -n('-')`` (DESIGN.md
§4); the average of the two one-sided co-normal derivatives is the one flux both sides share,
so ``a(u, 1) = a(1, v) = 0`` exactly and mass is conserved to round-off, as for the transport
flux. The penalty ``eta_F = alpha (|f|/|K+| + |f|/|K-|) / 2`` with ``alpha = 2 (k + 1)(k +
tdim) / tdim`` (twice the coercivity bound of Shahbazi 2005 for simplices). Consistent up to
the geometry (facets are chords of the sphere); second order in L2 for smooth densities.

Boundaries of a box: natural (no-flux) for the diffusion, ``d_n rho = 0`` (no boundary terms);
the transport keeps its outflow boundary. The total mass then changes only by the advective
outflow (``FieldSolution.outflow``).
"""

from __future__ import annotations

import dolfinx.fem
import dolfinx.fem.petsc
import dolfinx.mesh
import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

from attnflow.fem.transport import facet_measures

__all__ = [
    "DiffusionOperator",
    "StageSolves",
    "block_diagonal_matrix",
    "diffusion_matrix",
    "sipg_form",
    "two_point_transmissibilities",
]


def sipg_form(W: dolfinx.fem.FunctionSpace, alpha: float | None = None):
    """The SIPG bilinear form ``a(u, v)`` above on ``W`` = DG_k (a UFL form).

    ``alpha`` : the penalty factor (default ``2 (k + 1)(k + tdim) / tdim``).
    """
    mesh = W.mesh
    k = W.ufl_element().embedded_superdegree
    tdim = mesh.topology.dim
    if alpha is None:
        alpha = 2.0 * (k + 1) * (k + tdim) / tdim
    u, v = ufl.TrialFunction(W), ufl.TestFunction(W)
    n = ufl.FacetNormal(mesh)
    vol = ufl.CellVolume(mesh)
    area = ufl.FacetArea(mesh)
    eta = alpha * 0.5 * (area("+") / vol("+") + area("+") / vol("-"))

    def dn(w):
        return 0.5 * (ufl.dot(ufl.grad(w)("+"), n("+")) - ufl.dot(ufl.grad(w)("-"), n("-")))

    def jump(w):
        return w("+") - w("-")

    return (
        ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx
        - dn(u) * jump(v) * ufl.dS
        - dn(v) * jump(u) * ufl.dS
        + eta * jump(u) * jump(v) * ufl.dS
    )


def _circumcentre_distances(x: np.ndarray, opposite: np.ndarray) -> np.ndarray:
    """Signed distance from the circumcentre of a simplex to one of its facets.

    x : (m, k + 1, g) vertices of ``m`` simplices; opposite : (m,) the local vertex opposite
    the facet. Returns (m,) distances, measured in the simplex's own affine hull (positive
    when the circumcentre lies on the simplex's side of the facet).
    """
    m, k1, _ = x.shape
    x0 = x[:, 0]
    J = np.swapaxes(x[:, 1:] - x0[:, None, :], 1, 2)  # (m, g, k)
    G = np.einsum("mgi,mgj->mij", J, J)
    rhs = 0.5 * np.einsum("mgi,mgi->mi", J, J)
    lam = np.linalg.solve(G, rhs[..., None])[..., 0]
    centre = x0 + np.einsum("mgi,mi->mg", J, lam)
    # Outward co-normal of the facet (in the simplex's hull): from the opposite vertex, the
    # component of (facet vertex - opposite vertex) orthogonal to the facet.
    idx = np.arange(k1)
    out = np.empty(m)
    for j in range(k1):
        sel = opposite == j
        if not np.any(sel):
            continue
        face = idx[idx != j]
        xs = x[sel]
        f0 = xs[:, face[0]]
        w = f0 - xs[:, j]
        if face.size > 1:
            E = np.stack([xs[:, i] - f0 for i in face[1:]], axis=2)  # (s, g, k - 1)
            coef = np.linalg.solve(
                np.einsum("sgi,sgj->sij", E, E), np.einsum("sgi,sg->si", E, w)[..., None]
            )[..., 0]
            w = w - np.einsum("sgi,si->sg", E, coef)
        nu = w / np.linalg.norm(w, axis=1, keepdims=True)
        out[sel] = np.einsum("sg,sg->s", f0 - centre[sel], nu)
    return out


def two_point_transmissibilities(
    mesh: dolfinx.mesh.Mesh,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two-point fluxes ``|f| / d_KL`` of the interior facets this rank owns.

    Returns ``(cells, T, d)``: (n_f, 2) local indices of the two cells of each owned interior
    facet (owned or ghost cells: the mesh must be ghosted with ``shared_facet``), (n_f,)
    transmissibilities ``|f| / d_KL`` and (n_f, 2) the distances ``d_K``, ``d_L`` from each
    circumcentre to the facet.
    """
    tdim = mesh.topology.dim
    fdim = tdim - 1
    mesh.topology.create_connectivity(fdim, tdim)
    mesh.topology.create_connectivity(tdim, fdim)
    f2c = mesh.topology.connectivity(fdim, tdim)
    c2f = mesh.topology.connectivity(tdim, fdim)
    n_owned_facets = mesh.topology.index_map(fdim).size_local
    offs = f2c.offsets
    counts = np.diff(offs)[:n_owned_facets]
    facets = np.flatnonzero(counts == 2).astype(np.int32)
    cells = np.stack([f2c.array[offs[facets]], f2c.array[offs[facets] + 1]], axis=1)
    area = facet_measures(mesh)[facets] if fdim > 0 else np.ones(facets.size)
    xg = mesh.geometry.x[:, : mesh.geometry.dim]
    nodes = mesh.geometry.dofmaps[0]
    # Topology and geometry vertex orders agree for affine simplices (P1 geometry). The local
    # facet j of a triangle or tetrahedron is opposite its local vertex j; the facets of an
    # interval are its vertices (facet j is vertex j, opposite vertex 1 - j).
    c2f_arr = c2f.array.reshape(-1, tdim + 1)
    d = np.empty(cells.shape)
    for side in range(2):
        c = cells[:, side]
        local = np.argmax(c2f_arr[c] == facets[:, None], axis=1)
        opposite = 1 - local if tdim == 1 else local
        d[:, side] = _circumcentre_distances(xg[nodes[c]], opposite)
    with np.errstate(divide="ignore"):  # d = 0 on non-admissible meshes (refused by callers)
        return cells, area / d.sum(axis=1), d


def _coo_matrix(comm, n_local: int, n_global: int, rows, cols, vals) -> PETSc.Mat:
    """A square AIJ matrix from COO triplets with global indices (duplicates are summed)."""
    A = PETSc.Mat().create(comm=comm)
    A.setSizes(((n_local, n_global), (n_local, n_global)))
    A.setType(PETSc.Mat.Type.AIJ)
    A.setPreallocationCOO(
        np.asarray(rows, dtype=PETSc.IntType), np.asarray(cols, dtype=PETSc.IntType)
    )
    A.setValuesCOO(np.asarray(vals, dtype=PETSc.ScalarType), PETSc.InsertMode.ADD_VALUES)
    A.assemble()
    return A


def diffusion_matrix(W: dolfinx.fem.FunctionSpace, *, alpha: float | None = None) -> PETSc.Mat:
    """The assembled symmetric matrix ``A`` of ``-Delta`` (module docstring) on ``W``.

    Parameters
    ----------
    W : DG0 or DG1 space on a ``shared_facet``-ghosted mesh (:mod:`attnflow.fem.meshes`).
    alpha : DG1 only: the SIPG penalty factor (default ``2 (k + 1)(k + tdim) / tdim``).

    Returns
    -------
    PETSc.Mat
        ``(n_dofs_global, n_dofs_global)`` AIJ matrix, rows distributed like ``W``'s dofs;
        ``A 1 = 0``. Collective.

    Raises
    ------
    ValueError
        DG0 on a mesh that is not admissible (a circumcentre on or beyond one of its cell's
        facets: the triangles of ``box_mesh(2)``, the tetrahedra of ``box_mesh(3)``).
    """
    mesh = W.mesh
    k = W.ufl_element().embedded_superdegree
    if k > 0:
        A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(sipg_form(W, alpha)))
        A.assemble()
        return A
    cells, T, d = two_point_transmissibilities(mesh)
    scale = mesh.comm.allreduce(float(np.abs(d).max()) if d.size else 0.0, op=MPI.MAX)
    bad = mesh.comm.allreduce(int(np.count_nonzero(d <= 1e-8 * scale)))
    if bad:
        raise ValueError(
            "degree: the degree-0 diffusion (two-point flux) needs an admissible mesh "
            f"(circumcentres inside the cells), {bad} facets are not (box_mesh triangles and "
            "tetrahedra); use degree=1"
        )
    imap = W.dofmap.index_map
    g = imap.local_to_global(W.dofmap.list[:, 0][cells].reshape(-1).astype(np.int32))
    i, j = g.reshape(-1, 2).T
    # Every owned row gets a diagonal entry (a cell without interior facets: a 1-cell mesh).
    own = np.arange(imap.local_range[0], imap.local_range[1])
    rows = np.concatenate([i, i, j, j, own])
    cols = np.concatenate([i, j, i, j, own])
    vals = np.concatenate([T, -T, -T, T, np.zeros(own.size)])
    return _coo_matrix(mesh.comm, imap.size_local, imap.size_global, rows, cols, vals)


def block_diagonal_matrix(
    W: dolfinx.fem.FunctionSpace, cell_dofs: np.ndarray, blocks: np.ndarray
) -> PETSc.Mat:
    """The block diagonal matrix with ``blocks`` (n_cells, k, k) on the dofs ``cell_dofs``
    (n_cells, k) (local indices of the owned cells of ``W``); collective."""
    imap = W.dofmap.index_map
    nb = cell_dofs.shape[1]
    g = imap.local_to_global(cell_dofs.reshape(-1).astype(np.int32)).reshape(-1, nb)
    rows = np.repeat(g, nb, axis=1).reshape(-1)
    cols = np.tile(g, (1, nb)).reshape(-1)
    return _coo_matrix(
        W.mesh.comm, imap.size_local, imap.size_global, rows, cols, np.asarray(blocks).reshape(-1)
    )


class DiffusionOperator:
    """``A`` and ``B = M^{-1} A`` of a DG space, and the implicit stage matrix of an IMEX step.

    Parameters
    ----------
    W : the DG0/DG1 density space; cell_dofs : (n_cells, k) local dofs of the owned cells;
    mass_inverse : (n_cells, k, k) the inverse cell mass matrices.

    Attributes
    ----------
    A : the symmetric matrix of :func:`diffusion_matrix` (``M d_t rho = -sigma A rho``).
    M_inv : the block diagonal ``M^{-1}`` (PETSc).
    B : ``M^{-1} A`` (PETSc): ``d_t rho = -sigma B rho``.
    spectral_bound : ``|B|_inf`` (global), a Gershgorin bound of the eigenvalues of ``B``
        (they are real and ``>= 0``: ``B`` is similar to ``M^{-1/2} A M^{-1/2}``); DG0: twice
        the largest diagonal entry.
    """

    def __init__(
        self, W: dolfinx.fem.FunctionSpace, cell_dofs: np.ndarray, mass_inverse: np.ndarray
    ) -> None:
        self.A = diffusion_matrix(W)
        self.M_inv = block_diagonal_matrix(W, cell_dofs, mass_inverse)
        self.B = self.M_inv.matMult(self.A)
        self.spectral_bound = float(self.B.norm(PETSc.NormType.INFINITY))
        self._J: PETSc.Mat | None = None
        self._key: tuple[float, float] | None = None
        #: The ``(shift, sigma)`` of the current implicit stage (:class:`StageSolves`).
        self.stage = (1.0, 0.0)

    def explicit_step(self, sigma: float, c: float) -> float:
        """The largest step of an explicit scheme with forward-Euler coefficient ``c`` for
        ``d_t rho = -sigma B rho``: ``2 c / (sigma |B|_inf)`` (``inf`` for ``sigma = 0``).

        DG0: ``|B|_inf = 2 max_K B_KK``, so this is the forward Euler positivity bound
        ``sigma tau B_KK <= 1`` (times ``c``); DG1: the forward Euler stability bound
        ``sigma tau lambda_max <= 2`` with Gershgorin's ``lambda_max <= |B|_inf``.
        """
        if sigma <= 0 or self.spectral_bound <= 0:
            return np.inf
        return 2.0 * c / (sigma * self.spectral_bound)

    def stage_matrix(self, shift: float, sigma: float) -> PETSc.Mat:
        """``shift I + sigma B`` (the IJacobian of ``d_t rho + sigma B rho``), in one matrix
        that is only rewritten when ``(shift, sigma)`` changes, so that a factorisation of it
        is reused by the KSP while they stay the same."""
        if self._J is None:
            self._J = self.B.duplicate(copy=True)
            self._key = None
        key = (float(shift), float(sigma))
        if key != self._key:
            self.B.copy(self._J, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
            self._J.scale(key[1])
            self._J.shift(key[0])
            self._key = key
        return self._J

    def destroy(self) -> None:
        """Free the PETSc matrices."""
        for m in (self.A, self.M_inv, self.B, self._J):
            if m is not None:
                m.destroy()


class StageSolves:
    """A PETSc ``python`` preconditioner that solves ``(shift I + sigma B) y = x`` exactly,
    with one LU factorisation (MUMPS, any number of ranks) per ``(shift, sigma)``.

    An IMEX scheme whose implicit stages have different diagonal coefficients (ARKIMEX
    1BEE: ``1`` and ``1/2``) would refactor the stage matrix at every stage; this keeps the
    factorisations of the last ``max_cached`` pairs (two for 1BEE with a fixed step). The
    current pair is ``operator.stage``, set by the solver's IJacobian. With ``ksp_type
    preonly`` the stage solve is then a pair of triangular solves.
    """

    def __init__(self, operator: DiffusionOperator, max_cached: int = 4) -> None:
        self.operator = operator
        self.max_cached = int(max_cached)
        self._solvers: dict[tuple[float, float], tuple[PETSc.KSP, PETSc.Mat]] = {}
        #: Factorisations made so far.
        self.factorisations = 0

    def _solver(self, key: tuple[float, float]) -> PETSc.KSP:
        hit = self._solvers.pop(key, None)
        if hit is None:
            if len(self._solvers) >= self.max_cached:  # drop the least recently used
                old = next(iter(self._solvers))
                for obj in self._solvers.pop(old):
                    obj.destroy()
            J = self.operator.B.duplicate(copy=True)
            J.scale(key[1])
            J.shift(key[0])
            ksp = PETSc.KSP().create(comm=J.getComm())
            ksp.setOperators(J)
            ksp.setType(PETSc.KSP.Type.PREONLY)
            pc = ksp.getPC()
            pc.setType(PETSc.PC.Type.LU)
            pc.setFactorSolverType("mumps")
            ksp.setUp()
            self.factorisations += 1
            hit = (ksp, J)
        self._solvers[key] = hit  # most recently used last
        return hit[0]

    def setUp(self, pc: PETSc.PC) -> None:
        """Nothing to set up: the factorisations are made on first use."""

    def apply(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:
        """``y = (shift I + sigma B)^{-1} x`` for the current stage; collective."""
        self._solver(self.operator.stage).solve(x, y)

    def destroy(self, pc: PETSc.PC | None = None) -> None:
        """Free the factorisations."""
        for ksp, J in self._solvers.values():
            ksp.destroy()
            J.destroy()
        self._solvers.clear()
