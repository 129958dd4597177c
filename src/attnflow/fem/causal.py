"""``CausalSolver``: the kinetic equation of causal attention on ``[0, 1] x S^{d-1}``.

(One idea: the kinetic density ``f(t, s, x)`` as ``n_s`` finite element slices coupled
causally through one kernel operator; the module holds the slice coupling, the solver and its
solution record, :class:`KineticSolution`.)

The equation
------------
Tokens at positions ``s in [0, 1]`` of a prompt, ``x in S^{d-1}``; the density ``f(t, s, .)``
of the tokens at position ``s`` (a probability density on the sphere for every ``s``) is
transported in ``x`` only, slice ``s`` driven by the slices ``s' <= s`` before it:

    d_t f(t, s, x) + div_x( f(t, s, x) X[f](s, x) ) = 0,        x in S^{d-1},

with the ALiBi kernel of :mod:`attnflow.causal.weights` (the limit of the token weights
``w_jk``; a probability density in ``s'`` on ``[0, s)``)

    kappa_lambda(s, s') = lambda e^{-lambda (s - s')} / (1 - e^{-lambda s})   (lambda = 0: 1/s)

and the mixture density ``g_s = int_0^s kappa_lambda(s, s') f(t, s', .) ds'``:

* the interaction form, :class:`~attnflow.causal.CausalInteraction` ``(d, beta, lam)`` (the
  lost-in-the-middle model, ``dtheta_j/dt = sum_{k<j} w_jk W'(theta_j - theta_k)``,
  ``W = e^{beta cos}``):

      X(s, x) = int_0^s kappa(s, s') int grad_S e^{beta <x, y>} f(s', y) dy ds'
              = beta P_x int e^{beta <x, y>} y g_s(y) dy,

  i.e. ``beta`` times the USA field (``normalized=False``) of ``g_s``;
* the causal softmax form, ``SelfAttention(d, beta, ..., causal=True, alibi=lam)`` (softmax
  over the tokens ``k <= j`` with the ALiBi bias):

      X(s, x) = P_x  int int_{s' <= s} e^{-lambda (s - s')} e^{beta <x, y>} y f(s', y)
                   / int int_{s' <= s} e^{-lambda (s - s')} e^{beta <x, y>} f(s', y),

  the SA field of the same mixture ``g_s`` (the normalisation of the weights in ``s'``
  cancels).

The softmax form uses the model's ``Q, K, V`` (kernel ``e^{beta <Q x, K y>}``, values
``V y``; ``centered`` as in :class:`~attnflow.SelfAttention`). Linearised around the uniform
density on S^1 (every slice ``1/2pi``), Fourier mode ``n`` of slice ``s`` obeys the Volterra
equation ``d_t g_n(s) = r_n int_0^s kappa(s, s') g_n(s') ds'`` with ``r_n = n^2 I_n(beta)``
(interaction) or ``n^2 I_n(beta) / (beta I_0(beta))`` (softmax).

Discretisation
--------------
* **Position s**: ``n_s`` slices, slice ``i`` standing for the cell ``[i h, (i+1) h)``,
  ``h = 1/n_s``, evaluated at ``s_i = i h`` (its left end). The mixture of slice ``i`` is
  ``g_i = sum_l W[i, l] f_l`` with :func:`mixture_weights`: for the interaction form
  :func:`attnflow.causal.weights.slice_weights` (exact cell integrals of ``kappa``, strictly
  earlier cells, row 0 zero: slice 0 does not move), for the softmax form the ALiBi softmax
  weights of ``n_s`` tokens over ``l <= i`` (row 0 is slice 0 itself). Both are first order,
  ``O(h)``, for smooth ``f`` in ``s``; with ``n_s = N`` slices the scheme *is* the token
  system's weight matrix. Slice ``i`` depends only on the slices ``l <= i`` (``l < i`` for
  the interaction form), bitwise.
* **Sphere**: every slice is a DG_k density (k = 0, 1) on the same mesh, transported with the
  upwind DG form of :mod:`attnflow.fem.transport` (single-valued normal flux: the mass of every
  slice is conserved to round-off), the Zhang–Shu limiter for DG1; DG0 is first order in space.
* **Kernel**: the positions of the quadrature points (sources) and of the P1 nodes (targets)
  are the same for every slice, so *one* kernel operator
  (:class:`~attnflow.fem.kernel_operator.KernelOperator`, assembled dense / sparse, spectral or
  recomputed, chosen by :mod:`attnflow.kernels.choice` as in
  :class:`~attnflow.fem.MeanFieldSolver`) serves all slices: each stage forms the ``n_s``
  mixtures (``O(n_s^2 n_dofs)`` flops) and applies the operator once per mixture (a
  ``Function`` per application), never ``n_s^2`` operators.
* **Time**: one PETSc TS on a vector holding all slices (``n_s`` consecutive blocks of the
  owned DG dofs of each rank), explicit SSP Runge–Kutta (default SSPRK(4,3): third order, SSP
  coefficient 2) with the fixed step ``cfl * 2 * min |c| / sum |f| / X_max`` of
  :func:`~attnflow.fem.transport.cfl_step`, ``X_max`` the speed bound of the field of a
  mixture (``beta`` times the USA bound, or the SA bound; mixtures have at most the largest
  slice mass). All slices share the step; the TS combines the stages entrywise, so the blocks
  of different slices never mix except through the mixtures.
* **MPI**: the cells are distributed (all slices on every rank); results agree on 1, 2, 3 ranks
  to round-off (the solution is gathered in input cell order).

Cost per stage: ``n_s`` kernel applications, ``n_s`` transport assemblies (slice 0 of the
interaction form is skipped: its field is zero) and the mixtures.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import dolfinx.fem
import dolfinx.io
import dolfinx.mesh
import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

from attnflow.causal.particles import CausalInteraction
from attnflow.causal.weights import alibi_weights, check_slope, slice_weights
from attnflow.cloud import Cloud
from attnflow.fem.ordering import InputOrder
from attnflow.fem.timestepping import (
    DEFAULT_TS_OPTIONS,
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
from attnflow.io import read_npz, write_npz_atomic, write_point_cloud_series
from attnflow.kernels.choice import KernelChoice, as_kernel_choice, plan_kernels
from attnflow.laws import Law
from attnflow.model import SelfAttention, check_causal
from attnflow.resources import check_field_overflow, check_memory, check_steps, memory_budget
from attnflow.solutions import FieldSolution, Status
from attnflow.timegrid import time_grid
from attnflow.validation import check_int, check_real

__all__ = ["FORMS", "CausalSolver", "KineticSolution", "mixture_weights"]

logger = logging.getLogger(__name__)

#: The two causal fields: the interaction (gradient) form and causal softmax attention.
FORMS = ("interaction", "softmax")

#: Version of the ``.npz`` layout of :class:`KineticSolution`.
KINETIC_FORMAT = 1


def _check_form(form: object) -> str:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    return str(form)


def mixture_weights(n_slices: int, lam: float, form: str = "interaction") -> np.ndarray:
    """The ``(n_s, n_s)`` slice coupling: the mixture of slice ``i`` is ``sum_l W[i, l] f_l``.

    ``form="interaction"``: :func:`attnflow.causal.weights.slice_weights` (strictly lower
    triangular, row 0 zero, other rows sum to one). ``form="softmax"``: the causal softmax
    ALiBi weights over ``l <= i``, ``W[i, l] = e^{-lam h (i - l)} / sum_{l' <= i} e^{-lam h
    (i - l')}`` (``h = 1/n_s``; lower triangular with the diagonal, every row sums to one).
    The latter is the strict weight matrix of ``n_s + 1`` tokens with the same step
    ``lam / n_s`` read from token 2 on, so both come from
    :func:`attnflow.causal.weights.alibi_weights`. Both are ``O(1/n_s)`` quadratures of
    ``int_0^s kappa_lam(s, s') g(s') ds'`` at ``s = i h``.
    """
    n = check_int("n_slices", n_slices, 1)
    lam = check_slope(lam)
    form = _check_form(form)
    if form == "interaction":
        return slice_weights(n, lam)
    return alibi_weights(n + 1, lam * (n + 1) / n)[1:, :-1]


def _causal_spec(model: object) -> tuple[SelfAttention, str, float]:
    """``(kernel term, form, lam)`` of a causal model: a
    :class:`~attnflow.causal.CausalInteraction` (``beta`` times the USA field of the mixture,
    ``Q = K = V = I``; ``rescale`` gives the field times ``e^{-beta}``) or a
    ``SelfAttention(..., causal=True, alibi=lam)`` (the SA field of the mixture with the
    model's ``Q``, ``K``, ``V``)."""
    if isinstance(model, CausalInteraction):
        term = SelfAttention(model.d, model.beta, normalized=False, rescale_usa=model.rescale)
        return term, "interaction", float(model.lam)
    if isinstance(model, SelfAttention):
        if not model.causal:
            raise ValueError(
                "model must be causal: CausalInteraction(d, beta, lam) or "
                "SelfAttention(..., causal=True, alibi=lam) (MeanFieldSolver runs the others)"
            )
        if not model.sphere:
            raise ValueError("model.sphere must be True: the kinetic solver works on S^1, S^2")
        return replace(model, causal=False, alibi=0.0), "softmax", float(model.alibi)
    check_causal(model)  # a composite holding a causal term: its own one-line error
    raise TypeError(
        "model must be a CausalInteraction or a SelfAttention(..., causal=True), got "
        f"{type(model).__name__}"
    )


def _initial_function(f0: object) -> Callable[[float, np.ndarray], np.ndarray]:
    """``f0`` as a function of ``(s, x)``: a Law (its pdf in every slice), a callable of
    ``x`` or of ``(s, x)``."""
    if isinstance(f0, Law):
        return lambda s, x: f0.pdf(x)
    if not callable(f0):
        raise TypeError(f"f0 must be a Law or a callable of x or (s, x), got {type(f0).__name__}")
    try:
        params = [
            p
            for p in inspect.signature(f0).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        params = [None]
    if len(params) == 2:
        return f0  # type: ignore[return-value]
    if len(params) == 1:
        return lambda s, x: f0(x)
    raise TypeError("f0 must take x (n, d) or (s, x): one or two required arguments")


@dataclass(frozen=True, eq=False)
class KineticSolution:
    """The kinetic density ``f(t, s, x)`` at the save times (identical on every rank).

    Attributes
    ----------
    t : (n_saved,) save times.
    s : (n_s,) slice positions ``s_i = i / n_s``.
    mass : (n_saved, n_s) mass of every slice.
    min_density : (n_saved, n_s) minimum of every slice over the quadrature points.
    points : (n_points, d) quadrature points of all cells (input cell order, as
        :class:`~attnflow.solutions.FieldSolution`).
    point_weights : (n_points,) quadrature weights ``|J| w_q``.
    weights : (n_saved, n_s, n_points) weights ``|J| w_q f(s_i, y_q)``: every slice as a
        weighted point cloud (:meth:`cloud`).
    points_per_cell : quadrature points per cell (``points`` is cell-major).
    dofs : (n_s, n_cells, n_dofs_per_cell) slice dofs at the last save time, by input cell
        index (``None`` for solutions built elsewhere).
    status : :class:`~attnflow.solutions.Status` of the solve.
    stats : ``steps``, ``rhs_evaluations`` (whole right-hand sides, each ``n_s`` slices),
        ``wall_time``, ``dt``, ``degree``, ``kernel``, ``matrix_entries``, ``form``, ``lam``,
        ``n_slices``, ``kernel_applications``, ``time_kernel``, ``time_assembly``, ``ranks``.
    """

    t: np.ndarray
    s: np.ndarray
    mass: np.ndarray
    min_density: np.ndarray
    points: np.ndarray
    point_weights: np.ndarray
    weights: np.ndarray
    points_per_cell: int = 1
    dofs: np.ndarray | None = None
    status: Status = Status.SUCCESS
    stats: Mapping[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "kinetic"
    _arrays: ClassVar[tuple[str, ...]] = (
        "t",
        "s",
        "mass",
        "min_density",
        "points",
        "point_weights",
        "weights",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "stats", MappingProxyType(dict(self.stats or {})))

    @property
    def n_slices(self) -> int:
        """Number of slices ``n_s``."""
        return int(self.s.size)

    @property
    def dt(self) -> float:
        """The CFL time step (``stats["dt"]``)."""
        return float(self.stats.get("dt", np.nan))

    @property
    def n_steps(self) -> int:
        """Number of time steps taken (``stats["steps"]``)."""
        return int(self.stats.get("steps", 0))

    @property
    def wall_time(self) -> float:
        """Seconds spent in ``solve`` (``stats["wall_time"]``)."""
        return float(self.stats.get("wall_time", 0.0))

    def _index(self, i: int) -> int:
        i = int(i)
        if not -self.n_slices <= i < self.n_slices:
            raise IndexError(f"slice must be in [0, {self.n_slices}), got {i}")
        return i % self.n_slices

    def cloud(self, k: int = -1, i: int = -1) -> Cloud:
        """Slice ``i`` at save ``k`` as a :class:`Cloud` of quadrature points (negative
        round-off weights of a limited DG1 density clipped to 0)."""
        return Cloud(self.points, np.maximum(self.weights[k, self._index(i)], 0.0))

    def slice(self, i: int) -> FieldSolution:
        """Slice ``i`` over the save times as a :class:`~attnflow.solutions.FieldSolution`
        (energy NaN: the causal field has none)."""
        i = self._index(i)
        return FieldSolution(
            t=self.t,
            mass=self.mass[:, i],
            outflow=np.zeros_like(self.t),
            energy=np.full(self.t.shape, np.nan),
            min_density=self.min_density[:, i],
            points=self.points,
            point_weights=self.point_weights,
            weights=self.weights[:, i],
            points_per_cell=self.points_per_cell,
            dofs=None if self.dofs is None else self.dofs[i],
            status=self.status,
            stats=self.stats,
        )

    def fourier_modes(self, n: int, k: int = -1) -> np.ndarray:
        """(n_s,) complex ``int f(s_i, theta) e^{-i n theta} dtheta`` of every slice at save
        ``k`` (S^1 only; the points are mapped radially onto the circle). For
        ``f = (1 + eps cos(n theta)) / 2pi`` it is ``eps / 2``."""
        if self.points.shape[1] != 2:
            raise ValueError("fourier_modes needs a solution on S^1 (points in R^2)")
        n = check_int("n", n, 0)
        theta = np.arctan2(self.points[:, 1], self.points[:, 0])
        return self.weights[k] @ np.exp(-1j * n * theta)

    def save(self, path: str | Path) -> Path:
        """Write the solution to ``path`` (``.npz``, numpy only) atomically; returns the path."""
        out: dict[str, Any] = {
            "format": np.int64(KINETIC_FORMAT),
            "kind": np.array(self.kind),
            "stats": np.array(json.dumps(_jsonable(dict(self.stats)), sort_keys=True)),
            "status": np.array(self.status.value),
            "points_per_cell": np.int64(self.points_per_cell),
        }
        for name in self._arrays:
            out[name] = np.asarray(getattr(self, name))
        if self.dofs is not None:
            out["dofs"] = np.asarray(self.dofs)
        return write_npz_atomic(path, **out)

    @classmethod
    def load(cls, path: str | Path) -> KineticSolution:
        """Read a solution written by :meth:`save` (``ValueError`` naming the file)."""
        data = read_npz(path)
        try:
            if int(data["format"]) != KINETIC_FORMAT or str(data["kind"]) != cls.kind:
                raise ValueError
            args = {name: data[name] for name in cls._arrays}
            return cls(
                points_per_cell=int(data["points_per_cell"]),
                dofs=data.get("dofs"),
                status=Status(str(data["status"])),
                stats=json.loads(str(data["stats"])),
                **args,
            )
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"{path}: not a kinetic solution file") from None


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


class CausalSolver:
    """Solve the kinetic equation of causal attention for ``f(t, s, x)`` on ``[0,1] x S^1``
    or ``[0,1] x S^2`` (see the module docstring for the equation and the scheme).

    Parameters
    ----------
    model : the causal model: a :class:`~attnflow.causal.CausalInteraction` ``(d, beta, lam)``
        (the interaction form) or a ``SelfAttention(d, beta, ..., causal=True, alibi=lam)``
        on the sphere (the causal softmax form, with its ``Q``, ``K``, ``V``).
    mesh : a ghosted manifold mesh of the unit sphere (:func:`circle_mesh`,
        :func:`sphere_mesh`); ``model.d`` is its geometric dimension.
    f0 : initial density: a :class:`~attnflow.laws.Law` (the same in every slice), a callable
        of ``x`` ((n, d) -> (n,)) or of ``(s, x)`` (``s`` the slice position, a float),
        values >= 0, L2-projected onto DG_k slice by slice (then limited).
    n_slices : number of slices ``n_s >= 1`` in ``s``.
    degree, kernel, cfl, quadrature_degree, petsc_options, petsc_options_prefix : as for
        :class:`~attnflow.fem.MeanFieldSolver` (one kernel operator, chosen for one density).
    normalize : scale every slice to unit mass on the mesh (the law of the token at ``s``),
        after evaluating ``f0`` at the quadrature points (default ``True``).

    :meth:`solve` can be called more than once; every call starts from ``f0``.
    """

    def __init__(
        self,
        model: CausalInteraction | SelfAttention,
        mesh: dolfinx.mesh.Mesh,
        f0: Law | Callable[..., np.ndarray],
        *,
        n_slices: int,
        degree: int = 0,
        kernel: KernelChoice | str = "auto",
        cfl: float = 0.9,
        quadrature_degree: int = 4,
        petsc_options: Mapping[str, Any] | None = None,
        petsc_options_prefix: str = "attnflow_",
        normalize: bool = True,
    ) -> None:
        term, form, lam = _causal_spec(model)
        n_s = check_int("n_slices", n_slices, 1)
        kernel = as_kernel_choice(kernel)
        gdim, tdim = mesh.geometry.dim, mesh.topology.dim
        if model.d != gdim:
            raise ValueError(f"model.d must equal the mesh dimension {gdim}, got {model.d}")
        if tdim != gdim - 1 or gdim not in (2, 3):
            raise ValueError(
                "mesh must be a manifold mesh of S^1 or S^2 (circle_mesh, sphere_mesh)"
            )
        check_scheme(degree, cfl)
        petsc_options = check_petsc_options(petsc_options, petsc_options_prefix)
        if isinstance(f0, Law) and (f0.d != gdim or not f0.on_sphere):
            raise ValueError(f"f0 must be a law on S^{gdim - 1} in R^{gdim}")
        f0_fn = _initial_function(f0)
        self.model, self.term, self.form, self.lam = model, term, form, lam
        self.mesh, self.comm = mesh, mesh.comm
        self.n_slices = n_s
        #: (n_s,) slice positions s_i = i / n_s.
        self.s = np.arange(n_s) / n_s
        #: (n_s, n_s) the slice coupling (:func:`mixture_weights`).
        self.weights = mixture_weights(n_s, lam, form)
        self._active = np.flatnonzero(np.any(self.weights != 0.0, axis=1))
        #: The field's factor on the model's field: beta (interaction) or 1 (softmax).
        self.scale = float(term.beta) if form == "interaction" else 1.0
        self.degree = degree
        self.W = dolfinx.fem.functionspace(mesh, ("DG", degree))
        self.U = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, (gdim,)))
        self.rho = dolfinx.fem.Function(self.W, name="density")
        self.mix = dolfinx.fem.Function(self.W, name="mixture")
        self.u = dolfinx.fem.Function(self.U, name="velocity")
        self.cloud = cell_quadrature(self.W, max(quadrature_degree, 2 * degree))
        self.order = InputOrder(mesh, self.cloud.cell_dofs.shape[0])
        q = self.cloud
        w = q.weights.reshape(-1, q.n_q)
        mass_matrices = np.einsum("cq,qi,qj->cij", w, q.tab, q.tab)
        self._minv = np.linalg.inv(mass_matrices)
        self._cell_volume = w.sum(axis=1)
        self.n_dofs = self.W.dofmap.index_map.size_local
        #: (n_dofs,) int phi_l of every owned dof (mass = cell_volume @ dofs).
        self.cell_volume = np.zeros(self.n_dofs)
        self.cell_volume[q.cell_dofs] = mass_matrices.sum(axis=2)
        #: (n_s, n_dofs) the initial slices' owned dofs (every solve starts from them).
        self.initial_dofs = self._initial(f0_fn, bool(normalize))
        radius = self.comm.allreduce(
            float(np.max(np.linalg.norm(mesh.geometry.x, axis=1))), op=MPI.MAX
        )
        masses = self.slice_masses(self.initial_dofs)
        check_field_overflow(term, radius, float(masses.max()))
        self.kernel_plan = plan_kernels(
            term,
            kernel,
            budget=self.comm.bcast(memory_budget(ranks=self.comm.size), root=0),
            n_targets=self.U.dofmap.index_map.size_global,
            n_sources=self.comm.allreduce(q.points.shape[0]),
            n_assembly_sources=self.comm.allreduce(q.points.shape[0] * q.cell_dofs.shape[1]),
            solver="fem",
            n_dofs=self.W.dofmap.index_map.size_global,
            ranks=self.comm.size,
        )
        if self.comm.rank == 0:
            for r in self.kernel_plan.describe():
                logger.info("CausalSolver kernel: %s (requested %s)", r["method"], r["requested"])
        #: The one velocity operator of all slices (applied to every mixture).
        self.velocity = NodalVelocity(term, self.W, self.U, q, self.kernel_plan)
        phi = ufl.TestFunction(self.W)
        self._form = dolfinx.fem.form(transport_form(self.rho, self.u, phi, mesh, boundary=False))
        self._b = dolfinx.fem.Function(self.W)
        # Mixtures have at most the largest slice mass (rows of W sum to <= 1, W >= 0).
        speed = self.scale * term.speed_bound(radius, float(masses.max()))
        self.dt = cfl_step(mesh, self._cell_volume, speed, degree, cfl * SSP_COEFFICIENT)
        self.petsc_options = petsc_options
        self.petsc_options_prefix = petsc_options_prefix
        self._counts = {"rhs": 0, "kernel": 0, "t_kernel": 0.0, "t_assembly": 0.0}

    # -- set-up ----------------------------------------------------------------------------
    def _initial(
        self, f0: Callable[[float, np.ndarray], np.ndarray], normalize: bool
    ) -> np.ndarray:
        """(n_s, n_dofs) the projected (and limited) initial slices."""
        q = self.cloud
        pts = q.points / np.linalg.norm(q.points, axis=1, keepdims=True)
        w = q.weights.reshape(-1, q.n_q)
        out = np.zeros((self.n_slices, self.n_dofs))
        for i, s in enumerate(self.s):
            vals = check_real("f0 values", f0(float(s), pts)).reshape(-1)
            if vals.shape != (pts.shape[0],) or not np.all(np.isfinite(vals)):
                raise ValueError("f0 must return one finite value per point")
            bad = self.comm.allreduce(int(np.any(vals < 0)))
            if bad:
                raise ValueError(f"f0 must be >= 0 (slice s={s:g})")
            mass = self.comm.allreduce(float((w * vals.reshape(-1, q.n_q)).sum()))
            if not mass > 0:
                raise ValueError(f"f0 must have positive mass on the mesh (slice s={s:g})")
            if normalize:
                vals = vals / mass
            b = np.einsum("cq,cq,ql->cl", w, vals.reshape(-1, q.n_q), q.tab)
            out[i, q.cell_dofs] = np.einsum("cij,cj->ci", self._minv, b)
            self._limit(out[i])
        return out

    def _limit(self, dofs: np.ndarray) -> None:
        if self.degree > 0:
            positivity_limiter(dofs, self.cloud.cell_dofs)

    # -- evaluation --------------------------------------------------------------------------
    def slice_masses(self, slices: np.ndarray) -> np.ndarray:
        """(n_s,) global masses of the owned slice dofs ``slices`` (n_s, n_dofs); collective."""
        local = np.ascontiguousarray(np.asarray(slices)[:, : self.n_dofs] @ self.cell_volume)
        out = np.empty_like(local)
        self.comm.Allreduce(local, out, op=MPI.SUM)
        return out

    def rhs(self, ts, t, x: PETSc.Vec, f: PETSc.Vec) -> None:
        """``f = M^{-1} F_i`` for every slice ``i`` of ``x`` (PETSc TS signature)."""
        n = self.n_dofs
        slices = x.array_r.reshape(self.n_slices, n)
        if self.degree > 0:  # the stage is limited before its right-hand side (PETSc locks x)
            slices = slices.copy()
            for i in range(self.n_slices):
                self._limit(slices[i])
        out = f.array.reshape(self.n_slices, n)
        out[:] = 0.0
        self._counts["rhs"] += 1
        cd = self.cloud.cell_dofs
        b = self._b.x
        for i in self._active:
            t0 = time.perf_counter()
            # The mixture of the slices l <= i only: slice i never sees a later slice.
            self.mix.x.array[:n] = self.weights[i, : i + 1] @ slices[: i + 1]
            self.velocity(self.mix, self.u, float(t))
            if self.scale != 1.0:
                self.u.x.array[:] *= self.scale
            t1 = time.perf_counter()
            self.rho.x.array[:n] = slices[i]
            self.rho.x.scatter_forward()
            b.array[:] = 0.0
            dolfinx.fem.assemble_vector(b.array, self._form)
            b.scatter_reverse(dolfinx.la.InsertMode.add)
            out[i][cd] = np.einsum("cij,cj->ci", self._minv, b.array[cd])
            self._counts["kernel"] += 1
            self._counts["t_kernel"] += t1 - t0
            self._counts["t_assembly"] += time.perf_counter() - t1

    def _post_step(self, ts) -> None:
        if self.degree > 0:
            x = ts.getSolution()
            arr = x.array.reshape(self.n_slices, self.n_dofs)
            for i in range(self.n_slices):
                self._limit(arr[i])

    # -- time stepping -------------------------------------------------------------------------
    def solve(
        self,
        t_final: float,
        save_times: Sequence[float] | None = None,
        output_dir: str | Path | None = None,
        *,
        progress: Callable[[float, int], None] | None = None,
    ) -> KineticSolution:
        """Integrate from ``f0`` to ``t_final``; record every slice at ``save_times``
        (default 0, t_final).

        With ``output_dir`` (collective) the slices are written there: ``density.xdmf`` + ``.h5``
        holds one time series ``slice_000``, ``slice_001``, ... per slice (DG0 cell data, cell
        means for DG1; ParaView's ``Xdmf3ReaderT``), and on S^1 ``kinetic.pvd`` the density on
        the cylinder ``(cos theta, sin theta, s)`` as points ``(y_q, s_i)`` with the array
        ``weight`` = ``f(s_i, y_q)`` (rank 0). Nothing is written otherwise.

        ``progress(t, step)`` is called after every step on every rank.
        """
        grid = time_grid(t_final, save_times)
        check_steps(grid.t_final, self.dt, "CausalSolver.solve with its CFL step")
        n_pts = self.order.n_cells_global * self.cloud.n_q
        n_save = grid.save_times.size
        check_memory(
            f"CausalSolver.solve: {n_save} saves of {self.n_slices} slices of {n_pts} points",
            8.0 * n_pts * self.n_slices * (n_save + 3),
            self.comm.bcast(memory_budget(ranks=self.comm.size), root=0),
        )
        self._counts = {"rhs": 0, "kernel": 0, "t_kernel": 0.0, "t_assembly": 0.0}
        rec: dict[str, list] = {"t": [], "mass": [], "min": [], "w": []}
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            writers = self._open_output(output_dir, stack)
            x = PETSc.Vec().createMPI(
                (self.n_slices * self.n_dofs, PETSc.DETERMINE), comm=self.comm
            )
            stack.callback(x.destroy)
            x.array[:] = self.initial_dofs.reshape(-1)
            ts = PETSc.TS().create(comm=self.comm)
            stack.callback(ts.destroy)
            ts.setOptionsPrefix(self.petsc_options_prefix)
            work = x.duplicate()
            stack.callback(work.destroy)
            ts.setRHSFunction(self.rhs, work)
            step_cb = progress

            def post_step(ts_) -> None:
                self._post_step(ts_)
                if step_cb is not None:
                    step_cb(ts_.getTime(), ts_.getStepNumber())

            ts.setPostStep(post_step)
            ts.setTimeStep(self.dt)
            ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)
            ts.setMaxSteps(10**9)
            with inserted_options(
                self.petsc_options_prefix, self.petsc_options, DEFAULT_TS_OPTIONS
            ):
                ts.setFromOptions()
            ts.setTime(0.0)
            for k in range(grid.events.size):
                _, t_next = grid.segment(k)
                if t_next > ts.getTime():
                    ts.setTimeStep(self.dt)
                    ts.setMaxTime(t_next)
                    ts.solve(x)
                if grid.is_save[k]:
                    self._record(rec, x.array_r.reshape(self.n_slices, self.n_dofs), t_next)
                    self._write(writers, x.array_r.reshape(self.n_slices, self.n_dofs), t_next)
            n_steps = ts.getStepNumber()
            final = x.array_r.reshape(self.n_slices, self.n_dofs).copy()
        wall = time.perf_counter() - start
        mass = np.array(rec["mass"])
        status = Status.SUCCESS if np.all(np.isfinite(mass)) else Status.NONFINITE
        cd = self.cloud.cell_dofs
        dofs = self.order.gather_cells(np.moveaxis(final[:, cd], 0, 1), root=None)
        stats = {
            "steps": int(n_steps),
            "rhs_evaluations": int(self._counts["rhs"]),
            "kernel_applications": int(self._counts["kernel"]),
            "time_kernel": float(self._counts["t_kernel"]),
            "time_assembly": float(self._counts["t_assembly"]),
            "wall_time": wall,
            "dt": float(self.dt),
            "degree": int(self.degree),
            "form": self.form,
            "lam": float(self.lam),
            "n_slices": int(self.n_slices),
            "kernel": "+".join(r["method"] for r in self.kernel_plan.describe()),
            "kernel_plan": self.kernel_plan.describe(),
            "matrix_entries": self.velocity.matrix_entries,
            "ranks": int(self.comm.size),
        }
        if self.comm.rank == 0:
            drift = np.max(np.abs(mass[-1] - mass[0]) / np.maximum(np.abs(mass[0]), 1e-300))
            logger.info(
                "CausalSolver: %d slices, %d steps of dt=%.3g, mass drift %.2e, %.2fs",
                self.n_slices,
                n_steps,
                self.dt,
                drift,
                wall,
            )
        points = self.order.gather_points(self.cloud.points, self.cloud.n_q)
        return KineticSolution(
            t=np.array(rec["t"]),
            s=self.s.copy(),
            mass=mass,
            min_density=np.array(rec["min"]),
            points=points,
            point_weights=self.order.gather_points(self.cloud.weights, self.cloud.n_q),
            weights=np.stack(rec["w"]),
            points_per_cell=self.cloud.n_q,
            dofs=np.moveaxis(dofs, 1, 0),
            status=status,
            stats=stats,
        )

    def _record(self, rec: dict[str, list], slices: np.ndarray, t: float) -> None:
        q = self.cloud
        dens = np.einsum("scl,ql->scq", slices[:, q.cell_dofs], q.tab)  # (n_s, cells, n_q)
        w = (q.weights.reshape(1, -1, q.n_q) * dens).reshape(self.n_slices, -1)
        rec["t"].append(float(t))
        rec["mass"].append(self.slice_masses(slices))
        local_min = dens.min(axis=(1, 2)) if dens.size else np.full(self.n_slices, np.inf)
        low = np.empty_like(local_min)
        self.comm.Allreduce(np.ascontiguousarray(local_min), low, op=MPI.MIN)
        rec["min"].append(low)
        rec["w"].append(self.order.gather_points(w.T, q.n_q).T)

    # -- output ------------------------------------------------------------------------------
    def _open_output(self, output_dir, stack: contextlib.ExitStack) -> dict[str, Any]:
        if output_dir is None:
            return {}
        out = Path(output_dir)
        if self.comm.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        self.comm.Barrier()
        xdmf = stack.enter_context(dolfinx.io.XDMFFile(self.comm, str(out / "density.xdmf"), "w"))
        xdmf.write_mesh(self.mesh)
        W0 = dolfinx.fem.functionspace(self.mesh, ("DG", 0))
        fns = [dolfinx.fem.Function(W0, name=f"slice_{i:03d}") for i in range(self.n_slices)]
        writers: dict[str, Any] = {"dir": out, "xdmf": xdmf, "fns": fns, "t": [], "cyl": []}
        if self.mesh.geometry.dim == 2:
            stack.callback(self._write_cylinder, writers)
        return writers

    def _write(self, writers: dict[str, Any], slices: np.ndarray, t: float) -> None:
        if not writers:
            return
        for i, fn in enumerate(writers["fns"]):
            self.rho.x.array[: self.n_dofs] = slices[i]
            self.rho.x.scatter_forward()
            fn.interpolate(self.rho)
            writers["xdmf"].write_function(fn, t)
        if self.mesh.geometry.dim == 2:
            q = self.cloud
            dens = np.einsum("scl,ql->scq", slices[:, q.cell_dofs], q.tab).reshape(
                self.n_slices, -1
            )
            writers["t"].append(t)
            writers["cyl"].append(self.order.gather_points(dens.T, q.n_q).T)

    def _write_cylinder(self, writers: dict[str, Any]) -> None:
        """The S^1 slices as one point cloud on the cylinder (cos, sin, s) per save (rank 0)."""
        pts = self.order.gather_points(self.cloud.points, self.cloud.n_q)
        if self.comm.rank != 0 or not writers["t"]:
            return
        pts = pts / np.linalg.norm(pts, axis=1, keepdims=True)
        n_p = pts.shape[0]
        cyl = np.zeros((self.n_slices * n_p, 3))
        cyl[:, :2] = np.tile(pts, (self.n_slices, 1))
        cyl[:, 2] = np.repeat(self.s, n_p)
        times = np.array(writers["t"])
        values = np.stack([c.reshape(-1) for c in writers["cyl"]])
        write_point_cloud_series(
            writers["dir"],
            times,
            np.broadcast_to(cyl, (times.size, *cyl.shape)),
            values,
            name="kinetic",
        )
