"""Stationary states of the noisy mean-field equation, their continuation and stability.

(One idea: the zeros of the finite element tendency ``R(rho) = M^{-1}(F(rho) - sigma A rho)``
of :meth:`MeanFieldSolver.tendency` — found by Newton, followed in ``sigma`` and classified by
the spectrum of ``dR/drho``.)

The equations
-------------
``R`` conserves mass (``c^T R = 0`` for the cell integrals ``c_i = int phi_i``), so its
Jacobian ``J`` is singular on the constants direction and the stationary problem
``R(rho) = 0`` needs the mass as an extra condition. It is added without a bordered system:

    R~(rho) = R(rho) + gamma e (c^T rho - mass),     gamma = -1/|Omega|,

``e`` the dofs of the constant 1. ``c^T R~ = -(c^T rho - mass)`` so a zero of ``R~`` has the
mass and solves ``R = 0``; ``J + gamma e c^T`` is non-singular when ``J`` is on mass-free
perturbations.

On the sphere every rotation of a stationary state is stationary: ``J`` has the null vectors
``g_k = -div(rho tau_k)`` (``tau_k`` the rotation fields, computed with the upwind transport of
the solver). Newton uses the **deflated** Jacobian ``J + gamma e c^T + sum_k g_k s_k^T``
(``g_k`` orthonormalised in the mass-weighted norm, ``s_k = c * g_k``, only for
``|g_k| > 1e-8``): a Newton step then does not rotate the state (``s_k^T step = 0`` to first
order) and the linear systems stay well conditioned. The residual is untouched, so the iteration
converges to a true zero of ``R~`` (on a mesh the rotation symmetry is discrete: the state
settles at one of the mesh's equivalent positions).

Jacobian and cost
-----------------
``jacobian="dense"`` (default): ``J`` by forward differences of ``R`` (step ``1e-7`` times the
largest dof), one column per global dof, i.e. ``n`` tendency evaluations per Newton step (each a
kernel operator product and a transport assembly, ~1 ms for 128 cells on S^1), stored as an
AIJ matrix and factored by MUMPS; quadratic convergence up to the differencing error. The nonlocal
kernel makes ``J`` dense, so this is the method for small meshes (``n`` up to a few thousand:
S^1, coarse S^2). ``jacobian="mf"``: PETSc SNES with a matrix-free Jacobian (differences of ``R``
along the Krylov vector, plus the rank-one terms) and the sparse preconditioner
``-(sigma M^{-1} A + I)`` (the stiff diffusion, shifted: the rest of ``J`` is O(1)), GMRES;
O(1) tendency evaluations per Krylov iteration, for large meshes.

Continuation
------------
:func:`continuation` follows a branch in ``sigma`` by pseudo-arclength (unknowns ``(rho,
sigma)``; ``dR/dsigma = -M^{-1} A rho`` exactly, the tendency being affine in ``sigma``: one
solver and one kernel operator serve the whole branch). The corrector is Newton on the bordered
system with the dense Jacobian gathered on every rank (redundant ``numpy`` solves: small
problems only). Along the branch it records the leading eigenvalue of the linearisation (SLEPc,
:func:`leading_eigenvalues`), detects where it changes sign on the branch of the uniform
state — a bifurcation point, located by the secant rule in ``sigma`` (on the uniform branch the
mode-1 eigenvalue is affine in ``sigma``) — switches to the bifurcating branch along the
critical eigenvector, and reports folds (sign changes of ``d sigma/ds``).

Stability
---------
The leading eigenvalue of ``J`` restricted to mass-preserving perturbations: SLEPc
(Krylov–Schur, largest real part) on ``J P - gamma_s e c^T / |Omega|``, ``P = I - e c^T/|Omega|``,
which equals ``J`` on ``{c^T v = 0}`` and sends ``e`` to the far eigenvalue ``-gamma_s``. On a
non-uniform state the eigenvalues whose eigenvectors lie in the span of the rotation generators
``g_k`` (overlap > 0.5 in the mass-weighted norm) are the symmetry modes (zero in the
continuum, O(h^p) on the mesh) and are excluded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import dolfinx.fem
import dolfinx.io
import dolfinx.mesh
import numpy as np
from mpi4py import MPI
from petsc4py import PETSc

from attnflow.cloud import Cloud
from attnflow.dynamics import Dynamics
from attnflow.fem.diffusion import DiffusionOperator
from attnflow.fem.solver import MeanFieldSolver
from attnflow.fem.timestepping import check_petsc_options, inserted_options
from attnflow.kernels.choice import KernelChoice
from attnflow.laws import Law
from attnflow.solutions import Status
from attnflow.validation import check_positive, check_real

__all__ = [
    "Branch",
    "StationaryProblem",
    "StationaryState",
    "continuation",
    "stationary_state",
]

logger = logging.getLogger(__name__)


class _Rotation(Dynamics):
    """The rigid rotation field ``x -> A x`` (``A`` antisymmetric): the symmetry generators."""

    needs_measure = False

    def __init__(self, A: np.ndarray) -> None:
        self.A = np.asarray(A, dtype=float)
        self.d = self.A.shape[0]
        self.sphere = True

    def ambient_velocity(self, x: np.ndarray, cloud: Cloud | None, t: float) -> np.ndarray:
        return x @ self.A.T

    def speed_bound(self, radius: float, mass: float = 1.0) -> float:
        return float(np.linalg.norm(self.A, 2)) * radius


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StationaryState:
    """A stationary density of the finite element problem.

    Attributes
    ----------
    dofs : (n_cells, n_dofs_per_cell) density dofs by input cell index (every rank).
    sigma : the noise of the state.
    mass : ``int rho`` (global).
    amplitude : ``m = |int x rho|`` (the order parameter; 0 for the uniform state).
    residual_norm : ``|R~(rho)|_inf`` at the returned state.
    residual_history : the residual norm of every Newton iterate.
    iterations : Newton iterations.
    converged : whether the tolerance was reached.
    status : :class:`~attnflow.solutions.Status` (``NONFINITE`` when the iteration broke down).
    leading_eigenvalue : the leading eigenvalue of the linearisation (mass and symmetry modes
        excluded), NaN when not computed.
    points, point_weights, weights : (n_pts, d), (n_pts,), (n_pts,) the quadrature cloud of
        the mesh and the density weights ``|cell| w_q rho(y_q)`` (input cell order, every rank).
    stats : ``wall_time``, ``tendency_evaluations``, ``jacobian``, ``degree``, ``n_dofs``,
        ``ranks``.
    """

    dofs: np.ndarray
    sigma: float
    mass: float
    amplitude: float
    residual_norm: float
    residual_history: tuple[float, ...]
    iterations: int
    converged: bool
    status: Status
    leading_eigenvalue: float
    points: np.ndarray
    point_weights: np.ndarray
    weights: np.ndarray
    stats: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stable(self) -> bool:
        """``leading_eigenvalue < 0`` (False when it was not computed)."""
        return bool(self.leading_eigenvalue < 0)

    def cloud(self) -> Cloud:
        """The density as a weighted point cloud (the quadrature points, clipped at 0)."""
        return Cloud(self.points, np.maximum(self.weights, 0.0))


@dataclass(frozen=True)
class Branch:
    """States along continuation branches.

    Attributes
    ----------
    states : every converged state, in order.
    branch : (k,) the branch of each state (0: the start branch, 1: the bifurcating one).
    sigma, amplitude, leading_eigenvalue : (k,) per state.
    bifurcations : ``{"sigma", "branch", "amplitude"}`` of each located bifurcation point.
    folds : ``{"sigma", "amplitude", "branch"}`` of each turning point in ``sigma``.
    stats : ``wall_time``, ``tendency_evaluations``, ``newton_iterations``, ``steps``.
    """

    states: list[StationaryState]
    branch: np.ndarray
    sigma: np.ndarray
    amplitude: np.ndarray
    leading_eigenvalue: np.ndarray
    bifurcations: list[dict]
    folds: list[dict]
    stats: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stable(self) -> np.ndarray:
        """(k,) bool: leading eigenvalue < 0."""
        return self.leading_eigenvalue < 0


# -- the discrete problem --------------------------------------------------------------------
class StationaryProblem:
    """The residual ``R~(rho; sigma)`` of one dynamics on one mesh, its Jacobian and spectrum.

    Built once; ``sigma`` can then vary freely (the tendency is affine in it). Collective.

    Parameters
    ----------
    dynamics : a :class:`~attnflow.dynamics.Dynamics` on the sphere (its diffusion ``sigma``
        is the default noise).
    mesh : a mesh of S^1 or S^2 (:func:`circle_mesh`, :func:`sphere_mesh`).
    degree, kernel, quadrature_degree : as for :class:`MeanFieldSolver`.
    mass : the prescribed total mass.
    """

    def __init__(
        self,
        dynamics: Dynamics,
        mesh: dolfinx.mesh.Mesh,
        *,
        degree: int = 0,
        kernel: KernelChoice | str = "auto",
        quadrature_degree: int = 4,
        mass: float = 1.0,
    ) -> None:
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"dynamics must be a Dynamics, got {type(dynamics).__name__}")
        if not dynamics.sphere:
            raise ValueError(
                "dynamics must live on the sphere (stationary states of boxes "
                "lose mass through the outflow boundary)"
            )
        self.mass_target = check_positive("mass", mass)
        self.solver = MeanFieldSolver(
            dynamics,
            mesh,
            lambda x: np.ones(x.shape[0]),
            degree=degree,
            kernel=kernel,
            quadrature_degree=quadrature_degree,
            normalize=True,
        )
        s = self.solver
        self.comm = s.comm
        self.dynamics = dynamics
        self.sigma_model = float(dynamics.diffusivity(0.0))
        self.n = s.n_dofs
        self.N = self.comm.allreduce(self.n)
        self.r0 = self.comm.scan(self.n) - self.n
        self.c = s.cell_volume.copy()  # int phi_i (owned dofs)
        self.area = self.comm.allreduce(float(self.c.sum()))
        self.e = np.ones(self.n)  # the constant 1 (nodal DG basis)
        self.gamma = -1.0 / self.area
        q = s.cloud
        w = q.weights.reshape(-1, q.n_q)
        self._minv = np.linalg.inv(np.einsum("cq,qi,qj->cij", w, q.tab, q.tab))
        self._ops = DiffusionOperator(s.W, q.cell_dofs, self._minv)
        self._xa, self._ya = self._ops.B.createVecs()
        self.evaluations = 0
        # the rotation generators: one solver per plane of rotation (no kernel: cheap)
        d = dynamics.d
        self._rotations = []
        for i in range(d):
            for j in range(i + 1, d):
                A = np.zeros((d, d))
                A[i, j], A[j, i] = -1.0, 1.0
                self._rotations.append(
                    MeanFieldSolver(
                        _Rotation(A),
                        mesh,
                        lambda x: np.ones(x.shape[0]),
                        degree=degree,
                        quadrature_degree=quadrature_degree,
                    )
                )
        pts = q.points / np.linalg.norm(q.points, axis=1, keepdims=True)
        self._unit_points = pts

    # -- basic operators ---------------------------------------------------------------------
    def diffusion(self, x: np.ndarray) -> np.ndarray:
        """``M^{-1} A x`` (owned dofs)."""
        self._xa.array[:] = x
        self._ops.B.mult(self._xa, self._ya)
        return self._ya.array_r.copy()

    def tendency(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """``R(x; sigma) = M^{-1}(F(x) - sigma A x)`` (owned dofs); collective."""
        self.evaluations += 1
        r = self.solver.tendency(np.asarray(x, dtype=float), 0.0)
        if sigma != self.sigma_model:
            r = r + (self.sigma_model - sigma) * self.diffusion(x)
        return r

    def residual(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """``R~ = R + gamma e (c^T x - mass)``."""
        return self.tendency(x, sigma) + self.gamma * (self.mass(x) - self.mass_target) * self.e

    def mass(self, x: np.ndarray) -> float:
        return self.comm.allreduce(float(self.c @ x))

    def dot(self, a: np.ndarray, b: np.ndarray) -> float:
        """Mass-weighted inner product ``sum c_i a_i b_i`` (global)."""
        return self.comm.allreduce(float(np.sum(self.c * a * b)))

    def amplitude(self, x: np.ndarray) -> float:
        w = self.solver.cloud.density_weights(x)
        v = self.comm.allreduce(w @ self._unit_points)
        return float(np.linalg.norm(v))

    def norm_inf(self, r: np.ndarray) -> float:
        return self.comm.allreduce(float(np.max(np.abs(r))) if r.size else 0.0, op=MPI.MAX)

    def symmetry_modes(self, x: np.ndarray, tol: float = 1e-8) -> list[np.ndarray]:
        """The rotation generators ``-div(x tau_k)``, orthonormal in the mass-weighted norm,
        those of norm > ``tol`` times the density's (none for the uniform state)."""
        scale = math.sqrt(self.dot(x, x))
        modes: list[np.ndarray] = []
        for rot in self._rotations:
            g = rot.tendency(np.asarray(x, dtype=float), 0.0)
            for m in modes:
                g = g - self.dot(g, m) * m
            ng = math.sqrt(self.dot(g, g))
            if ng > tol * scale * max(1, len(self._rotations)):
                modes.append(g / ng)
        return modes

    def uniform(self) -> np.ndarray:
        """Owned dofs of the uniform density of the prescribed mass."""
        return np.full(self.n, self.mass_target / self.area)

    # -- global vectors ----------------------------------------------------------------------
    def gather(self, x: np.ndarray) -> np.ndarray:
        """Owned pieces of all ranks, concatenated in rank order (every rank)."""
        return np.concatenate(self.comm.allgather(np.asarray(x)))

    def local(self, xg: np.ndarray) -> np.ndarray:
        return np.array(xg[self.r0 : self.r0 + self.n])

    # -- Jacobians -----------------------------------------------------------------------------
    def jacobian_rows(self, x: np.ndarray, sigma: float, r0: np.ndarray | None = None):
        """Owned rows (n, N) of ``dR/dx`` (``R`` the tendency, no mass term) by forward
        differences, one collective tendency evaluation per global column."""
        scale = self.norm_inf(x)
        h = 1e-7 * max(scale, 1e-300)
        base = self.tendency(x, sigma) if r0 is None else r0
        rows = np.empty((self.n, self.N))
        xp = np.array(x, dtype=float)
        for j in range(self.N):
            jl = j - self.r0
            own = 0 <= jl < self.n
            if own:
                xp[jl] += h
            rows[:, j] = (self.tendency(xp, sigma) - base) / h
            if own:
                xp[jl] = x[jl]
        return rows

    def augmented_rows(self, rows: np.ndarray, modes: Sequence[np.ndarray]) -> np.ndarray:
        """``J + gamma e c^T + sum g_k s_k^T`` (owned rows) from the rows of ``J``."""
        cg = self.gather(self.c)
        out = rows + self.gamma * np.outer(self.e, cg)
        for g in modes:
            out += np.outer(g, self.gather(self.c * g))
        return out

    def petsc_matrix(self, rows: np.ndarray) -> PETSc.Mat:
        """A distributed AIJ matrix (dense pattern) with these owned rows."""
        A = PETSc.Mat().createAIJ(((self.n, self.N), (self.n, self.N)), comm=self.comm)
        A.setPreallocationNNZ((self.n, self.N - self.n))
        cols = np.arange(self.N, dtype=PETSc.IntType)
        for i in range(self.n):
            A.setValues([self.r0 + i], cols, rows[i])
        A.assemble()
        return A

    # -- spectrum ------------------------------------------------------------------------------
    def leading_eigenvalues(
        self,
        x: np.ndarray,
        sigma: float,
        rows: np.ndarray | None = None,
        *,
        nev: int = 4,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The eigenvalues of largest real part of the linearisation at ``x`` (mass and
        symmetry modes excluded; module docstring) and their (real parts of) eigenvectors
        (owned dofs). SLEPc Krylov–Schur on the projected Jacobian; collective."""
        from slepc4py import SLEPc

        if rows is None:
            rows = self.jacobian_rows(x, sigma)
        cg = self.gather(self.c)
        modes = self.symmetry_modes(x)
        # J P - gamma_s e c^T/|Omega|: J on mass-free vectors, e -> -gamma_s
        Je = rows @ np.ones(self.N)
        gamma_s = 1e3 * max(1.0, float(self.comm.allreduce(np.abs(rows).max(), op=MPI.MAX)))
        proj = rows - np.outer(Je, cg) / self.area - gamma_s * np.outer(self.e, cg) / self.area
        A = self.petsc_matrix(proj)
        eps = SLEPc.EPS().create(comm=self.comm)
        eps.setOperators(A)
        eps.setProblemType(SLEPc.EPS.ProblemType.NHEP)
        eps.setWhichEigenpairs(SLEPc.EPS.Which.LARGEST_REAL)
        k = min(nev + len(modes), self.N - 1)
        eps.setDimensions(k, min(self.N, max(2 * k + 10, 40)))
        eps.setTolerances(1e-10, 5000)
        eps.solve()
        nconv = eps.getConverged()
        vr, vi = A.createVecs()
        vals, vecs = [], []
        for i in range(nconv):
            lam = eps.getEigenpair(i, vr, vi)
            vals.append(complex(lam))
            vecs.append(vr.array_r.copy())
        A.destroy()
        eps.destroy()
        if not vals:
            raise RuntimeError("SLEPc found no eigenvalue of the linearisation")
        vals_a = np.array(vals)
        keep = np.ones(vals_a.size, dtype=bool)
        # the symmetry modes: the eigenvectors closest to span(g_k), one per mode
        if modes:
            over = np.array(
                [
                    math.sqrt(sum(self.dot(v, g) ** 2 for g in modes) / max(self.dot(v, v), 1e-300))
                    for v in vecs
                ]
            )
            for _ in modes:
                cand = np.flatnonzero(keep & (over > 0.5))
                if cand.size:
                    keep[cand[np.argmax(over[cand])]] = False
        order = np.flatnonzero(keep)[np.argsort(-vals_a[keep].real)]
        return vals_a[order], [vecs[i] for i in order]

    # -- results -----------------------------------------------------------------------------
    def state(
        self,
        x: np.ndarray,
        sigma: float,
        *,
        history: Sequence[float],
        converged: bool,
        leading: float = math.nan,
        stats: Mapping[str, Any] | None = None,
    ) -> StationaryState:
        s = self.solver
        s.rho.x.array[: self.n] = x
        s.rho.x.scatter_forward()
        finite = bool(self.comm.allreduce(bool(np.all(np.isfinite(x))), op=MPI.LAND))
        w = s.cloud.density_weights(x)
        return StationaryState(
            dofs=s.global_dofs(root=None),
            sigma=float(sigma),
            mass=self.mass(x),
            amplitude=self.amplitude(x),
            residual_norm=float(history[-1]) if history else math.nan,
            residual_history=tuple(float(h) for h in history),
            iterations=max(len(history) - 1, 0),
            converged=bool(converged),
            status=Status.SUCCESS if finite else Status.NONFINITE,
            leading_eigenvalue=float(leading),
            points=s.order.gather_points(s.cloud.points, s.cloud.n_q),
            point_weights=s.order.gather_points(s.cloud.weights, s.cloud.n_q),
            weights=s.order.gather_points(w, s.cloud.n_q),
            stats=MappingProxyType(dict(stats or {})),
        )

    def dofs_of(self, guess) -> np.ndarray:
        """Owned dofs of a guess: a :class:`StationaryState`, a global dof array, a
        :class:`~attnflow.laws.Law` or a callable (projected and scaled to the mass)."""
        s = self.solver
        if isinstance(guess, StationaryState):
            guess = guess.dofs
        if isinstance(guess, np.ndarray) and guess.ndim == 2:
            s.set_global_dofs(guess)
            x = s.rho.x.array[: self.n].copy()
        elif isinstance(guess, Law) or callable(guess):
            f = guess.pdf if isinstance(guess, Law) else guess
            q = s.cloud
            vals = check_real("initial_guess values", f(self._unit_points)).reshape(-1)
            if vals.shape != (q.points.shape[0],) or not np.all(np.isfinite(vals)):
                raise ValueError("initial_guess must return one finite value per point")
            w = q.weights.reshape(-1, q.n_q)
            b = np.einsum("cq,cq,ql->cl", w, vals.reshape(-1, q.n_q), q.tab)
            x = np.zeros(self.n)
            x[q.cell_dofs] = np.einsum("cij,cj->ci", self._minv, b)
        else:
            raise TypeError(
                "initial_guess must be a Law, a callable (n, d) -> (n,), a StationaryState or "
                f"a (n_cells, n_dofs_per_cell) dof array, got {type(guess).__name__}"
            )
        m = self.mass(x)
        if not m > 0:
            raise ValueError("initial_guess must have positive mass")
        return x * (self.mass_target / m)


# -- Newton --------------------------------------------------------------------------------------


def stationary_state(
    dynamics: Dynamics,
    mesh: dolfinx.mesh.Mesh,
    initial_guess: Law | Callable[[np.ndarray], np.ndarray] | StationaryState | np.ndarray,
    *,
    degree: int = 0,
    kernel: KernelChoice | str = "auto",
    petsc_options: Mapping[str, Any] | None = None,
    mass: float = 1.0,
    sigma: float | None = None,
    jacobian: str = "dense",
    tol: float = 1e-10,
    max_it: int = 30,
    stability: bool = True,
    output_dir: str | Path | None = None,
    problem: StationaryProblem | None = None,
    deflate: bool = False,
) -> StationaryState:
    """A stationary density of ``d_t rho + div(rho X[rho]) = sigma Delta rho`` with the given
    mass, by Newton's method (PETSc SNES; module docstring for the formulation and the cost).

    Parameters
    ----------
    dynamics : the dynamics on S^1 or S^2 (e.g. ``SelfAttention(2, beta) + Diffusion(s)``).
    mesh : its mesh.
    initial_guess : a :class:`~attnflow.laws.Law`, a callable ``(n, d) -> (n,)``, a previous
        :class:`StationaryState` or a global dof array; scaled to ``mass``.
    degree, kernel : as for :class:`MeanFieldSolver`.
    petsc_options : SNES/KSP options (prefix ``attnflow_stationary_``, keys without it), e.g.
        ``{"snes_monitor": None}``.
    mass : the total mass (> 0).
    sigma : the noise (default: the dynamics' ``diffusivity``).
    jacobian : ``"dense"`` (differenced, MUMPS) or ``"mf"`` (matrix-free, preconditioned GMRES).
    tol : absolute tolerance of ``|R~|_inf`` (SNES ``atol``; ``rtol`` off).
    stability : compute the leading eigenvalue of the linearisation (SLEPc).
    output_dir : write ``stationary.xdmf`` (the density, cell means for DG1) there.
    problem : a :class:`StationaryProblem` to reuse (same dynamics, mesh and degree).

    Returns
    -------
    :class:`StationaryState`
    """
    opts = check_petsc_options(petsc_options)
    if jacobian not in ("dense", "mf"):
        raise ValueError(f"jacobian must be 'dense' or 'mf', got {jacobian!r}")
    tol = check_positive("tol", tol)
    if problem is None:
        problem = StationaryProblem(dynamics, mesh, degree=degree, kernel=kernel, mass=mass)
    P = problem
    sig = P.sigma_model if sigma is None else float(check_real("sigma", sigma))
    if not (math.isfinite(sig) and sig >= 0):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    x0 = P.dofs_of(initial_guess)
    start = time.perf_counter()
    ev0 = P.evaluations
    history: list[float] = []
    last_rows: dict[str, np.ndarray] = {}

    snes = PETSc.SNES().create(comm=P.comm)
    prefix = "attnflow_stationary_"
    snes.setOptionsPrefix(prefix)
    xv = PETSc.Vec().createMPI((P.n, P.N), comm=P.comm)
    fv = xv.duplicate()

    def func(snes_, x, f):
        f.array[:] = P.residual(x.array_r.copy(), sig)

    snes.setFunction(func, fv)

    if jacobian == "dense":
        Jmat = P.petsc_matrix(np.zeros((P.n, P.N)))

        def jac(snes_, x, J, Pm):
            xa = x.array_r.copy()
            rows = P.jacobian_rows(xa, sig)
            last_rows["x"], last_rows["rows"] = xa, rows
            aug = P.augmented_rows(rows, P.symmetry_modes(xa) if deflate else [])
            cols = np.arange(P.N, dtype=PETSc.IntType)
            for i in range(P.n):
                J.setValues([P.r0 + i], cols, aug[i])
            J.assemble()

        snes.setJacobian(jac, Jmat, Jmat)
        defaults = {
            "snes_type": "newtonls",
            "snes_linesearch_type": "bt",
            "ksp_type": "preonly",
            "pc_type": "lu",
            "pc_factor_mat_solver_type": "mumps",
        }
    else:
        shell = _MFJacobian(P, sig)
        Jmat = PETSc.Mat().createPython(((P.n, P.N), (P.n, P.N)), shell, comm=P.comm)
        Jmat.setUp()
        Pmat = _shifted_diffusion(P, sig)

        def jac(snes_, x, J, Pm):
            shell.set_state(x.array_r.copy())

        snes.setJacobian(jac, Jmat, Pmat)
        defaults = {
            "snes_type": "newtonls",
            "snes_linesearch_type": "bt",
            "ksp_type": "gmres",
            "ksp_rtol": 1e-10,
            "pc_type": "lu",
        }

    def monitor(snes_, its, fnorm):
        history.append(P.norm_inf(fv.array_r))

    snes.setMonitor(monitor)
    snes.setTolerances(rtol=0.0, atol=tol, stol=0.0, max_it=max_it)
    # the SNES norm test is in l2; the inf norm is what we report and test
    snes.setConvergenceTest(_inf_norm_test(P, fv, tol, max_it))
    with inserted_options(prefix, opts, defaults):
        snes.setFromOptions()
    xv.array[:] = x0
    snes.solve(None, xv)
    # the mass condition holds to the Newton tolerance: make it exact (a relative change of
    # the order of tol, below the residual's resolution)
    x = xv.array_r.copy()
    x *= P.mass_target / P.mass(x)
    r_final = P.norm_inf(P.residual(x, sig))
    if not history or history[-1] != r_final:
        history.append(r_final)
    converged = r_final < tol
    reason = snes.getConvergedReason()
    snes.destroy()
    lead = math.nan
    if stability:
        rows = last_rows.get("rows") if jacobian == "dense" else None
        if rows is None or not np.array_equal(last_rows.get("x"), x):
            rows = P.jacobian_rows(x, sig)
        lead = float(P.leading_eigenvalues(x, sig, rows)[0][0].real)
    wall = time.perf_counter() - start
    if P.comm.rank == 0:
        logger.info(
            "stationary_state: sigma=%.4g, %d Newton iterations, |R|=%.2e (reason %d), "
            "leading eigenvalue %.3g, %.2fs",
            sig,
            max(len(history) - 1, 0),
            r_final,
            reason,
            lead,
            wall,
        )
    st = P.state(
        x,
        sig,
        history=history,
        converged=converged,
        leading=lead,
        stats={
            "wall_time": wall,
            "tendency_evaluations": P.evaluations - ev0,
            "jacobian": jacobian,
            "degree": P.solver.degree,
            "n_dofs": P.N,
            "ranks": P.comm.size,
            "snes_reason": int(reason),
        },
    )
    if output_dir is not None:
        write_xdmf(P, [st], Path(output_dir) / "stationary.xdmf")
    return st


def _inf_norm_test(P: StationaryProblem, fv: PETSc.Vec, tol: float, max_it: int):
    def test(snes, its, norms):
        r = P.norm_inf(fv.array_r)
        if not math.isfinite(r):
            return PETSc.SNES.ConvergedReason.DIVERGED_FNORM_NAN
        if r < tol:
            return PETSc.SNES.ConvergedReason.CONVERGED_FNORM_ABS
        if its >= max_it:
            return PETSc.SNES.ConvergedReason.DIVERGED_MAX_IT
        return PETSc.SNES.ConvergedReason.ITERATING

    return test


class _MFJacobian:
    """Matrix-free ``J~ v``: differences of the residual plus the deflation terms."""

    def __init__(self, P: StationaryProblem, sigma: float) -> None:
        self.P, self.sigma = P, sigma
        self.x = None

    def set_state(self, x: np.ndarray) -> None:
        self.x = x
        self.r = self.P.residual(x, self.sigma)
        self.h = 1e-7 * max(self.P.norm_inf(x), 1e-300)
        self.modes = self.P.symmetry_modes(x)

    def mult(self, mat, v: PETSc.Vec, y: PETSc.Vec) -> None:
        P, va = self.P, v.array_r.copy()
        nv = P.norm_inf(va)
        if nv == 0:
            y.array[:] = 0.0
            return
        eps = self.h / nv
        out = (P.residual(self.x + eps * va, self.sigma) - self.r) / eps
        for g in self.modes:
            out = out + g * P.dot(g, va)
        y.array[:] = out


def _shifted_diffusion(P: StationaryProblem, sigma: float) -> PETSc.Mat:
    """The preconditioner matrix ``-(sigma M^{-1} A + I)`` (sparse)."""
    B = P._ops.B.duplicate(copy=True)
    B.scale(-sigma)
    B.shift(-1.0)
    return B


# -- output --------------------------------------------------------------------------------------
def write_xdmf(P: StationaryProblem, states: Sequence[StationaryState], path: Path) -> None:
    """Write the states as a series (``t`` = index) to an XDMF file (DG0 cell means);
    collective."""
    s = P.solver
    path = Path(path)
    if P.comm.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
    P.comm.Barrier()
    V0 = dolfinx.fem.functionspace(s.mesh, ("DG", 0))
    f = dolfinx.fem.Function(V0, name="density")
    with dolfinx.io.XDMFFile(P.comm, str(path), "w") as xdmf:
        xdmf.write_mesh(s.mesh)
        for k, st in enumerate(states):
            s.set_global_dofs(st.dofs)
            f.interpolate(s.rho)
            xdmf.write_function(f, float(k))


# -- continuation --------------------------------------------------------------------------------
def _bordered_newton(P, x, sig, tx, ts, xp, sp, modes, *, tol, max_it, rows=None):
    """Newton on the bordered system (dense Jacobian gathered on every rank, numpy solves)

        R~(x, sigma) + sum_k c_k g_k = 0,   <t, (x, sigma) - (x_p, sigma_p)> = 0,
        s_k^T (x - x_p) = 0,

    unknowns ``(x, sigma, c)``: the phase conditions fix the rotation of the state (the
    generators ``g_k`` of the predictor), the drift speeds ``c_k`` make the system square (0 in
    the continuum; on the mesh the size of the broken symmetry). Chord iterations: the
    Jacobian ``rows`` of the previous point on the branch is reused while the residual at least
    halves at every iteration, and recomputed otherwise (``n`` tendency evaluations each);
    the Jacobian at the converged point is returned (for the tangent and the spectrum).
    Returns ``x, sigma, history, converged, rows, c``."""
    hist: list[float] = []
    k = len(modes)
    c = np.zeros(k)
    N = P.N
    G = np.stack([P.gather(g) for g in modes], axis=1) if k else np.zeros((N, 0))
    S = np.stack([P.gather(P.c * g) for g in modes], axis=0) if k else np.zeros((0, N))
    ctx = P.gather(P.c * tx)
    J = None if rows is None else P.gather(P.augmented_rows(rows, []))
    for _ in range(max_it + 1):
        tend = P.tendency(x, sig)
        r = tend + P.gamma * (P.mass(x) - P.mass_target) * P.e
        rg = P.gather(r) + G @ c
        arc = P.dot(tx, x - xp) + ts * (sig - sp)
        phase = S @ P.gather(x - xp)
        nrm = max(float(np.abs(rg).max()), abs(arc), float(np.abs(phase).max(initial=0.0)))
        hist.append(nrm)
        done = nrm < tol or not math.isfinite(nrm) or len(hist) > max_it
        if done or J is None or (len(hist) > 1 and nrm > 0.5 * hist[-2]):
            rows = P.jacobian_rows(x, sig, r0=tend)
            J = P.gather(P.augmented_rows(rows, []))
        if done:
            break
        big = np.zeros((N + 1 + k, N + 1 + k))
        big[:N, :N], big[:N, N], big[:N, N + 1 :] = J, P.gather(-P.diffusion(x)), G
        big[N, :N], big[N, N] = ctx, ts
        big[N + 1 :, :N] = S
        rhs = -np.concatenate([rg, [arc], phase])
        step = np.linalg.solve(big, rhs)
        x = x + P.local(step[:N])
        sig = sig + float(step[N])
        c = c + step[N + 1 :]
    if hist[-1] < tol:  # exact mass (module docstring of stationary_state)
        x = x * (P.mass_target / P.mass(x))
    return x, sig, hist, hist[-1] < tol, rows, c


def _tangent(P, x, sig, rows, tx_old, ts_old):
    """The branch tangent ``(t_x, t_sigma)``: ``J~ t_x + R_sigma t_sigma + sum c_k g_k = 0``,
    ``s_k^T t_x = 0`` (no rotation) and ``<t_old, t> = 1``, normalised, oriented like
    ``t_old``."""
    modes = P.symmetry_modes(x)
    k = len(modes)
    N = P.N
    big = np.zeros((N + 1 + k, N + 1 + k))
    big[:N, :N] = P.gather(P.augmented_rows(rows, []))
    big[:N, N] = P.gather(-P.diffusion(x))
    big[N, :N] = P.gather(P.c * tx_old)
    big[N, N] = ts_old
    for i, g in enumerate(modes):
        big[:N, N + 1 + i] = P.gather(g)
        big[N + 1 + i, :N] = P.gather(P.c * g)
    rhs = np.zeros(N + 1 + k)
    rhs[N] = 1.0
    t = np.linalg.solve(big, rhs)
    tx, ts = P.local(t[:N]), float(t[N])
    nrm = math.sqrt(P.dot(tx, tx) + ts * ts)
    return tx / nrm, ts / nrm


def continuation(
    dynamics: Dynamics,
    mesh: dolfinx.mesh.Mesh,
    start: Law | Callable[[np.ndarray], np.ndarray] | StationaryState | np.ndarray | None = None,
    *,
    parameter: str = "sigma",
    stop: float,
    ds: float = 0.02,
    max_steps: int = 200,
    degree: int = 0,
    kernel: KernelChoice | str = "auto",
    mass: float = 1.0,
    tol: float = 1e-10,
    branch_switch: bool = True,
    max_amplitude: float = 0.9,
    output_dir: str | Path | None = None,
    problem: StationaryProblem | None = None,
) -> Branch:
    """Follow stationary states in ``sigma`` by pseudo-arclength from ``start`` (default: the
    uniform density) at the dynamics' noise towards ``stop``, with their stability; on the
    branch of the uniform state, locate the first bifurcation point and follow the branch
    that bifurcates there (``branch_switch``) until ``max_amplitude``, ``stop`` (on either
    side) or ``max_steps``. Module docstring for the method.

    Parameters
    ----------
    dynamics : the dynamics at the start (its ``diffusivity`` is the start noise).
    mesh : a mesh of S^1 or S^2.
    start : the start state (a guess is first converged by :func:`stationary_state`).
    parameter : ``"sigma"`` (only the noise is continued: the tendency is affine in it).
    stop : the noise where the start branch ends.
    ds : the arclength step (in the mass-weighted L2 norm of the density and in ``sigma``).
    max_steps : steps per branch.
    output_dir : write every state to ``continuation.xdmf`` (``t`` = index) there.

    Returns
    -------
    :class:`Branch`
    """
    if parameter != "sigma":
        raise ValueError(
            f"parameter must be 'sigma' (continuation in beta changes the kernel: run one "
            f"continuation per beta), got {parameter!r}"
        )
    stop = float(check_real("stop", stop))
    ds = check_positive("ds", ds)
    if problem is None:
        problem = StationaryProblem(dynamics, mesh, degree=degree, kernel=kernel, mass=mass)
    P = problem
    t0 = time.perf_counter()
    ev0 = P.evaluations
    sig0 = P.sigma_model
    if start is None:
        x = P.uniform()
    else:
        x = P.dofs_of(stationary_state(dynamics, mesh, start, problem=P, tol=tol, stability=False))
    sig = sig0
    states: list[StationaryState] = []
    labels: list[int] = []
    bifs: list[dict] = []
    folds: list[dict] = []
    newton_its = 0

    def record(x, sig, rows, hist, ok, label, drift=()):
        vals, vecs = P.leading_eigenvalues(x, sig, rows)
        st = P.state(
            x,
            sig,
            history=hist,
            converged=ok,
            leading=float(vals[0].real),
            stats={
                "drift": float(np.max(np.abs(drift), initial=0.0)),
                "tendency_residual": P.norm_inf(P.residual(x, sig)),
            },
        )
        states.append(st)
        labels.append(label)
        return vals, vecs

    rows = P.jacobian_rows(x, sig)
    record(x, sig, rows, [P.norm_inf(P.residual(x, sig))], True, 0)
    direction = -1.0 if stop < sig else 1.0
    tx, ts = np.zeros(P.n), direction
    tx, ts = _tangent(P, x, sig, rows, tx, ts)
    uniform_branch = states[0].amplitude < 1e-6 * mass
    switch_from = None
    h = ds
    for _ in range(max_steps):
        xp, sp = x + h * tx, sig + h * ts
        xn, sn, hist, ok, rows_n, drift = _bordered_newton(
            P, xp, sp, tx, ts, xp, sp, P.symmetry_modes(xp), tol=tol, max_it=15, rows=rows
        )
        newton_its += len(hist) - 1
        if not ok:
            h *= 0.5
            if h < 1e-4 * ds:
                logger.warning("continuation: step too small at sigma=%.4g", sig)
                break
            continue
        lam_old = states[-1].leading_eigenvalue
        x, sig = xn, sn
        vals, _ = record(x, sig, rows_n, hist, ok, 0, drift)
        rows = rows_n
        lam_new = float(vals[0].real)
        if uniform_branch and (lam_old > 0 >= lam_new or lam_old < 0 <= lam_new):
            # secant in sigma (the mode-1 eigenvalue is affine in sigma on the uniform
            # branch), checked and refined by one more secant step
            s_prev = states[-2].sigma
            sb = s_prev + (sig - s_prev) * lam_old / (lam_old - lam_new)
            xb = P.uniform()
            rows_b = P.jacobian_rows(xb, sb)
            vb, vecb = P.leading_eigenvalues(xb, sb, rows_b)
            lb = float(vb[0].real)
            if lb != lam_new:
                sb = sb + (sig - sb) * lb / (lb - lam_new)
            bifs.append({"sigma": float(sb), "branch": 0, "amplitude": 0.0})
            if P.comm.rank == 0:
                logger.info("continuation: bifurcation of the uniform state at sigma=%.6g", sb)
            if switch_from is None:
                switch_from = (xb, sb, vecb[0], rows_b)
            if branch_switch:
                break
        tx, ts = _tangent(P, x, sig, rows_n, tx, ts)
        h = min(ds, 1.5 * h)
        if (sig - stop) * direction >= 0:
            break
    if branch_switch and switch_from is not None:
        xb, sb, phi, rows = switch_from
        phi = phi / math.sqrt(P.dot(phi, phi))
        tx, ts = phi, 0.0
        x, sig = xb, sb
        h = ds
        prev_ts = None
        for _ in range(max_steps):
            xp, sp = x + h * tx, sig + h * ts
            xn, sn, hist, ok, rows_n, drift = _bordered_newton(
                P, xp, sp, tx, ts, xp, sp, P.symmetry_modes(xp), tol=tol, max_it=15, rows=rows
            )
            newton_its += len(hist) - 1
            if not ok:
                h *= 0.5
                if h < 1e-4 * ds:
                    logger.warning("continuation: step too small at sigma=%.4g", sig)
                    break
                continue
            x, sig = xn, sn
            record(x, sig, rows_n, hist, ok, 1, drift)
            rows = rows_n
            tx, ts = _tangent(P, x, sig, rows_n, tx, ts)
            if prev_ts is not None and prev_ts * ts < 0 and labels[-3:] == [1, 1, 1]:
                # fold: parabola through the last three (amplitude, sigma) samples
                a = np.array([s.amplitude for s in states[-3:]])
                sv = np.array([s.sigma for s in states[-3:]])
                c = np.polyfit(a, sv, 2)
                af = -c[1] / (2 * c[0])
                folds.append(
                    {"sigma": float(np.polyval(c, af)), "amplitude": float(af), "branch": 1}
                )
            prev_ts = ts
            h = min(ds, 1.5 * h)
            if states[-1].amplitude > max_amplitude or (sig - stop) * direction >= 0:
                break
    wall = time.perf_counter() - t0
    if output_dir is not None:
        write_xdmf(P, states, Path(output_dir) / "continuation.xdmf")
    return Branch(
        states=states,
        branch=np.array(labels),
        sigma=np.array([s.sigma for s in states]),
        amplitude=np.array([s.amplitude for s in states]),
        leading_eigenvalue=np.array([s.leading_eigenvalue for s in states]),
        bifurcations=bifs,
        folds=folds,
        stats=MappingProxyType(
            {
                "wall_time": wall,
                "tendency_evaluations": P.evaluations - ev0,
                "newton_iterations": newton_its,
                "steps": len(states),
                "ranks": P.comm.size,
            }
        ),
    )
