"""Checks of an initial density before any work: finite, non-negative, of positive mass.

:func:`check_density` evaluates the density at :func:`probe_points` (a fixed set of points of
the domain: a fine grid of the circle, a Fibonacci lattice of S^2, random points of higher
spheres, a grid of ``[-half_width, half_width]^d``, plus the vertices and cell midpoints of a
mesh file) and raises :class:`ConfigError` with the first bad value and where it occurs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attnflow.app.config.values import ConfigError

__all__ = ["check_density", "probe_points"]


def probe_points(
    d: int, sphere: bool, half_width: float | None, mesh_points: np.ndarray | None = None
) -> np.ndarray:
    """(n, d) points where an initial density is checked (see the module docstring)."""
    if sphere:
        if d == 2:
            th = 2 * np.pi * (np.arange(4096) + 0.5) / 4096
            pts = np.stack([np.cos(th), np.sin(th)], axis=1)
        elif d == 3:  # Fibonacci lattice
            n = 8192
            k = np.arange(n) + 0.5
            z = 1 - 2 * k / n
            ph = np.pi * (1 + 5**0.5) * k
            s = np.sqrt(1 - z * z)
            pts = np.stack([s * np.cos(ph), s * np.sin(ph), z], axis=1)
        else:
            g = np.random.default_rng(0).standard_normal((8192, d))
            pts = g / np.linalg.norm(g, axis=1, keepdims=True)
    else:
        pts = np.zeros((0, d))
        if half_width is not None:
            per = {1: 4001, 2: 201, 3: 41}.get(d, max(2, round(20000 ** (1 / d))))
            axis = np.linspace(-half_width, half_width, per)
            grids = np.meshgrid(*([axis] * d), indexing="ij")
            pts = np.stack([g.ravel() for g in grids], axis=1)
    if mesh_points is not None:
        mp = np.asarray(mesh_points, dtype=float)
        if sphere:
            mp = mp / np.linalg.norm(mp, axis=1, keepdims=True)
        pts = np.concatenate([pts, mp])
    return pts


def check_density(
    key: str,
    f: Callable[[np.ndarray], np.ndarray],
    d: int,
    sphere: bool,
    half_width: float | None,
    mesh_points: np.ndarray | None = None,
) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``f`` is finite, ``>= 0`` and not
    identically 0 at the :func:`probe_points`."""
    pts = probe_points(d, sphere, half_width, mesh_points)
    if pts.shape[0] == 0:
        return
    try:
        v = np.asarray(f(pts), dtype=float).reshape(-1)
    except ConfigError:
        raise
    except Exception as e:  # an expression that fails on arrays, a law that rejects them
        raise ConfigError(key, f"cannot be evaluated: {type(e).__name__}: {e}") from None
    if v.shape != (pts.shape[0],):
        raise ConfigError(key, f"must give one value per point, got shape {v.shape}")
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(key, f"must be finite, got {v[i]} at x = {np.round(pts[i], 4).tolist()}")
    if v.min() < 0:
        i = int(np.argmin(v))
        raise ConfigError(
            key, f"must be >= 0, got {v[i]:.4g} at x = {np.round(pts[i], 4).tolist()}"
        )
    if not v.max() > 0:
        raise ConfigError(
            key, f"has zero mass: the density is 0 at all {pts.shape[0]} probe points"
        )
