"""The measure type of attnflow: a weighted point cloud.

A measure ``mu = sum_j w_j delta_{y_j}`` is a :class:`Cloud` (DESIGN.md §2). Particles are a
cloud with ``w_j = 1/N``; a finite element density is the cloud of the quadrature points of its
mesh with weights ``|J| w_q rho(y_q)``. The velocity of every dynamics, the Wasserstein
distances and histograms of :mod:`attnflow.metrics`, :func:`attnflow.compare.compare` and the
solutions (``Solution.cloud(k)``, ``EnsembleSolution.cloud(run, k)``,
``FieldSolution.cloud(k)``) all speak it, so comparing two solvers is comparing two clouds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Cloud"]


@dataclass(frozen=True, eq=False)
class Cloud:
    """An immutable weighted point cloud ``sum_j weights[j] delta_{points[j]}``.

    Parameters
    ----------
    points : (n, d) finite support points.
    weights : (n,) finite weights ``>= 0`` (default ``1/n``: an empirical measure of mass 1).

    Both are stored as read-only float64 arrays (copied only when the input is not already a
    read-only float64 array). A cloud may have zero mass; the dynamics refuse such a measure
    when they need it (a softmax average of nothing is undefined).
    """

    points: np.ndarray
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        p = np.asarray(self.points)
        if np.iscomplexobj(p):
            raise TypeError("points must be real (got a complex array)")
        p = _frozen(p)
        if p.ndim != 2 or p.shape[1] < 1:
            raise ValueError(f"points must have shape (n, d) with d >= 1, got {p.shape}")
        if not np.all(np.isfinite(p)):
            raise ValueError("points must be finite (found NaN or inf)")
        n = p.shape[0]
        if self.weights is None:
            w = np.full(n, 1.0 / n) if n else np.zeros(0)
            w.setflags(write=False)
        else:
            w = np.asarray(self.weights)
            if np.iscomplexobj(w):
                raise TypeError("weights must be real (got a complex array)")
            w = _frozen(w)
            if w.shape != (n,):
                raise ValueError(f"weights must have shape ({n},), got {w.shape}")
            if not np.all(np.isfinite(w)):
                raise ValueError("weights must be finite (found NaN or inf)")
            if np.any(w < 0):
                raise ValueError(f"weights must be >= 0 (min is {w.min():.3g})")
        object.__setattr__(self, "points", p)
        object.__setattr__(self, "weights", w)

    @property
    def n(self) -> int:
        """Number of points."""
        return int(self.points.shape[0])

    @property
    def d(self) -> int:
        """Ambient dimension of the points."""
        return int(self.points.shape[1])

    @property
    def mass(self) -> float:
        """Total weight ``sum_j w_j``."""
        return float(self.weights.sum())

    def normalized(self) -> Cloud:
        """The probability measure ``mu / mu(R^d)`` (needs a positive mass)."""
        m = self.mass
        if not m > 0:
            raise ValueError("weights must have a positive entry to normalise the cloud")
        return Cloud(self.points, self.weights / m)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Cloud(n={self.n}, d={self.d}, mass={self.mass:.6g})"


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only float64 view of ``a`` (a copy unless it already is one)."""
    if a.dtype == np.float64 and not a.flags.writeable and a.flags.c_contiguous:
        return a
    out = np.array(a, dtype=np.float64, order="C")
    out.setflags(write=False)
    return out
