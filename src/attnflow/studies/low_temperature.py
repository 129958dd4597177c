"""The low-temperature regime: concentration onto the zero-temperature limit, cluster counts
and dynamic metastability.

Concentration (Alcalde, Bungert, Riedl, Roith, "Quantifying concentration phenomena of
mean-field transformers in the low-temperature regime", 2026): the token distribution
``mu^beta_t`` concentrates onto the push-forward ``T # mu_0`` of the initial distribution under
a projection map induced by Q, K, V, with

    W(mu^beta_t, T # mu_0) <~ sqrt(log(beta + 1) / beta) e^{C t} + e^{-c t},

so that the distance is smallest on time scales of order ``log beta``; for finite beta and
large t a terminal phase dominated by V follows.

The setting here is the one where every piece is exact: tokens in R^d, the centred form
``X = V (m_beta(x) - x)`` (``SelfAttention(centered=True)``, the residual form of hardmax
analyses), Q = K = V = I and ``mu_0`` uniform on the unit ball. At zero temperature every
token is drawn to ``T(x) = argmax_{|y| <= 1} <x, y> = x / |x|``, which attends to itself, so

    x(t) = T(x) + e^{-t} (x - T(x))              (:func:`zero_temperature_flow`)

and ``T # mu_0`` is the uniform law on the unit sphere. At finite beta the field stays radial,
``X(x) = (m(r) - r) x/r`` with (``nu`` the radial law, ``z = beta r s``, ``n = d/2 - 1``)

    m(r) = int s z^{-n} I_{n+1}(z) dnu(s) / int z^{-n} I_n(z) dnu(s),

a one-dimensional mean-field equation solved to high accuracy on a grid that is geometric in
``1 - r`` (:func:`radial_mean_field`): it resolves the boundary layer of width ``1/beta`` at
every beta up to 1e4. Because ``|x - y|^2 >= (|x| - |y|)^2`` with equality for aligned points,
the W2 distance between two rotation-invariant laws equals the W2 distance of their radial
laws: the distances below are exact up to the radial discretisation. The particle solver
(:func:`attnflow.simulate`, the same kernel engine as everything else) runs the same model in
R^d as an independent check; its finite-N floor shows where particles stop resolving the
boundary layer (a few hundred tokens are hardmax-like once beta exceeds ~N^(2/3)).

The cluster counts on S^1 and the energy staircase of dynamic metastability (Geshkovski,
Koubbi, Polyanskiy, Rigollet) live in :mod:`attnflow.studies.metastability` and are
re-exported here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.integrate import solve_ivp
from scipy.special import ive

from attnflow.laws import UniformBall
from attnflow.model import SelfAttention
from attnflow.studies.convergence import fit_slope
from attnflow.studies.metastability import (
    ClusterCountStudy,
    StaircaseStudy,
    cluster_count_sweep,
    energy_staircase,
    most_unstable_mode,
)
from attnflow.validation import check_betas, check_int, check_positive

__all__ = [
    "ClusterCountStudy",
    "ConcentrationStudy",
    "RadialFlow",
    "StaircaseStudy",
    "cluster_count_sweep",
    "concentration_rate",
    "concentration_study",
    "energy_staircase",
    "most_unstable_mode",
    "projection_map",
    "radial_mean_field",
    "zero_temperature_flow",
]

logger = logging.getLogger(__name__)


def concentration_rate(beta: float | np.ndarray) -> np.ndarray:
    """The rate ``sqrt(log(beta + 1) / beta)`` of Alcalde et al. (same shape as ``beta``)."""
    b = np.asarray(beta, dtype=float)
    return np.sqrt(np.log1p(b) / b)


def projection_map(x: np.ndarray) -> np.ndarray:
    """``T(x) = argmax_{|y| <= 1} <x, y> = x / |x|`` (Q = K = I, unit ball); (n, d) -> (n, d)."""
    x = np.asarray(x, dtype=float)
    r = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(r == 0):
        raise ValueError("x must not contain the origin (T is undefined there)")
    return x / r


def zero_temperature_flow(x: np.ndarray, t: float) -> np.ndarray:
    """Hardmax (beta = inf) centred flow from ``x`` (n, d) in the unit ball at time ``t``.

    Every token moves straight to its leader ``T(x)`` (which attends to itself and stays):
    ``x(t) = T(x) + e^{-t} (x - T(x))``. Returns (n, d).
    """
    tx = projection_map(x)
    return tx + math.exp(-t) * (np.asarray(x, dtype=float) - tx)


@dataclass(frozen=True)
class RadialFlow:
    """The rotation-invariant mean-field flow from the uniform ball, as weighted radii.

    t : (n_t,) times; r : (n_t, n) radii (increasing in the second index, as at t = 0);
    w : (n,) masses (sum 1); beta : inverse temperature; d : dimension.
    """

    t: np.ndarray
    r: np.ndarray
    w: np.ndarray
    beta: float
    d: int

    def distance_to_limit(self) -> np.ndarray:
        """``W2(mu_t, T # mu_0)`` (n_t,): the radial law against the point mass at 1."""
        return np.sqrt(((1.0 - self.r) ** 2) @ self.w)

    def distance_to(self, radii: np.ndarray) -> np.ndarray:
        """``W2`` (n_t,) against another radial flow ``radii`` (n_t, n) on the same masses
        (both monotone in the index: the index coupling is the optimal one in 1-D)."""
        return np.sqrt(((self.r - radii) ** 2) @ self.w)


def _radial_grid(n: int, d: int, eps_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Cells geometric in ``1 - r`` (from ``eps_min`` to 1); mass midpoints and masses."""
    eps = np.concatenate([np.geomspace(1.0, eps_min, n), [0.0]])
    edges = 1.0 - eps  # 0 = edges[0] < ... < edges[n] = 1
    cdf = edges**d
    w = np.diff(cdf)
    r = (0.5 * (cdf[:-1] + cdf[1:])) ** (1.0 / d)
    return r, w


def _radial_field(r: np.ndarray, w: np.ndarray, beta: float, d: int) -> np.ndarray:
    """``m(r) - r`` at the radii ``r`` (n,) of the weighted radial law (r, w)."""
    nu = 0.5 * d - 1.0
    z = np.maximum(beta * r[:, None] * r[None, :], 1e-300)  # (targets, sources)
    i_n = ive(nu, z)
    logs = np.log(w)[None, :] + z + np.log(i_n) - nu * np.log(z)
    logs -= logs.max(axis=1, keepdims=True)
    e = np.exp(logs)
    m = (e * (r[None, :] * ive(nu + 1.0, z) / i_n)).sum(axis=1) / e.sum(axis=1)
    return m - r


def radial_mean_field(
    beta: float,
    times: Sequence[float],
    *,
    d: int = 2,
    n: int = 200,
    eps_min: float = 1e-8,
    rtol: float = 1e-8,
) -> RadialFlow:
    """Solve the centred Q = K = V = I mean-field flow from the uniform unit ball in R^d.

    Parameters
    ----------
    beta : inverse temperature (> 0, finite).
    times : increasing output times (>= 0).
    d : dimension (>= 2).
    n : radial cells, geometric in ``1 - r`` from ``eps_min`` to 1 (the boundary layer of
        width ``1/beta`` holds ~20 cells at beta = 1e4; n = 200 and 600 agree to 1e-4).
    rtol : relative tolerance of the adaptive integrator (DOP853).

    Returns a :class:`RadialFlow`. Each radius moves with ``m(r) - r`` (module docstring);
    radii keep their order (a 1-D flow), so the weighted radii are the radial law at all times.
    """
    beta = check_positive("beta", beta)
    d = check_int("d", d, 2)
    t = np.asarray(times, dtype=float)
    if t.ndim != 1 or t.size == 0 or t[0] < 0 or np.any(np.diff(t) <= 0):
        raise ValueError("times must be a non-empty increasing sequence of times >= 0")
    r0, w = _radial_grid(n, d, eps_min)
    if t[-1] == 0.0:
        return RadialFlow(t=t, r=r0[None, :].copy(), w=w, beta=float(beta), d=d)
    sol = solve_ivp(
        lambda _t, r: _radial_field(r, w, beta, d),
        (0.0, float(t[-1])),
        r0,
        method="DOP853",
        t_eval=t,
        rtol=rtol,
        atol=1e-13,
    )
    if not sol.success:
        raise RuntimeError(f"radial mean-field integration failed at beta={beta}: {sol.message}")
    return RadialFlow(t=t, r=sol.y.T.copy(), w=w, beta=float(beta), d=d)


@dataclass(frozen=True)
class ConcentrationStudy:
    """``W2`` between the finite-beta flow and the zero-temperature reference over a beta sweep.

    betas : (B,); t : (T,) times.
    to_limit : (B, T) ``W2(mu^beta_t, T # mu_0)`` (exact mean field, radial).
    to_flow : (B, T) ``W2(mu^beta_t, mu^inf_t)`` against the zero-temperature flow.
    zero_temperature : (T,) ``W2(mu^inf_t, T # mu_0) = e^{-t} W2(mu_0, T # mu_0)``.
    floor : (B,) ``min_t to_limit``, reached at ``t_floor`` (B,): the closest approach to
        the limit, before the terminal phase takes the tokens away again.
    floor_slope : log-log slope of ``floor`` against beta (fitted over ``betas >= fit_from``).
    rate_slope : the slope of ``sqrt(log(beta + 1)/beta)`` over the same betas (about -1/2).
    time_slope : slope of ``t_floor`` against ``log beta`` (the time scale ``log beta``).
    particles_to_limit : (B, T) the same distance from the particle solver (N tokens, exact
        optimal transport to ``T`` of the same samples), or None.
    n_particles : N (0 without particles).
    """

    betas: np.ndarray
    t: np.ndarray
    to_limit: np.ndarray
    to_flow: np.ndarray
    zero_temperature: np.ndarray
    floor: np.ndarray
    t_floor: np.ndarray
    floor_slope: float
    rate_slope: float
    time_slope: float
    fit_from: float
    particles_to_limit: np.ndarray | None
    n_particles: int

    @property
    def rate(self) -> np.ndarray:
        """``sqrt(log(beta + 1)/beta)`` at the betas (B,)."""
        return concentration_rate(self.betas)


def concentration_study(
    betas: Sequence[float] = (1.0, 10.0, 100.0, 1e3, 1e4),
    *,
    t_final: float = 16.0,
    n_times: int = 161,
    d: int = 2,
    n_radial: int = 200,
    fit_from: float = 10.0,
    n_particles: int = 0,
    dt: float = 0.02,
    seed: int = 0,
    comm: Any = None,
) -> ConcentrationStudy:
    """Sweep beta: distance of the finite-beta flow to the zero-temperature reference.

    Parameters
    ----------
    betas : inverse temperatures (> 0, finite, increasing).
    t_final, n_times : the output times ``linspace(0, t_final, n_times)``.
    d : dimension of the ball (>= 2).
    n_radial : radial cells of :func:`radial_mean_field`.
    fit_from : fit the slopes over ``betas >= fit_from`` (the asymptotic regime).
    n_particles : also run the particle solver with this many tokens (0: no), RK4 step ``dt``,
        tokens drawn from ``UniformBall(d)`` with ``seed``; distances by exact optimal
        transport (POT) to the projected samples.
    comm : an ``mpi4py`` communicator: the betas are dealt over its ranks (each beta is
        computed whole on one rank), and every rank returns the same, complete study, equal to
        the serial one (default: serial).
    """
    b = check_betas(betas)
    if b.size < 2 or np.any(np.diff(b) <= 0):
        raise ValueError(f"betas must hold at least two increasing values, got {b.tolist()}")
    t_final = check_positive("t_final", t_final)
    n_times = check_int("n_times", n_times, 2)
    if n_particles < 0 or (0 < n_particles < 2):
        raise ValueError(f"n_particles must be 0 (no particles) or >= 2, got {n_particles!r}")
    if np.count_nonzero(b >= fit_from) < 2:
        raise ValueError(f"fit_from must leave at least two betas to fit, got {fit_from!r}")
    t = np.linspace(0.0, t_final, n_times)
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    mine = {}
    x0 = UniformBall(d).sample(n_particles, np.random.default_rng(seed)) if n_particles else None
    for k in range(rank, b.size, size):
        flow = radial_mean_field(b[k], t, d=d, n=n_radial)
        r_inf = 1.0 - np.exp(-t)[:, None] * (1.0 - flow.r[0][None, :])
        mine[k] = (
            flow.distance_to_limit(),
            flow.distance_to(r_inf),
            np.sqrt(((1.0 - r_inf) ** 2) @ flow.w),
            None if x0 is None else _particle_distances(b[k], t, x0, dt),
        )
        logger.info(
            "beta=%g: closest approach %.3e at t=%.2f",
            b[k],
            mine[k][0].min(),
            t[mine[k][0].argmin()],
        )
    if comm is not None:
        mine = {k: v for part in comm.allgather(mine) for k, v in part.items()}
    to_limit = np.stack([mine[k][0] for k in range(b.size)])
    to_flow = np.stack([mine[k][1] for k in range(b.size)])
    zero = mine[0][2]
    particles = None if x0 is None else np.stack([mine[k][3] for k in range(b.size)])
    floor = to_limit.min(axis=1)
    t_floor = t[to_limit.argmin(axis=1)]
    fit = b >= fit_from
    return ConcentrationStudy(
        betas=b,
        t=t,
        to_limit=to_limit,
        to_flow=to_flow,
        zero_temperature=zero,
        floor=floor,
        t_floor=t_floor,
        floor_slope=fit_slope(b[fit], floor[fit]),
        rate_slope=fit_slope(b[fit], concentration_rate(b[fit])),
        time_slope=float(np.polyfit(np.log(b[fit]), t_floor[fit], 1)[0]),
        fit_from=float(fit_from),
        particles_to_limit=particles,
        n_particles=int(n_particles),
    )


def _particle_distances(beta: float, t: np.ndarray, x0: np.ndarray, dt: float) -> np.ndarray:
    """W2 (T,) between the particle flow from ``x0`` (N, d) and ``T`` of the same tokens."""
    from attnflow.metrics import wasserstein
    from attnflow.particles import simulate

    model = SelfAttention(x0.shape[1], beta=float(beta), sphere=False, centered=True)
    sol = simulate(model, x0, float(t[-1]), dt=dt, save_times=t)
    limit = projection_map(x0)
    return np.array([wasserstein(sol.x[j], None, limit, None, p=2).value for j in range(t.size)])
