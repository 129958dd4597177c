"""Noise-driven phase transitions of self-attention on the sphere: theory and a spectral reference.

(One idea: the stationary equation ``rho = e^{Phi[rho]/(beta sigma)}/Z`` of the noisy mean-field
equation — its linearisation at the uniform state, its amplitude expansion there, and its
numerical solution by collocation, which checks both.)

The model (Q = K = V = I on ``S^{d-1}``, density ``rho`` w.r.t. the surface measure, unit mass):

    d_t rho + div(rho X[rho]) = sigma Delta rho,
    X = (1/beta) grad_S Phi[rho],   Phi = K rho (USA)  or  log K rho (SA),

with ``K rho(x) = int e^{beta <x, y>} rho(y) dy`` (the ambient identity
``int e^{beta<x,y>} y rho(y) dy = (1/beta) grad_x K rho`` turns both fields into gradients).

Linear theory
-------------
By Funk–Hecke, a degree-``l`` harmonic ``Y_l`` is an eigenfunction of ``K``: ``K Y_l = mu_l Y_l``,
``mu_l = (2 pi)^{d/2} beta^{-nu} I_{l+nu}(beta)``, ``nu = d/2 - 1``, and
``-Delta Y_l = l (l + d - 2) Y_l``. At ``rho_0 = 1/|S^{d-1}|`` the mode ``Y_l`` grows at

    lambda_l(sigma) = lambda_l(0) - sigma l (l + d - 2),

``lambda_l(0)`` the noiseless rate (:func:`attnflow.studies.metastability.log_growth_rates`):
on S^1 ``n^2 (I_n(beta)/(beta I_0(beta)) - sigma)`` (SA) and ``n^2 (I_n(beta)/beta - sigma)``
(USA). Mode ``l`` is unstable iff ``sigma < lambda_l(0) / (l (l + d - 2))``, which is
``I_{l+nu}(beta)/(beta I_nu(beta))`` (SA) or ``2^nu Gamma(nu+1) beta^{-nu-1} I_{l+nu}(beta)``
(USA): decreasing in ``l`` because ``I_{l+nu}(beta)`` is. So **mode 1 always goes first**, at

    sigma_c = I_{d/2}(beta) / (beta I_{d/2-1}(beta))                  (SA),
    sigma_c = 2^{d/2-1} Gamma(d/2) beta^{-d/2} I_{d/2}(beta)          (USA)

(:func:`critical_noise`; USA d = 2: ``I_1(beta)/beta``).

Stationary equations
--------------------
A stationary state has zero flux, ``sigma grad rho = rho grad Phi / beta`` (on S^1 a constant
flux ``J`` integrates to ``J int 1/rho = int X = 0``), hence

    rho = e^{Phi[rho] / (beta sigma)} / Z:   USA  rho = e^{K rho/(beta sigma)} / Z,
                                             SA   rho = (K rho)^{1/(beta sigma)} / Z.

USA is the Wasserstein gradient flow of ``F = sigma int rho log rho - (1/2 beta) iint
e^{beta<x,y>} drho drho``; SA is not a gradient flow, but its stationary states solve the
fixed-point equation above all the same.

Amplitude (Landau) expansion at sigma_c
---------------------------------------
Write ``rho = rho_0 (1 + a P_1(<x,e>) + b P_2(<x,e>) + ...)`` (``P_l`` the Gegenbauer
polynomials with ``P_l(1) = 1``; S^1: ``cos(l theta)``) and ``m = |int x rho| = a/d`` (the order
parameter, the first Fourier amplitude on S^1: ``|int e^{i theta} rho|``). With ``t = <x, e>``
the products needed are ``<t^2> = 1/d``, ``t^2 = 1/d + ((d-1)/d) P_2``, ``t P_2 = (2/(d+2)) t +
...``, ``t^3 = (3/(d+2)) t + ...``. Expanding ``log rho = Phi/(beta sigma) - log Z`` to third
order in ``a`` (``b = O(a^2)``), the ``P_2`` equation gives ``b`` and the ``P_1`` equation the
branch

    (sigma - sigma_c) / sigma_c = g m^2 + O(m^4)          (:func:`landau_coefficient`)

with, for USA (``r = I_{nu+2}/I_{nu+1}``, the ratio ``mu_2/mu_1``)

    b = (d - 1) a^2 / (2 d (1 - r)),    g = d (d r - 1) / ((d + 2)(1 - r)),

and for SA (``r_l = I_{nu+l}/I_nu = mu_l/mu_0``; ``log(1 + v)`` adds terms)

    b = r_1 (1 - r_1)(d - 1) a^2 / (2 d (r_1 - r_2)),
    g = d (1 - r_1)/(d + 2) [ (d - 1) r_2 (1 - r_1)/(r_1 - r_2) - (d r_1 + 1) ].

``g < 0``: the bifurcating branch lives at ``sigma < sigma_c`` (supercritical pitchfork,
continuous transition). ``g > 0``: subcritical, the branch turns back at a fold
``sigma_f > sigma_c`` and a stable non-uniform state coexists with the stable uniform one for
``sigma_c < sigma < sigma_f`` (discontinuous, first-order transition). For **USA** the sign of
``g`` changes at ``d r = 1``, i.e. at ``beta_*`` with

    I_{d/2+1}(beta_*) / I_{d/2}(beta_*) = 1/d:   beta_* = 2.44692 (d = 2), 1.81615 (d = 3)

(:func:`tricritical_beta`), the threshold proved by Mun–Rosenzweig (arXiv:2604.16288 for d = 2,
arXiv:2606.05140 for every d, stated with the coupling ``K = 1/(2 sigma)``:
``K_#(beta) = beta^{d/2}/(2^{d/2} Gamma(d/2) I_{d/2}(beta)) = 1/(2 sigma_c)``); the circle
case is also worked out by Balasubramanian–Banerjee–Rigollet (arXiv:2510.20094). For **SA** the
bracket is ``<= -1`` for every beta (checked numerically for d = 2, 3, 4 on beta in (0, 200]; as
beta -> inf it tends to ``((d-1)^2 - (d+1)^2)/(d+1)^2``): the SA bifurcation is supercritical
for every beta — no first-order transition at the mode-1 threshold.

Spectral reference
------------------
:func:`spectral_stationary_state` solves ``log rho = Phi[rho]/(beta sigma) - log Z`` for
``psi = log rho`` (positivity for free) by Gauss–Newton with the dense Jacobian on

* S^1 (``d = 2``): the uniform grid ``theta_j = 2 pi j/n`` (n odd), ``K`` the circulant matrix
  of the trapezoid rule (spectrally accurate for this periodic analytic integrand);
* S^2 (``d = 3``), axially symmetric states ``rho(t)``: Gauss–Legendre nodes in ``t = cos`` of
  the polar angle, ``K`` from Funk–Hecke, ``K P_l = 4 pi i_l(beta) P_l``.

On S^1 a phase condition ``int rho sin theta = 0`` removes the rotation invariance (the
state is centred at ``theta = 0``). :func:`spectral_branch` follows the mode-1 branch
parametrised by its amplitude ``m`` (``sigma`` is an unknown: the branch passes folds, where
natural continuation in ``sigma`` — :func:`spectral_continuation` — must stop); on S^1 it also
gives the leading eigenvalue of the linearised evolution (:func:`spectral_leading_eigenvalue`)
and the free energy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq
from scipy.special import eval_legendre, ive, roots_legendre

from attnflow.studies.metastability import log_growth_rates
from attnflow.validation import check_int, check_positive, check_real

__all__ = [
    "SpectralBranch",
    "SpectralState",
    "critical_noise",
    "landau_coefficient",
    "noisy_growth_rates",
    "spectral_branch",
    "spectral_continuation",
    "spectral_leading_eigenvalue",
    "spectral_stationary_state",
    "transition_type",
    "tricritical_beta",
]

logger = logging.getLogger(__name__)


# -- linear theory ---------------------------------------------------------------------------
def noisy_growth_rates(
    beta: float,
    sigma: float,
    degrees: np.ndarray | Sequence[int],
    *,
    d: int = 2,
    normalized: bool = True,
) -> np.ndarray:
    """Growth rates ``lambda_l(0) - sigma l (l + d - 2)`` of the degree-``l`` harmonics of the
    uniform state on S^{d-1} with noise ``sigma`` (Q = K = V = I).

    Parameters
    ----------
    beta : inverse temperature (> 0).
    sigma : the diffusion coefficient (>= 0).
    degrees : (L,) degrees ``l >= 1``.
    d : ambient dimension (>= 2).
    normalized : SA (True) or USA (False).

    Returns
    -------
    (L,) rates (negative: the mode decays).
    """
    sigma = _check_sigma(sigma)
    ll = np.asarray(degrees, dtype=float)
    rates = np.exp(log_growth_rates(beta, ll, d=d, normalized=normalized))
    return rates - sigma * ll * (ll + d - 2)


def critical_noise(beta: float, *, d: int = 2, normalized: bool = True) -> float:
    """``sigma_c``: the largest noise at which the uniform state is unstable (mode 1 goes first).

    ``I_{d/2}(beta)/(beta I_{d/2-1}(beta))`` (SA), ``2^{d/2-1} Gamma(d/2) beta^{-d/2}
    I_{d/2}(beta)`` (USA); see the module docstring.
    """
    return float(np.exp(log_growth_rates(beta, [1], d=d, normalized=normalized))[0] / (d - 1))


def _bessel_ratios(beta: float, d: int) -> tuple[float, float, float]:
    """``I_{nu+1}/I_nu, I_{nu+2}/I_nu, I_{nu+2}/I_{nu+1}`` at ``beta`` (nu = d/2 - 1)."""
    nu = 0.5 * d - 1.0
    i0, i1, i2 = (float(ive(nu + k, beta)) for k in range(3))
    return i1 / i0, i2 / i0, i2 / i1


def landau_coefficient(beta: float, *, d: int = 2, normalized: bool = True) -> float:
    """``g`` of the branch from the uniform state: ``(sigma - sigma_c)/sigma_c = g m^2 +
    O(m^4)``, ``m = |int x rho|``. ``g < 0``: continuous (supercritical) transition; ``g > 0``:
    subcritical (a fold at ``sigma > sigma_c``, discontinuous). Formulas in the module
    docstring."""
    beta = check_positive("beta", beta)
    d = check_int("d", d, 2)
    r1, r2, r = _bessel_ratios(beta, d)
    if not normalized:
        return d * (d * r - 1.0) / ((d + 2.0) * (1.0 - r))
    bracket = (d - 1.0) * r2 * (1.0 - r1) / (r1 - r2) - (d * r1 + 1.0)
    return d * (1.0 - r1) / (d + 2.0) * bracket


def tricritical_beta(d: int = 2) -> float:
    """``beta_*`` of USA on S^{d-1}: the root of ``I_{d/2+1}(beta)/I_{d/2}(beta) = 1/d``; the
    transition at ``sigma_c`` is continuous for ``beta < beta_*``, discontinuous beyond."""
    d = check_int("d", d, 2)
    nu = 0.5 * d - 1.0
    return float(brentq(lambda b: ive(nu + 2, b) / ive(nu + 1, b) - 1.0 / d, 1e-6, 1e3, xtol=1e-14))


def transition_type(beta: float, *, d: int = 2, normalized: bool = True) -> str:
    """``"continuous"`` or ``"discontinuous"`` (the sign of :func:`landau_coefficient`)."""
    return (
        "continuous"
        if landau_coefficient(beta, d=d, normalized=normalized) < 0
        else ("discontinuous")
    )


def _check_sigma(sigma: float) -> float:
    a = check_real("sigma", sigma)
    s = float(a) if a.ndim == 0 else np.nan
    if not np.isfinite(s) or s < 0:
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    return s


# -- the spectral discretisation -------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    """Nodes of the reference discretisation (S^1: theta; S^2 axisymmetric: t = cos)."""

    d: int
    beta: float
    nodes: np.ndarray  # (n,) theta (d = 2) or t (d = 3)
    weights: np.ndarray  # (n,) int f dx = weights @ f
    kernel: np.ndarray  # (n, n) e^{-beta} K (weights included): (K rho)_i = e^beta kernel @ rho
    first: np.ndarray  # (n,) <x, e> at the nodes: cos theta or t
    odd: np.ndarray | None  # (n,) sin theta (S^1: the phase condition), None on S^2


def _grid(beta: float, d: int, n: int) -> _Grid:
    if d == 2:
        if n % 2 == 0 or n < 9:
            raise ValueError(f"n must be an odd int >= 9 on S^1 (spectral grid), got {n}")
        theta = 2.0 * np.pi * np.arange(n) / n
        h = 2.0 * np.pi / n
        diff = theta[:, None] - theta[None, :]
        kern = h * np.exp(beta * (np.cos(diff) - 1.0))
        return _Grid(2, beta, theta, np.full(n, h), kern, np.cos(theta), np.sin(theta))
    if d == 3:
        t, w = roots_legendre(n)
        ll = np.arange(n)
        # mu_l e^{-beta} = 4 pi i_l(beta) e^{-beta} = 4 pi sqrt(pi/(2 beta)) ive(l + 1/2, beta)
        mu = 4.0 * np.pi * np.sqrt(np.pi / (2.0 * beta)) * ive(ll + 0.5, beta)
        P = eval_legendre(ll[:, None], t[None, :])  # (L, n)
        kern = np.einsum("l,li,lj,j->ij", mu * (2 * ll + 1) / 2.0, P, P, w)
        return _Grid(3, beta, t, 2.0 * np.pi * w, kern, t, None)
    raise ValueError(f"d must be 2 (S^1) or 3 (S^2, axisymmetric states), got {d}")


def _potential(g: _Grid, rho: np.ndarray, normalized: bool) -> tuple[np.ndarray, np.ndarray]:
    """``Phi = K rho / beta`` (USA) or ``log(K rho)/beta`` (SA, up to a constant) and its
    Jacobian ``dPhi/drho`` (n, n)."""
    kr = g.kernel @ rho
    if normalized:
        return np.log(kr) / g.beta, g.kernel / (g.beta * kr[:, None])
    s = math.exp(g.beta) / g.beta
    return s * kr, s * g.kernel


def _gibbs(g: _Grid, phi: np.ndarray, kappa: float) -> tuple[np.ndarray, float]:
    """The normalised density ``e^{kappa Phi}/Z`` and ``log Z`` (log-sum-exp)."""
    e = kappa * phi
    top = float(e.max())
    z = float(g.weights @ np.exp(e - top))
    log_z = top + math.log(z)
    return np.exp(e - log_z), log_z


def _residual(g: _Grid, psi: np.ndarray, kappa: float, normalized: bool):
    """``H = psi - kappa Phi(e^psi) + log Z``, its Jacobians in psi and kappa."""
    rho = np.exp(psi)
    phi, jphi = _potential(g, rho, normalized)
    dens, log_z = _gibbs(g, phi, kappa)
    h = psi - kappa * phi + log_z
    centred = jphi - np.outer(np.ones_like(psi), (g.weights * dens) @ jphi)
    jac = np.eye(psi.size) - kappa * centred * rho[None, :]
    dk = -(phi - (g.weights * dens) @ phi)
    return h, jac, dk


def _newton(
    g: _Grid,
    psi: np.ndarray,
    kappa: float,
    normalized: bool,
    *,
    amplitude: float | None,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, float, list[float], bool]:
    """Gauss–Newton (least squares: the phase condition makes the system overdetermined by
    one) for ``psi`` (and ``kappa`` when the amplitude is prescribed)."""
    history: list[float] = []
    for _ in range(max_iter + 1):
        h, jac, dk = _residual(g, psi, kappa, normalized)
        rho = np.exp(psi)
        rows, blocks = [h], [jac]
        if g.odd is not None:
            rows.append(np.array([g.weights @ (g.odd * rho)]))
            blocks.append((g.weights * g.odd * rho)[None, :])
        if amplitude is not None:
            rows.append(np.array([g.weights @ (g.first * rho) - amplitude]))
            blocks.append((g.weights * g.first * rho)[None, :])
        r = np.concatenate(rows)
        norm = float(np.linalg.norm(r, np.inf))
        history.append(norm)
        if not np.isfinite(norm):
            return psi, kappa, history, False
        if norm < tol:
            return psi, kappa, history, True
        if len(history) > max_iter:
            break
        J = np.vstack(blocks)
        if amplitude is not None:
            col = np.zeros((J.shape[0], 1))
            col[: psi.size, 0] = dk
            J = np.hstack([J, col])
        step = np.linalg.lstsq(J, -r, rcond=None)[0]
        # damping: keep the density from changing by more than a factor e^2 at a node
        dpsi = step[: psi.size]
        lam = min(1.0, 2.0 / max(float(np.abs(dpsi).max()), 1e-300))
        psi = psi + lam * dpsi
        if amplitude is not None:
            kappa = kappa + lam * float(step[-1])
    return psi, kappa, history, False


@dataclass(frozen=True)
class SpectralState:
    """A stationary state of the spectral reference.

    Attributes
    ----------
    beta, sigma, d, normalized : the problem (``sigma = 1/kappa``).
    nodes : (n,) ``theta`` (S^1) or ``t = cos(polar angle)`` (S^2, axisymmetric).
    weights : (n,) quadrature weights (``int f = weights @ f``).
    rho : (n,) the density at the nodes (unit mass, centred at ``theta = 0`` / the pole).
    amplitude : ``m = |int x rho|``.
    free_energy : ``sigma int rho log rho - (1/2 beta) iint e^{beta<x,y>} rho rho`` (a Lyapunov
        functional for USA only).
    residual_history : sup-norm residual of every Gauss–Newton iterate.
    converged : whether the residual fell below the tolerance.
    """

    beta: float
    sigma: float
    d: int
    normalized: bool
    nodes: np.ndarray
    weights: np.ndarray
    rho: np.ndarray
    amplitude: float
    free_energy: float
    residual_history: list[float] = field(default_factory=list)
    converged: bool = True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The density at points ``x`` (n, d) of the sphere, centred at ``e_1`` (S^1) / ``e_3``
        (S^2): trigonometric (S^1) or Legendre (S^2) interpolation."""
        x = np.asarray(x, dtype=float)
        if self.d == 2:
            theta = np.arctan2(x[:, 1], x[:, 0])
            n = self.rho.size
            c = np.fft.fft(self.rho) / n
            k = np.fft.fftfreq(n, 1.0 / n)
            return np.real(np.exp(1j * np.outer(theta, k)) @ c)
        n = self.rho.size
        ll = np.arange(n)
        P = eval_legendre(ll[:, None], self.nodes[None, :])
        coef = (2 * ll + 1) / 2.0 * (P @ (self.weights / (2 * np.pi) * self.rho))
        return eval_legendre(ll[:, None], x[:, 2][None, :]).T @ coef


