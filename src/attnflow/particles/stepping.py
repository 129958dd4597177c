"""The step schedule of the particle solvers, shared by :func:`~attnflow.simulate` and
:func:`~attnflow.ensemble`, and the checks of a restart state.

The solvers integrate over the event grid of :func:`attnflow.timegrid.time_grid` (the save
times and the switching times of the dynamics). Interval ``k`` runs from event ``k - 1`` (0 for
the first) to event ``k`` in ``m = ceil(span / dt)`` equal steps, so every event is hit exactly
and a run resumed inside an interval takes exactly the steps that remained: the time grid
depends on the events and ``dt`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from attnflow.states import CheckpointError, ParticleState
from attnflow.timegrid import TimeGrid

__all__ = ["blocks", "check_restart", "march"]


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
