"""Spectral kernel sums of the zonal kernel ``e^{kappa <x, y>}`` on S^1 and S^2.

For targets ``x_i`` and weighted sources ``(y_j, w_j)`` on the unit circle or sphere,
:func:`zonal_sums` returns the sums of :func:`attnflow.kernels.kernel_sums` (``a = kappa x``,
``b = values = y``) in O(n_t + n_s + L^2 log L) instead of O(n_t n_s):

- S^1: ``e^{kappa cos t} = sum_n I_n(kappa) e^{i n t}``. One type-1 non-uniform FFT of the
  weights (``finufft``) gives ``c_n = sum_j w_j e^{-i n phi_j}``; the denominator is the type-2
  transform of ``I_n c_n`` and the numerator ``sum_j w_j e^{...} (cos phi_j + i sin phi_j)`` the
  transform of ``I_n c_{n-1}`` (the same coefficients shifted by one: no extra source transform).
- S^2 (Funk-Hecke): ``e^{kappa <x, y>} = 4 pi sum_{l, m} i_l(kappa) Y_lm(x) conj Y_lm(y)``,
  ``i_l(kappa) = sqrt(pi / (2 kappa)) I_{l+1/2}(kappa)``. One adjoint spherical-harmonic
  synthesis of the weights (``ducc0.sht``, up to degree L + 1) gives ``a_lm``; the coefficients
  of the three measures ``w_j y_j[c] delta_{y_j}`` follow *exactly* from ``a_lm`` by the
  recurrences of ``x Y_lm``, ``y Y_lm``, ``z Y_lm`` (no division by kappa, so the numerator has
  the same error bound as the denominator at every kappa); four syntheses (den + 3 components)
  evaluate them at the targets.

Negative ``kappa`` uses ``I_n(-k) = (-1)^n I_n(k)``, ``i_l(-k) = (-1)^l i_l(k)``. Every
coefficient is scaled by ``e^{-|kappa|}`` (``scipy.special.ive``), so nothing overflows.

Units and shift. The results are in units of the kernel's bound ``W e^{|kappa|}`` (``W`` the
total weight over all ranks): ``shift_i = |kappa| + log W``, so ``den_i`` is in ``(0, 1]`` for
spectral targets (not ``>= 1`` as in the engine; recomputed targets carry the engine's shift).

Truncation rule (a priori). Let ``t_n = 2 ive(n, |kappa|)`` (S^1) or
``t_l = (2l + 1) sqrt(pi/(2|kappa|)) ive(l + 1/2, |kappa|)`` (S^2, ``|P_l| <= 1``). The truncated
kernel differs from the kernel by at most ``T(L) = sum_{n > L} t_n`` (units of ``e^{|kappa|}``),
and since ``|y_j[c]| <= 1`` every component of den and num is off by at most ``W e^{|kappa|} T(L)``.
The ratios ``t_{n+1}/t_n`` decrease in ``n`` (Turan's inequality ``I_v^2 > I_{v-1} I_{v+1}``, times
the decreasing ``(2l+3)/(2l+1)``), so ``T(L) <= t_{L+1} / (1 - t_{L+2}/t_{L+1})`` once that ratio
is below 1. ``L`` is the smallest degree with this bound ``<= eps = max(TRUST * tol, 1e-16)``:
it grows like ``sqrt(2 |kappa| log(1/eps))`` (tol = 1e-10, S^2: L = 14, 30, 85, 263 at
kappa = 1, 10, 100, 1000; S^1: 13, 29, 82, 255).

Transforms. The libraries are asked for ``lib_eps = max(eps, LIB_EPS_MIN)`` (ducc0 refuses
< 2e-13; finufft's rounding is ~1e-14). Their error is relative to the size of the function they
produce, so it is taken as ``TRANSFORM_ERROR * lib_eps * sup`` where ``sup <= 1`` bounds the
truncated expansion on the whole circle / sphere, computed from the summed coefficients
(``sum_n |I_n c_n| / W``; on S^2 ``sum_l 4 pi |i_l| |a_l| sqrt((2l+1)/(4 pi)) / W``, Cauchy-Schwarz
and the addition theorem). That factor is empirical (measured <= 1.7, taken as 4), not a proof.
The expansion's absolute error is ``err = T(L) + TRANSFORM_ERROR * lib_eps * sup``.

Untrustworthy targets. Target ``i`` is trusted when ``den_i >= (2/tol + 1) err``. Then the true
denominator is ``>= 2 err/tol``, so ``|den error| <= tol/2 * den`` and, since
``|num/den| <= 1`` (a convex combination of unit vectors), ``|num/den error| <= tol`` (relative
to the speed bound 1 of the unit sources), ``|num error| <= tol/2 * den``. The other targets (far
from all mass at larger kappa) are recomputed exactly with the engine; with MPI collectively:
the bad targets of every rank are gathered, every rank sums its own sources at them (the
engine), and the partial sums are combined with log-sum-exp (a max and a sum Allreduce), so
the work is spread over the ranks. ``zonal_sums(...).recomputed`` is their number over all
ranks.

Range: ``|kappa| <= MAX_KAPPA`` (1e4); beyond, a one-line ``ValueError`` says to use the direct
engine. The guarantee costs recomputation where ``den`` is small against ``err / tol``: far from
the mass at large kappa, and everywhere on S^2 at tol ~1e-12 (ducc0 stops at 3e-13 relative),
where the result is then the engine's: ``benchmarks/spectral.py`` prints the counts.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.special

__all__ = [
    "LIB_EPS_MIN",
    "MAX_KAPPA",
    "TRANSFORM_ERROR",
    "TRUST",
    "SpectralPlan",
    "spectral_plan",
    "tail_bound",
    "zonal_sums",
]

logger = logging.getLogger(__name__)

#: Largest ``|kappa|`` accepted (the direct engine is the method beyond).
MAX_KAPPA = 1.0e4
#: The absolute accuracy aimed at is ``TRUST * tol`` (floored at 1e-16): targets whose
#: denominator is above ~``2 TRUST`` of its bound are trusted when the transforms allow it.
TRUST = 1.0e-5
#: Smallest accuracy requested from the libraries (ducc0 refuses < 2e-13 in double).
LIB_EPS_MIN = {2: 1.0e-13, 3: 3.0e-13}
#: Transform error per unit of the requested library accuracy and of ``sup`` (the bound on the
#: expansion's maximum over the circle / sphere): measured <= 1.7 (tests/test_spectral.py and
#: benchmarks/spectral.py print the ratio).
TRANSFORM_ERROR = 4.0


@dataclass(frozen=True)
class SpectralPlan:
    """Truncation of one spectral sum (a priori: depends on kappa, d and tol only).

    Attributes
    ----------
    degree : L, the largest Fourier mode (S^1) or harmonic degree (S^2) kept.
    tail : a priori bound ``T(L)`` on the neglected kernel coefficients (units of ``e^{|kappa|}``).
    lib_eps : the accuracy requested from finufft / ducc0.
    tol : the requested relative tolerance.
    """

    degree: int
    tail: float
    lib_eps: float
    tol: float

    def error(self, sup: float) -> float:
        """Absolute error of den and of every component of num (units of ``W e^{|kappa|}``)
        when the expansion is bounded by ``sup`` (<= 1) on the whole circle / sphere."""
        return self.tail + TRANSFORM_ERROR * self.lib_eps * sup

    def floor(self, sup: float) -> float:
        """Targets with (unit) ``den < (2/tol + 1) error`` are recomputed."""
        return (2.0 / self.tol + 1.0) * self.error(sup)


def _magnitudes(kappa: float, d: int, n: int) -> np.ndarray:
    """(n,) ``t_0..t_{n-1}``: the bounds of the kernel's terms per mode / degree, units of
    ``e^{|kappa|}`` (their sum is 1 + ive(0) on S^1 and 1 on S^2)."""
    k = abs(kappa)
    deg = np.arange(n, dtype=float)
    if k == 0.0:
        return (deg == 0).astype(float)
    if d == 2:
        t = 2.0 * scipy.special.ive(deg, k)
        t[0] *= 0.5
        return t
    return (2.0 * deg + 1.0) * math.sqrt(math.pi / (2.0 * k)) * scipy.special.ive(deg + 0.5, k)


def tail_bound(kappa: float, d: int, L: int) -> float:
    """A priori bound ``T(L)`` on ``sum_{n > L} t_n`` (see the module docstring); ``inf`` when
    ``t_{L+2} / t_{L+1} >= 1`` (L below the peak of the coefficients)."""
    t = _magnitudes(kappa, d, L + 3)
    t1, t2 = t[L + 1], t[L + 2]
    if t1 == 0.0:
        return 0.0
    r = t2 / t1
    return math.inf if r >= 1.0 else float(t1 / (1.0 - r))


def _degree(kappa: float, d: int, eps: float) -> tuple[int, float]:
    """Smallest ``L`` with ``tail_bound(L) <= eps`` and that bound."""
    n = int(math.sqrt(2.0 * abs(kappa) * math.log(1.0 / eps)) + math.log(1.0 / eps)) + 8
    while True:
        t = _magnitudes(kappa, d, n)
        t1, t2 = t[1:-1], t[2:]  # t_{L+1}, t_{L+2} for L = 0 .. n - 3
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(t1 > 0.0, t2 / t1, 0.0)
            bound = np.where(t1 > 0.0, t1 / (1.0 - np.minimum(r, 1.0)), 0.0)
        ok = np.flatnonzero((r < 1.0) & (bound <= eps))
        if ok.size:
            return int(ok[0]), float(bound[ok[0]])
        n *= 2


def spectral_plan(kappa: float, d: int, tol: float) -> SpectralPlan:
    """Truncation degree and error budget for ``e^{kappa <x, y>}`` on S^{d-1} at ``tol``."""
    eps = max(TRUST * tol, 1e-16)
    L, tail = _degree(kappa, d, eps)
    return SpectralPlan(L, tail, max(eps, LIB_EPS_MIN[d]), tol)


#: Below this many points (sources + targets) the transforms run on one thread (thread start-up
#: and synchronisation cost more than they save).
_THREADED_POINTS = 50_000


def _nthreads(n_points: int) -> int:
    """numba's thread count (the project's one threading knob), 1 for small transforms."""
    import numba

    return 1 if n_points < _THREADED_POINTS else int(numba.get_num_threads())


def _check(
    targets: np.ndarray, sources: np.ndarray, weights: np.ndarray, kappa: float, tol: float
) -> None:
    if targets.ndim != 2 or targets.shape[1] not in (2, 3):
        raise ValueError(f"zonal_sums: targets must be (n, 2) or (n, 3), got {targets.shape}")
    d = targets.shape[1]
    if sources.ndim != 2 or sources.shape[1] != d:
        raise ValueError(f"zonal_sums: sources must be (n, {d}), got {sources.shape}")
    if weights.shape != (sources.shape[0],):
        raise ValueError(f"zonal_sums: weights must be ({sources.shape[0]},), got {weights.shape}")
    if weights.size and not (np.all(np.isfinite(weights)) and weights.min() >= 0.0):
        raise ValueError("zonal_sums: weights must be finite and >= 0")
    if not math.isfinite(kappa):
        raise ValueError(f"zonal_sums: kappa must be finite, got {kappa!r}")
    if abs(kappa) > MAX_KAPPA:
        raise ValueError(
            f"zonal_sums: |kappa| = {abs(kappa):g} > {MAX_KAPPA:g} is beyond the spectral "
            "method; use the direct engine (kernel='recomputed')"
        )
    if not 0.0 < tol < 1.0:
        raise ValueError(f"zonal_sums: tol must be in (0, 1), got {tol!r}")


def _allreduce(comm: Any, buf: np.ndarray, op: str = "SUM") -> np.ndarray:
    if comm is None or comm.size == 1:
        return buf
    from mpi4py import MPI

    comm.Allreduce(MPI.IN_PLACE, buf, op=getattr(MPI, op))
    return buf


# -- S^1 ---------------------------------------------------------------------------------------


def _circle(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    kappa: float,
    plan: SpectralPlan,
    comm: Any,
    values: bool,
) -> tuple[float, np.ndarray, np.ndarray, float]:
    import finufft

    L = plan.degree
    # fixed upsampling: a point's contribution does not depend on the other points of the call
    opts = {"eps": plan.lib_eps, "nthreads": _nthreads(len(x) + len(y)), "upsampfac": 2.0}
    n_modes = 2 * L + 3  # c_n for n = -(L+1) .. L+1
    buf = np.zeros(2 * n_modes + 1)
    phi = None
    if y.shape[0]:
        phi = np.arctan2(y[:, 1], y[:, 0])
        c = finufft.nufft1d1(phi, w.astype(complex), n_modes=n_modes, isign=-1, **opts)
        buf[:-1] = c.view(float)
        buf[-1] = w.sum()
    buf = _allreduce(comm, buf)  # the one Allreduce of the coefficients (and W)
    W = float(buf[-1])
    c = buf[:-1].view(complex)
    if W <= 0.0 or x.shape[0] == 0:
        return W, np.zeros(x.shape[0]), np.zeros((x.shape[0], 2 if values else 0)), 0.0
    n = np.arange(-L, L + 1)
    coef = scipy.special.ive(np.abs(n), abs(kappa)) * (np.sign(kappa) ** np.abs(n)) / W
    sup = float(np.sum(np.abs(coef * c[1:-1])))  # >= max over the circle of the unit den
    f = [coef * c[1:-1]] + ([coef * c[:-2]] if values else [])  # I_n c_n, I_n c_{n-1}
    theta = phi if x is y else np.arctan2(x[:, 1], x[:, 0])
    out = finufft.nufft1d2(theta, np.array(f), isign=1, **opts)
    num = np.stack([out[1].real, out[1].imag], axis=1) if values else np.zeros((len(x), 0))
    return W, out[0].real, num, sup


# -- S^2 ---------------------------------------------------------------------------------------


def _loc(p: np.ndarray) -> np.ndarray:
    """(n, 2) colatitude, longitude of the points ``p`` (n, 3) (arctan2: accurate at the
    poles too)."""
    loc = np.empty((p.shape[0], 2))
    x0, x1 = p[:, 0], p[:, 1]
    np.arctan2(np.sqrt(x0 * x0 + x1 * x1), p[:, 2], out=loc[:, 0])
    phi = np.arctan2(x1, x0)
    phi[phi < 0.0] += 2.0 * np.pi
    loc[:, 1] = phi
    return loc


#: ducc0 oversampling window: fixed, so that a point's contribution does not depend on how many
#: points share the call (the same result on any number of ranks, to round-off).
_SIGMA = {"sigma_min": 1.95, "sigma_max": 2.0}


@functools.lru_cache(maxsize=8)
def _lm(lmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(l, m) of every entry of a healpy-ordered a_lm array of degree ``lmax``."""
    m = np.concatenate([np.full(lmax + 1 - k, k) for k in range(lmax + 1)])
    ell = np.concatenate([np.arange(k, lmax + 1) for k in range(lmax + 1)])
    return ell, m


