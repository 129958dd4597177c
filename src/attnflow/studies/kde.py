"""Modes of Gaussian kernel density estimators: where clusters nucleate.

Geshkovski, Rigollet and Sun (arXiv:2412.09080) model the clusters that tokens form in the
metastable phase by the modes of the kernel density estimator of the initial tokens with the
attention kernel. On the line, with ``n`` i.i.d. samples ``X_i ~ N(0, 1)`` and bandwidth
``h = beta^{-1/2}``,

    p(t) = sqrt(beta) / (n sqrt(2 pi)) sum_i e^{-beta (t - X_i)^2 / 2}      (:func:`line_kde`),

the expected number of modes on the whole line is ``Theta(sqrt(beta log beta))`` for
``n^c <~ beta <~ n^{2-c}``. On the circle (tokens of ``S^1``) the kernel is the attention kernel
itself, the von Mises kernel ``e^{beta cos(theta - X_i)} / (2 pi I_0(beta))``
(:func:`circle_kde`).

**Counting modes** (:func:`count_modes`). The derivative ``p'`` is evaluated in closed form on a
grid of spacing ``delta = h / grid_factor`` (default ``grid_factor = 8``: eight points per
bandwidth), and a mode is a sign change of ``p'`` from ``+`` to ``-`` between two consecutive
grid points (grid points where ``p'`` is exactly 0 are skipped). Only a mode and an antimode
closer than ``delta`` can be missed; they are that close only near the fold where they are born
(two samples at about ``2 h`` apart), an event of probability ``O((delta/h)^2)`` per pair, and
refining the grid four times changes no count in the tests. The sign of ``p'`` is computed
without underflow: at each grid point the sum is scaled by ``e^{beta d^2/2}`` (line; ``d`` the
distance to the nearest sample) or ``e^{-beta max_i cos(theta - X_i)}`` (circle), and terms below
``e^{-40}`` times the largest are dropped; so isolated samples far in the tails, each its own
mode, are counted too. On the whole line the grid runs from ``min X - h`` to ``max X + h``,
where ``p' > 0`` and ``< 0`` respectively, so every mode is counted; in a window ``[a, b]`` the
grid starts at ``a`` and ends at ``b``, so a counted mode lies in the window.

**Monte Carlo** (:func:`expected_modes`): the mean count over seeded runs (run ``r`` draws from
``SeedSequence(seed).spawn(n_runs)[r]``) and its standard error.

**Kac–Rice** (:func:`kac_rice_line`, :func:`kac_rice_circle`). The modes in ``[a, b]`` are the
down-crossings of zero by ``Y_1 = p'``, so (Kac–Rice, with ``Y_2 = p''``)

    E #modes in [a, b] = int_a^b E[ (Y_2)^- | Y_1(t) = 0 ] f_{Y_1(t)}(0) dt.

``(Y_1, Y_2)(t) = (1/n) sum_i (K_h'(t - X_i), K_h''(t - X_i))`` is a mean of ``n`` i.i.d.
vectors; replacing its law by the Gaussian with the *exact* finite-n mean ``m(t)`` and
covariance ``S(t) = (E[k k^T] - m m^T) / n`` (``k = (K_h'(t - X), K_h''(t - X))``) gives, with
``mu_c = m_2 - S_12 m_1 / S_11`` and ``s_c^2 = S_22 - S_12^2 / S_11`` (the law of ``Y_2`` given
``Y_1 = 0``),

    E #modes in [a, b] ~ int_a^b  phi(m_1 / sqrt(S_11)) / sqrt(S_11)
                         * ( s_c phi(mu_c / s_c) - mu_c Phi(-mu_c / s_c) )  dt,

accurate where many samples fall within a bandwidth (``n p(t) h >> 1``: the bulk). With
``K_h^{(j)}(h u) = h^{-1-j} (-1)^j He_j(u) phi(u)`` and ``X = t - h u``, the moments are
Gauss–Hermite sums (``m_0`` has the closed form ``phi_s(t)``, ``s^2 = 1 + h^2``, a check):

    E[K_h^{(j)}(t - X)]                   = (-1)^j h^{-j} int He_j(u) phi(u) phi(t - h u) du,
    E[K_h^{(j)}(t - X) K_h^{(k)}(t - X)] = (-1)^{j+k} h^{-1-j-k}
                                             int He_j(u) He_k(u) phi(u)^2 phi(t - h u) du,

and the ``t``-integral is a Gauss–Legendre sum (the moments vary on the scale of the density).
On the circle with uniform samples ``m = 0`` and ``S_12 = 0`` (``k'`` is odd, ``k''`` even),
so the count over the whole circle is ``sqrt(E[k''^2] / E[k'^2])``; by Parseval
(``e^{beta cos u} = sum_m I_m(beta) e^{i m u}``)

    E #modes on S^1 ~ sqrt( sum_m m^4 I_m(beta)^2 / sum_m m^2 I_m(beta)^2 )  ->  sqrt(3 beta / 2),

independent of ``n`` (the Gaussian, many-samples-per-bandwidth limit). On the line the same
local rate, ``sqrt(3 beta/2) / (2 pi)`` modes per unit length, holds where the fluctuations of
``p'`` dominate its mean; the region where the samples are dense enough for that has a width
``~ sqrt(log(n^2/beta))``, and beyond it every isolated sample is a mode: hence
``sqrt(beta log beta)`` for ``beta ~ n^alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ive, ndtr

from attnflow.validation import check_int, check_positive

__all__ = [
    "DEFAULT_GRID_FACTOR",
    "ModeCount",
    "circle_kde",
    "count_modes",
    "derivative_moments",
    "expected_modes",
    "kac_rice_circle",
    "kac_rice_line",
    "line_kde",
]

#: Grid points per bandwidth ``h = beta^{-1/2}`` of the mode counter.
DEFAULT_GRID_FACTOR = 8
#: Terms below ``e^{-_CUTOFF}`` times the largest are dropped from a kernel sum.
_CUTOFF = 40.0
_BLOCK = 64
_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _samples(x: object, name: str = "samples") -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a non-empty array of finite numbers")
    return a


def _check_derivative(derivative: int) -> int:
    if derivative not in (0, 1, 2):
        raise ValueError(f"derivative must be 0, 1 or 2, got {derivative!r}")
    return derivative


def line_kde(t: np.ndarray, samples: np.ndarray, beta: float, derivative: int = 0) -> np.ndarray:
    """The Gaussian KDE ``p(t) = (1/n) sum_i K_h(t - X_i)``, ``h = beta^{-1/2}``, or a derivative.

    Parameters
    ----------
    t : (T,) evaluation points.
    samples : (n,) samples ``X_i``.
    beta : inverse squared bandwidth (finite, > 0).
    derivative : 0, 1 or 2.

    Returns
    -------
    (T,) values (dense sum, O(T n) memory: for plotting and checks).
    """
    beta = check_positive("beta", beta)
    derivative = _check_derivative(derivative)
    u = np.asarray(t, dtype=float).ravel()[:, None] - _samples(samples)[None, :]
    k = math.sqrt(beta) / _SQRT_2PI * np.exp(-0.5 * beta * u**2)
    factor = (1.0, -beta * u, beta**2 * u**2 - beta)[derivative]
    return np.mean(factor * k, axis=1)


def circle_kde(
    theta: np.ndarray, samples: np.ndarray, beta: float, derivative: int = 0
) -> np.ndarray:
    """The von Mises KDE ``(1/n) sum_i e^{beta cos(theta - X_i)} / (2 pi I_0(beta))`` on S^1.

    Parameters
    ----------
    theta : (T,) angles; samples : (n,) sample angles (radians).
    beta : concentration (finite, > 0); the kernel is the attention kernel of
        ``SelfAttention(2, beta)``, of width ``beta^{-1/2}``.
    derivative : 0, 1 or 2 (in ``theta``).

    Returns
    -------
    (T,) values (computed with ``ive``: finite for any beta).
    """
    beta = check_positive("beta", beta)
    derivative = _check_derivative(derivative)
    u = np.asarray(theta, dtype=float).ravel()[:, None] - _samples(samples)[None, :]
    k = np.exp(beta * (np.cos(u) - 1.0)) / (2.0 * np.pi * ive(0, beta))
    factor = (1.0, -beta * np.sin(u), beta**2 * np.sin(u) ** 2 - beta * np.cos(u))[derivative]
    return np.mean(factor * k, axis=1)


# -- counting ----------------------------------------------------------------------------------
def _derivative_signs(grid: np.ndarray, x: np.ndarray, beta: float, circle: bool) -> np.ndarray:
    """Sign of ``p'`` at the increasing ``grid`` (G,) for the sorted samples ``x`` (n,) (on the
    circle: angles in [0, 2 pi), periodically extended here), scaled against underflow."""
    x0 = x
    if circle:  # three copies: a window narrower than 2 pi holds each sample at most once
        x = np.concatenate([x0 - 2.0 * np.pi, x0, x0 + 2.0 * np.pi])
    out = np.empty(grid.size)
    # distance from every grid point to its nearest sample
    j = np.clip(np.searchsorted(x, grid), 0, x.size - 1)
    dist = np.minimum(np.abs(grid - x[j]), np.abs(grid - x[np.maximum(j - 1, 0)]))
    for s in range(0, grid.size, _BLOCK):
        g, dmin = grid[s : s + _BLOCK], dist[s : s + _BLOCK]
        if circle:
            # the largest term: e^{beta (cos d - 1)}; keep the terms within e^{-CUTOFF} of it
            worst = float(np.max(1.0 - np.cos(np.minimum(dmin, np.pi))))
            c = worst + _CUTOFF / beta
            r = math.acos(1.0 - c) if c < 2.0 else np.pi
        else:
            r = math.sqrt(float(np.max(dmin)) ** 2 + 2.0 * _CUTOFF / beta)
        if circle and g[-1] - g[0] + 2.0 * r >= 2.0 * np.pi:
            u = g[:, None] - x0[None, :]  # every sample once (sin, cos are periodic)
        else:
            a, b = np.searchsorted(x, g[0] - r), np.searchsorted(x, g[-1] + r, side="right")
            u = g[:, None] - x[None, a:b]
        if circle:
            e = beta * (np.cos(u) - np.cos(np.minimum(dmin, np.pi))[:, None])
            terms = -np.sin(u) * np.exp(e)
        else:
            e = -0.5 * beta * (u**2 - dmin[:, None] ** 2)
            terms = -u * np.exp(e)
        out[s : s + _BLOCK] = np.sign(terms.sum(axis=1))
    return out


def _down_crossings(signs: np.ndarray, cyclic: bool) -> int:
    s = signs[signs != 0]
    if s.size < 2:
        return 0
    nxt = np.roll(s, -1) if cyclic else s[1:]
    cur = s if cyclic else s[:-1]
    return int(np.count_nonzero((cur > 0) & (nxt < 0)))


def count_modes(
    samples: np.ndarray,
    beta: float,
    *,
    domain: str = "line",
    window: tuple[float, float] | None = None,
    grid_factor: int = DEFAULT_GRID_FACTOR,
) -> int:
    """Number of modes (local maxima) of the KDE of ``samples`` (see the module docstring).

    Parameters
    ----------
    samples : (n,) samples on the line, or angles (radians) on the circle.
    beta : inverse squared bandwidth ``h^{-2}`` (line) or von Mises concentration (circle).
    domain : ``"line"`` (:func:`line_kde`) or ``"circle"`` (:func:`circle_kde`).
    window : ``(a, b)``, count only the modes in ``[a, b]`` (line only; default: all).
    grid_factor : grid points per bandwidth ``beta^{-1/2}`` (>= 2; default 8).

    Returns
    -------
    The number of ``+ -> -`` sign changes of ``p'`` on the grid.
    """
    beta = check_positive("beta", beta)
    grid_factor = check_int("grid_factor", grid_factor, 2)
    x = _samples(samples)
    delta = 1.0 / (grid_factor * math.sqrt(beta))
    if domain == "circle":
        if window is not None:
            raise ValueError("window is for domain='line' only")
        x = np.sort(np.mod(x, 2.0 * np.pi))
        m = max(16, math.ceil(2.0 * np.pi / delta))
        grid = 2.0 * np.pi * np.arange(m) / m
        return _down_crossings(_derivative_signs(grid, x, beta, True), cyclic=True)
    if domain != "line":
        raise ValueError(f"domain must be 'line' or 'circle', got {domain!r}")
    x = np.sort(x)
    if window is None:
        a, b = x[0] - delta * grid_factor, x[-1] + delta * grid_factor
    else:
        a, b = (float(v) for v in window)
        if not (np.isfinite(a) and np.isfinite(b) and a < b):
            raise ValueError(f"window must be (a, b) with finite a < b, got {window!r}")
    grid = np.linspace(a, b, max(2, math.ceil((b - a) / delta) + 1))
    return _down_crossings(_derivative_signs(grid, x, beta, False), cyclic=False)


@dataclass(frozen=True)
class ModeCount:
    """Monte Carlo mode counts of a KDE.

    Attributes
    ----------
    counts : (R,) the count of every run.
    mean : mean count; sem : its standard error (``sd / sqrt(R)``; 0 for one run).
    beta, n : bandwidth parameter and samples per run; domain, window : as counted.
    """

    counts: np.ndarray
    mean: float
    sem: float
    beta: float
    n: int
    domain: str
    window: tuple[float, float] | None


def expected_modes(
    beta: float,
    n: int,
    *,
    domain: str = "line",
    window: tuple[float, float] | None = None,
    n_runs: int = 32,
    seed: int = 0,
    grid_factor: int = DEFAULT_GRID_FACTOR,
) -> ModeCount:
    """Expected number of KDE modes by Monte Carlo: ``n`` samples ``N(0, 1)`` (line) or uniform
    angles (circle) per run, ``n_runs`` seeded runs (:func:`count_modes` on each).

    Returns
    -------
    :class:`ModeCount` (mean and standard error).
    """
    beta = check_positive("beta", beta)
    n = check_int("n", n, 1)
    n_runs = check_int("n_runs", n_runs, 1)
    counts = []
    for child in np.random.SeedSequence(seed).spawn(n_runs):
        rng = np.random.default_rng(child)
        x = rng.standard_normal(n) if domain == "line" else rng.uniform(0.0, 2.0 * np.pi, n)
        counts.append(count_modes(x, beta, domain=domain, window=window, grid_factor=grid_factor))
    c = np.asarray(counts, dtype=np.int64)
    sem = float(c.std(ddof=1) / math.sqrt(c.size)) if c.size > 1 else 0.0
    w = None if window is None else (float(window[0]), float(window[1]))
    return ModeCount(c, float(c.mean()), sem, float(beta), n, domain, w)


# -- Kac-Rice ----------------------------------------------------------------------------------
def derivative_moments(
    t: np.ndarray, beta: float, n: int, *, n_nodes: int = 80
) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and covariance of ``(p'(t), p''(t))`` of the line KDE of ``n`` ``N(0, 1)``
    samples (Gauss–Hermite quadrature with ``n_nodes`` nodes; module docstring).

    Returns
    -------
    mean : (T, 2); cov : (T, 2, 2).
    """
    beta = check_positive("beta", beta)
    n = check_int("n", n, 1)
    t = np.asarray(t, dtype=float).ravel()
    h = 1.0 / math.sqrt(beta)
    xq, wq = np.polynomial.hermite.hermgauss(n_nodes)  # weight e^{-x^2}
    he = np.polynomial.hermite_e.hermeval

    def phi(z: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * z**2) / _SQRT_2PI

    # means: int He_j(u) phi(u) phi(t - h u) du, u = sqrt(2) x
    u1 = math.sqrt(2.0) * xq
    f1 = phi(t[:, None] - h * u1[None, :]) * (wq / math.sqrt(np.pi))[None, :]
    mean = np.stack([(-1) ** j * h**-j * f1 @ he(u1, [0] * j + [1]) for j in (1, 2)], axis=1)
    # second moments: int He_j He_k phi(u)^2 phi(t - h u) du, phi^2 = e^{-u^2} / (2 pi)
    f2 = phi(t[:, None] - h * xq[None, :]) * (wq / (2.0 * np.pi))[None, :]
    hj = {j: he(xq, [0] * j + [1]) for j in (1, 2)}
    second = np.empty((t.size, 2, 2))
    for a, j in enumerate((1, 2)):
        for b, k in enumerate((1, 2)):
            second[:, a, b] = (-1) ** (j + k) * h ** (-1 - j - k) * (f2 @ (hj[j] * hj[k]))
    cov = (second - mean[:, :, None] * mean[:, None, :]) / n
    return mean, cov


