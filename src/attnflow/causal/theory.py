r"""Linear theory of causal attention around the uniform state: the lost-in-the-middle profile.

(One idea, one module: the correlation of the last token with the prompt in closed form, and
the quantities read off it; half of the module is the derivation below.)

**Model** (conventions of :mod:`attnflow.causal.weights`). Tokens ``theta_1 .. theta_N`` on
``S^1`` at positions ``s_j = j/N``,

    dtheta_j/dt = sum_{k<j} w_jk W'(theta_j - theta_k),     W(theta) = e^{beta cos theta},

with the ALiBi weights ``w_jk`` (slope ``lambda``); token 1 does not move. As ``N -> infinity``
the density ``f(t, s, theta)`` of the tokens at position ``s`` solves the kinetic equation

    d_t f + d_theta( f X[f] ) = 0,
    X[f](s, theta) = int_0^s kappa(s, s') int W'(theta - phi) f(t, s', phi) dphi ds',

with ``kappa(s, s') = F'(s')/F(s)``, ``F(s) = e^{lambda s} - 1`` (``F(s) = s`` at
``lambda = 0``). The uniform state ``f = 1/(2 pi)`` is stationary (``W'`` is odd).

**Linearisation.** Write ``f = 1/(2 pi) + g`` and ``g = sum_n g_n(t, s) e^{i n theta}``. With
``e^{beta cos theta} = sum_m I_m(beta) e^{i m theta}``, ``W' = sum_m i m I_m(beta) e^{i m theta}``
and ``int W'(theta - phi) e^{i n phi} dphi = 2 pi i n I_n(beta) e^{i n theta}``, so
``d_t g = -(1/2 pi) d_theta X[g]`` gives, mode by mode,

    d_t g_n(t, s) = a_n int_0^s kappa(s, s') g_n(t, s') ds',     a_n = n^2 I_n(beta) > 0

(:func:`mode_rate`): every mode grows (attention is attractive), and only through the earlier
slices. It is the Volterra operator ``V g(s) = int_0^s kappa(s, s') g(s') ds'`` times ``a_n``.

**Correlations.** For the particles, ``d/dt e^{-i n theta_j} = sum_k w_jk sum_m n m I_m
e^{i(m-n) theta_j} e^{-i m theta_k}``; the term ``m = n`` is ``a_n sum_{k<j} w_jk
e^{-i n theta_k}``, the others are three-point functions that vanish at leading order for iid
uniform tokens (Duerinckx–Geshkovski–Rossi prove the next-order limit with cumulant expansions).
So ``C_jk(t) = E[e^{-i n theta_j(t)} e^{i n theta_k(0)}]`` (``C(0) = I``) solves ``C' = A_N C``
with the strictly lower-triangular matrix ``A_N = a_n alibi_weights(N, lambda)``:

    C(t) = expm(t A_N)                                         (:func:`discrete_correlation`)

Its diagonal is exactly 1 (a token keeps its own initial phase), and the off-diagonal entries are
``O(1/N)``. As ``N -> infinity`` with ``k = s N``, ``N C_Nk(t)`` converges to the measure
``delta(s - 1) + R_n(t; 1, s) ds``: the atom at ``s = 1`` is the last token itself, the density
``R_n`` is the resolvent part of ``e^{t a_n V}``, which is what :func:`correlation_kernel`
returns (at ``s = 1`` its continuous extension, the atom excluded).

**Closed form.** Since ``kappa(s, s') = F'(s')/F(s)``, the powers of ``V`` are explicit:

    V^m(s, s') = F'(s')/F(s) L^{m-1}/(m-1)!,     L = log(F(s)/F(s')),   s' < s

(induction: ``int_{s'}^s F'(u)/F(s) F'(s')/F(u) log(F(u)/F(s'))^{m-1}/(m-1)! du`` is the next
one). Summing ``e^{t a V} - I = sum_{m>=1} (a t)^m V^m / m!``:

    R_n(t; sigma, s) = kappa(sigma, s) psi_{a_n t}(L),   L = log(F(sigma)/F(s)),
    psi_c(y) = sum_{k>=0} c^{k+1} y^k / (k! (k+1)!) = sqrt(c/y) I_1(2 sqrt(c y))

(the modified Bessel ``I_1``; ``psi_c(0) = c``; it is the companion code's
``g_{a_n}(t, 1; s) = [lambda e^{lambda s}/(e^lambda - 1)] psi_{a_n t}(Y_lambda(s))``). Checks:
``int_0^1 R_n(t; 1, s) ds = e^{a_n t} - 1`` (substitute ``y = L``: ``int_0^inf psi_c(y) e^{-y}
dy``), the row sums of ``expm(t A_N)``; ``R_n -> a_n t kappa(1, 1)`` as ``s -> 1``
(recency); ``R_n -> infinity`` like ``e^{2 sqrt(a_n t log(1/s))}`` as ``s -> 0`` (primacy,
integrable). Evaluated in logs with ``scipy.special.ive`` (``log R = log kappa + log c +
log(2 ive(1, z)/z) + z``, ``z = 2 sqrt(c L)``, ``log a_n = 2 log n + log ive(n, beta) + beta``):
no overflow for any ``beta`` or ``t``.

**Retrieval score.** The companion code's truncated soft-accuracy profile

    S_t(s) = sum_{n=1}^{n_max} omega_n R_n(t; 1, s),   omega_n = e^{-pi^2 n^2 / (2 M^2)}

(defaults ``M = 8``, ``n_max = 20`` as there; ``omega_n`` are the Fourier coefficients of a
wrapped Gaussian of standard deviation ``pi/M``: the score tests the last token against the
source token through a smooth angular window of width ``~ pi/M``). Any non-negative weights
may be given instead (:func:`retrieval_weights`, :func:`retrieval_score`).

**Slope, recency and t_crit.** From ``d_s log kappa(1, s) = lambda``, ``d_s L = -F'(s)/F(s)``
and ``psi_c'(y) = (c/y) I_2(2 sqrt(c y))`` (``psi_c'(0) = c^2/2``):

    d_s R_n = R_n [ lambda - (F'(s)/F(s)) psi_c'(L)/psi_c(L) ],
    d_s R_n (s = 1) = a_n t k [lambda - k a_n t/2],    k = kappa(1,1) = lambda/(1 - e^{-lambda}).

The score increases at ``s = 1`` (recency) iff ``sum_n omega_n a_n (lambda - k a_n t/2) > 0``,
i.e. for ``0 < t < t_crit`` with

    t_crit = 2 (1 - e^{-lambda}) sum_n omega_n a_n / sum_n omega_n a_n^2       (:func:`t_crit`)

(the companion code's threshold). For ``lambda = 0`` it is 0: without ALiBi the profile
``psi_{a t}(log(1/s))`` decreases in ``s`` for every ``t > 0`` (primacy only). For
``t < t_crit`` the profile is U-shaped (``-> infinity`` at ``s = 0``, increasing at ``s = 1``);
:func:`profile_minimum` locates its interior minimum (roots of the analytic slope,
``scipy.optimize.brentq``); in every case the tests and a sweep (``beta`` in 0.5..10,
``lambda`` in 0.5..8, ``t/t_crit`` in 0.1..0.99) ran, the slope changed sign exactly once.

*How recency is lost.* At ``t = t_crit`` the slope vanishes at ``s = 1``; the sign of the
second derivative there decides. For one mode, ``B(s) = lambda - (F'/F) psi'/psi`` has
``B(1) = 0`` and, with ``log psi_c(y) = log c + c y/2 - c^2 y^2/24 + ...``,
``B'(1) = lambda (k - 4 lambda/3)``. So for ``lambda < log 4`` (``k > 4 lambda/3``) the
minimum travels continuously to ``s = 1`` as ``t -> t_crit``; for ``lambda > log 4`` it stays
inside (at ``s ~ 0.6`` for ``lambda = 2``) and beyond ``t_crit`` the profile has an interior
minimum *and* an interior maximum (the recency peak moves into the prompt) until the two merge
at a later time. The score with the default weights behaves the same way (measured:
``lambda = 1`` continuous, ``lambda = 2, 4, 8`` with an interior maximum just above
``t_crit``).

**Discrete route.** ``N expm(t A_N)[N-1, k]`` (token ``k+1`` at ``s = (k+1)/N``) converges to
``R_n(t; 1, s)`` at the rate ``O(1/N)``: ``alibi_weights(N, lambda)`` is the left-end,
exact-cell-integral quadrature of ``V`` on ``N`` cells (:mod:`attnflow.causal.weights`), a
first-order rule. Measured (``beta = 1, lambda = 2``, ``s`` in ``{1/8, 1/4, 1/2, 3/4, 7/8}``):
rates 1.00-1.05 between ``N = 16, 64, 256, 1024`` (see ``docs/causal.md``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.linalg
from scipy.optimize import brentq
from scipy.special import ive

from attnflow.causal.weights import alibi_weights, check_slope
from attnflow.validation import check_int, check_positive, check_real

__all__ = [
    "correlation_kernel",
    "discrete_correlation",
    "discrete_retrieval_score",
    "log_mode_rate",
    "mode_rate",
    "profile_minimum",
    "retrieval_score",
    "retrieval_score_slope",
    "retrieval_weights",
    "t_crit",
]

logger = logging.getLogger(__name__)

# Below this argument z = 2 sqrt(c L), psi and psi'/psi use their Taylor expansions at z = 0.
_Z_SMALL = 1e-6
# Beyond this argument the Bessel functions use their large-z (Hankel) expansion.
_Z_LARGE = 1e8
# The discrete route forms (n_tokens, n_tokens) matrices: refuse beyond this many tokens.
_MAX_TOKENS = 4096


# ----------------------------------------------------------------------------- input checks


def _check_mode(n: object) -> int:
    return check_int("n", n, 1)


def _check_times(t: object) -> np.ndarray:
    a = check_real("t", t)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("t must be finite and >= 0")
    return a


def _check_positions(s: object, name: str = "s") -> np.ndarray:
    a = check_real(name, s)
    if not np.all((a >= 0) & (a <= 1)):
        raise ValueError(f"{name} must lie in [0, 1]")
    return a


def _check_target(target: object) -> float:
    if isinstance(target, bool):
        raise TypeError(f"target must be a number in (0, 1], got {target!r}")
    v = check_positive("target", target)  # type: ignore[arg-type]
    if v > 1:
        raise ValueError(f"target must lie in (0, 1], got {target!r}")
    return v


def _broadcast(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        return np.broadcast_arrays(t, s)
    except ValueError:
        raise ValueError(f"t and s must broadcast, got shapes {t.shape} and {s.shape}") from None


def retrieval_weights(n_max: int = 20, resolution: float = 8.0) -> np.ndarray:
    """The companion code's mode weights ``omega_n = e^{-pi^2 n^2 / (2 M^2)}``, ``n = 1..n_max``.

    Parameters
    ----------
    n_max : int
        Number of Fourier modes ``>= 1``.
    resolution : float
        ``M > 0``: the weights are the Fourier coefficients of a wrapped Gaussian of standard
        deviation ``pi/M``.

    Returns
    -------
    numpy.ndarray, shape (n_max,)
        ``omega_1 .. omega_{n_max}``.
    """
    n_max = check_int("n_max", n_max, 1)
    m = check_positive("resolution", resolution)
    n = np.arange(1, n_max + 1, dtype=np.float64)
    return np.exp(-0.5 * (math.pi * n / m) ** 2)


def _score_weights(weights: object, n_max: int, resolution: float) -> np.ndarray:
    if weights is None:
        return retrieval_weights(n_max, resolution)
    w = check_real("weights", weights)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must be a non-empty 1-D array (modes 1..n), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise ValueError("weights must be finite, >= 0 and not all zero")
    return w


# ------------------------------------------------------------------------------- the rates


def log_mode_rate(n: int, beta: float) -> float:
    """``log(n^2 I_n(beta))``, from ``ive`` (no overflow for any ``beta``).

    Parameters
    ----------
    n : int
        Fourier mode ``>= 1``.
    beta : float
        Inverse temperature ``> 0``.

    Returns
    -------
    float
        ``2 log n + log ive(n, beta) + beta`` (``-inf`` if ``I_n(beta)`` underflows).
    """
    n = _check_mode(n)
    beta = check_positive("beta", beta)
    with np.errstate(divide="ignore"):
        return float(2.0 * math.log(n) + np.log(ive(n, beta)) + beta)


def mode_rate(n: int, beta: float) -> float:
    """The growth rate ``a_n = n^2 I_n(beta)`` of mode ``n`` of the causal linearisation.

    Parameters
    ----------
    n : int
        Fourier mode ``>= 1``.
    beta : float
        Inverse temperature ``> 0``.

    Returns
    -------
    float
        ``n^2 I_n(beta)`` (``inf`` beyond float64 range, ``beta > ~700``).
    """
    with np.errstate(over="ignore"):
        return float(np.exp(log_mode_rate(n, beta)))


# ------------------------------------------------------------------ the kernel in closed form


def _log_f(s: np.ndarray, lam: float) -> np.ndarray:
    """``log F(s)``, ``F(s) = e^{lam s} - 1`` (``s`` at ``lam = 0``); ``-inf`` at ``s = 0``."""
    with np.errstate(divide="ignore"):
        if lam == 0.0:
            return np.log(s)
        return lam * s + np.log(-np.expm1(-lam * s))


def _log_fprime(s: np.ndarray, lam: float) -> np.ndarray:
    """``log F'(s)`` (``log lam + lam s``; ``0`` at ``lam = 0``)."""
    if lam == 0.0:
        return np.zeros_like(s)
    return math.log(lam) + lam * s


