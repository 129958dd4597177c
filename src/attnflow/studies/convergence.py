"""W1(finite elements, particles) against the number of tokens N and the mesh size h.

Against N at a fine mesh the distance is the Monte Carlo error, ``~ N^{-1/2}``, down to the
discretisation floor; against h at large N it is the discretisation error, down to the
sampling floor. Every point is a mean ± sd over R seeded particle runs; slopes are least-squares
fits of ``log W1`` on ``log N`` (or ``log h``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from attnflow import metrics
from attnflow.laws import Law
from attnflow.model import SelfAttention
from attnflow.particles.ensemble import ensemble

__all__ = ["ConvergenceStudy", "fit_slope", "w1_convergence"]


def fit_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


@dataclass(frozen=True)
class ConvergenceStudy:
    """W1 at ``t`` (mean and sd over runs) against N and against h, with fitted slopes."""

    n_tokens: np.ndarray
    w1_vs_n: np.ndarray
    w1_vs_n_sd: np.ndarray
    slope_n: float
    h: np.ndarray
    w1_vs_h: np.ndarray
    w1_vs_h_sd: np.ndarray
    slope_h: float


def w1_convergence(
    model: SelfAttention,
    law: Law,
    solve_fem: Callable[[int], tuple[float, np.ndarray, np.ndarray]],
    *,
    t: float,
    n_tokens: Sequence[int],
    n_cells: Sequence[int],
    fine_cells: int,
    large_n: int,
    n_runs: int,
    dt: float,
    geometry: str,
    seed: int = 0,
    comm=None,
) -> ConvergenceStudy:
    """Run the study.

    ``solve_fem(n_cells) -> (h, points, weights)`` solves the PDE on a mesh with ``n_cells``
    cells up to ``t`` and returns the mesh size and the final cloud. The particle runs are
    distributed over ``comm``.
    """

    def w1_stats(points, weights, n):
        ens = ensemble(
            model, law, n, n_runs, t, dt=dt, seed=seed + n, save_times=[0.0, t], comm=comm
        )
        d = [
            metrics.wasserstein(points, weights, x[-1], None, geometry=geometry).value
            for x in ens.x
        ]
        return np.mean(d), np.std(d, ddof=1)

    _, pts, w = solve_fem(fine_cells)
    vs_n = np.array([w1_stats(pts, w, n) for n in n_tokens])
    hs, vs_h = [], []
    for c in n_cells:
        h, pts, w = solve_fem(c)
        hs.append(h)
        vs_h.append(w1_stats(pts, w, large_n))
    vs_h = np.array(vs_h)
    return ConvergenceStudy(
        n_tokens=np.asarray(n_tokens),
        w1_vs_n=vs_n[:, 0],
        w1_vs_n_sd=vs_n[:, 1],
        slope_n=fit_slope(n_tokens, vs_n[:, 0]),
        h=np.asarray(hs),
        w1_vs_h=vs_h[:, 0],
        w1_vs_h_sd=vs_h[:, 1],
        slope_h=fit_slope(hs, vs_h[:, 0]),
    )
