"""Initial laws of the tokens: sample them (particles) and evaluate their density (meshes).

Every law has ``d``, ``on_sphere``, ``sample(n, rng) -> (n, d)`` and ``pdf(x) -> (n,)``. On the
sphere ``pdf`` is a density with respect to the surface measure of ``S^{d-1}``; in R^d with
respect to Lebesgue measure. ``rng`` is a :class:`numpy.random.Generator` or an int seed:
there is no hidden global random state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import gammaln

from attnflow.validation import check_int, check_real

__all__ = [
    "Box",
    "DensityLaw",
    "Gaussian",
    "Law",
    "Mixture",
    "PerturbedCircle",
    "UniformBall",
    "UniformSphere",
    "VonMisesFisher",
    "sphere_area",
]


def _rng(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {rng!r}")


def _n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return int(n)


def sphere_area(d: int) -> float:
    """Surface area of ``S^{d-1}`` in ``R^d``: ``2 pi^{d/2} / Gamma(d/2)``."""
    return float(np.exp(np.log(2.0) + 0.5 * d * np.log(np.pi) - gammaln(0.5 * d)))


class Law:
    """Base class: a probability law on ``S^{d-1}`` or ``R^d``."""

    d: int
    on_sphere: bool

    def sample(self, n: int, rng: np.random.Generator | int) -> np.ndarray:
        """``n`` independent samples, shape ``(n, d)``."""
        raise NotImplementedError

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """Density at the rows of ``x`` (shape ``(n, d)``), shape ``(n,)``."""
        raise NotImplementedError


@dataclass(frozen=True)
class UniformSphere(Law):
    """The uniform law on ``S^{d-1}``."""

    d: int
    on_sphere = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "d", check_int("d", self.d, 2))

    def sample(self, n, rng):
        x = _rng(rng).standard_normal((_n(n), self.d))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def pdf(self, x):
        return np.full(np.asarray(x).shape[0], 1.0 / sphere_area(self.d))


@dataclass(frozen=True)
class UniformBall(Law):
    """The uniform law on the ball ``|x| <= radius`` of ``R^d``."""

    d: int
    radius: float = 1.0
    on_sphere = False

    def __post_init__(self) -> None:
        if isinstance(self.d, bool) or not isinstance(self.d, (int, np.integer)) or self.d < 1:
            raise ValueError(f"d must be an int >= 1, got {self.d!r}")
        radius = float(check_real("radius", self.radius)) if np.ndim(self.radius) == 0 else None
        if radius is None or not (np.isfinite(radius) and radius > 0):
            raise ValueError(f"radius must be finite and > 0, got {self.radius!r}")
        object.__setattr__(self, "radius", radius)

    def sample(self, n, rng):
        g = _rng(rng)
        x = g.standard_normal((_n(n), self.d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x * (self.radius * g.random(_n(n)) ** (1.0 / self.d))[:, None]

    def pdf(self, x):
        x = np.asarray(x, dtype=float)
        vol = sphere_area(self.d) * self.radius**self.d / self.d if self.d > 1 else 2 * self.radius
        return np.where(np.linalg.norm(x, axis=1) <= self.radius, 1.0 / vol, 0.0)


@dataclass(frozen=True)
class PerturbedCircle(Law):
    """On ``S^1``: density ``(1 + eps cos(mode (theta - phase))) / (2 pi)``, ``|eps| <= 1``.

    Sampled exactly by inverting the CDF ``theta/2pi + eps sin(mode(theta-phase))/(2 pi mode)``
    (Newton iterations safeguarded by bisection), one uniform number per sample.
    """

    eps: float
    mode: int
    phase: float = 0.0
    d = 2
    on_sphere = True

    def __post_init__(self) -> None:
        for name in ("eps", "phase"):
            v = check_real(name, getattr(self, name))
            if v.ndim != 0 or not np.isfinite(v):
                raise ValueError(
                    f"{name} must be a finite real number, got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, float(v))
        if not (abs(self.eps) <= 1.0):
            raise ValueError(f"eps must satisfy |eps| <= 1 (density >= 0), got {self.eps!r}")
        if isinstance(self.mode, bool) or not isinstance(self.mode, (int, np.integer)):
            raise TypeError(f"mode must be an int >= 1, got {self.mode!r}")
        if self.mode < 1:
            raise ValueError(f"mode must be an int >= 1, got {self.mode!r}")

    def _cdf(self, th):
        k = self.mode
        return (th + self.eps * (np.sin(k * (th - self.phase)) + np.sin(k * self.phase)) / k) / (
            2 * np.pi
        )

    def sample(self, n, rng):
        u = _rng(rng).random(_n(n))
        lo = np.zeros_like(u)
        hi = np.full_like(u, 2 * np.pi)
        th = 2 * np.pi * u
        for _ in range(100):
            f = self._cdf(th) - u
            lo = np.where(f < 0, th, lo)
            hi = np.where(f >= 0, th, hi)
            dens = (1 + self.eps * np.cos(self.mode * (th - self.phase))) / (2 * np.pi)
            with np.errstate(divide="ignore", invalid="ignore"):
                new = th - f / dens
            bad = ~np.isfinite(new) | (new <= lo) | (new >= hi)
            new = np.where(bad, 0.5 * (lo + hi), new)
            if np.max(np.abs(new - th)) < 1e-15:
                th = new
                break
            th = new
        return np.stack([np.cos(th), np.sin(th)], axis=1)

    def pdf(self, x):
        x = np.asarray(x)
        th = np.arctan2(x[:, 1], x[:, 0])
        return (1 + self.eps * np.cos(self.mode * (th - self.phase))) / (2 * np.pi)


@dataclass(frozen=True)
class VonMisesFisher(Law):
    """Von Mises–Fisher law on ``S^{d-1}``: density ∝ ``exp(kappa <mu, x>)`` (scipy's sampler)."""

    mu: Sequence[float]
    kappa: float

    on_sphere = True

    def __post_init__(self) -> None:
        mu = check_real("mu", self.mu)
        kappa = check_real("kappa", self.kappa)
        if kappa.ndim != 0:
            raise ValueError(f"kappa must be a number, got {self.kappa!r}")
        object.__setattr__(self, "kappa", float(kappa))
        if mu.ndim != 1 or mu.size < 2 or not np.isclose(np.linalg.norm(mu), 1.0):
            raise ValueError("mu must be a unit vector of length d >= 2")
        if not (self.kappa >= 0 and math.isfinite(self.kappa)):
            raise ValueError(f"kappa must be finite and >= 0, got {self.kappa!r}")
        object.__setattr__(self, "mu", tuple(mu))

    @property
    def d(self) -> int:  # type: ignore[override]
        return len(self.mu)

    def sample(self, n, rng):
        n = _n(n)
        if self.kappa == 0:
            return UniformSphere(self.d).sample(n, rng)
        out = stats.vonmises_fisher(np.array(self.mu), self.kappa).rvs(n, random_state=_rng(rng))
        return np.asarray(out).reshape(n, self.d)

    def pdf(self, x):
        if self.kappa == 0:
            return UniformSphere(self.d).pdf(x)
        return stats.vonmises_fisher(np.array(self.mu), self.kappa).pdf(np.asarray(x))


@dataclass(frozen=True)
class Gaussian(Law):
    """Gaussian ``N(mean, cov)`` in ``R^d`` (``cov`` symmetric positive definite)."""

    mean: Sequence[float]
    cov: Sequence[Sequence[float]]
    on_sphere = False

    def __post_init__(self) -> None:
        m = check_real("mean", self.mean).ravel()
        c = check_real("cov", self.cov)
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(c))):
            raise ValueError("mean and cov must be finite")
        if c.shape != (m.size, m.size):
            raise ValueError(f"cov must have shape ({m.size}, {m.size}), got {c.shape}")
        if not np.allclose(c, c.T) or np.linalg.eigvalsh(c).min() <= 0:
            raise ValueError("cov must be symmetric positive definite")
        object.__setattr__(self, "mean", m)
        object.__setattr__(self, "cov", c)

    @property
    def d(self) -> int:  # type: ignore[override]
        return len(self.mean)

    def sample(self, n, rng):
        n = _n(n)
        z = _rng(rng).standard_normal((n, self.d))
        return np.asarray(self.mean) + z @ np.linalg.cholesky(np.asarray(self.cov)).T

    def pdf(self, x):
        return stats.multivariate_normal(self.mean, self.cov).pdf(np.asarray(x)).reshape(-1)


