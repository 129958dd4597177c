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

Checkpoint and restart: ``checkpoint_every=K, on_checkpoint=f`` calls ``f`` with a
:class:`~attnflow.checkpoint.ParticleState` every ``K`` steps; ``restart=state`` continues from
one. The steps between two save times are fixed by the save times and ``dt`` alone, so a
resumed run takes the same steps as an uninterrupted one and ends bitwise equal.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnflow.model import SelfAttention
from attnflow.solutions import Solution, Status
from attnflow.states import CheckpointError, ParticleState
from attnflow.validation import as_points, as_weights, check_positive

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


def _march(
    ts: np.ndarray,
    dt: float,
    advance: Callable[[float], None],
    record: Callable[[], bool],
    *,
    step0: int = 0,
    segment0: int = 0,
    segment_step0: int = 0,
    every: int = 0,
    checkpoint: Callable[[float, int, int, int], None] | None = None,
    progress: Callable[[float, int], None] | None = None,
) -> int:
    """The step schedule shared by :func:`simulate` and :func:`ensemble`.

    Segment ``k`` runs from the previous save time (0 for the first) to ``ts[k]`` in ``m``
    equal steps, ``m = ceil(span / dt)``; ``advance(h)`` takes one step, ``record()`` stores
    the save and returns whether to go on. ``checkpoint(t, step, segment, segment_step)`` is
    called after every ``every``-th step. A run resumed at ``(segment0, segment_step0)`` takes
    exactly the steps that remained. Returns the number of steps taken in total.
    """
    n = step0
    for k in range(segment0, ts.size):
        a = 0.0 if k == 0 else float(ts[k - 1])
        span = float(ts[k]) - a
        m = math.ceil(span / dt - 1e-12) if span > 0 else 0
        h = span / m if m else 0.0
        for j in range(segment_step0 if k == segment0 else 0, m):
            advance(h)
            n += 1
            if progress is not None:
                progress(a + (j + 1) * h, n)
            if every and n % every == 0 and checkpoint is not None:
                checkpoint(a + (j + 1) * h, n, k, j + 1)
        if not record():
            break
    return n


def _check_restart(state: ParticleState, dt: float, t_final: float, ts: np.ndarray, shape):
    if not isinstance(state, ParticleState):
        raise TypeError(f"restart must be a ParticleState, got {type(state).__name__}")
    if state.dt != float(dt) or state.t_final != float(t_final):
        raise CheckpointError("the checkpoint was made with another dt or t_final")
    if not np.array_equal(state.save_times, ts):
        raise CheckpointError("the checkpoint was made with other save_times")
    if state.x is None or state.saved is None or np.shape(state.x) != shape:
        raise CheckpointError(
            f"the checkpoint holds tokens of shape {np.shape(state.x)}, this run needs {shape}"
        )
    if len(state.saved) != shape[0] or len(state.status) != shape[0]:
        raise CheckpointError("the checkpoint's records do not fit its runs")
    if not 0 <= state.segment < ts.size:
        raise CheckpointError("the checkpoint's segment does not fit the save times")


def _check_every(every, callback) -> int:
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 0:
        raise ValueError(f"checkpoint_every must be an int >= 0, got {every!r}")
    if every and callback is None:
        raise ValueError("checkpoint_every > 0 needs an on_checkpoint callback")
    return int(every)


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
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[ParticleState], None] | None = None,
    restart: ParticleState | None = None,
    progress: Callable[[float, int], None] | None = None,
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
    checkpoint_every : with ``K > 0``, ``on_checkpoint(state)`` is called on every rank after
        every ``K``-th step with a :class:`~attnflow.checkpoint.ParticleState` (one run).
    restart : a :class:`~attnflow.checkpoint.ParticleState` of the same run (same ``dt``,
        ``t_final``, ``save_times``; ``x0`` then only fixes the shape): the integration
        continues from it and ends bitwise as the uninterrupted one.
    progress : ``progress(t, step)`` after every step, on every rank.

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
    every = _check_every(checkpoint_every, on_checkpoint)
    if restart is not None:
        _check_restart(restart, dt, t_final, ts, (1, n, model.d))

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

    start = time.perf_counter()
    run = {"x": x[lo:hi].copy(), "status": Status.SUCCESS}
    saved: list[np.ndarray] = []
    step0 = segment0 = segment_step0 = 0
    wall0 = 0.0
    if restart is not None:
        run["x"] = np.array(restart.x[0][lo:hi], dtype=np.float64)
        saved = list(restart.saved[0])
        run["status"] = Status(restart.status[0])
        step0, segment0 = restart.step, restart.segment
        segment_step0, wall0 = restart.segment_step, restart.wall_time

    def advance(h: float) -> None:
        run["x"] = geo.retract(method.step(field, run["x"], h))

    def record() -> bool:
        saved.append(gather(run["x"]))
        if not np.all(np.isfinite(saved[-1])):
            run["status"] = Status.NONFINITE
            if rank == 0:
                logger.warning("non-finite token positions at t=%g; stopping", ts[len(saved) - 1])
            return False
        return True

    def checkpoint(t: float, step: int, segment: int, segment_step: int) -> None:
        x_all = gather(run["x"])
        on_checkpoint(
            ParticleState(
                t=t,
                step=step,
                segment=segment,
                segment_step=segment_step,
                dt=float(dt),
                t_final=float(t_final),
                save_times=ts.copy(),
                x=x_all[None],
                saved=[np.stack(saved) if saved else np.zeros((0, n, model.d))],
                status=(run["status"].value,),
                wall_time=wall0 + time.perf_counter() - start,
            )
        )

    if run["status"] is Status.SUCCESS:
        n_steps = _march(
            ts,
            float(dt),
            advance,
            record,
            step0=step0,
            segment0=segment0,
            segment_step0=segment_step0,
            every=every,
            checkpoint=checkpoint,
            progress=progress,
        )
    else:
        n_steps = step0
    status = run["status"]
    if rank == 0:
        logger.debug("simulate: %d tokens, %d steps, status %s", n, n_steps, status.value)
    return Solution(
        t=ts[: len(saved)], x=np.stack(saved), weights=w, status=status, n_steps=n_steps
    )
