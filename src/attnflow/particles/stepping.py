"""The step schedule of the particle solvers, shared by :func:`~attnflow.simulate` and
:func:`~attnflow.ensemble`, the checks of a restart state, and the noisy step (the split
scheme of :mod:`attnflow.particles.integrate`) with its generator.

The solvers integrate over the event grid of :func:`attnflow.timegrid.time_grid` (the save
times and the switching times of the dynamics). Interval ``k`` runs from event ``k - 1`` (0 for
the first) to event ``k`` in ``m = ceil(span / dt)`` equal steps, so every event is hit exactly
and a run resumed inside an interval takes exactly the steps that remained: the time grid
depends on the events and ``dt`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from attnflow.diffusion import Diffusion
from attnflow.geometry import Geometry
from attnflow.states import CheckpointError, ParticleState
from attnflow.timegrid import TimeGrid

__all__ = [
    "NOISE_SCHEME",
    "as_generator",
    "blocks",
    "check_restart",
    "interval_drift_free",
    "interval_sigmas",
    "march",
    "noise_stats",
    "split_step",
]

#: The noisy step, as recorded in ``stats["noise"]["scheme"]``.
NOISE_SCHEME = "strang: brownian(h/2), drift(h), brownian(h/2)"


def as_generator(rng: Any) -> np.random.Generator | None:
    """The generator of the ``rng`` argument: ``None``, a seed (int >= 0), a
    ``numpy.random.SeedSequence`` or a ``numpy.random.Generator`` (used as it is, and advanced).
    """
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"rng must be a seed >= 0, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(
        "rng must be a seed (int >= 0), a numpy SeedSequence or a numpy Generator, "
        f"got {type(rng).__name__}"
    )


def interval_sigmas(model: Any, grid: TimeGrid) -> list[float]:
    """The diffusion coefficient of ``model`` on each interval between the events of ``grid``
    (``model.on_interval(a, b).diffusivity`` at the midpoint; constant on an interval)."""
    out = []
    for k in range(grid.events.size):
        a, b = grid.segment(k)
        out.append(float(model.on_interval(a, b).diffusivity(0.5 * (a + b))))
    return out


def interval_drift_free(model: Any, grid: TimeGrid) -> list[bool]:
    """Whether the dynamics of each interval between the events of ``grid`` has no drift (its
    terms are all :class:`~attnflow.Diffusion`): the step is then the Brownian step alone."""
    out = []
    for k in range(grid.events.size):
        a, b = grid.segment(k)
        terms = model.on_interval(a, b).terms(0.5 * (a + b))
        out.append(all(isinstance(term, Diffusion) for term in terms))
    return out


def noise_stats(sigmas: list[float], method_order: int) -> dict[str, Any] | None:
    """``stats["noise"]``: the scheme, the sigma of each interval and the weak order (2 with a
    drift method of order >= 2, else the method's); ``None`` for a deterministic run."""
    if not any(s > 0 for s in sigmas):
        return None
    return {"scheme": NOISE_SCHEME, "sigma": list(sigmas), "weak_order": min(2, method_order)}


def split_step(
    geo: Geometry,
    drift_step: Callable[[np.ndarray], np.ndarray] | None,
    x: np.ndarray,
    h: float,
    sigma: float,
    z: np.ndarray | None,
) -> np.ndarray:
    """One step of the noisy particle system (Strang splitting).

    ``x <- noise_{h/2}(retract(drift_step(noise_{h/2}(x))))`` with the Brownian steps of
    ``geo.noise`` driven by ``z[0]`` and ``z[1]`` (each of the shape of ``x``); with
    ``sigma == 0`` (or ``z`` None) the deterministic step ``retract(drift_step(x))``. A
    ``drift_step`` of ``None`` means no drift (pure Brownian motion): the two half steps only.
    """
    if sigma == 0.0 or z is None:
        return x.copy() if drift_step is None else geo.retract(drift_step(x))
    y = geo.noise(x, 0.5 * h, sigma, z[0])
    if drift_step is not None:
        y = geo.retract(drift_step(y))
    return geo.noise(y, 0.5 * h, sigma, z[1])


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    """``size`` contiguous blocks ``(lo, hi)`` covering ``range(n)``, sizes differing by <= 1."""
    q, r = divmod(n, size)
    starts = [k * q + min(k, r) for k in range(size + 1)]
    return [(starts[k], starts[k + 1]) for k in range(size)]


def march(
    grid: TimeGrid,
    dt: float,
    advance: Callable[[float, float, int], None],
    record: Callable[[int], bool],
    *,
    step0: int = 0,
    segment0: int = 0,
    segment_step0: int = 0,
    every: int = 0,
    checkpoint: Callable[[float, int, int, int], None] | None = None,
    progress: Callable[[float, int], None] | None = None,
) -> int:
    """Step over the event grid; returns the number of steps taken in total.

    ``advance(t, h, k)`` takes one step of size ``h`` from time ``t`` in interval ``k``;
    ``record(j)`` stores save ``j`` (called at the save events only) and returns whether to go
    on. ``checkpoint(t, step, segment, segment_step)`` is called after every ``every``-th step.
    A run resumed at ``(segment0, segment_step0)`` takes exactly the steps that remained.
    """
    n = step0
    n_saved = int(np.count_nonzero(grid.is_save[:segment0]))
    for k in range(segment0, grid.events.size):
        a, b = grid.segment(k)
        span = b - a
        m = math.ceil(span / dt - 1e-12) if span > 0 else 0
        h = span / m if m else 0.0
        for j in range(segment_step0 if k == segment0 else 0, m):
            advance(a + j * h, h, k)
            n += 1
            if progress is not None:
                progress(a + (j + 1) * h, n)
            if every and n % every == 0 and checkpoint is not None:
                checkpoint(a + (j + 1) * h, n, k, j + 1)
        if grid.is_save[k]:
            if not record(n_saved):
                break
            n_saved += 1
    return n


def check_restart(
    state: ParticleState, dt: float, grid: TimeGrid, shape: tuple[int, int, int]
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` continues a run of this ``dt``, time
    grid and ``(runs, tokens, d)`` shape."""
    if not isinstance(state, ParticleState):
        raise TypeError(f"restart must be a ParticleState, got {type(state).__name__}")
    if state.dt != float(dt) or state.t_final != grid.t_final:
        raise CheckpointError("the checkpoint was made with another dt or t_final")
    if not np.array_equal(state.save_times, grid.save_times):
        raise CheckpointError("the checkpoint was made with other save_times")
    if state.x is None or state.saved is None or np.shape(state.x) != shape:
        raise CheckpointError(
            f"the checkpoint holds tokens of shape {np.shape(state.x)}, this run needs {shape}"
        )
    if len(state.saved) != shape[0] or len(state.status) != shape[0]:
        raise CheckpointError("the checkpoint's records do not fit its runs")
    if not 0 <= state.segment < grid.events.size:
        raise CheckpointError("the checkpoint's segment does not fit the save times")
