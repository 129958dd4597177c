"""Where tokens live: the unit sphere S^{d-1} or Euclidean space R^d.

In the spirit of JAX-MD, a geometry is a small set of functions so that one integrator serves
both: ``project(x, v)`` maps an ambient vector to the tangent space at ``x``, ``retract(x)``
maps a point back onto the manifold after a step, and ``distance(x, y)`` is the intrinsic
(geodesic) distance. All act row-wise on arrays of shape ``(n, d)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Geometry", "euclidean", "sphere"]


@dataclass(frozen=True)
class Geometry:
    """A token space: ``project``, ``retract`` and ``distance`` on ``(n, d)`` arrays."""

    name: str
    project: Callable[[np.ndarray, np.ndarray], np.ndarray]
    retract: Callable[[np.ndarray], np.ndarray]
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _sphere_project(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    # P_x v = v - <x, v> x. Off the sphere (|x| != 1, inside an RK stage) this is still the
    # vector field whose flow keeps |x| = 1 invariant: d|x|^2/dt = 2 <x,v> (1 - |x|^2).
    return v - np.sum(x * v, axis=-1, keepdims=True) * x


def _sphere_retract(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sphere_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # atan2(|x ^ y|, <x, y>) is accurate for small and near-antipodal angles alike.
    dot = np.sum(x * y, axis=-1)
    cross = np.linalg.norm(y - dot[..., None] * x, axis=-1)
    return np.arctan2(cross, dot)


def sphere() -> Geometry:
    """The unit sphere ``S^{d-1}`` embedded in ``R^d``."""
    return Geometry("sphere", _sphere_project, _sphere_retract, _sphere_distance)


def _identity_project(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    return v


def _identity_retract(x: np.ndarray) -> np.ndarray:
    return x


def _euclidean_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x - y, axis=-1)


def euclidean() -> Geometry:
    """Euclidean space ``R^d``."""
    return Geometry("euclidean", _identity_project, _identity_retract, _euclidean_distance)