def _state(
    g: _Grid, psi: np.ndarray, kappa: float, normalized: bool, hist: list[float], ok: bool
) -> SpectralState:
    rho = np.exp(psi)
    sigma = 1.0 / kappa
    energy = 0.5 * math.exp(g.beta) / g.beta * float((g.weights * rho) @ (g.kernel @ rho))
    free = sigma * float(g.weights @ (rho * psi)) - energy
    return SpectralState(
        beta=g.beta,
        sigma=sigma,
        d=g.d,
        normalized=normalized,
        nodes=g.nodes.copy(),
        weights=g.weights.copy(),
        rho=rho,
        amplitude=float(abs(g.weights @ (g.first * rho))),
        free_energy=free,
        residual_history=hist,
        converged=ok,
    )


def spectral_stationary_state(
    beta: float,
    sigma: float,
    *,
    d: int = 2,
    normalized: bool = True,
    n: int = 129,
    guess: np.ndarray | Callable[[np.ndarray], np.ndarray] | float | None = None,
    tol: float = 1e-12,
    max_iter: int = 60,
) -> SpectralState:
    """A stationary state at ``(beta, sigma)`` by Gauss–Newton on ``log rho`` (module docstring).

    Parameters
    ----------
    beta, sigma : inverse temperature (> 0) and noise (> 0).
    d : 2 (S^1) or 3 (S^2, axially symmetric states).
    normalized : SA (True) or USA (False).
    n : nodes (odd on S^1).
    guess : the initial density: an (n,) array at the nodes, a callable of the nodes, or an
        amplitude ``m`` in [0, 1): the von Mises–Fisher law ``e^{c <x, e>}`` with
        ``|int x rho| = m`` (default ``m = 0.5``; ``0``: the uniform state). Newton converges
        to the stationary state near the guess (the uniform state solves the equations at every
        ``sigma``): start close, e.g. from :func:`spectral_continuation` or
        :func:`spectral_branch`.
    tol : sup-norm tolerance of the residual ``log rho - Phi/(beta sigma) + log Z``.

    Returns
    -------
    :class:`SpectralState` (``converged`` says whether ``tol`` was reached).
    """
    beta = check_positive("beta", beta)
    sigma = check_positive("sigma", sigma)
    d = check_int("d", d, 2)
    n = check_int("n", n, 9)
    g = _grid(beta, d, n)
    psi0 = _initial(g, guess)
    psi, kappa, hist, ok = _newton(
        g, psi0, 1.0 / sigma, bool(normalized), amplitude=None, tol=tol, max_iter=max_iter
    )
    return _state(g, psi, kappa, bool(normalized), hist, ok)


