"""Input checks shared by the public entry points: one clear line naming the field."""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "as_points",
    "as_weights",
    "check_betas",
    "check_int",
    "check_matrix",
    "check_positive",
    "check_real",
]


def _refuse_complex(name: str, a: object) -> None:
    if np.iscomplexobj(a):
        raise ValueError(f"{name} must be real, got complex values")


def check_real(name: str, value: object) -> np.ndarray:
    """``value`` as a float64 array (a 0-d array for a scalar) if it is real and numeric.

    Complex values are refused (numpy would silently drop their imaginary part), as are
    non-numeric ones; one line naming ``name``.
    """
    _refuse_complex(name, value)
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a real number or array of numbers, got {value!r}"
        ) from None
    return a


def check_positive(name: str, value: float, *, allow_inf: bool = False) -> float:
    """Return ``value`` as float if it is > 0 (and finite unless ``allow_inf``)."""
    if isinstance(value, (complex, np.complexfloating)):
        raise TypeError(f"{name} must be a positive real number, got complex {value!r}")
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        allowed = "> 0 or math.inf" if allow_inf else "finite and > 0"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return v


def check_int(name: str, value: object, lo: int) -> int:
    """Return ``value`` as int if it is an integer (not a bool) ``>= lo``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def check_betas(betas: object) -> np.ndarray:
    """A sweep of inverse temperatures: a non-empty 1-D float array of finite values > 0."""
    try:
        b = np.asarray(betas, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a sequence of numbers, got {betas!r}") from None
    if b.size == 0:
        raise ValueError("betas must be a non-empty sequence of finite numbers > 0")
    if not np.all(np.isfinite(b)) or np.any(b <= 0):
        raise ValueError(f"betas must be finite and > 0, got {b.tolist()}")
    return b


def check_matrix(name: str, m: object, d: int) -> np.ndarray:
    """A read-only float64 copy of a ``(d, d)`` finite real matrix."""
    _refuse_complex(name, m)
    try:
        a = np.array(m, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a ({d}, {d}) matrix of numbers, got {m!r}") from None
    if a.shape != (d, d):
        raise ValueError(f"{name} must have shape ({d}, {d}), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must have finite entries (no NaN or inf)")
    a.setflags(write=False)
    return a


def as_points(name: str, x: object, d: int, *, on_sphere: bool = False) -> np.ndarray:
    """Check a ``(n, d)`` array of finite real points (on the unit sphere to 1e-8 if asked)."""
    _refuse_complex(name, x)
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an (n, {d}) array of numbers") from None
    if a.ndim != 2 or a.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    if on_sphere and a.size:
        err = np.max(np.abs(np.linalg.norm(a, axis=1) - 1.0))
        if err > 1e-8:
            raise ValueError(f"{name} must lie on the unit sphere (max | |x| - 1 | = {err:.2e})")
    return a


def as_weights(name: str, w: object, n: int) -> np.ndarray:
    """Check ``(n,)`` finite real non-negative weights; ``None`` means uniform ``1/n``."""
    if w is None:
        return np.full(n, 1.0 / n) if n else np.zeros(0)
    _refuse_complex(name, w)
    try:
        a = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an ({n},) array of numbers") from None
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    if np.any(a < 0):
        raise ValueError(f"{name} must be >= 0 (min is {a.min():.3g})")
    return a
