"""Metastability at low temperature on the circle: cluster counts and the energy staircase.

(One idea, one module: both studies rest on the same linear theory and counting criterion
derived below, and half of the module is that derivation.)

Both studies run SA on ``S^1`` (``d = 2``, ``Q = K = V = I``), where the uniform law is a
stationary state whose mode ``n`` grows like ``e^{lambda_n t}`` with (DESIGN.md §4)

    lambda_n = n^2 I_n(beta) / (beta I_0(beta))   ~   (n^2/beta) e^{-n^2/(2 beta)},

largest at ``n* ~ sqrt(2 beta)`` with ``lambda_{n*} -> 2/e ~ 0.736`` (:func:`most_unstable_mode`).

**Cluster counts** (:func:`cluster_count_sweep`). Tokens drawn i.i.d. uniform first collapse
into about ``n*`` clusters, then stay there for a time exponentially long in ``beta`` times the
squared spacing: two clusters at angle ``theta`` attract only through ``e^{-beta theta^2/2}``
(at the typical spacing ``2 pi/n*`` this is ``e^{-pi^2} ~ 5e-5``). The clusters are counted at

    t_count = time_factor * log(N) / lambda_{n*}          (time_factor = 1.5 by default).

Why: the empirical measure of N uniform tokens has Fourier coefficients of size ``N^{-1/2}``, so
the unstable modes reach size one after ``log(N) / (2 lambda_{n*})`` (the linear phase), and
the nonlinear collapse into clusters takes about as long again; ``1.5 log N / lambda_{n*}``
leaves a margin after the first clustering and is still short against the merge times. In runs
at beta = 10 ... 1000 with N = 1000 the counts by all thresholds from ``0.25/sqrt(beta)`` to
``2/sqrt(beta)`` agreed from ``1.4 log N / lambda_{n*}`` on; afterwards the count still
decreases slowly, as the closest neighbours merge (beta = 1000: 35 clusters at 1.5, 33 at 2.4).

Clusters are counted with the gap criterion :func:`attnflow.metrics.circle_gap_clusters` at
``gap = gap_factor / sqrt(beta)`` (default 1): the kernel ``e^{beta (cos theta - 1)}`` has
width ``1/sqrt(beta)``, so tokens closer than that still attract at a rate of order one and
merge within a time of order one, while a metastable state has its clusters at spacings of a few
``1/sqrt(beta)`` (``2 pi/n* ~ 4.4/sqrt(beta)``). In the runs above, at the counting time, the
largest gap inside a cluster was below ``0.75/sqrt(beta)`` and the smallest gap between clusters
above ``2.3/sqrt(beta)``: the threshold sits in between. Unlike a histogram the criterion needs
no minimum number of tokens per cluster (n* ~ 45 clusters at beta = 1000), and it counts the
same for any rotation or labelling of the tokens.

**Energy staircase** (:func:`energy_staircase`; Geshkovski, Koubbi, Polyanskiy, Rigollet,
"Dynamic metastability in the self-attention model", 2024). A few tokens at distinct gaps of
order ``theta_ref = log(beta)/sqrt(beta)`` merge one pair at a time, each merge after an
exponentially long plateau; the energy ``E = (1/2 beta) sum_ij w_i w_j e^{beta <x_i, x_j>}``
(non-decreasing along the flow) is a staircase. Two tokens of equal mass at angle ``theta``
close their gap as

    dtheta/dt = -2 sin(theta) / (1 + e^{beta (1 - cos theta)})     (:func:`pair_merge_time`),

in a time ``~ e^{beta theta^2/2} / (beta theta^2)``: for ``theta = a theta_ref`` the log of the
merge time is ``~ a^2 (log beta)^2 / 2``, the same multiple ``a^2`` of ``log T_ref`` at every
beta, ``T_ref`` being the merge time of a pair at ``theta_ref``. The staircases are therefore
shown in the rescaled time

    s = log(1 + t) / log(1 + T_ref),

in which a lone pair at gap ``a theta_ref`` merges at ``s ~ a^2`` whatever beta, and the
whole staircase is a fixed finite profile (the energy reaches its maximum at finite ``s``). A
linear rescaling (``t / T_ref``) lines up at most one step: the others lie ``e^{c (log beta)^2}``
apart. With the default configuration the steps of beta = 500, 1000, 2000, 4000 lie within 0.03
of one another in ``s`` for the first four merges, within 0.12 for the last (``s ~ 2.3``).

With the defaults the last merge happens at ``t ~ 5e28`` for beta = 4000, where float64 cannot
resolve the time of order one a merge takes, and the plateau velocities are down to ``e^{-60}``
times the self-attention term. Three choices keep the integration exact in relative precision:

* the velocity of token ``i`` is the model's velocity (the shared kernel engine) evaluated in
  the frame rotated by ``-theta_i``: the target is ``(1, 0)`` and the sources
  ``(cos(theta_j - theta_i), sin(theta_j - theta_i))``, so the angular velocity is the second
  component of the field, ``sum_j w_j e^{beta (cos - 1)} sin(theta_j - theta_i) / Z`` with no
  cancellation (in the plain frame the tangent projection subtracts two numbers of size one and
  leaves a round-off of ``1e-16``, which swamps a plateau velocity of ``e^{-40}``); the model is
  rotation-invariant, so this is the same field;
* tokens closer than ``1e-9 / sqrt(beta)`` (reached a time of order 20 after a merge) are
  replaced by one token at their weighted mean carrying their summed weight, which SA moves
  exactly as the coincident tokens: merged tokens would otherwise contract at a rate of order
  one, a stiff mode against plateaus of ``1e28``. What remains is not stiff (each gap evolves
  on the time scale of its own merge), so the explicit DOP853 (order 8, ``rtol``, ``atol``)
  integrates it, with steps as long as the plateaus;
* the system being autonomous, the integrator's clock is restarted at zero after every exact
  merge and whenever the elapsed local time exceeds ``1e6`` steps, so that steps of order one
  stay representable at ``t = 1e28`` (the global time is carried separately).

The merge times agree to ``1e-6`` (relative) between ``rtol = 1e-8`` and ``1e-10``, and a lone
pair at ``theta_ref`` merges at ``T_ref`` (the quadrature) to the same precision.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from scipy.integrate import DOP853, quad
from scipy.optimize import brentq
from scipy.special import gammaln, ive

from attnflow import metrics
from attnflow.cloud import Cloud
from attnflow.laws import UniformSphere
from attnflow.model import SelfAttention
from attnflow.particles.ensemble import ensemble
from attnflow.solutions import Status
from attnflow.studies.convergence import fit_slope
from attnflow.validation import check_betas, check_int, check_positive

__all__ = [
    "ClusterCountStudy",
    "StaircaseStudy",
    "cluster_count_sweep",
    "default_gaps",
    "energy_staircase",
    "log_growth_rates",
    "most_unstable_mode",
    "pair_merge_time",
    "unstable_band",
]

logger = logging.getLogger(__name__)


# -- linear theory ---------------------------------------------------------------------------
def log_growth_rates(
    beta: float,
    degrees: np.ndarray | Sequence[int],
    *,
    d: int = 2,
    normalized: bool = True,
    rescale_usa: bool = False,
) -> np.ndarray:
    """``log lambda_l``: growth rates of the degree-``l`` harmonics of the uniform law on S^{d-1}.

    Q = K = V = I. Write ``K rho(x) = int e^{beta <x, y>} rho(y) dsigma(y)``; since
    ``int e^{beta<x,y>} y rho(y) dy = (1/beta) grad_x K rho``, the field is
    ``X = (1/beta) grad_S log K rho`` (SA) or ``(1/beta) grad_S K rho`` (USA). By Funk–Hecke a
    degree-``l`` spherical harmonic ``Y_l`` is an eigenfunction of ``K``,
    ``K Y_l = mu_l Y_l`` with (``nu = d/2 - 1``)::

        mu_l = |S^{d-2}| int_{-1}^1 e^{beta t} P_l^{(d)}(t) (1 - t^2)^{(d-3)/2} dt
             = (2 pi)^{d/2} beta^{-nu} I_{l + nu}(beta)

    (``P_l^{(d)}`` the Gegenbauer polynomial normalised to ``P_l(1) = 1``; d = 2:
    ``2 pi I_l``; d = 3: ``4 pi i_l``). Linearising ``d_t rho + div(rho X) = 0`` at
    ``rho_0 = 1/|S^{d-1}|`` with ``rho = rho_0 + eps Y_l`` and ``-Delta_S Y_l = l(l+d-2) Y_l``::

        SA:  lambda_l = l (l + d - 2) mu_l / (beta mu_0)
                      = l (l + d - 2) I_{l+nu}(beta) / (beta I_nu(beta)),
        USA: lambda_l = l (l + d - 2) rho_0 mu_l / beta
                      = l (l + d - 2) 2^nu Gamma(nu + 1) beta^{-nu-1} I_{l+nu}(beta),

    times ``e^{-beta}`` for USA with ``rescale_usa``. For d = 2 these are
    ``n^2 I_n/(beta I_0)`` and ``n^2 I_n/beta``. The USA rate is the SA rate times
    ``rho_0 mu_0`` (the mean of the kernel), which does not depend on ``l``: both have the same
    most unstable mode and band. As ``beta -> inf``,
    ``I_{l+nu}/I_nu ~ e^{-l(l+d-2)/(2 beta)}``, so the SA rate is ``~ L e^{-L/2}`` in
    ``L = l(l+d-2)/beta``: largest at ``l* ~ sqrt(2 beta)`` with ``lambda* -> 2/e``, in every
    dimension. Computed with ``scipy.special.ive`` (scaled): finite for any beta.

    Parameters
    ----------
    beta : inverse temperature (finite, > 0).
    degrees : (L,) degrees ``l >= 1``.
    d : ambient dimension (>= 2): the sphere S^{d-1}.
    normalized : SA (True) or USA (False).
    rescale_usa : USA with the field times ``e^{-beta}`` (``SelfAttention(rescale_usa=True)``).

    Returns
    -------
    (L,) ``log lambda_l``.
    """
    beta = check_positive("beta", beta)
    d = check_int("d", d, 2)
    ll = np.asarray(degrees, dtype=float)
    if ll.ndim != 1 or np.any(ll < 1) or np.any(ll != np.round(ll)):
        raise ValueError("degrees must be a 1-D sequence of integers >= 1")
    nu = 0.5 * d - 1.0
    log_i = np.log(ive(ll + nu, beta))  # log I_{l+nu}(beta) - beta
    log_l = np.log(ll * (ll + d - 2))
    if normalized:
        return log_l + log_i - math.log(beta) - math.log(ive(nu, beta))
    shift = 0.0 if rescale_usa else beta
    return (
        log_l
        + nu * math.log(2.0)
        + gammaln(nu + 1.0)
        - (nu + 1.0) * math.log(beta)
        + (log_i + shift)
    )


def _degrees(beta: float) -> np.ndarray:
    """Degrees 1 .. max(16, 6 sqrt(2 beta)): the rates beyond are below e^{-30} of the top."""
    return np.arange(1, max(16, math.ceil(6.0 * math.sqrt(2.0 * beta))) + 1)


def most_unstable_mode(
    beta: float, *, d: int = 2, normalized: bool = True, rescale_usa: bool = False
) -> tuple[int, float]:
    """The most unstable degree of the uniform law on ``S^{d-1}`` (Q = K = V = I).

    Returns ``(l*, lambda_{l*})``, the argmax over ``l >= 1`` of the rates of
    :func:`log_growth_rates` and the rate itself (d = 2, SA: ``n^2 I_n(beta)/(beta I_0(beta))``;
    ``l* ~ sqrt(2 beta)`` and ``lambda_{l*} -> 2/e`` as beta grows, in any dimension). ``l*``
    is the same for SA and USA; the USA rate is ``inf`` when it exceeds the float range
    (plain USA at beta > ~700: use ``rescale_usa``).
    """
    beta = check_positive("beta", beta)
    n = _degrees(beta)
    lam = log_growth_rates(beta, n, d=d, normalized=normalized, rescale_usa=rescale_usa)
    k = int(np.argmax(lam))
    with np.errstate(over="ignore"):
        return int(n[k]), float(np.exp(lam[k]))


def unstable_band(beta: float, *, d: int = 2, fraction: float = 0.5) -> tuple[int, int]:
    """The band ``[l_lo, l_hi]`` of degrees growing at least ``fraction`` times as fast as
    the most unstable one (``0 < fraction <= 1``; default: the full width at half maximum).

    Every degree ``l >= 1`` grows (``I_{l+nu}(beta) > 0``): without noise the uniform state
    has no stable band, so "unstable band" means the modes that matter. Starting from
    fluctuations of size ``a`` (``N^{-1/2}`` for N tokens), the top mode reaches size one at
    ``t = log(1/a)/lambda*``, when a mode of the half-maximum band has grown to ``a^{1/2}``
    at least and one outside it to at most ``a^{1/2}``. SA and USA have the same band (their
    rates differ by a factor independent of ``l``); the rates are unimodal in ``l``, so the
    band is an interval.
    """
    beta = check_positive("beta", beta)
    fraction = check_positive("fraction", fraction)
    if fraction > 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    n = _degrees(beta)
    lam = log_growth_rates(beta, n, d=d)
    inside = n[lam >= lam.max() + math.log(fraction)]
    return int(inside.min()), int(inside.max())


# -- cluster counts --------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterCountStudy:
    """Cluster counts of uniform initial tokens at the metastable time, against beta.

    Attributes
    ----------
    betas : (B,) inverse temperatures.
    counts : (B, R) number of clusters of every run.
    mean, sd : (B,) mean and sample standard deviation (0 for one run) over the runs.
    n_star : (B,) most unstable mode ``n*(beta)`` of the linear theory.
    growth_rate : (B,) its rate ``lambda_{n*}``.
    t_count : (B,) time at which the clusters were counted.
    gap : (B,) gap threshold of the counting criterion, in radians.
    exponent : least-squares slope of ``log mean`` on ``log beta`` (``nan`` for one beta);
        ``n* ~ sqrt(2 beta)`` predicts 1/2.
    n_tokens : tokens per run.
    """

    betas: np.ndarray
    counts: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    n_star: np.ndarray
    growth_rate: np.ndarray
    t_count: np.ndarray
    gap: np.ndarray
    exponent: float
    n_tokens: int


def cluster_count_sweep(
    betas: Sequence[float],
    *,
    n_tokens: int = 1024,
    n_runs: int = 4,
    seed: int = 0,
    time_factor: float = 1.5,
    gap_factor: float = 1.0,
    dt: float = 0.1,
    comm: Any = None,
) -> ClusterCountStudy:
    """Count the clusters formed from i.i.d. uniform tokens on ``S^1`` at every beta.

    Every beta runs the same ``n_runs`` initial clouds (run ``r`` draws from
    ``SeedSequence(seed).spawn(n_runs)[r]``, :func:`attnflow.ensemble`; common random numbers
    make the fitted exponent less noisy) with the particle solver (RK4, step ``dt``) up to
    ``t_count = time_factor log(n_tokens) / lambda_{n*}`` and counts the clusters with
    :func:`attnflow.metrics.circle_gap_clusters` at ``gap = gap_factor / sqrt(beta)`` (see the
    module docstring for both choices). Use ``n_tokens`` well above ``n*`` (a few tens of
    tokens per cluster: 1024 for beta up to 1000). The runs are dealt over ``comm``.

    Parameters
    ----------
    betas : (B,) inverse temperatures, finite and > 0.
    n_tokens, n_runs : tokens per run (>= 2) and runs per beta (>= 1).
    seed : seed of the initial clouds.
    time_factor : ``t_count`` in units of ``log(n_tokens) / lambda_{n*}``.
    gap_factor : the gap threshold in units of ``1/sqrt(beta)``.
    dt : RK4 step.
    comm : an ``mpi4py`` communicator (default: serial).

    Returns
    -------
    :class:`ClusterCountStudy`.
    """
    b = check_betas(betas)
    n_tokens = check_int("n_tokens", n_tokens, 2)
    n_runs = check_int("n_runs", n_runs, 1)
    time_factor = check_positive("time_factor", time_factor)
    gap_factor = check_positive("gap_factor", gap_factor)
    dt = check_positive("dt", dt)
    law = UniformSphere(2)
    counts, n_star, rates, t_count, gaps = [], [], [], [], []
    for beta in b:
        ns, lam = most_unstable_mode(beta)
        t = time_factor * math.log(n_tokens) / lam
        gap = gap_factor / math.sqrt(beta)
        if gap >= 2.0 * np.pi:
            raise ValueError(f"gap_factor / sqrt(beta) must be < 2 pi, got {gap:g} at {beta:g}")
        ens = ensemble(
            SelfAttention(2, beta),
            law,
            n_tokens,
            n_runs,
            t,
            dt=dt,
            seed=seed,
            save_times=[0.0, t],
            comm=comm,
        )
        if ens.status is not Status.SUCCESS or ens.x.shape[1] < 2:
            raise FloatingPointError(f"a particle run failed at beta={beta:g}: {ens.status}")
        c = [metrics.circle_gap_clusters(x[-1], gap=gap) for x in ens.x]
        logger.info(
            "beta=%g: n*=%d, %.1f clusters at t=%.3g (%d runs of %d tokens)",
            beta,
            ns,
            np.mean(c),
            t,
            n_runs,
            n_tokens,
        )
        counts.append(c)
        n_star.append(ns)
        rates.append(lam)
        t_count.append(t)
        gaps.append(gap)
    counts_a = np.asarray(counts, dtype=np.int64)
    mean = counts_a.mean(axis=1)
    sd = counts_a.std(axis=1, ddof=1) if n_runs > 1 else np.zeros(b.size)
    exponent = fit_slope(b, mean) if np.unique(b).size > 1 else math.nan
    return ClusterCountStudy(
        betas=b,
        counts=counts_a,
        mean=mean,
        sd=sd,
        n_star=np.asarray(n_star, dtype=np.int64),
        growth_rate=np.asarray(rates),
        t_count=np.asarray(t_count),
        gap=np.asarray(gaps),
        exponent=exponent,
        n_tokens=n_tokens,
    )


# -- two tokens ------------------------------------------------------------------------------
def pair_merge_time(beta: float, theta: float, threshold: float) -> float:
    """Time two tokens of equal mass at angle ``theta`` take to come within ``threshold``.

    SA on ``S^1`` with Q = K = V = I: the gap obeys
    ``dtheta/dt = -2 sin(theta) / (1 + e^{beta (1 - cos theta)})``, so the time is
    ``int_threshold^theta (1 + e^{beta (1 - cos u)}) / (2 sin u) du`` (adaptive quadrature;
    0 if ``theta <= threshold``). Requires ``0 < threshold`` and ``theta < pi``.
    """
    beta = check_positive("beta", beta)
    theta, threshold = float(theta), check_positive("threshold", threshold)
    if not theta < np.pi:
        raise ValueError(f"theta must be < pi, got {theta!r}")
    if theta <= threshold:
        return 0.0
    if beta * (1.0 - math.cos(theta)) > 700.0:
        raise ValueError("theta is too wide: the merge time overflows (beta (1 - cos theta) > 700)")

    def rate(u: float) -> float:
        return (1.0 + math.exp(beta * (1.0 - math.cos(u)))) / (2.0 * math.sin(u))

    val, _ = quad(rate, threshold, theta, limit=500, epsrel=1e-12, epsabs=0.0)
    return float(val)


# -- the staircase ---------------------------------------------------------------------------
def default_gaps(n_tokens: int) -> np.ndarray:
    """The default initial gaps of :func:`energy_staircase`, in units of ``theta_ref``.

    The ``n_tokens - 1`` gaps ``0.4 ... 0.8`` (evenly spaced) in increasing order, except that
    the second largest comes first: for 6 tokens ``(0.7, 0.4, 0.5, 0.6, 0.8)``. The smallest
    gaps close first, one at a time, and the clusters they make are then at distinct distances
    from one another, so the later merges are one at a time too; for 6 tokens the steps are
    spread evenly over ``s = 0 ... 2.4`` (a search over the orderings of these gaps).
    """
    n_tokens = check_int("n_tokens", n_tokens, 2)
    if n_tokens == 2:
        return np.array([0.6])
    g = np.linspace(0.4, 0.8, n_tokens - 1)
    return np.concatenate([g[-2:-1], g[:-2], g[-1:]])


@dataclass(frozen=True)
class StaircaseStudy:
    """The energy staircase of a few tokens on ``S^1`` at several beta.

    Attributes
    ----------
    betas : (B,) inverse temperatures.
    gaps : (n_tokens - 1,) initial gaps between consecutive tokens, in units of ``theta_ref``.
    theta_ref : (B,) the reference angle ``log(beta) / sqrt(beta)``.
    threshold : (B,) tokens closer than this (``1/sqrt(beta)``) are one cluster.
    t_ref : (B,) merge time of a lone pair at ``theta_ref`` (:func:`pair_merge_time`).
    rescaled_times : (n_save,) ``s = log(1 + t) / log(1 + t_ref)``, common to every beta.
    times : (B, n_save) the times ``t = (1 + t_ref)^s - 1`` of every beta.
    angles : (B, n_save, n_tokens) token angles (radians, unwrapped, in the initial order).
    log_energy : (B, n_save) ``log E`` (:meth:`SelfAttention.log_energy`).
    log_energy_ratio : (B, n_save) ``log(E / E_max)``, ``E_max = e^beta / (2 beta)`` the energy of
        a single point: ``<= 0``, equal to ``log sum_c m_c^2`` on a plateau of clusters of masses
        ``m_c`` (up to ``e^{-beta theta^2/2}`` cross terms), and to 0 once all tokens merged.
    n_clusters : (B, n_save) number of clusters (:func:`attnflow.metrics.circle_gap_clusters`
        at ``threshold``).
    merge_times : (B, n_tokens - 1) times at which two neighbouring clusters came within
        ``threshold``, increasing (``nan`` for merges after the last time).
    rescaled_merge_times : (B, n_tokens - 1) the same in the rescaled time.
    n_evaluations : (B,) right-hand side evaluations of every integration.
    """

    betas: np.ndarray
    gaps: np.ndarray
    theta_ref: np.ndarray
    threshold: np.ndarray
    t_ref: np.ndarray
    rescaled_times: np.ndarray
    times: np.ndarray
    angles: np.ndarray
    log_energy: np.ndarray
    log_energy_ratio: np.ndarray
    n_clusters: np.ndarray
    merge_times: np.ndarray
    rescaled_merge_times: np.ndarray
    n_evaluations: np.ndarray


class _Clusters:
    """Tokens merged into groups (a group moves as one token carrying the summed weight), and
    the angular velocity of the groups from the model's velocity in the frame of each group."""

    def __init__(self, model: SelfAttention, theta: np.ndarray, w: np.ndarray) -> None:
        self.model = model
        self.members = [[i] for i in range(theta.size)]
        self.theta = theta.astype(float).copy()
        self.w = w.astype(float).copy()
        self.n_evaluations = 0
        self._e1 = np.array([[1.0, 0.0]])

    def rhs(self, t: float, th: np.ndarray) -> np.ndarray:
        self.n_evaluations += 1
        out = np.empty_like(th)
        for i in range(th.size):
            d = th - th[i]
            src = np.stack([np.cos(d), np.sin(d)], axis=1)
            out[i] = self.model.evaluate(self._e1, Cloud(src, self.w))[0, 1]
        return out

    def tokens(self, th: np.ndarray) -> np.ndarray:
        """(n_tokens,) token angles from the (n_groups,) group angles."""
        out = np.empty(sum(len(m) for m in self.members))
        for a, m in zip(th, self.members, strict=True):
            out[m] = a
        return out

    def merge(self, th: np.ndarray, tol: float) -> bool:
        """Merge neighbouring groups closer than ``tol`` (at their weighted mean angle)."""
        close = np.flatnonzero(np.diff(th) < tol)
        if close.size == 0:
            self.theta = th.copy()
            return False
        members, theta, w = [list(self.members[0])], [th[0]], [self.w[0]]
        for k in range(1, th.size):
            if k - 1 in close:
                theta[-1] = (w[-1] * theta[-1] + self.w[k] * th[k]) / (w[-1] + self.w[k])
                w[-1] += self.w[k]
                members[-1] += self.members[k]
            else:
                members.append(list(self.members[k]))
                theta.append(th[k])
                w.append(self.w[k])
        self.members, self.theta, self.w = members, np.array(theta), np.array(w)
        return True