def _initial(g: _Grid, guess) -> np.ndarray:
    area = float(g.weights.sum())
    if guess is None or np.isscalar(guess):
        m = 0.5 if guess is None else float(guess)
        if not 0 <= m < 1:
            raise ValueError(f"guess (an amplitude) must be in [0, 1), got {guess!r}")
        if m == 0:
            rho = np.full(g.nodes.size, 1.0 / area)
        else:  # the von Mises–Fisher law with mean resultant length m
            nu = 0.5 * g.d - 1.0
            c = brentq(lambda c: ive(nu + 1, c) / ive(nu, c) - m, 1e-9, 1e6, xtol=1e-12)
            rho = np.exp(c * (g.first - 1.0))
    elif callable(guess):
        rho = np.asarray(guess(g.nodes), dtype=float)
    else:
        rho = np.asarray(guess, dtype=float)
    if rho.shape != g.nodes.shape or not np.all(np.isfinite(rho)) or np.any(rho <= 0):
        raise ValueError(f"guess must give {g.nodes.size} finite positive values at the nodes")
    return np.log(rho / float(g.weights @ rho))


def spectral_continuation(
    beta: float,
    sigmas: np.ndarray | Sequence[float],
    *,
    d: int = 2,
    normalized: bool = True,
    n: int = 129,
    guess: np.ndarray | Callable[[np.ndarray], np.ndarray] | float | None = None,
    tol: float = 1e-12,
) -> list[SpectralState]:
    """Natural continuation in ``sigma``: each state is the Newton guess of the next (stops
    being reliable at a fold, where :func:`spectral_branch` continues)."""
    states: list[SpectralState] = []
    for s in check_real("sigmas", sigmas).ravel():
        st = spectral_stationary_state(
            beta, float(s), d=d, normalized=normalized, n=n, guess=guess, tol=tol
        )
        states.append(st)
        guess = st.rho
    return states


