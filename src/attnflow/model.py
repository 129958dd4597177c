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

``causal=True`` (with an ALiBi slope ``alibi = lambda >= 0``) is the decoder form: token ``j``
of a prompt ``x_1..x_N`` attends to the tokens ``k <= j`` only, with the scores
``beta <Q x_j, K x_k> - (lambda/N)(j - k)``, softmax over ``k <= j``. Its velocity depends on the
token order, not on the token measure, so it is not a field ``X[mu](x)``: it runs in
:mod:`attnflow.causal` (``attnflow.causal.simulate_prompts``), and every measure-field path
(:meth:`SelfAttention.field`, the energy, the finite element solver) refuses it
(:func:`check_causal`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from attnflow.cloud import Cloud
from attnflow.dynamics import Dynamics, KernelTerm, Sum
from attnflow.kernels import kernel_sums
from attnflow.validation import check_matrix, check_positive, check_real

__all__ = ["MultiHead", "SelfAttention", "check_causal"]

# exp(709.78) is the largest finite float64.
_LOG_MAX = 709.0


@dataclass(frozen=True)
class SelfAttention(KernelTerm):
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
    causal : decoder (causal) attention: token ``j`` attends to ``k <= j`` (SA, finite
        ``beta``); run it with :func:`attnflow.causal.simulate_prompts` (see above).
    alibi : the ALiBi slope ``lambda >= 0`` of a causal model: the scores get the bias
        ``-(lambda/N)(j - k)`` (0 without ``causal``).

    The instance is immutable; matrices are stored as read-only float64 arrays. It is one term
    of a :class:`~attnflow.dynamics.Dynamics` (``SelfAttention(...) + other`` is a sum).
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
    causal: bool = False
    alibi: float = 0.0

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
        alibi = check_real("alibi", self.alibi)
        if alibi.ndim != 0 or not (math.isfinite(float(alibi)) and float(alibi) >= 0):
            raise ValueError(f"alibi must be a finite number >= 0, got {self.alibi!r}")
        set_(self, "alibi", float(alibi))
        set_(self, "causal", bool(self.causal))
        if self.alibi and not self.causal:
            raise ValueError("alibi (the ALiBi slope) needs causal=True")
        if self.causal and not (self.normalized and math.isfinite(beta)):
            raise ValueError("causal=True needs softmax attention: normalized=True, finite beta")

    # -- helpers -------------------------------------------------------------------------------
    @property
    def hardmax(self) -> bool:
        """Whether this is the zero-temperature (``beta = inf``) model."""
        return math.isinf(self.beta)

    @property
    def peaked_at_target(self) -> bool:
        """On the sphere with Q, K positive multiples of I, ``<Qx, Ky>`` peaks at ``y = x``."""
        eye = np.eye(self.d)
        q, k = self.Q[0, 0], self.K[0, 0]
        return bool(
            self.sphere
            and np.array_equal(self.Q, q * eye)
            and np.array_equal(self.K, k * eye)
            and q * k > 0
        )

    def zonal(self) -> tuple[float, np.ndarray] | None:
        """``(beta q k, V)`` for ``Q = qI``, ``K = kI`` on S^1 or S^2 (finite beta): the kernel
        ``e^{beta q k <x, y>}`` is zonal and the values are ``V y``; else ``None``."""
        if not self.sphere or self.d not in (2, 3) or self.hardmax:
            return None
        eye = np.eye(self.d)
        q, k = float(self.Q[0, 0]), float(self.K[0, 0])
        if not (np.array_equal(self.Q, q * eye) and np.array_equal(self.K, k * eye)):
            return None
        return self.beta * q * k, self.V

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(n, d) target vectors ``beta Q x`` (``Q x`` for hardmax) of the points ``x`` (n, d)."""
        # einsum (not BLAS) so a row's bits do not depend on how many rows are transformed at
        # once: serial and MPI runs then agree bitwise.
        a = np.einsum("ij,kj->ik", x, self.Q)
        return a if self.hardmax else self.beta * a

    def sources(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(K y, V y)`` of the source points ``y`` (n, d), each (n, d)."""
        return np.einsum("ij,kj->ik", y, self.K), np.einsum("ij,kj->ik", y, self.V)

    def field(
        self,
        x: np.ndarray,
        shift: np.ndarray,
        den: np.ndarray,
        num: np.ndarray,
        *,
        tiny: float = 0.0,
    ) -> np.ndarray:
        """The ambient velocity at the targets ``x`` (n, d) from the kernel sums (shift (n,),
        den (n,), num (n, d)); the one place the sums become a field, for particles and finite
        elements. The tangent projection is the geometry's (:meth:`evaluate`).

        SA targets with ``den <= tiny`` (an underflowed kernel) get the velocity 0. A causal
        model has no such field: it raises ``ValueError`` (see :func:`check_causal`).
        """
        if self.causal:
            raise ValueError(_CAUSAL_FIELD)
        if self.normalized:
            ok = den > tiny
            f = np.zeros_like(num)
            f[ok] = num[ok] / den[ok, None]
            if self.centered:
                f[ok] -= np.einsum("ij,kj->ik", x[ok], self.V)
        else:
            log_scale = shift - (self.beta if self.rescale_usa else 0.0)
            f = num
            if self.centered:
                f = num - den[:, None] * np.einsum("ij,kj->ik", x, self.V)
            with np.errstate(over="ignore", invalid="ignore"):
                f = np.exp(np.minimum(log_scale, _LOG_MAX))[:, None] * f
                bad = (shift > -np.inf) & (
                    (log_scale > _LOG_MAX) | ~np.isfinite(den) | ~np.all(np.isfinite(f), axis=1)
                )
            if np.any(bad):  # the row's log-magnitude: shift + log(den) (den may be NaN)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ok = np.isfinite(den[bad]) & (den[bad] > 0)
                    logs = np.where(ok, np.log(np.where(ok, den[bad], 1.0)), 0.0)
                    top = float(np.max(log_scale[bad] + logs))
                what = (
                    "the kernel sum reaches"
                    if math.isfinite(top)
                    else "a step too large for a field this size threw the tokens off and the"
                    " kernel sum reaches"
                )
                raise FloatingPointError(self._overflow_message(what, top))
        return f

    # -- a priori bounds (overflow) -------------------------------------------------------------
    def log_kernel_bound(self, radius: float) -> float:
        """``log`` of an a priori bound of the kernel ``e^{beta <Q x, K y>}`` (times
        ``e^{-beta}`` with ``rescale_usa``) over ``|x|, |y| <= radius``:
        ``beta radius^2 |Q^T K|_2`` (minus ``beta``); ``inf`` for hardmax."""
        if self.hardmax:
            return math.inf
        qk = float(np.linalg.norm(self.Q.T @ self.K, 2))
        with np.errstate(over="ignore"):
            score = float(np.float64(self.beta) * np.float64(radius) ** 2 * qk)
        return score - (self.beta if self.rescale_usa else 0.0)

    def check_finite_field(self, radius: float, mass: float = 1.0) -> float:
        """Refuse a model whose field must overflow float64 for tokens with ``|x| <= radius``
        and a measure of total mass ``mass``; returns ``log`` of the field bound.

        The scores ``beta <Q x, K y>`` must be finite (SA and USA; the engine subtracts their
        maximum, so SA is safe at any finite score). USA (``normalized=False``): the field is
        at most ``mass |V|_2 (1 + c) R e^{bound}`` (:meth:`log_kernel_bound`); when its
        ``log`` exceeds 709 every evaluation overflows, so the model is refused at set-up with
        one line naming ``beta`` and suggesting ``rescale_usa=True``. Raises ``ValueError``.
        """
        if self.hardmax:
            return math.log(max(float(np.linalg.norm(self.V, 2)) * 2.0 * radius, 1e-300))
        log_k = self.log_kernel_bound(radius)
        if not math.isfinite(log_k):
            raise ValueError(
                f"beta={self.beta:g} makes the scores beta <Qx, Ky> overflow float64 for |x| <= "
                f"{radius:g}; use a smaller beta (or beta=math.inf for hardmax)"
            )
        vnorm = float(np.linalg.norm(self.V, 2)) * (2.0 if self.centered else 1.0)
        size = mass * vnorm * radius
        log_size = math.log(size) if size > 0 else -math.inf
        if self.normalized:
            return log_size
        log_f = log_k + log_size
        if log_f > _LOG_MAX:
            raise ValueError(
                self._overflow_message("its a priori bound is", log_f, "must overflow")
            )
        return log_f

    def _overflow_message(self, what: str, log_value: float, verb: str = "overflows") -> str:
        shown = f"e^{{{log_value:.1e}}}" if math.isfinite(log_value) else "an infinite exponent"
        hint = "use rescale_usa=True (the field times e^-beta, i.e. time in units of e^beta)"
        return (
            f"USA field {verb} float64 at beta={self.beta:g}: {what} {shown} (float64 ends at "
            f"e^709); {hint}, or a smaller beta"
        )

    def speed_bound(self, radius: float, mass: float = 1.0) -> float:
        """``|V|_2 (1 + c) R`` (SA: a convex combination of ``V (y - c x)``); USA:
        ``mass |V|_2 (1 + c) R e^{beta R^2 |Q^T K|_2 - s}`` (``s = beta`` with
        ``rescale_usa``), capped at ``e^700``."""
        # |V (y - c x)| <= |V| (1 + c) R with c = 1 for the centered form.
        vnorm = float(np.linalg.norm(self.V, 2)) * (2.0 if self.centered else 1.0)
        if self.normalized:
            return vnorm * radius
        qk = float(np.linalg.norm(self.Q.T @ self.K, 2))
        c = self.beta if self.rescale_usa else 0.0
        return mass * vnorm * radius * math.exp(min(self.beta * radius * radius * qk - c, 700.0))

    # -- the interaction energy ----------------------------------------------------------------
    @property
    def has_energy(self) -> bool:
        return not (self.hardmax or self.causal)

    def log_energy(self, points: np.ndarray | Cloud, weights: np.ndarray | None = None) -> float:
        """``log E`` with ``E = (1/2 beta) sum_ij w_i w_j e^{beta <Q x_i, K x_j>}``.

        ``points`` (n, d) with ``weights`` (n,) (default ``1/n``; on the sphere to 1e-8 when
        ``sphere``), or a :class:`~attnflow.cloud.Cloud` (taken as it is: e.g. the quadrature
        points of a faceted sphere mesh). Computed by log-sum-exp, so it is finite even where
        ``E`` itself overflows (beta = 1e4). With ``rescale_usa`` the kernel carries the same
        ``e^{-beta}`` factor as the field.
        """
        if self.hardmax:
            raise ValueError("beta must be finite for the energy (it is 1/(2 beta) sum e^...)")
        if self.causal:
            raise ValueError("causal attention has no interaction energy (causal=True)")
        cloud = self.as_cloud(points, weights)
        x, w = cloud.points, cloud.weights
        if not np.any(w > 0):
            raise ValueError("weights must have a positive entry (the measure has zero mass)")
        b, _ = self.sources(x)
        s = kernel_sums(self.scores(x), b, np.zeros((x.shape[0], 0)), w)
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


_CAUSAL_FIELD = (
    "causal attention (causal=True) is not a field of the token measure: token j sees the "
    "tokens k <= j of its prompt; use attnflow.causal.simulate_prompts / prompt_ensemble"
)


def check_causal(model: object) -> bool:
    """Whether ``model`` is a causal token model: an object with ``causal = True`` (a
    ``SelfAttention(causal=True)`` or an :class:`attnflow.causal.CausalInteraction`).

    Raises ``ValueError`` for a composite dynamics (:class:`~attnflow.dynamics.Sum`,
    :class:`MultiHead`, :class:`~attnflow.dynamics.Piecewise`) that holds a causal term: the
    causal particle solver runs one causal model, and the measure-field solvers cannot run it.
    The solvers call this first, so a causal model is never run as a non-causal one.
    """
    if getattr(model, "causal", False) is True:
        return True
    terms = model.terms(None) if isinstance(model, Dynamics) else ()
    if any(getattr(term, "causal", False) is True for term in terms):
        raise ValueError(
            "model: a causal attention term (causal=True) cannot be part of a sum, multi-head "
            "or piecewise dynamics; run one causal model with attnflow.causal.simulate_prompts"
        )
    return False


class MultiHead(Sum):
    """Multi-head self-attention: the sum of H attention heads, optionally with an output
    matrix.

    Parameters
    ----------
    heads : H :class:`SelfAttention` heads in the same space, each with its own ``beta``,
        ``Q``, ``K``, ``V``, SA or USA.
    output : optional (d, d) output matrix ``W_O``: the field is
        ``P_x W_O sum_h F_h = P_x sum_h F_h(V_h -> W_O V_h)`` (each head's field is linear in
        its value matrix, so ``W_O`` is folded into the values).

    A :class:`MultiHead` of one head and no output is that head (the same field, bitwise).
    """

    def __init__(self, heads: Sequence[SelfAttention], output: np.ndarray | None = None) -> None:
        heads = tuple(heads)
        if not heads:
            raise ValueError("heads must hold at least one SelfAttention")
        for h in heads:
            if not isinstance(h, SelfAttention):
                raise TypeError(f"heads must be SelfAttention, got {type(h).__name__}")
        d = heads[0].d
        if output is None:
            folded = heads
            out = None
        else:
            out = check_matrix("output", output, d)
            folded = tuple(replace(h, V=out @ h.V) for h in heads)
        super().__init__(*folded)
        self._heads = heads
        self._output = out

    @property
    def heads(self) -> tuple[SelfAttention, ...]:
        """The heads as given (before the output matrix is folded in)."""
        return self._heads

    @property
    def output(self) -> np.ndarray | None:
        """The output matrix, or ``None``."""
        return self._output

    def __repr__(self) -> str:
        out = "" if self._output is None else ", output=..."
        return f"MultiHead({list(self._heads)!r}{out})"
