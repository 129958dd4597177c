"""Monte Carlo ensembles: R independent particle runs with independent, reproducible seeds.

Run ``r`` draws its initial tokens from ``numpy.random.SeedSequence(seed).spawn(R)[r]``, so
each run is the same whatever the number of MPI ranks; with ``comm`` the runs are dealt
round-robin to the ranks and gathered on every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnflow.laws import Law
from attnflow.model import SelfAttention
from attnflow.particles.integrate import RK4, Euler, simulate
from attnflow.solution import Status

__all__ = ["EnsembleSolution", "ensemble"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnsembleSolution:
    """R particle runs at common save times.

    Attributes
    ----------
    t : (n_saved,) save times.
    x : (R, n_saved, N, d) token positions of every run.
    weights : (N,) token weights.
    status : (R,) status of every run.
    """

    t: np.ndarray
    x: np.ndarray
    weights: np.ndarray
    status: tuple[Status, ...]

    @property
    def n_runs(self) -> int:
        return self.x.shape[0]


def ensemble(
    model: SelfAttention,
    law: Law,
    n_particles: int,
    n_runs: int,
    t_final: float,
    *,
    dt: float,
    seed: int,
    save_times: Sequence[float] | None = None,
    method: RK4 | Euler = RK4(),
    comm: Any = None,
) -> EnsembleSolution:
    """Run ``n_runs`` independent particle systems of ``n_particles`` tokens drawn from ``law``.

    Returns an :class:`EnsembleSolution` (identical on every rank and for any rank count).
    """
    if law.d != model.d or law.on_sphere != model.sphere:
        raise ValueError("law must live where the model's tokens live (same d, sphere or R^d)")
    for name, v in (("n_particles", n_particles), ("n_runs", n_runs)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    seeds = np.random.SeedSequence(seed).spawn(int(n_runs))
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    mine = {}
    for r in range(rank, n_runs, size):
        x0 = law.sample(n_particles, np.random.default_rng(seeds[r]))
        mine[r] = simulate(model, x0, t_final, dt=dt, save_times=save_times, method=method)
    if comm is not None:
        parts = comm.allgather({r: (s.x, s.status) for r, s in mine.items()})
        runs = {r: v for p in parts for r, v in p.items()}
    else:
        runs = {r: (s.x, s.status) for r, s in mine.items()}
    any_sol = next(iter(mine.values()), None)
    t = (
        any_sol.t
        if any_sol is not None
        else np.asarray(save_times if save_times is not None else [0.0, t_final], dtype=float)
    )
    n_saved = min(runs[r][0].shape[0] for r in range(n_runs))
    if rank == 0:
        logger.info("ensemble: %d runs of %d tokens on %d rank(s)", n_runs, n_particles, size)
    x = np.stack([runs[r][0][:n_saved] for r in range(n_runs)])
    return EnsembleSolution(
        t=t[:n_saved],
        x=x,
        weights=np.full(n_particles, 1.0 / n_particles),
        status=tuple(runs[r][1] for r in range(n_runs)),
    )