def _hidx(ell: np.ndarray, m: np.ndarray, lmax: int) -> np.ndarray:
    return m * (2 * lmax + 1 - m) // 2 + ell


def _rc(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``sqrt(num / den)`` where ``num > 0`` (0 elsewhere, including where ``den <= 0``)."""
    ok = (num > 0) & (den > 0)
    return np.where(ok, np.sqrt(np.where(ok, num, 0.0) / np.where(ok, den, 1.0)), 0.0)


def _moments(a: np.ndarray, L: int) -> list[np.ndarray]:
    """The a_lm (degree L, healpy order) of ``w y_x``, ``w y_y``, ``w y_z`` from the a_lm ``a``
    (degree L + 1) of ``w``: ``z Y_lm``, ``(x -+ i y) Y_lm`` in terms of ``Y_{l+-1, m'}``
    (Condon-Shortley phase; exact)."""
    L1 = L + 1
    # dense table G[l + 1, m + L1 + 1] for l in -1..L1+1, |m| <= l (zero elsewhere)
    G = np.zeros((L1 + 3, 2 * L1 + 3), dtype=complex)
    ell1, m1 = _lm(L1)
    G[ell1 + 1, m1 + L1 + 1] = a
    sign = np.where(m1 % 2 == 0, 1.0, -1.0)
    G[ell1 + 1, -m1 + L1 + 1] = sign * np.conj(a)  # a_{l,-m} = (-1)^m conj(a_lm) (real field)
    ell, m = _lm(L)
    lf, mf = ell.astype(float), m.astype(float)

    def g(dl: int, dm: int) -> np.ndarray:
        return G[ell + dl + 1, m + dm + L1 + 1]

    up = (2 * lf + 1) * (2 * lf + 3)
    dn = (2 * lf - 1) * (2 * lf + 1)
    bz = _rc((lf + 1) ** 2 - mf**2, up) * g(1, 0) + _rc(lf**2 - mf**2, dn) * g(-1, 0)
    bp = _rc((lf - mf + 1) * (lf - mf + 2), up) * g(1, -1) - _rc((lf + mf) * (lf + mf - 1), dn) * g(
        -1, -1
    )
    bm = -_rc((lf + mf + 1) * (lf + mf + 2), up) * g(1, 1) + _rc((lf - mf) * (lf - mf - 1), dn) * g(
        -1, 1
    )
    return [(bp + bm) / 2.0, (bp - bm) / 2.0j, bz]


def _sphere(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    kappa: float,
    plan: SpectralPlan,
    comm: Any,
    values: bool,
) -> tuple[float, np.ndarray, np.ndarray, float]:
    import ducc0

    L, nt = plan.degree, _nthreads(len(x) + len(y))
    L1 = L + 1 if values else L
    n_alm = (L1 + 1) * (L1 + 2) // 2
    buf = np.zeros(2 * n_alm + 1)
    y_loc = None
    if y.shape[0]:
        y_loc = _loc(y)
        a = ducc0.sht.adjoint_synthesis_general(
            map=w[None, :], spin=0, lmax=L1, loc=y_loc, epsilon=plan.lib_eps, nthreads=nt, **_SIGMA
        )
        buf[:-1] = a[0].view(float)
        buf[-1] = w.sum()
    buf = _allreduce(comm, buf)  # the one Allreduce of the coefficients (and W)
    W = float(buf[-1])
    a = buf[:-1].view(complex)
    if W <= 0.0 or x.shape[0] == 0:
        return W, np.zeros(x.shape[0]), np.zeros((x.shape[0], 3 if values else 0)), 0.0
    ell, m = _lm(L)
    k = abs(kappa)
    if k == 0.0:
        gl = (np.arange(L + 1) == 0) * 4.0 * np.pi
    else:
        deg = np.arange(L + 1, dtype=float)
        gl = 4.0 * np.pi * math.sqrt(math.pi / (2.0 * k)) * scipy.special.ive(deg + 0.5, k)
        gl *= np.sign(kappa) ** np.arange(L + 1)
    a0 = a[_hidx(ell, m, L1)]
    # >= max over the sphere of the unit den: |sum_m a_lm Y_lm| <= |a_l| sqrt((2l+1)/(4 pi))
    norm2 = np.bincount(ell, weights=np.where(m > 0, 2.0, 1.0) * np.abs(a0) ** 2, minlength=L + 1)
    sup = float(np.sum(np.abs(gl) * np.sqrt(norm2 * (2.0 * np.arange(L + 1) + 1.0) / (4 * np.pi))))
    sup /= W
    gl = gl[ell] / W
    alms = [a0] + (_moments(a, L) if values else [])
    loc = y_loc if x is y else _loc(x)  # zonal_sums passes the same array when it can
    den = np.empty(x.shape[0])
    num = np.empty((x.shape[0], 3 if values else 0))
    for b, out in zip(alms, [den, *num.T], strict=True):  # written in place (strided is fine)
        ducc0.sht.synthesis_general(
            alm=(gl * b)[None, :],
            spin=0,
            lmax=L,
            loc=loc,
            epsilon=plan.lib_eps,
            nthreads=nt,
            map=out[None, :],
            **_SIGMA,
        )
    return W, den, num, sup


# -- untrustworthy targets ---------------------------------------------------------------------


def _exact(
    bad_x: np.ndarray, y: np.ndarray, w: np.ndarray, kappa: float, comm: Any, values: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Engine sums at this rank's ``bad_x`` over the sources of all ranks (collective).

    Every rank sums its own sources at the bad targets of all ranks; the partial sums are
    combined with log-sum-exp (a max then a sum Allreduce); each rank keeps its own rows."""
    from attnflow.kernels import kernel_sums

    d = y.shape[1]
    vals = y if values else np.zeros((y.shape[0], 0))
    if comm is None or comm.size == 1:
        s = kernel_sums(kappa * bad_x, y, vals, w)
        return s.shift, s.den, s.num
    from mpi4py import MPI

    counts = np.array(comm.allgather(int(bad_x.shape[0])), dtype=np.int64)
    everyone = np.empty((int(counts.sum()), d))
    comm.Allgatherv(
        np.ascontiguousarray(bad_x, dtype=float),
        [everyone, counts * d, np.concatenate([[0], np.cumsum(counts * d)[:-1]]), MPI.DOUBLE],
    )
    if y.shape[0]:
        s = kernel_sums(kappa * everyone, y, vals, w)
        shift, den, num = s.shift, s.den, s.num
    else:
        shift = np.full(everyone.shape[0], -np.inf)
        den, num = np.zeros(everyone.shape[0]), np.zeros((everyone.shape[0], vals.shape[1]))
    g = _allreduce(comm, shift.copy(), "MAX")
    with np.errstate(invalid="ignore"):
        f = np.where(np.isfinite(shift), np.exp(shift - g), 0.0)
    buf = _allreduce(comm, np.concatenate([den * f, (num * f[:, None]).ravel()]))
    lo = int(counts[: comm.rank].sum())
    hi = lo + bad_x.shape[0]
    n_all = everyone.shape[0]
    return g[lo:hi], buf[:n_all][lo:hi], buf[n_all:].reshape(n_all, -1)[lo:hi]


# -- the public function -----------------------------------------------------------------------


def zonal_sums(
    targets: np.ndarray,
    sources: np.ndarray,
    weights: np.ndarray,
    kappa: float,
    *,
    tol: float = 1e-10,
    comm: Any = None,
    values: bool = True,
) -> Any:
    """Kernel sums of ``e^{kappa <x, y>}`` on S^1 or S^2 by spectral expansion.

    Parameters
    ----------
    targets : (n_t, d) unit vectors ``x_i`` (d = 2 or 3), this rank's targets.
    sources : (n_s, d) unit vectors ``y_j``, this rank's sources.
    weights : (n_s,) weights ``w_j >= 0``.
    kappa : the kernel's real exponent (``beta q k`` for Q = qI, K = kI); ``|kappa| <= 1e4``.
    tol : relative tolerance of den (and of num/den, relative to the speed bound 1) at every
        target; targets the expansion cannot guarantee are recomputed exactly.
    comm : an mpi4py communicator (collective over it) or ``None`` (serial).
    values : compute the numerator (``False``: ``num`` has 0 columns).

    Returns
    -------
    KernelSums ``(shift, den, num)`` with ``shift`` (n_t,), ``den`` (n_t,), ``num`` (n_t, d) (or
    (n_t, 0)), such that ``den_i = sum_j w_j exp(kappa <x_i, y_j> - shift_i)`` and ``num_i =
    sum_j w_j exp(kappa <x_i, y_j> - shift_i) y_j`` (sums over the sources of all ranks), as
    :func:`attnflow.kernels.kernel_sums` with ``a = kappa x``, ``b = values = y``. Spectral
    targets have ``shift_i = |kappa| + log W`` and ``den_i`` in ``(0, 1]``; recomputed targets
    have the engine's shift. Extra attributes: ``recomputed`` (int, the number of targets
    recomputed exactly, over all ranks), ``plan`` (the :class:`SpectralPlan`) and ``error``
    (float, the absolute error bound of the spectral den and num components, units of
    ``W e^{|kappa|}``; this rank's). No weight anywhere: ``shift = -inf``, ``den = num = 0``.
    """
    from attnflow.kernels import KernelSums

    x = np.ascontiguousarray(targets, dtype=float)
    y = x if sources is targets else np.ascontiguousarray(sources, dtype=float)
    w = np.ascontiguousarray(weights, dtype=float)
    kappa = float(kappa)
    _check(x, y, w, kappa, tol)
    d = x.shape[1]
    plan = spectral_plan(kappa, d, tol)
    W, den, num, sup = (_circle if d == 2 else _sphere)(x, y, w, kappa, plan, comm, values)
    floor = plan.floor(sup)
    if W <= 0.0:
        return _result(KernelSums(np.full(x.shape[0], -np.inf), den, num), 0, plan, 0.0)
    shift = np.full(x.shape[0], abs(kappa) + math.log(W))
    bad = ~(den >= floor)  # also catches NaN
    n_bad = int(bad.sum())
    total = n_bad if comm is None or comm.size == 1 else int(comm.allreduce(n_bad))
    if total:  # the same branch on every rank: _exact is collective
        shift[bad], den[bad], num[bad] = _exact(x[bad], y, w, kappa, comm, values)
        logger.debug(
            "zonal_sums: %d targets below the trusted floor %.3g recomputed exactly",
            total,
            floor,
        )
    return _result(KernelSums(shift, den, num), total, plan, plan.error(sup))


def _result(res: Any, recomputed: int, plan: SpectralPlan, error: float) -> Any:
    # KernelSums is a frozen dataclass: the diagnostics are set as plain instance attributes.
    object.__setattr__(res, "recomputed", recomputed)
    object.__setattr__(res, "plan", plan)
    object.__setattr__(res, "error", error)
    return res
