"""Where tokens live: the unit sphere S^{d-1} or Euclidean space R^d.

In the spirit of JAX-MD, a geometry is a small set of functions so that one integrator serves
both: ``project(x, v)`` maps an ambient vector to the tangent space at ``x``, ``retract(x)``
maps a point back onto the manifold after a step, ``distance(x, y)`` is the intrinsic
(geodesic) distance, and ``noise(x, h, sigma, z)`` is one step of Brownian motion with
generator ``sigma Delta`` (``dx = sqrt(2 sigma) dB``) driven by given standard normals ``z``
(the random numbers are drawn by the caller, so the seed and the stream stay outside). All act
row-wise on arrays of shape ``(n, d)``.

The Brownian steps (``h`` the step, ``xi = sqrt(2 sigma h) P_x z`` the tangent Gaussian):

* ``R^d``: ``x + sqrt(2 sigma h) z``, exact in law.
* ``S^{d-1}``: the geodesic (exponential map) step ``x' = cos(r) x + sin(r) xi/|xi|`` with
  ``r = b |xi|`` and ``b^2 = 1/(1 + (d-2) sigma h/3)``. On ``S^1`` (``b = 1``) this rotates by
  a ``N(0, 2 sigma h)`` angle: exact in law. For ``d >= 3`` the law of ``x'`` is rotation
  invariant about ``x`` (zonal), so its weak error on any smooth function is set by the moments
  of ``1 - c``, ``c = <x', x> = cos r``. Exact Brownian motion has ``E c = e^{-(d-1) sigma h}``
  (``c`` is a degree-1 harmonic) and ``E c^2 = 1/d + (1 - 1/d) e^{-2 d sigma h}`` (degree 2),
  hence ``E(1-c) = (d-1) s - (d-1)^2 s^2/2 + O(h^3)`` and ``E(1-c)^2 = (d-1)(d+1) s^2 + O(h^3)``
  (``s = sigma h``). With ``|xi|^2 = 2 s chi^2_{d-1}``: ``E(1 - cos r) = E r^2/2 - E r^4/24 +
  O(h^3) = b^2 (d-1) s - (d-1)(d+1) s^2/6`` and ``E(1 - cos r)^2 = b^4 (d-1)(d+1) s^2 + O(h^3)``;
  both match to ``O(h^3)`` iff ``b^2 = 1 - (d-2) s/3 + O(h^2)``. The step is then exact up to a
  local weak error ``O(h^3)``: weak order 2. (Without the correction, ``b = 1``, and equally
  for the tangent step followed by the retraction ``(x + xi)/|x + xi|``, whose Itô drift is
  ``E c = E(1 + |xi|^2)^{-1/2} = 1 - (d-1) s + O(h^2)``, the order is 1.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Geometry", "euclidean", "sphere"]


@dataclass(frozen=True)
class Geometry:
    """A token space: ``project``, ``retract``, ``distance`` and ``noise`` on ``(n, d)`` arrays.

    ``noise(x, h, sigma, z)``: one Brownian step of size ``h`` (generator ``sigma Delta``) from
    the points ``x`` (n, d), driven by the standard normals ``z`` (n, d); see the module
    docstring for the schemes and their weak orders.
    """

    name: str
    project: Callable[[np.ndarray, np.ndarray], np.ndarray]
    retract: Callable[[np.ndarray], np.ndarray]
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray]
    noise: Callable[[np.ndarray, float, float, np.ndarray], np.ndarray]


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


def _sphere_noise(x: np.ndarray, h: float, sigma: float, z: np.ndarray) -> np.ndarray:
    # The corrected geodesic step of the module docstring (exact in law on S^1).
    d = x.shape[-1]
    s = sigma * h
    c = np.sqrt(2.0 * s / (1.0 + (d - 2) * s / 3.0))
    xi = x * (-c * np.einsum("...i,...i->...", x, z))[..., None]
    xi += c * z  # xi = c P_x z
    r = np.sqrt(np.einsum("...i,...i->...", xi, xi))
    safe = np.where(r > 0.0, r, 1.0)
    sinc = np.where(r > 0.0, np.sin(r) / safe, 1.0)  # sin(r)/r, continuous at r = 0
    y = x * np.cos(r)[..., None]
    y += xi * sinc[..., None]
    # |y| = 1 up to round-off: put it on the sphere exactly.
    y /= np.sqrt(np.einsum("...i,...i->...", y, y))[..., None]
    return y


def sphere() -> Geometry:
    """The unit sphere ``S^{d-1}`` embedded in ``R^d``."""
    return Geometry("sphere", _sphere_project, _sphere_retract, _sphere_distance, _sphere_noise)


def _identity_project(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    return v


def _identity_retract(x: np.ndarray) -> np.ndarray:
    return x


def _euclidean_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x - y, axis=-1)


def _euclidean_noise(x: np.ndarray, h: float, sigma: float, z: np.ndarray) -> np.ndarray:
    return x + np.sqrt(2.0 * sigma * h) * z


def euclidean() -> Geometry:
    """Euclidean space ``R^d``."""
    return Geometry(
        "euclidean", _identity_project, _identity_retract, _euclidean_distance, _euclidean_noise
    )