@dataclass(frozen=True)
class Mixture(Law):
    """Mixture of laws on the same space with the given probabilities."""

    components: Sequence[Law]
    probabilities: Sequence[float]

    def __post_init__(self) -> None:
        comps = tuple(self.components)
        p = check_real("probabilities", self.probabilities)
        if not comps or p.shape != (len(comps),):
            raise ValueError("probabilities must have one entry per component (at least one)")
        if np.any(p < 0) or not np.isclose(p.sum(), 1.0):
            raise ValueError("probabilities must be >= 0 and sum to 1")
        if len({(c.d, c.on_sphere) for c in comps}) != 1:
            raise ValueError("components must all live on the same space (same d, sphere or R^d)")
        object.__setattr__(self, "components", comps)
        object.__setattr__(self, "probabilities", tuple(p))

    @property
    def d(self) -> int:  # type: ignore[override]
        return self.components[0].d

    @property
    def on_sphere(self) -> bool:  # type: ignore[override]
        return self.components[0].on_sphere

    def sample(self, n, rng):
        g = _rng(rng)
        counts = g.multinomial(_n(n), self.probabilities)
        x = np.concatenate([c.sample(k, g) for c, k in zip(self.components, counts, strict=True)])
        return x[g.permutation(x.shape[0])]

    def pdf(self, x):
        return sum(p * c.pdf(x) for c, p in zip(self.components, self.probabilities, strict=True))


