"""Time integration of the particle system ``dx_i/dt = X[mu_N](x_i)``.

Scheme: explicit Runge–Kutta in the ambient space on the field ``P_x F(x)`` (whose flow keeps
``|x| = 1`` invariant), followed by the retraction ``x -> x/|x|`` after every step on the
sphere. The retraction is a projection onto the invariant manifold, so RK4 keeps order 4 (the
tests observe 4.0 on two tokens on S^1); points stay on the sphere to round-off. Hardmax
(``beta = inf``) has a discontinuous field: the order then drops at switching times.

MPI: with ``comm`` the tokens are split into contiguous blocks over the ranks; each stage
gathers all positions and each rank evaluates the field at its own block. Every token's
velocity is computed from the same sources in the same order whatever the number of ranks,
so results are identical (bitwise) for 1, 2 or 3 ranks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnflow._validation import as_points, as_weights, check_positive
from attnflow.model import SelfAttention
from attnflow.solution import Solution, Status

__all__ = ["RK4", "Euler", "simulate"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RK4:
    """Classical fourth-order Runge–Kutta."""

    order: int = 4

    def step(self, f, x: np.ndarray, h: float) -> np.ndarray:
        k1 = f(x)
        k2 = f(x + 0.5 * h * k1)
        k3 = f(x + 0.5 * h * k2)
        k4 = f(x + h * k3)
        return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


@dataclass(frozen=True)
class Euler:
    """Forward Euler (first order): the scheme of most published particle scripts."""

    order: int = 1

    def step(self, f, x: np.ndarray, h: float) -> np.ndarray:
        return x + h * f(x)


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    q, r = divmod(n, size)
    starts = [k * q + min(k, r) for k in range(size + 1)]
    return [(starts[k], starts[k + 1]) for k in range(size)]


def _check_times(t_final: float, dt: float, save_times: Sequence[float] | None) -> np.ndarray:
    t_final = float(t_final)
    if not (math.isfinite(t_final) and t_final >= 0):
        raise ValueError(f"t_final must be finite and >= 0, got {t_final!r}")
    check_positive("dt", dt)
    if save_times is None:
        return np.array([0.0, t_final]) if t_final > 0 else np.array([0.0])
    ts = np.asarray(save_times, dtype=float).ravel()
    if ts.size == 0 or not np.all(np.isfinite(ts)):
        raise ValueError("save_times must be a non-empty sequence of finite times")
    if np.any(np.diff(ts) <= 0) or ts[0] < 0 or ts[-1] > t_final + 1e-12 * max(1.0, t_final):
        raise ValueError("save_times must be increasing and lie in [0, t_final]")
    return ts


def simulate(
    model: SelfAttention,
    x0: np.ndarray,
    t_final: float,
    *,
    dt: float,
    save_times: Sequence[float] | None = None,
    weights: np.ndarray | None = None,
    method: RK4 | Euler = RK4(),
    comm: Any = None,
) -> Solution:
    """Integrate the particle system from ``x0`` to ``t_final``.

    Parameters
    ----------
    model : the attention dynamics.
    x0 : (N, d) initial tokens (on the unit sphere if ``model.sphere``).
    t_final : final time (>= 0).
    dt : maximal step; between consecutive save times the step is shortened uniformly so
        that every save time is hit exactly.
    save_times : increasing times in ``[0, t_final]`` (default ``[0, t_final]``).
    weights : (N,) token weights (default ``1/N``), constant in time.
    method : :class:`RK4` (default) or :class:`Euler`.
    comm : an ``mpi4py`` communicator to split the tokens over ranks (default: serial).

    Returns
    -------
    :class:`~attnflow.solution.Solution` with ``x`` of shape ``(n_saved, N, d)``, identical on
    every rank.
    """
    if not isinstance(model, SelfAttention):
        raise TypeError(f"model must be a SelfAttention, got {type(model).__name__}")
    x = as_points("x0", x0, model.d, on_sphere=model.sphere).copy()
    n = x.shape[0]
    w = as_weights("weights", weights, n)
    if n == 0 or not np.any(w > 0):
        raise ValueError("weights must have a positive entry (x0 must hold tokens)")
    ts = _check_times(t_final, dt, save_times)
    if not isinstance(method, (RK4, Euler)):
        raise TypeError(f"method must be RK4() or Euler(), got {method!r}")

    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    lo, hi = _blocks(n, size)[rank]
    counts = [(b - a) * model.d for a, b in _blocks(n, size)]
    geo = model.geometry

    def field(y_local: np.ndarray) -> np.ndarray:
        if comm is None:
            y_all = y_local
        else:
            y_all = np.empty((n, model.d))
            comm.Allgatherv(np.ascontiguousarray(y_local), [y_all, counts])
        return model._velocity(y_local, y_all, w)

    def gather(y_local: np.ndarray) -> np.ndarray:
        if comm is None:
            return y_local.copy()
        y_all = np.empty((n, model.d))
        comm.Allgatherv(np.ascontiguousarray(y_local), [y_all, counts])
        return y_all

    xl = x[lo:hi].copy()
    t = 0.0
    saved = []
    n_steps = 0
    status = Status.SUCCESS
    for ts_next in ts:
        span = ts_next - t
        k = math.ceil(span / dt - 1e-12) if span > 0 else 0
        h = span / k if k else 0.0
        for _ in range(k):
            xl = geo.retract(method.step(field, xl, h))
            n_steps += 1
        t = float(ts_next)
        saved.append(gather(xl))
        finite = bool(np.all(np.isfinite(saved[-1])))
        if not finite:
            status = Status.NONFINITE
            if rank == 0:
                logger.warning("non-finite token positions at t=%g; stopping", t)
            break
    if rank == 0:
        logger.debug("simulate: %d tokens, %d steps, status %s", n, n_steps, status.value)
    return Solution(
        t=ts[: len(saved)], x=np.stack(saved), weights=w, status=status, n_steps=n_steps
    )
