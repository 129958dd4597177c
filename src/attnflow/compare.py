"""The finite element density against a Monte Carlo ensemble: every metric as mean ± sd.

Both solutions are weighted point clouds at the same save times; each metric is evaluated
between the finite element cloud and every particle run, then averaged over the runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnflow import metrics
from attnflow.dynamics import Dynamics
from attnflow.solutions import EnsembleSolution, FieldSolution

__all__ = ["Comparison", "compare"]


@dataclass(frozen=True)
class Comparison:
    """Metrics between a finite element solution and R particle runs at the save times.

    Arrays are indexed ``[run, save]`` (particles) or ``[save]`` (finite elements).

    w1 : (R, n_saved) Wasserstein-1 distances (``w1_method`` says how they were computed).
    l1 : (R, n_saved) L1 distance of the cell masses and the particle histogram on the same
        mesh (NaN when no histogram is given).
    mean_error : (R, n_saved) ``|mean_particles - mean_fem|`` (Euclidean, ambient space).
    energy_fem : (n_saved,), energy_particles : (R, n_saved): ``log E``.
    clusters_fem : (n_saved,), clusters_particles : (R, n_saved): cluster counts (one
        criterion for both), or -1 when no cluster counter is given.
    """

    t: np.ndarray
    w1: np.ndarray
    w1_method: str
    l1: np.ndarray
    mean_error: np.ndarray
    energy_fem: np.ndarray
    energy_particles: np.ndarray
    clusters_fem: np.ndarray
    clusters_particles: np.ndarray

    @staticmethod
    def mean_sd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (sample) standard deviation over the runs (axis 0)."""
        sd = a.std(axis=0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1:])
        return a.mean(axis=0), sd


def compare(
    fem: FieldSolution,
    ens: EnsembleSolution,
    model: Dynamics,
    *,
    geometry: str,
    histogram=None,
    clusters=None,
) -> Comparison:
    """Compare a :class:`~attnflow.fem.FieldSolution` with an :class:`EnsembleSolution`.

    Parameters
    ----------
    geometry : ``"circle"``, ``"sphere"`` or ``"euclidean"`` (cost of the Wasserstein distance).
    histogram : optional ``f(points, weights) -> (n_cells,)`` cell masses of a cloud on the
        finite element mesh in its input cell order (e.g. ``lambda x, w:
        metrics.circle_histogram(x, w, n)``) for the L1 distance.
    clusters : optional ``f(points, weights) -> int`` (e.g. :func:`metrics.circle_clusters`).
    """
    if ens.t.shape != fem.t.shape or not np.allclose(ens.t, fem.t):
        raise ValueError("fem and ens must share their save times")
    n_runs, n_saved = ens.x.shape[0], ens.t.size
    w1 = np.empty((n_runs, n_saved))
    l1 = np.full((n_runs, n_saved), np.nan)
    mean_err = np.empty((n_runs, n_saved))
    e_par = np.empty((n_runs, n_saved))
    c_par = np.full((n_runs, n_saved), -1)
    c_fem = np.full(n_saved, -1)
    method = ""
    for k in range(n_saved):
        wf = fem.weights[k]
        mf, _ = metrics.moments(fem.points, wf)
        hf = fem.cell_masses(k) if histogram is not None else None
        if clusters is not None:
            c_fem[k] = clusters(fem.points, wf)
        for r in range(n_runs):
            x = ens.x[r, k]
            d = metrics.wasserstein(fem.points, wf, x, None, geometry=geometry, seed=k)
            w1[r, k], method = d.value, d.method
            mean_err[r, k] = np.linalg.norm(metrics.moments(x)[0] - mf)
            if hf is not None:
                l1[r, k] = metrics.l1_distance(hf, histogram(x, None))
            if clusters is not None:
                c_par[r, k] = clusters(x, None)
            e_par[r, k] = model.log_energy(ens.cloud(r, k)) if model.has_energy else np.nan
    return Comparison(
        t=fem.t,
        w1=w1,
        w1_method=method,
        l1=l1,
        mean_error=mean_err,
        energy_fem=fem.energy,
        energy_particles=e_par,
        clusters_fem=c_fem,
        clusters_particles=c_par,
    )