@dataclass(frozen=True)
class Box:
    """The box ``[lo, hi]`` in ``R^d`` (a sampling domain)."""

    lo: Sequence[float]
    hi: Sequence[float]

    def __post_init__(self) -> None:
        lo, hi = check_real("lo", self.lo).ravel(), check_real("hi", self.hi).ravel()
        if lo.shape != hi.shape or np.any(hi <= lo):
            raise ValueError("Box needs lo and hi of the same length with hi > lo")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)


@dataclass(frozen=True)
class DensityLaw(Law):
    """The law with density ∝ ``density(x)`` on a domain, sampled by rejection.

    Parameters
    ----------
    density : maps ``(n, d)`` points to ``(n,)`` non-negative values (need not be normalised).
    domain : a :class:`Box` in R^d, or an int ``d`` for the sphere ``S^{d-1}``.
    bound : an upper bound of ``density``. If omitted it is estimated as 1.5 times the
        maximum over 65536 proposals, and every later evaluation is checked against it: a
        value above the bound raises instead of silently biasing the sample.

    ``pdf`` is the normalised density; its constant is estimated once by Monte Carlo with
    2^20 points (relative error ~1e-3), adequate for plotting, not for error norms.
    """

    density: Callable[[np.ndarray], np.ndarray]
    domain: Box | int
    bound: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.domain, (Box, int)):
            raise TypeError("domain must be a Box (R^d) or an int d (the sphere S^(d-1))")
        if not callable(self.density):
            raise TypeError(f"density must be a callable (n, d) -> (n,), got {self.density!r}")
        if self.bound is not None:
            b = check_real("bound", self.bound)
            if b.ndim != 0 or not (np.isfinite(b) and b > 0):
                raise ValueError(f"bound must be a finite number > 0, got {self.bound!r}")
            object.__setattr__(self, "bound", float(b))

    @property
    def on_sphere(self) -> bool:  # type: ignore[override]
        return isinstance(self.domain, int)

    @property
    def d(self) -> int:  # type: ignore[override]
        return self.domain if isinstance(self.domain, int) else len(self.domain.lo)

    def _propose(self, n, g):
        if self.on_sphere:
            return UniformSphere(self.d).sample(n, g)
        lo, hi = self.domain.lo, self.domain.hi
        return lo + (hi - lo) * g.random((n, self.d))

    def _eval(self, x):
        f = check_real("density values", self.density(x)).reshape(-1)
        if f.shape != (x.shape[0],) or not np.all(np.isfinite(f)) or np.any(f < 0):
            raise ValueError("density must return finite values >= 0, one per point")
        return f

    def sample(self, n, rng):
        g = _rng(rng)
        n = _n(n)
        bound = self.bound
        if bound is None:
            probe = self._eval(self._propose(65536, g)).max()
            if probe <= 0:
                raise ValueError("density is zero on all 65536 probe points")
            bound = 1.5 * probe
        out, have = [], 0
        while have < n:
            m = max(1024, 2 * (n - have))
            x = self._propose(m, g)
            f = self._eval(x)
            if f.max() > bound:
                raise ValueError(f"density exceeds its bound {bound:.3g}: pass a larger bound")
            keep = x[g.random(m) * bound < f]
            out.append(keep)
            have += keep.shape[0]
        return np.concatenate(out)[:n]

    def pdf(self, x):
        g = np.random.default_rng(12345)
        vol = (
            sphere_area(self.d)
            if self.on_sphere
            else float(np.prod(self.domain.hi - self.domain.lo))
        )
        z = vol * self._eval(self._propose(1 << 20, g)).mean()
        return self._eval(np.asarray(x, dtype=float)) / z