@dataclass(frozen=True)
class SpectralBranch:
    """The mode-1 branch of stationary states, parametrised by its amplitude.

    Attributes
    ----------
    beta, d, normalized : the problem.
    amplitude : (k,) ``m = |int x rho|`` (the parameter).
    sigma : (k,) the noise of each state.
    free_energy : (k,) free energy of each state.
    leading_eigenvalue : (k,) leading eigenvalue of the linearisation, mass and rotation modes
        excluded (S^1 only, NaN on S^2).
    states : the :class:`SpectralState` of every amplitude.
    sigma_c, g : the linear threshold and the Landau coefficient (theory).
    """

    beta: float
    d: int
    normalized: bool
    amplitude: np.ndarray
    sigma: np.ndarray
    free_energy: np.ndarray
    leading_eigenvalue: np.ndarray
    states: list[SpectralState]
    sigma_c: float
    g: float

    @property
    def stable(self) -> np.ndarray:
        """(k,) bool: leading eigenvalue < 0."""
        return self.leading_eigenvalue < 0

    def folds(self) -> list[tuple[float, float]]:
        """``(m, sigma)`` at the turning points of ``sigma(m)`` (a parabola through the three
        samples around every interior local extremum)."""
        s, m = self.sigma, self.amplitude
        out = []
        for i in range(1, s.size - 1):
            if (s[i] - s[i - 1]) * (s[i + 1] - s[i]) < 0:
                c = np.polyfit(m[i - 1 : i + 2], s[i - 1 : i + 2], 2)
                mf = -c[1] / (2 * c[0])
                out.append((float(mf), float(np.polyval(c, mf))))
        return out


