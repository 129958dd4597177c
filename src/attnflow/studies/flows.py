"""Normalizing flows as continuity equations: piecewise-constant ReLU controls fitted greedily.

The velocity ``v(x, theta) = w (a . x + b)_+`` with controls ``theta = (w, a, b)`` constant on
each interval of length ``tau`` transports a base density to an approximation of a target
(Álvarez-López, Geshkovski, Ruiz-Balet, arXiv:2412.19366; ``a . w = 0`` is a divergence-free
shear, arXiv:2602.08606). On one interval the flow is explicit: with ``s = a . x + b`` and
``lam = a . w``, a point with ``s > 0`` moves to ``x + w s (e^{lam tau} - 1)/lam`` (``s`` grows
like ``e^{lam tau}``), the others stay; on the moving half-space the Jacobian determinant is
``e^{lam tau}`` (:func:`relu_flow`). Hence, for the pushforward ``T#rho``,

    KL(T#rho | p) = int rho(y) [log rho(y) - log J(y) - log p(T y)] dy,

a quadrature over the *current* finite element density's own cloud, with no interpolation
(:func:`pushforward_kl`).

:func:`fit_controls` builds the controls greedily, one interval at a time:

1. **Search** (cheap, exact flow): the objective is the pushforward relative entropy above
   (lumped with the mass that would leave the box, see
   :func:`attnflow.metrics.relative_entropy`) of the current finite element density, over
   ``theta = (w, u, b)`` with ``a = u/|u|`` (the scale of ``a`` is redundant with that of
   ``w``): all starts of a fixed set are evaluated (directions ``a``, offsets ``b``, and
   ``w`` along ``+-a`` (compressible) and ``+-a^perp`` (shear)), then
   ``scipy.optimize.minimize(method="Nelder-Mead")`` is run from the best few. ``|w|`` and
   ``|b|`` are kept below ``w_max`` and ``L`` by a quadratic penalty (the CFL step of the
   finite element solve scales like ``1/(|w| (R + |b|))``).
2. **Selection by the finite element solver**: the best distinct optima are transported by
   :class:`~attnflow.fem.MeanFieldSolver` (DG upwind, outflow box) and the one with the
   smallest relative entropy *computed on the mesh* is kept, if it decreases it (else ``w``
   is halved, twice at most; then the fit stops early).

The module is numpy-level: the finite element solver is imported inside :func:`fit_controls`
(or replaced by any ``step(dynamics, dofs, duration) -> FieldSolution`` callable).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attnflow.dynamics import Dynamics, Piecewise
from attnflow.metrics import relative_entropy
from attnflow.perceptron import Perceptron
from attnflow.validation import check_int, check_positive

__all__ = ["Control", "FlowFit", "fit_controls", "pushforward_kl", "relu_flow"]

#: log of the smallest target density used (a floor against log 0 far in the tails).
_LOG_FLOOR = -690.0


def relu_flow(
    x: np.ndarray, w: np.ndarray, a: np.ndarray, b: float, t: float
) -> tuple[np.ndarray, np.ndarray]:
    """The exact flow of ``w (a . x + b)_+`` for a time ``t``.

    Parameters
    ----------
    x : (n, d) points; w, a : (d,); b, t : numbers.

    Returns
    -------
    (n, d) the moved points and (n,) ``log det`` of the flow's Jacobian (``lam t`` where
    ``a . x + b > 0``, else 0).
    """
    w, a = np.asarray(w, float), np.asarray(a, float)
    s = x @ a + b
    lam = float(a @ w)
    g = t if abs(lam * t) < 1e-12 else math.expm1(lam * t) / lam
    on = s > 0
    y = x + np.where(on, s * g, 0.0)[:, None] * w
    return y, np.where(on, lam * t, 0.0)


def pushforward_kl(
    points: np.ndarray,
    omega: np.ndarray,
    rho: np.ndarray,
    log_target: Callable[[np.ndarray], np.ndarray],
    w: np.ndarray,
    a: np.ndarray,
    b: float,
    t: float,
    *,
    length: float,
    target_outside: float,
    mass_lost: float = 0.0,
) -> float:
    """Lumped ``KL(T#rho | p)`` of the exact pushforward by :func:`relu_flow` (forward).

    ``points`` (n, d), ``omega`` (n,) quadrature points and weights of the current density,
    ``rho`` (n,) its values there, ``log_target`` maps (n, d) points to (n,) ``log p``; mass
    pushed out of the box ``[-length, length]^d`` (plus ``mass_lost`` already gone) forms one
    lumped cell against the target's mass outside ``target_outside``.
    """
    y, logj = relu_flow(points, w, a, b, t)
    inside = np.all(np.abs(y) <= length, axis=1)
    m = omega * rho
    pos = inside & (rho > 0)
    kl = float(m[pos] @ (np.log(rho[pos]) - logj[pos] - log_target(y[pos])))
    out = mass_lost + float(m[~inside].sum())
    if out > 0:
        kl += out * (math.log(out) - math.log(max(target_outside, 1e-300)))
    return kl


@dataclass(frozen=True)
class Control:
    """One constant control ``w (a . x + b)_+`` on ``[start, end)`` (``|a| = 1``)."""

    w: np.ndarray
    a: np.ndarray
    b: float
    start: float
    end: float

    @property
    def is_shear(self) -> bool:
        """Whether ``a . w = 0`` (to 1e-3 of ``|w|``): a divergence-free shear."""
        return abs(float(self.a @ self.w)) <= 1e-3 * float(np.linalg.norm(self.w))

    def perceptron(self) -> Perceptron:
        """The control as a width-one :class:`~attnflow.Perceptron` in ``R^d``."""
        return Perceptron.single(self.w, self.a, self.b)


@dataclass(frozen=True)
class FlowFit:
    """The result of :func:`fit_controls`.

    controls : the fitted controls, one per interval.
    kl : (n + 1,) lumped relative entropy ``KL(rho | target)`` on the mesh of the base
        (``kl[0]``) and after each switch.
    kl_search : (n,) the search objective of each chosen control (exact pushforward of the
        previous finite element density).
    solutions : the finite element solution of each interval (``solutions[k].weights[-1]``:
        the density after control ``k``; ``solutions[0].weights[0]``: the base).
    stats : ``fem_solves``, ``objective_evaluations``, ``wall_time`` (s), ``search_time`` (s).
    """

    controls: tuple[Control, ...]
    kl: np.ndarray
    kl_search: np.ndarray
    solutions: tuple[Any, ...]
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def times(self) -> np.ndarray:
        """(n + 1,) the start of every interval and the final time."""
        return np.array([c.start for c in self.controls] + [self.controls[-1].end])

    @property
    def dynamics(self) -> Dynamics:
        """The fitted flow: a :class:`~attnflow.Piecewise` of the controls' perceptrons (the
        one perceptron when there is one control), for either solver."""
        ps = [c.perceptron() for c in self.controls]
        return ps[0] if len(ps) == 1 else Piecewise([c.end for c in self.controls[:-1]], ps)


def _starts(d: int, length: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Start points ``(w, u, b)`` of the search: directions x offsets x four kinds of ``w``."""
    if d == 2:
        ang = np.arange(8) * np.pi / 4
        dirs = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    else:
        dirs = rng.standard_normal((8 * d, d))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    out = []
    for a in dirs:
        perp = rng.standard_normal(d) if d > 2 else np.array([-a[1], a[0]])
        if d > 2:
            perp -= (perp @ a) * a
            perp /= np.linalg.norm(perp)
        for b in (-0.25 * length, 0.0, 0.25 * length):
            for w in (0.5 * a, -0.5 * a, 0.5 * perp, -0.5 * perp):
                out.append(np.concatenate([w, a, [b]]))
    return out


