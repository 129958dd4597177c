"""Time grids: the one validation of ``t_final``, ``save_times``, ``dt`` and
``checkpoint_every`` used by every solver, and the event grid the solvers step on.

A solve integrates from 0 to ``t_final`` and records the state at the *save times*. Dynamics
with piecewise-constant parameters (:class:`attnflow.Piecewise`) also have *switching times*;
a solver never steps across one, so a step sees one set of parameters. The solvers integrate
over the *event grid*: the save times and the switching times in ``(0, t_final)``, merged and
sorted; the state is recorded at the save times only. Without switching times the event grid
is the save grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from attnflow.validation import check_positive

__all__ = [
    "SAVE_TIME_RTOL",
    "TimeGrid",
    "check_dt",
    "check_every",
    "check_t_final",
    "time_grid",
]

#: A last save time may exceed ``t_final`` by this relative amount (round-off in linspace).
SAVE_TIME_RTOL = 1e-12


def check_t_final(t_final: object) -> float:
    """``t_final`` as a float if it is finite and ``>= 0``."""
    try:
        t = float(t_final)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"t_final must be a number, got {t_final!r}") from None
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"t_final must be finite and >= 0, got {t_final!r}")
    return t


def check_every(every: object, callback: Callable | None) -> int:
    """``checkpoint_every`` as an int ``>= 0``; a positive value needs the callback."""
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 0:
        raise ValueError(f"checkpoint_every must be an int >= 0, got {every!r}")
    if every and callback is None:
        raise ValueError("checkpoint_every > 0 needs an on_checkpoint callback")
    return int(every)


@dataclass(frozen=True)
class TimeGrid:
    """Save times and the event grid of a solve.

    Attributes
    ----------
    t_final : end of the integration.
    save_times : (n_save,) increasing times in ``[0, t_final]`` where the state is recorded.
    events : (n_events,) the save times and the switching times in ``(0, t_final)``, merged
        and increasing; the solvers integrate from event to event.
    is_save : (n_events,) whether each event is a save time.
    """

    t_final: float
    save_times: np.ndarray
    events: np.ndarray
    is_save: np.ndarray

    def segment(self, k: int) -> tuple[float, float]:
        """The interval ``(a, b)`` that ends at event ``k`` (``a = 0`` for the first)."""
        return (0.0 if k == 0 else float(self.events[k - 1])), float(self.events[k])


def time_grid(
    t_final: object,
    save_times: Sequence[float] | np.ndarray | None = None,
    *,
    breakpoints: Sequence[float] = (),
) -> TimeGrid:
    """Validate ``t_final`` and ``save_times`` (default ``[0, t_final]``, or ``[0]`` when
    ``t_final = 0``) and merge in the ``breakpoints`` (switching times) inside
    ``(0, t_final)``. Raises ``ValueError`` with one line naming the argument."""
    t = check_t_final(t_final)
    if save_times is None:
        ts = np.array([0.0, t]) if t > 0 else np.array([0.0])
    else:
        try:
            ts = np.asarray(save_times, dtype=float).ravel()
        except (TypeError, ValueError):
            msg = f"save_times must be a sequence of numbers, got {save_times!r}"
            raise ValueError(msg) from None
        if ts.size == 0 or not np.all(np.isfinite(ts)):
            raise ValueError("save_times must be a non-empty sequence of finite times")
        if np.any(np.diff(ts) <= 0) or ts[0] < 0 or ts[-1] > t + SAVE_TIME_RTOL * max(1.0, t):
            raise ValueError(f"save_times must be increasing and lie in [0, t_final={t:g}]")
    bp = np.asarray(sorted({float(b) for b in breakpoints if 0.0 < float(b) < t}), dtype=float)
    bp = bp[~np.isin(bp, ts)]
    events = np.union1d(ts, bp) if bp.size else ts.copy()
    is_save = np.isin(events, ts)
    for a in (ts, events, is_save):
        a.setflags(write=False)
    return TimeGrid(t_final=t, save_times=ts, events=events, is_save=is_save)


def check_dt(dt: object) -> float:
    """A maximal step ``dt``: finite and ``> 0``."""
    return check_positive("dt", dt)