def spectral_branch(
    beta: float,
    amplitudes: np.ndarray | Sequence[float],
    *,
    d: int = 2,
    normalized: bool = True,
    n: int = 129,
    stability: bool = True,
    tol: float = 1e-12,
) -> SpectralBranch:
    """Follow the branch bifurcating from the uniform state at ``sigma_c`` in its amplitude.

    For each ``m`` (increasing, in (0, 1)) solve for ``(log rho, kappa = 1/sigma)`` with
    ``int <x, e> rho = m`` (and the phase condition on S^1) by Gauss–Newton, starting from the
    previous state (the first from the Landau prediction). The amplitude is monotone along the
    branch while ``sigma`` need not be: folds are found as extrema of ``sigma(m)``.
    """
    beta = check_positive("beta", beta)
    d = check_int("d", d, 2)
    m = check_real("amplitudes", amplitudes).ravel()
    if m.size == 0 or np.any(m <= 0) or np.any(m >= 1) or np.any(np.diff(m) <= 0):
        raise ValueError("amplitudes must be increasing values in (0, 1)")
    g = _grid(beta, d, check_int("n", n, 9))
    sc = critical_noise(beta, d=d, normalized=normalized)
    gl = landau_coefficient(beta, d=d, normalized=normalized)
    area = float(g.weights.sum())
    psi = np.log(np.maximum(1.0 + d * m[0] * g.first, 0.1) / area)
    kappa = 1.0 / (sc * (1.0 + gl * m[0] ** 2))
    states: list[SpectralState] = []
    lead: list[float] = []
    solved: list[tuple[float, np.ndarray, float]] = []  # (m, psi, kappa) of the solved states
    for mk in m:
        if len(solved) >= 2:  # secant predictor in m
            (m1, p1, k1), (m2, p2, k2) = solved[-2], solved[-1]
            s = (mk - m2) / (m2 - m1)
            psi, kappa = p2 + s * (p2 - p1), k2 + s * (k2 - k1)
        elif solved:
            psi, kappa = solved[-1][1], solved[-1][2]
        psi_s, kappa_s, hist, ok = _newton(
            g, psi, kappa, bool(normalized), amplitude=float(mk), tol=tol, max_iter=60
        )
        if not ok:
            logger.warning(
                "spectral_branch: no convergence at m=%.4g (residual %.2e)", mk, hist[-1]
            )
        st = _state(g, psi_s, kappa_s, bool(normalized), hist, ok)
        solved.append((float(mk), psi_s, kappa_s))
        states.append(st)
        lead.append(spectral_leading_eigenvalue(st) if (stability and d == 2) else np.nan)
    return SpectralBranch(
        beta=beta,
        d=d,
        normalized=bool(normalized),
        amplitude=np.array([s.amplitude for s in states]),
        sigma=np.array([s.sigma for s in states]),
        free_energy=np.array([s.free_energy for s in states]),
        leading_eigenvalue=np.array(lead, dtype=float),
        states=states,
        sigma_c=sc,
        g=gl,
    )