def fit_controls(
    base: Any,
    target: Any,
    n_switches: int,
    *,
    duration: float = 1.0,
    length: float = 5.0,
    cells: int = 24,
    degree: int = 1,
    w_max: float = 2.0,
    local_searches: int = 4,
    candidates: int = 2,
    max_evaluations: int = 400,
    seed: int = 0,
    step: Callable[[Dynamics, np.ndarray | None, float], Any] | None = None,
    comm: Any = None,
) -> FlowFit:
    """Fit ``n_switches`` piecewise-constant ReLU controls transporting ``base`` to ``target``.

    Parameters
    ----------
    base : the base law in ``R^d`` (a :class:`~attnflow.laws.Law` with ``pdf``, e.g.
        ``Gaussian(0, I)``); the initial density of the finite element solver.
    target : the target density: a law or a callable ``(n, d) -> (n,)`` (``>= 0``, mass 1).
    n_switches : number of constant intervals (controls).
    duration : length ``tau`` of every interval (the controls' scale absorbs it).
    length, cells, degree : the finite element box ``[-length, length]^d`` (d = 1, 2, 3),
        ``cells`` per direction, DG degree (the default ``step``).
    w_max : bound of ``|w|`` in the search (``|a| = 1``; ``|b| <= length``).
    local_searches : Nelder–Mead runs from the best starts; candidates : optima transported
        by the finite element solver per interval.
    max_evaluations : objective evaluations per Nelder–Mead run.
    seed : seeds the start directions in ``d > 2`` (``d = 2`` uses eight fixed directions).
    step : ``step(dynamics, dofs, tau) -> FieldSolution`` solving one interval from the
        density dofs (``None``: from ``base``) with saves at ``0`` and ``tau``; default: a
        :class:`~attnflow.fem.MeanFieldSolver` on :func:`~attnflow.fem.box_mesh`.
    comm : communicator of the default ``step`` (default ``MPI.COMM_WORLD``; every rank takes
        the same decisions from the gathered solutions).

    Returns
    -------
    :class:`FlowFit`: the controls, the relative entropy after every switch (finite element
    density on the mesh), the solutions and the costs. The relative entropy is the forward
    one, ``KL(rho | target)``, lumped with the mass outside the box.
    """
    from scipy.optimize import minimize

    n_switches = check_int("n_switches", n_switches, 1)
    tau = check_positive("duration", duration)
    length = check_positive("length", length)
    w_max = check_positive("w_max", w_max)
    d = int(base.d)
    pdf = target.pdf if hasattr(target, "pdf") else target
    if not callable(pdf):
        raise TypeError("target must be a law or a callable (n, d) -> (n,)")

    def log_target(y: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.maximum(np.log(np.asarray(pdf(y), float).reshape(-1)), _LOG_FLOOR)

    if step is None:
        step = _fem_step(base, d, length, cells, degree, comm)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    # The base on the mesh: a solve with the zero field (one step).
    sol0 = step(Perceptron.single(np.zeros(d), np.eye(d)[0], 0.0), None, tau)
    first = _entropy(sol0, target, 0)
    kl, kl_search, controls, sols = [first.lumped], [], [], []
    p_out = first.target_outside
    current, dofs = (sol0, 0), None
    n_fem, n_eval, t_search = 1, 0, 0.0
    for k in range(n_switches):
        sol, idx = current
        pts, om = sol.points, sol.point_weights
        r = np.maximum(sol.weights[idx], 0.0) / om
        lost = max(1.0 - float(np.maximum(sol.weights[idx], 0.0).sum()), 0.0)

        counter = [0]
        search = _Search(pts, om, r, log_target, d, tau, length, w_max, p_out, lost, counter)
        t0 = time.perf_counter()
        starts = _starts(d, length, rng)
        values = np.array([search(s) for s in starts])
        optima = []
        for i in np.argsort(values)[:local_searches]:
            res = minimize(
                search,
                starts[i],
                method="Nelder-Mead",
                options={"maxfev": max_evaluations, "xatol": 1e-4, "fatol": 1e-7},
            )
            optima.append((float(res.fun), _normalised(res.x, d)))
        optima.sort(key=lambda o: o[0])
        distinct: list[tuple[float, np.ndarray]] = []
        for val, th in optima:
            if all(np.linalg.norm(th - o[1]) > 1e-3 for o in distinct):
                distinct.append((val, th))
        t_search += time.perf_counter() - t0
        n_eval += counter[0]
        best = None
        for scale in (1.0, 0.5, 0.25):
            for val, th in distinct[:candidates]:
                w, a, b = scale * th[:d], th[d : 2 * d], float(th[-1])
                s = step(Perceptron.single(w, a, b), dofs, tau)
                n_fem += 1
                e = _entropy(s, target, -1).lumped
                if best is None or e < best[0]:
                    best = (e, val, w, a, b, s)
            if best[0] < kl[-1]:
                break
        if best is None or not best[0] < kl[-1]:
            break  # no control decreases the relative entropy on the mesh: stop early
        e, val, w, a, b, s = best
        controls.append(Control(w, a, b, k * tau, (k + 1) * tau))
        kl.append(e)
        kl_search.append(val)
        sols.append(s)
        current, dofs = (s, -1), s.dofs
    if not controls:
        raise RuntimeError("fit_controls: no control decreases the relative entropy")
    stats = {
        "fem_solves": n_fem,
        "objective_evaluations": n_eval,
        "wall_time": time.perf_counter() - start,
        "search_time": t_search,
    }
    return FlowFit(tuple(controls), np.array(kl), np.array(kl_search), tuple(sols), stats)


@dataclass(frozen=True)
class _Search:
    """The search objective of one interval: penalised :func:`pushforward_kl` of
    ``theta = (w, u, b)`` (``a = u/|u|``); ``counter[0]`` counts the evaluations."""

    points: np.ndarray
    omega: np.ndarray
    rho: np.ndarray
    log_target: Callable[[np.ndarray], np.ndarray]
    d: int
    tau: float
    length: float
    w_max: float
    target_outside: float
    lost: float
    counter: list[int]

    def __call__(self, theta: np.ndarray) -> float:
        self.counter[0] += 1
        d = self.d
        w, u, b = theta[:d], theta[d : 2 * d], float(theta[-1])
        nu = float(np.linalg.norm(u))
        if nu < 1e-12:
            return math.inf
        over_w = max(float(np.linalg.norm(w)) - self.w_max, 0.0)
        over_b = max(abs(b) - self.length, 0.0)
        return 10.0 * (over_w**2 + over_b**2) + pushforward_kl(
            self.points, self.omega, self.rho, self.log_target, w, u / nu, b, self.tau,
            length=self.length, target_outside=self.target_outside, mass_lost=self.lost,
        )  # fmt: skip


def _normalised(theta: np.ndarray, d: int) -> np.ndarray:
    u = theta[d : 2 * d]
    return np.concatenate([theta[:d], u / np.linalg.norm(u), theta[-1:]])


def _entropy(sol: Any, target: Any, k: int):
    """The forward relative entropy of ``sol`` at save ``k`` (mass 1 on the whole space: what
    left the box, in this solve or before, is the lumped outside cell)."""
    return relative_entropy(sol, target, k, total_mass=1.0)


def _fem_step(base: Any, d: int, length: float, cells: int, degree: int, comm: Any):
    """The default interval solver: DG upwind on the box, outflow boundary (lazy imports)."""
    from mpi4py import MPI

    from attnflow.fem import MeanFieldSolver, box_mesh

    comm = MPI.COMM_WORLD if comm is None else comm
    mesh = box_mesh(d, length, check_int("cells", cells, 1), comm)

    def solve(dynamics: Dynamics, dofs: np.ndarray | None, tau: float) -> Any:
        solver = MeanFieldSolver(dynamics, mesh, base, degree=degree, kernel="recomputed")
        if dofs is not None:
            solver.set_initial_dofs(dofs)
        return solver.solve(tau, [0.0, tau], energy=False)

    return solve
