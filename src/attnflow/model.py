"""The self-attention dynamics: one immutable description of the model.

Tokens ``x_i`` move with the velocity field of the token measure ``mu = sum_j w_j delta_{x_j}``
(DESIGN.md §1):

    X[mu](x) = P_x ( sum_j w_j e^{beta <Q x, K y_j>} V (y_j - c x) / Z(x) ),
    Z(x)     = sum_j w_j e^{beta <Q x, K y_j>}                      (SA, ``normalized=True``)
    Z(x)     = 1                  (or e^{beta} with ``rescale_usa``) (USA, ``normalized=False``)

with ``c = 0`` (the plain form of DESIGN.md §1) or ``c = 1`` (``centered=True``: the residual
form ``V (y - x)`` of hardmax-transformer analyses, where tokens are drawn towards their
attention-weighted mean and the zero-temperature flow converges to a projection of the initial
measure; on the sphere with ``V = I`` both forms coincide, since ``P_x x = 0``).

``P_x = I - x x^T`` on the sphere (``sphere=True``), ``P_x = I`` in R^d. ``beta = math.inf`` is
hardmax (SA only): the weight sits on the argmax of ``<Q x, K y>``, ties split in proportion to
their weights (evenly for equal weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from attnflow._validation import as_points, as_weights, check_matrix, check_positive
from attnflow.geometry import Geometry, euclidean, sphere
from attnflow.kernels import kernel_sums

__all__ = ["SelfAttention"]

# exp(709.78) is the largest finite float64.
_LOG_MAX = 709.0


@dataclass(frozen=True)
class SelfAttention:
    """Self-attention dynamics of tokens in ``R^d`` or on ``S^{d-1}``.

    Parameters
    ----------
    d : ambient dimension (``>= 2`` on the sphere, ``>= 1`` in R^d).
    beta : inverse temperature, ``> 0``; ``math.inf`` for hardmax (SA only).
    Q, K, V : ``(d, d)`` query, key and value matrices (identity by default).
    normalized : ``True`` for SA (softmax), ``False`` for USA (no normalisation).
    sphere : tokens on the unit sphere with the tangent projection (``True``) or in R^d.
    rescale_usa : USA only: multiply the field by ``e^{-beta}``, i.e. run USA in the time
        ``e^{beta} t``. For ``Q = K = I`` on the sphere the kernel is then at most 1, so the
        field stays O(1) at any ``beta`` (without it, it grows like ``e^{beta}``).
    centered : use ``V (y - x)`` instead of ``V y`` in the attention average (see above).

    The instance is immutable; matrices are stored as read-only float64 arrays.
    """

    d: int
    beta: float = 1.0
    Q: np.ndarray | None = None
    K: np.ndarray | None = None
    V: np.ndarray | None = None
    normalized: bool = True
    sphere: bool = True
    rescale_usa: bool = False
    centered: bool = False
    geometry: Geometry = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        d = self.d
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise TypeError(f"d must be an int, got {d!r}")
        if self.sphere and d < 2:
            raise ValueError(f"d must be >= 2 on the sphere (S^(d-1) in R^d), got {d}")
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        beta = check_positive("beta", self.beta, allow_inf=True)
        if math.isinf(beta) and not self.normalized:
            raise ValueError("beta must be finite for USA (normalized=False): hardmax is SA-only")
        if self.rescale_usa and self.normalized:
            raise ValueError("rescale_usa applies to USA only (normalized=False)")
        eye = np.eye(d)
        set_ = object.__setattr__
        set_(self, "d", int(d))
        set_(self, "beta", beta)
        for name in ("Q", "K", "V"):
            m = getattr(self, name)
            set_(self, name, check_matrix(name, eye if m is None else m, int(d)))
        set_(self, "normalized", bool(self.normalized))
        set_(self, "sphere", bool(self.sphere))
        set_(self, "centered", bool(self.centered))
        set_(self, "geometry", sphere() if self.sphere else euclidean())

    # -- helpers -------------------------------------------------------------------------------
    @property
    def hardmax(self) -> bool:
        """Whether this is the zero-temperature (``beta = inf``) model."""
        return math.isinf(self.beta)

    def _scores_in(self, x: np.ndarray) -> np.ndarray:
        # beta Q x, row-wise; einsum (not BLAS) so a row's bits do not depend on how many rows
        # are transformed at once: serial and MPI runs then agree bitwise.
        a = np.einsum("ij,kj->ik", x, self.Q)
        return a if self.hardmax else self.beta * a

    def _sources(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.einsum("ij,kj->ik", y, self.K), np.einsum("ij,kj->ik", y, self.V)

    def _check(self, targets, sources, weights):
        x = as_points("targets", targets, self.d, on_sphere=self.sphere)
        y = as_points("sources", sources, self.d, on_sphere=self.sphere)
        w = as_weights("weights", weights, y.shape[0])
        if y.shape[0] == 0 or not np.any(w > 0):
            raise ValueError("weights must have a positive entry (the measure has zero mass)")
        return x, y, w

    # -- the velocity field --------------------------------------------------------------------
    def velocity(
        self, targets: np.ndarray, sources: np.ndarray, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Velocity field of ``sum_j weights[j] delta_{sources[j]}`` at the targets.

        Parameters
        ----------
        targets : (n_t, d) points where the field is evaluated.
        sources : (n_s, d) support of the measure.
        weights : (n_s,) non-negative weights (default ``1/n_s``; SA does not depend on their
            total, USA is linear in it).

        Returns
        -------
        (n_t, d) velocities (tangent to the sphere at each target when ``sphere``).
        """
        x, y, w = self._check(targets, sources, weights)
        return self._velocity(x, y, w)

    def _velocity(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        b, v = self._sources(y)
        s = kernel_sums(self._scores_in(x), b, v, w, hardmax=self.hardmax)
        return self._field(x, s.shift, s.den, s.num)

    def _field(
        self,
        x: np.ndarray,
        shift: np.ndarray,
        den: np.ndarray,
        num: np.ndarray,
        tiny: float = 0.0,
    ) -> np.ndarray:
        """The velocity at the targets ``x`` (n, d) from the kernel sums (shift (n,), den (n,),
        num (n, d)); the one place the sums become a field, for particles and finite elements.

        SA targets with ``den <= tiny`` (an underflowed kernel) get the velocity 0.
        """
        if self.normalized:
            ok = den > tiny
            f = np.zeros_like(num)
            f[ok] = num[ok] / den[ok, None]
            if self.centered:
                f[ok] -= np.einsum("ij,kj->ik", x[ok], self.V)
        else:
            log_scale = shift - (self.beta if self.rescale_usa else 0.0)
            if np.any(log_scale[den > 0] > _LOG_MAX):
                raise FloatingPointError(
                    f"USA velocity overflows float64 at beta={self.beta:g} (kernel up to "
                    f"e^{log_scale[den > 0].max():.0f}); use rescale_usa=True or a smaller beta"
                )
            f = num
            if self.centered:
                f = num - den[:, None] * np.einsum("ij,kj->ik", x, self.V)
            f = np.exp(np.minimum(log_scale, _LOG_MAX))[:, None] * f
        return self.geometry.project(x, f)

    # -- the interaction energy ----------------------------------------------------------------
    def log_energy(self, points: np.ndarray, weights: np.ndarray | None = None) -> float:
        """``log E`` with ``E = (1/2 beta) sum_ij w_i w_j e^{beta <Q x_i, K x_j>}``.

        Computed by log-sum-exp, so it is finite even where ``E`` itself overflows (beta = 1e4).
        With ``rescale_usa`` the kernel carries the same ``e^{-beta}`` factor as the field.
        """
        if self.hardmax:
            raise ValueError("beta must be finite for the energy (it is 1/(2 beta) sum e^...)")
        x = as_points("points", points, self.d, on_sphere=self.sphere)
        w = as_weights("weights", weights, x.shape[0])
        if not np.any(w > 0):
            raise ValueError("weights must have a positive entry (the measure has zero mass)")
        return self._log_energy(x, w)

    def _log_energy(self, x: np.ndarray, w: np.ndarray) -> float:
        b, _ = self._sources(x)
        s = kernel_sums(self._scores_in(x), b, np.zeros((x.shape[0], 0)), w)
        pos = w > 0
        terms = np.log(w[pos]) + s.shift[pos] + np.log(s.den[pos])
        top = terms.max()
        lse = top + np.log(np.sum(np.exp(terms - top)))
        shift = self.beta if self.rescale_usa else 0.0
        return float(lse - np.log(2.0 * self.beta) - shift)

    def energy(self, points: np.ndarray, weights: np.ndarray | None = None) -> float:
        """Interaction energy ``(1/2 beta) int int e^{beta <Q x, K y>} dmu(x) dmu(y)``.

        For ``Q^T K`` symmetric and ``V = Q^T K`` (e.g. ``Q = K = V = I``) both SA and USA are
        (time-reparametrised, per-token) gradient ascents of this energy, on the sphere and in
        R^d, so it never decreases along the flow. Returns ``inf`` if it exceeds float64; use
        :meth:`log_energy` then.
        """
        le = self.log_energy(points, weights)
        return math.inf if le > _LOG_MAX else math.exp(le)