#: Groups of tokens closer than this fraction of the cluster threshold move as one token.
_MERGE_FRACTION = 1e-9
#: The integrator's clock is restarted when its local time exceeds this many steps.
_RESTART_RATIO = 1e6


def _integrate(
    groups: _Clusters, t_save: np.ndarray, threshold: float, rtol: float, atol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Token angles (n_save, n_tokens) at ``t_save`` (increasing, from 0) and the times at
    which neighbouring groups came within ``threshold``, in order (DOP853, clock restarts,
    exact merges of coincident groups)."""
    n = groups.theta.size
    out = np.empty((t_save.size, n))
    out[0] = groups.tokens(groups.theta)
    merges: list[float] = []
    t_end = float(t_save[-1])
    offset, k_save, first = 0.0, 1, None

    def start() -> DOP853:
        bound = max(t_end - offset, 0.0)
        h = None if first is None else min(first, bound)
        return DOP853(groups.rhs, 0.0, groups.theta, bound, rtol=rtol, atol=atol, first_step=h)

    solver = start()
    while k_save < t_save.size:
        if groups.theta.size == 1:  # one cluster left: it stays where it is
            out[k_save:] = groups.tokens(groups.theta)
            break
        t_old, y_old = solver.t, solver.y.copy()
        msg = solver.step()
        if solver.status == "failed":
            raise FloatingPointError(f"the integrator failed at t={offset + t_old:.6g}: {msg}")
        dense = solver.dense_output()
        t_new, y_new = solver.t, solver.y.copy()
        while k_save < t_save.size and t_save[k_save] - offset <= t_new:
            u = min(max(t_save[k_save] - offset, t_old), t_new)
            out[k_save] = groups.tokens(dense(u))
            k_save += 1
        g_old, g_new = np.diff(y_old), np.diff(y_new)
        for k in np.flatnonzero((g_old >= threshold) & (g_new < threshold)):

            def gap(u: float, k: int = k, dense=dense) -> float:
                y = dense(u)
                return y[k + 1] - y[k] - threshold

            a, b = gap(t_old), gap(t_new)
            u = brentq(gap, t_old, t_new, xtol=1e-13 * t_new, rtol=1e-12) if a * b < 0 else t_new
            merges.append(offset + u)
        if solver.status == "finished":
            out[k_save:] = groups.tokens(y_new)
            break
        merged = groups.merge(y_new, _MERGE_FRACTION * threshold)
        if merged or solver.t > _RESTART_RATIO * solver.step_size:
            offset += solver.t
            first = solver.step_size
            solver = start()
    return out, np.asarray(merges)


def energy_staircase(
    betas: Sequence[float] = (500, 1000, 2000, 4000),
    *,
    n_tokens: int = 6,
    gaps: Sequence[float] | None = None,
    s_final: float = 2.75,
    n_save: int = 251,
    rtol: float = 1e-8,
    atol: float = 1e-11,
) -> StaircaseStudy:
    """Energy staircase of ``n_tokens`` tokens on ``S^1`` (SA, Q = K = V = I) at every beta.

    The tokens start on an arc at consecutive gaps ``gaps[k] * theta_ref``,
    ``theta_ref = log(beta)/sqrt(beta)`` (default :func:`default_gaps`), with equal weights,
    centred on the angle 0. Their angles are integrated (see the module docstring: the model's
    velocity in the frame of each token, DOP853 with ``rtol``, ``atol``) up to the rescaled time
    ``s_final`` and saved at ``n_save`` rescaled times ``s`` evenly spaced in ``[0, s_final]``,
    ``t = (1 + t_ref)^s - 1``. Tokens closer than ``1/sqrt(beta)`` count as one cluster; a merge
    time is the first time two neighbouring tokens come that close.

    Parameters
    ----------
    betas : (B,) inverse temperatures, finite and > 0 (beta >= 20: the gaps must be < pi and
        wider than the threshold).
    n_tokens : number of tokens (>= 2).
    gaps : (n_tokens - 1,) positive gaps in units of ``theta_ref`` (default
        ``default_gaps(n_tokens)``); distinct gaps make the merges happen one at a time.
    s_final : last rescaled time (> 0); with the default gaps the 5 merges of 6 tokens are done
        by ``s ~ 2.4`` for beta = 500 ... 4000.
    n_save : number of saved times (>= 2).
    rtol, atol : tolerances of the integrator (angles in radians).

    Returns
    -------
    :class:`StaircaseStudy`.
    """
    b = check_betas(betas)
    n_tokens = check_int("n_tokens", n_tokens, 2)
    g = default_gaps(n_tokens) if gaps is None else np.asarray(gaps, dtype=float).ravel()
    if g.shape != (n_tokens - 1,) or not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError(f"gaps must hold n_tokens - 1 = {n_tokens - 1} finite numbers > 0")
    s_final = check_positive("s_final", s_final)
    n_save = check_int("n_save", n_save, 2)
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    s = np.linspace(0.0, s_final, n_save)
    w = np.full(n_tokens, 1.0 / n_tokens)
    res: dict[str, list] = {k: [] for k in ("ref", "thr", "tref", "t", "th", "le", "nc", "mt")}
    nfev = []
    for beta in b:
        theta_ref = math.log(beta) / math.sqrt(beta)
        thr = 1.0 / math.sqrt(beta)
        span = float(g.sum()) * theta_ref
        if span >= np.pi or g.min() * theta_ref <= thr:
            raise ValueError(
                f"betas: at beta={beta:g} the gaps span {span:.3g} rad (must be < pi) and the "
                f"smallest is {g.min() * theta_ref:.3g} (must exceed 1/sqrt(beta) = {thr:.3g})"
            )
        model = SelfAttention(2, beta)
        t_ref = pair_merge_time(beta, theta_ref, thr)
        t = np.expm1(s * math.log1p(t_ref))
        t[0] = 0.0
        th0 = np.concatenate([[0.0], np.cumsum(g * theta_ref)])
        th0 -= th0.mean()
        groups = _Clusters(model, th0, w)
        threads = numba.get_num_threads()
        numba.set_num_threads(1)  # a few tokens: threads would only add synchronisation
        try:
            th, found = _integrate(groups, t, thr, rtol, atol)
        finally:
            numba.set_num_threads(threads)
        if found.size > n_tokens - 1:
            raise RuntimeError(f"beta={beta:g}: {found.size} merges of {n_tokens} tokens")
        merge = np.full(n_tokens - 1, np.nan)
        merge[: found.size] = np.sort(found)
        pts = np.stack([np.cos(th), np.sin(th)], axis=-1)
        le = np.array([model.log_energy(p, w) for p in pts])
        nc = np.array([metrics.circle_gap_clusters(p, w, gap=thr) for p in pts])
        logger.info(
            "staircase beta=%g: t_ref=%.3g, merges at s=%s, %d evaluations",
            beta,
            t_ref,
            np.round(np.log1p(merge) / math.log1p(t_ref), 3),
            groups.n_evaluations,
        )
        for key, val in zip(res, (theta_ref, thr, t_ref, t, th, le, nc, merge), strict=True):
            res[key].append(val)
        nfev.append(groups.n_evaluations)
    b_col = b[:, None]
    log_energy = np.asarray(res["le"])
    t_ref = np.asarray(res["tref"])
    merge_times = np.asarray(res["mt"])
    return StaircaseStudy(
        betas=b,
        gaps=g,
        theta_ref=np.asarray(res["ref"]),
        threshold=np.asarray(res["thr"]),
        t_ref=t_ref,
        rescaled_times=s,
        times=np.asarray(res["t"]),
        angles=np.asarray(res["th"]),
        log_energy=log_energy,
        log_energy_ratio=log_energy - b_col + np.log(2.0 * b_col),
        n_clusters=np.asarray(res["nc"], dtype=np.int64),
        merge_times=merge_times,
        rescaled_merge_times=np.log1p(merge_times) / np.log1p(t_ref)[:, None],
        n_evaluations=np.asarray(nfev, dtype=np.int64),
    )