def _f_ratio(s: np.ndarray, lam: float) -> np.ndarray:
    """``F'(s)/F(s)`` (``inf`` at ``s = 0``)."""
    with np.errstate(divide="ignore"):
        if lam == 0.0:
            return 1.0 / s
        return lam / (-np.expm1(-lam * s))


def _log_ive(nu: int, z: np.ndarray) -> np.ndarray:
    """``log ive(nu, z)`` for ``z > 0``; beyond ``z = 1e8`` (where scipy returns nan from
    ``~1e12`` on) the Hankel expansion ``-log(2 pi z)/2 - (4 nu^2 - 1)/(8 z)`` (error
    ``O(z^-2)``)."""
    large = z > _Z_LARGE
    zs = np.where(large, 1.0, z)
    zl = np.where(large, z, 1.0)
    with np.errstate(divide="ignore"):
        small = np.log(ive(nu, zs))
    asym = -0.5 * np.log(2.0 * math.pi * zl) - (4.0 * nu * nu - 1.0) / (8.0 * zl)
    return np.where(large, asym, small)


def _log_psi(log_c: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log psi_c(y)``, ``psi_c(y) = sqrt(c/y) I_1(2 sqrt(c y))``, for ``c > 0``, ``y >= 0``."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        z = 2.0 * np.exp(0.5 * (log_c + np.log(y)))
        big = z >= _Z_SMALL
        zb = np.where(big, z, 1.0)
        exact = math.log(2.0) - np.log(zb) + _log_ive(1, zb) + zb
        series = np.log1p(z * z / 8.0)
        out = log_c + np.where(big, exact, series)
    # z = inf (y = inf at s = 0, or c y beyond 1e616): log psi is itself infinite.
    return np.where(np.isinf(z), np.inf, out)


def _psi_log_slope(log_c: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``psi_c'(y)/psi_c(y) = sqrt(c/y) I_2(z)/I_1(z)``, ``z = 2 sqrt(c y)`` (``c/2`` at 0)."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_y = np.log(y)
        z = 2.0 * np.exp(0.5 * (log_c + log_y))
        big = np.isfinite(z) & (z >= _Z_SMALL)
        zb = np.where(big, z, 1.0)
        root = np.exp(0.5 * (log_c - np.where(big, log_y, 0.0)))  # sqrt(c/y)
        exact = root * np.exp(_log_ive(2, zb) - _log_ive(1, zb))
        out = np.where(big, exact, 0.5 * np.exp(log_c))
        # I_2/I_1 -> 1 as z -> inf: psi'/psi -> sqrt(c/y) (0 at y = inf, s = 0).
        out = np.where(np.isinf(z), np.exp(0.5 * (log_c - log_y)), out)
    return out


def _log_kernel(log_a: float, lam: float, t: np.ndarray, s: np.ndarray, sigma: float):
    """``log R(t; sigma, s)`` on broadcast ``t, s``; returns (log R, L, log c)."""
    t, s = _broadcast(t, s)
    below = s <= sigma
    sb = np.where(below, s, sigma)
    log_fs = _log_f(np.asarray(sigma, dtype=np.float64), lam)
    with np.errstate(divide="ignore", invalid="ignore"):
        big_l = np.maximum(log_fs - _log_f(sb, lam), 0.0)  # L = log(F(sigma)/F(s)) >= 0
        log_kap = _log_fprime(sb, lam) - log_fs
        log_c = np.log(t) + log_a
        tpos = t > 0
        lc = np.where(tpos, log_c, 0.0)
        out = np.where(tpos, log_kap + _log_psi(lc, big_l), -np.inf)
    out = np.where(below, out, -np.inf)  # causality: nothing after the target
    return out, big_l, log_c


def correlation_kernel(
    n: int,
    beta: float,
    lam: float,
    t: object,
    s: object,
    *,
    target: float = 1.0,
    log: bool = False,
) -> np.ndarray:
    """The limit density ``R_n(t; target, s)`` of ``N E[e^{-i n theta_J(t)} e^{i n theta_k(0)}]``.

    For iid uniform tokens, ``J = target N`` (default: the last token) and ``k = s N``, as
    ``N -> infinity``: ``R_n = kappa(target, s) psi_{a_n t}(log(F(target)/F(s)))``,
    ``psi_c(y) = sqrt(c/y) I_1(2 sqrt(c y))``, ``a_n = n^2 I_n(beta)`` (module docstring). The
    full limit measure also has the atom ``delta(s - target)`` of mass 1 (the target token
    itself), which is not included: at ``s = target`` the value is the continuous extension
    ``a_n t kappa(target, target)``. ``R = 0`` for ``s > target`` (causality) and at ``t = 0``;
    ``R = inf`` at ``s = 0`` for ``t > 0`` (integrable primacy singularity).

    Parameters
    ----------
    n : int
        Fourier mode ``>= 1``.
    beta : float
        Inverse temperature ``> 0``.
    lam : float
        ALiBi slope ``>= 0``.
    t : array_like
        Times ``>= 0``.
    s : array_like
        Source positions in ``[0, 1]``; broadcast against ``t``.
    target : float
        Target position in ``(0, 1]`` (``1``: the last token).
    log : bool
        Return ``log R`` (``-inf`` where ``R = 0``): finite where ``R`` would overflow.

    Returns
    -------
    numpy.ndarray
        ``R_n`` (or its log) with the broadcast shape of ``t`` and ``s``.
    """
    n = _check_mode(n)
    beta = check_positive("beta", beta)
    lam = check_slope(lam)
    t_arr = _check_times(t)
    s_arr = _check_positions(s)
    sigma = _check_target(target)
    _broadcast(t_arr, s_arr)
    out, _, _ = _log_kernel(log_mode_rate(n, beta), lam, t_arr, s_arr, sigma)
    if log:
        return out
    with np.errstate(over="ignore"):
        return np.exp(out)


# -------------------------------------------------------------------------- retrieval score


def _log_score_terms(beta, lam, t, s, w):
    """Per-mode ``log(omega_n R_n)`` and ``psi'/psi`` stacked on a leading axis of modes."""
    logs, slopes = [], []
    for n, wn in enumerate(w, start=1):
        log_a = log_mode_rate(n, beta)
        lr, big_l, log_c = _log_kernel(log_a, lam, t, s, 1.0)
        with np.errstate(divide="ignore"):
            logs.append(lr + np.log(wn))
        slopes.append(_psi_log_slope(np.where(np.isfinite(log_c), log_c, 0.0), big_l))
    return np.stack(logs), np.stack(slopes)


def _logsumexp0(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=0)
    mf = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = mf + np.log(np.sum(np.exp(x - mf), axis=0))
    return np.where(np.isposinf(m), np.inf, np.where(np.isneginf(m), -np.inf, out))


def retrieval_score(
    beta: float,
    lam: float,
    t: object,
    s: object,
    *,
    weights: object = None,
    n_max: int = 20,
    resolution: float = 8.0,
    log: bool = False,
) -> np.ndarray:
    """The retrieval profile ``S_t(s) = sum_n omega_n R_n(t; 1, s)`` (closed form).

    Parameters
    ----------
    beta : float
        Inverse temperature ``> 0``.
    lam : float
        ALiBi slope ``>= 0``.
    t : array_like
        Times ``>= 0``.
    s : array_like
        Source positions in ``[0, 1]``; broadcast against ``t``.
    weights : array_like, optional
        ``(n_modes,)`` non-negative weights of the modes ``1..n_modes``; default
        :func:`retrieval_weights` ``(n_max, resolution)`` (the companion code's
        ``e^{-pi^2 n^2/(2 M^2)}``, ``M = resolution``).
    n_max, resolution : int, float
        Used when ``weights`` is None.
    log : bool
        Return ``log S`` (a log-sum-exp over the modes).

    Returns
    -------
    numpy.ndarray
        ``S`` (or ``log S``) with the broadcast shape of ``t`` and ``s``.
    """
    beta = check_positive("beta", beta)
    lam = check_slope(lam)
    t_arr = _check_times(t)
    s_arr = _check_positions(s)
    w = _score_weights(weights, n_max, resolution)
    _broadcast(t_arr, s_arr)
    logs, _ = _log_score_terms(beta, lam, t_arr, s_arr, w)
    out = _logsumexp0(logs)
    if log:
        return out
    with np.errstate(over="ignore"):
        return np.exp(out)


def retrieval_score_slope(
    beta: float,
    lam: float,
    t: object,
    s: object,
    *,
    weights: object = None,
    n_max: int = 20,
    resolution: float = 8.0,
    relative: bool = False,
) -> np.ndarray:
    """The slope ``d S_t / d s`` of the retrieval profile, analytic.

    ``d_s R_n = R_n [lam - (F'(s)/F(s)) psi'(L)/psi(L)]``, ``psi_c'/psi_c = sqrt(c/y) I_2/I_1``
    (module docstring); ``s = 1`` uses the one-sided limit.

    Parameters
    ----------
    beta, lam, t, s, weights, n_max, resolution
        As in :func:`retrieval_score`; ``s`` in ``(0, 1]``.
    relative : bool
        Return ``(d S/d s) / S`` (finite wherever ``S`` overflows; its sign is the slope's).

    Returns
    -------
    numpy.ndarray
        The slope with the broadcast shape of ``t`` and ``s`` (0 where ``S = 0``, i.e. ``t = 0``).
    """
    beta = check_positive("beta", beta)
    lam = check_slope(lam)
    t_arr = _check_times(t)
    s_arr = _check_positions(s)
    if np.any(s_arr <= 0):
        raise ValueError("s must lie in (0, 1] for the slope (the profile is infinite at 0)")
    w = _score_weights(weights, n_max, resolution)
    t_b, s_b = _broadcast(t_arr, s_arr)
    logs, ratios = _log_score_terms(beta, lam, t_b, s_b, w)
    bracket = lam - _f_ratio(s_b, lam)[None] * ratios  # (modes, ...)
    log_tot = _logsumexp0(logs)
    lt = np.where(np.isfinite(log_tot), log_tot, 0.0)
    rel = np.sum(np.exp(logs - lt) * bracket, axis=0)
    rel = np.where(np.isfinite(log_tot), rel, 0.0)
    if relative:
        return rel
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(np.isfinite(log_tot), rel * np.exp(lt), 0.0)


def t_crit(
    beta: float,
    lam: float,
    *,
    weights: object = None,
    n_max: int = 20,
    resolution: float = 8.0,
) -> float:
    """The largest time with recency: the score increases at ``s = 1`` iff ``0 < t < t_crit``.

    ``t_crit = 2 (1 - e^{-lam}) sum_n omega_n a_n / sum_n omega_n a_n^2`` (the slope at
    ``s = 1`` is ``kappa11 t sum_n omega_n a_n (lam - kappa11 a_n t / 2)``; module docstring),
    computed with ``ive``-scaled rates (no overflow). ``0`` for ``lam = 0``.

    Parameters
    ----------
    beta, lam, weights, n_max, resolution
        As in :func:`retrieval_score`.

    Returns
    -------
    float
        ``t_crit >= 0``.
    """
    beta = check_positive("beta", beta)
    lam = check_slope(lam)
    w = _score_weights(weights, n_max, resolution)
    n = np.arange(1, w.size + 1, dtype=np.float64)
    scaled = n * n * ive(n, beta)  # a_n e^{-beta}
    num = np.sum(w * scaled)
    den = np.sum(w * scaled * scaled)
    if den == 0.0 or not np.isfinite(den):
        raise ValueError(f"beta = {beta!r} is outside the range where I_n(beta) is representable")
    return float(-2.0 * np.expm1(-lam) * num / den * math.exp(-beta))


def profile_minimum(
    beta: float,
    lam: float,
    t: float,
    *,
    weights: object = None,
    n_max: int = 20,
    resolution: float = 8.0,
    n_grid: int = 1024,
) -> float:
    """Position of the interior minimum of the retrieval profile ``s -> S_t(s)``.

    The sign of the analytic slope (:func:`retrieval_score_slope`, relative form) is sampled
    at ``n_grid`` points of ``(0, 1]`` (uniform, plus a geometric refinement towards 0); each
    change from ``-`` to ``+`` is refined with ``scipy.optimize.brentq`` (``xtol = 1e-12``), and
    the local minimum with the smallest ``S`` is returned.

    Parameters
    ----------
    beta, lam, weights, n_max, resolution
        As in :func:`retrieval_score`.
    t : float
        Time ``> 0``.
    n_grid : int
        Number of sample points of the slope's sign (``>= 16``).

    Returns
    -------
    float
        ``s_min`` in ``(0, 1)``, or ``nan`` when the profile has no interior local minimum
        (e.g. ``t >= t_crit``: no recency).
    """
    beta = check_positive("beta", beta)
    lam = check_slope(lam)
    t_v = check_positive("t", t)
    w = _score_weights(weights, n_max, resolution)
    n_grid = check_int("n_grid", n_grid, 16)
    grid = np.unique(
        np.concatenate([np.geomspace(1e-8, 1.0 / n_grid, 32), np.linspace(0, 1, n_grid + 1)[1:]])
    )

    def slope(x: float) -> float:
        return float(retrieval_score_slope(beta, lam, t_v, x, weights=w, relative=True))

    sg = retrieval_score_slope(beta, lam, t_v, grid, weights=w, relative=True)
    idx = np.flatnonzero((sg[:-1] < 0) & (sg[1:] > 0))
    if idx.size == 0:
        return math.nan
    roots = [brentq(slope, grid[i], grid[i + 1], xtol=1e-12) for i in idx]
    vals = retrieval_score(beta, lam, t_v, np.array(roots), weights=w, log=True)
    return float(roots[int(np.argmin(vals))])


# ------------------------------------------------------------------------ the discrete route


def discrete_correlation(
    n: int, beta: float, lam: float, t: object, n_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``N``-token linearised correlations ``N expm(t A_N)[N-1, :]``, ``A_N = a_n w``.

    ``w = alibi_weights(N, lam)``, ``a_n = n^2 I_n(beta)``; ``expm(t A_N)[j, k]`` is
    ``E[e^{-i n theta_j(t)} e^{i n theta_k(0)}]`` at leading order for iid uniform tokens
    (module docstring), ``scipy.linalg.expm`` per time.

    Parameters
    ----------
    n : int
        Fourier mode ``>= 1``.
    beta, lam : float
        Inverse temperature ``> 0`` and ALiBi slope ``>= 0``.
    t : array_like
        Times ``>= 0``, scalar or 1-D.
    n_tokens : int
        ``N >= 2`` (at most 4096).

    Returns
    -------
    s : numpy.ndarray, shape (N,)
        Token positions ``(k+1)/N``.
    corr : numpy.ndarray, shape (n_t, N)
        ``N expm(t A_N)[N-1, k]`` per time (the last column is ``N``: the last token's own
        phase, the atom of the limit); the other entries converge to
        :func:`correlation_kernel` at ``s = (k+1)/N`` at the rate ``O(1/N)``.
    """
    n = _check_mode(n)
    beta = check_positive("beta", beta)
    lam = check_slope(lam)
    t_arr = np.atleast_1d(_check_times(t))
    if t_arr.ndim != 1:
        raise ValueError(f"t must be a scalar or 1-D, got shape {t_arr.shape}")
    n_tokens = check_int("n_tokens", n_tokens, 2)
    if n_tokens > _MAX_TOKENS:
        raise ValueError(f"n_tokens must be at most {_MAX_TOKENS}, got {n_tokens}")
    a = mode_rate(n, beta)
    if not np.isfinite(a) or a * float(np.max(t_arr)) > 600.0:
        raise ValueError(
            f"t * n^2 I_n(beta) = {a * float(np.max(t_arr)):.3g} is too large for the matrix "
            "exponential (at most 600); use correlation_kernel(..., log=True)"
        )
    w = alibi_weights(n_tokens, lam)
    corr = np.empty((t_arr.size, n_tokens))
    for i, ti in enumerate(t_arr):
        corr[i] = n_tokens * scipy.linalg.expm(ti * a * w)[-1]
    s = np.arange(1, n_tokens + 1, dtype=np.float64) / n_tokens
    return s, corr


def discrete_retrieval_score(
    beta: float,
    lam: float,
    t: object,
    n_tokens: int,
    *,
    weights: object = None,
    n_max: int = 20,
    resolution: float = 8.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``N``-token retrieval profile ``sum_n omega_n N expm(t A_N^{(n)})[N-1, :]``.

    Parameters
    ----------
    beta, lam, t, weights, n_max, resolution
        As in :func:`retrieval_score` (``t`` scalar or 1-D).
    n_tokens : int
        ``N >= 2``.

    Returns
    -------
    s : numpy.ndarray, shape (N,)
        Token positions ``(k+1)/N``.
    score : numpy.ndarray, shape (n_t, N)
        Per time; the last column carries the atom ``N sum_n omega_n``.
    """
    w = _score_weights(weights, n_max, resolution)
    total = None
    s = np.empty(0)
    for n, wn in enumerate(w, start=1):
        if wn == 0.0:
            continue
        s, c = discrete_correlation(n, beta, lam, t, n_tokens)
        total = wn * c if total is None else total + wn * c
    assert total is not None  # weights are not all zero
    return s, total