# -- stability (S^1) ---------------------------------------------------------------------------
def _derivative_matrix(n: int) -> np.ndarray:
    """Spectral differentiation on the odd uniform grid (n, n)."""
    k = np.fft.fftfreq(n, 1.0 / n)
    eye = np.eye(n)
    return np.real(np.fft.ifft(1j * k[:, None] * np.fft.fft(eye, axis=0), axis=0))


def spectral_leading_eigenvalue(state: SpectralState, *, return_spectrum: bool = False):
    """Leading eigenvalue of the linearised evolution at a stationary state on S^1.

    At a stationary state ``log rho - Phi/sigma`` is constant, so the linearisation of
    ``d_t rho = sigma d_theta(rho d_theta(log rho - Phi/sigma))`` is

        L = sigma D diag(rho) D (diag(1/rho) - (1/sigma) dPhi/drho)
          = D (sigma D - sigma diag(D log rho) - diag(rho) D dPhi/drho)

    (``D`` the spectral derivative; the second form, used here, never divides by the density,
    which is tiny away from a concentrated state). ``L`` maps into mean-zero functions (mass
    conservation): it is restricted to them (an orthonormal basis of the mean-zero subspace),
    which removes the mass mode. A non-uniform state has a second zero eigenvalue, the rotation
    ``D rho``: the eigenvalue whose eigenvector is closest to ``D rho`` is excluded when the
    amplitude is > 1e-8. USA: ``L = -sigma A B`` with ``A >= 0``, ``B`` symmetric: real
    spectrum.

    Returns
    -------
    The largest real part; with ``return_spectrum`` also all kept eigenvalues (sorted, largest
    real part first).
    """
    if state.d != 2:
        raise ValueError("spectral_leading_eigenvalue is implemented on S^1 (d = 2) only")
    n = state.rho.size
    g = _grid(state.beta, 2, n)
    rho = state.rho
    _, jphi = _potential(g, rho, state.normalized)
    D = _derivative_matrix(n)
    # rho D (delta/rho) = D delta - (D log rho) delta: no division by a tiny density
    dlog = D @ np.log(rho)
    L = D @ (state.sigma * D - state.sigma * np.diag(dlog) - (rho[:, None] * D) @ jphi)
    # orthonormal basis of the mean-zero subspace
    Qm = np.linalg.qr(np.hstack([np.ones((n, 1)), np.eye(n)[:, : n - 1]]))[0][:, 1:]
    lam, vec = np.linalg.eig(Qm.T @ L @ Qm)
    keep = np.ones(lam.size, dtype=bool)
    if state.amplitude > 1e-8:
        rot = Qm.T @ (D @ rho)
        rot /= np.linalg.norm(rot)
        overlap = np.abs(rot @ vec) / np.linalg.norm(vec, axis=0)
        keep[int(np.argmax(overlap))] = False
    lam = lam[keep]
    lam = lam[np.argsort(-lam.real)]
    top = float(lam[0].real)
    return (top, lam) if return_spectrum else top
