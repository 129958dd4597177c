"""Quantities computed identically for both solvers (point clouds with weights)."""

from __future__ import annotations

import numpy as np

__all__ = ["circle_clusters"]


def circle_clusters(
    points: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    gap: float = 0.1,
    min_mass: float = 0.01,
) -> int:
    """Number of clusters of a weighted point cloud on ``S^1``.

    Criterion: sort the angles; consecutive points closer than ``gap`` (radians) belong to the
    same cluster (single linkage on the circle); a cluster counts if it carries at least
    ``min_mass`` of the total weight. Invariant under rotation and relabelling.

    points : (n, 2) points on the unit circle; weights : (n,) (default uniform).
    """
    x = np.asarray(points, dtype=float)
    if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] == 0:
        raise ValueError(f"points must have shape (n, 2) with n >= 1, got {x.shape}")
    w = np.full(x.shape[0], 1.0) if weights is None else np.asarray(weights, dtype=float)
    th = np.arctan2(x[:, 1], x[:, 0])
    order = np.argsort(th, kind="stable")
    th, w = th[order], w[order]
    gaps = np.diff(np.concatenate([th, th[:1] + 2 * np.pi]))
    cuts = np.flatnonzero(gaps > gap)
    if cuts.size == 0:
        return int(w.sum() >= min_mass * w.sum())
    # Rotate so that the first cluster starts right after a cut.
    start = (cuts[-1] + 1) % th.size
    w = np.roll(w, -start)
    cuts = (cuts - start) % th.size
    bounds = np.sort(cuts) + 1
    masses = np.add.reduceat(w, np.concatenate([[0], bounds[:-1]]))
    return int(np.sum(masses >= min_mass * w.sum()))