def _kac_rice_density(mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    m1, m2 = mean[:, 0], mean[:, 1]
    s11, s12, s22 = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
    sd1 = np.sqrt(s11)
    mu = m2 - s12 * m1 / s11
    sc = np.sqrt(np.maximum(s22 - s12**2 / s11, 0.0))
    z = mu / sc
    neg_part = sc * np.exp(-0.5 * z**2) / _SQRT_2PI - mu * ndtr(-z)
    return np.exp(-0.5 * (m1 / sd1) ** 2) / (_SQRT_2PI * sd1) * neg_part


def kac_rice_line(
    beta: float, n: int, window: tuple[float, float], *, n_points: int = 128
) -> float:
    """Expected number of modes of the line KDE (``n`` ``N(0, 1)`` samples, ``h = beta^{-1/2}``)
    in ``window = (a, b)`` by the Gaussian Kac–Rice integral with exact finite-n moments
    (module docstring; ``n_points`` Gauss–Legendre nodes in ``t``)."""
    a, b = (float(v) for v in window)
    if not (np.isfinite(a) and np.isfinite(b) and a < b):
        raise ValueError(f"window must be (a, b) with finite a < b, got {window!r}")
    x, w = np.polynomial.legendre.leggauss(check_int("n_points", n_points, 2))
    t = 0.5 * (b - a) * x + 0.5 * (a + b)
    mean, cov = derivative_moments(t, beta, n)
    return float(0.5 * (b - a) * (w @ _kac_rice_density(mean, cov)))


def kac_rice_circle(beta: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Expected number of modes of the von Mises KDE of uniform angles by Gaussian Kac–Rice:
    ``sqrt(sum m^4 I_m^2 / sum m^2 I_m^2)`` (any ``n``; ``-> sqrt(3 beta/2)``); same shape as
    ``beta``."""
    b = np.atleast_1d(np.asarray(beta, dtype=float))
    if not np.all(np.isfinite(b)) or np.any(b <= 0):
        raise ValueError(f"beta must be finite and > 0, got {beta!r}")
    out = np.empty(b.size)
    for k, bk in enumerate(b.ravel()):
        m = np.arange(1, max(32, math.ceil(12.0 * math.sqrt(bk))) + 1, dtype=float)
        i2 = (ive(m, bk) / ive(0, bk)) ** 2
        out[k] = math.sqrt(float((m**4 @ i2) / (m**2 @ i2)))
    return out.reshape(np.shape(beta)) if np.ndim(beta) else out[0]
