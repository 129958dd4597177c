"""ALiBi position weights of causal attention and their continuum limit ``kappa_lambda``.

Conventions (the lost-in-the-middle model, Duerinckx–Geshkovski–Rossi arXiv:2605.09213):
``N`` tokens ``theta_1 .. theta_N`` sit at positions ``s_j = j/N`` in the prompt; token ``j``
attends to the earlier tokens ``k < j`` with the ALiBi weights (slope ``lambda >= 0``)

    w_jk = e^{-(lambda/N)(j-k)} / sum_{k'<j} e^{-(lambda/N)(j-k')},       k < j,

and token 1 attends to nothing (it does not move). In the arrays below the token index is
0-based: row ``j`` is token ``j + 1``, row 0 is zero.

Closed form. With ``q = e^{-lambda/N}`` the denominator is a geometric sum, so

    w_jk = q^{j-k-1} (1 - q) / (1 - q^j)        (0-based j, 0 <= k < j; lambda = 0: 1/j),

evaluated with ``expm1`` (no cancellation for small ``lambda/N``, no overflow or underflow for
any ``lambda``: every factor is at most one).

Continuum limit. For ``s = j/N``, ``s' = k/N`` fixed and ``N -> infinity``, ``1 - q ~ lambda/N``
and ``q^{j-k} -> e^{-lambda (s - s')}``, so ``N w_jk -> kappa_lambda(s, s')`` with

    kappa_lambda(s, s') = lambda e^{-lambda (s - s')} / (1 - e^{-lambda s})
                        = F'(s') / F(s),      F(s) = e^{lambda s} - 1,     0 <= s' < s,

and ``kappa_0(s, s') = 1/s`` (``F(s) = s``): for every ``s`` it is a probability density in
``s'`` on ``[0, s)``. Slice ``s`` of the kinetic equation is driven by
``int_0^s kappa_lambda(s, s') (...)(s') ds'``.

Slices. :func:`slice_weights` splits ``[0, 1]`` into ``n_s`` cells ``[l h, (l+1) h)``,
``h = 1/n_s``, and gives the quadrature of ``int_0^s kappa(s, s') g(s') ds'`` at the left end
``s = i h`` of cell ``i`` from one value ``g_l`` per earlier cell: the exact cell integrals

    W_il = int_{l h}^{(l+1) h} kappa(i h, s') ds' = (F((l+1) h) - F(l h)) / F(i h),   l < i,

(rows sum to one by telescoping; row 0 is zero: nothing lies before ``s = 0``). This rule is
exact for ``g`` constant on the cells and first order, ``O(h)``, for smooth ``g``. A short
computation shows ``W = alibi_weights(n_s, lambda)`` *exactly*: the kinetic equation on
``n_s`` slices with this rule is the ALiBi token system with ``N = n_s`` tokens (token ``i + 1``
standing for the cell ``[i h, (i+1) h)`` and evaluated at its left end). Equivalently, the
``N = M n_s`` token weights summed over the ``M`` tokens of each earlier block, seen from the
first token of a block, are exactly ``W`` for every ``M`` (a geometric sum), while seen from any
other token of the block they differ from ``W`` by ``O(1/n_s)`` — the position of the token
inside its cell — whatever ``M``.
"""

from __future__ import annotations

import logging

import numpy as np

from attnflow.validation import check_int, check_real

__all__ = ["alibi_weights", "check_slope", "kappa", "slice_weights"]

logger = logging.getLogger(__name__)

# A (n, n) weight matrix of float64 above this many entries is refused (8 GB).
_MAX_ENTRIES = 10**9


def check_slope(lam: object) -> float:
    """Return the ALiBi slope ``lam`` as a float if it is a finite real number ``>= 0``.

    Raises
    ------
    ValueError, TypeError
        One line naming ``lam``.
    """
    if isinstance(lam, bool) or isinstance(lam, (complex, np.complexfloating)):
        raise TypeError(f"lam must be a real number >= 0, got {lam!r}")
    try:
        v = float(lam)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"lam must be a real number >= 0, got {lam!r}") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam!r}")
    return v


def _geometric_rows(n: int, a: float) -> np.ndarray:
    """``(n, n)`` matrix with ``q^{j-k-1} (1-q)/(1-q^j)`` for ``k < j``, ``q = e^{-a}``."""
    j = np.arange(n, dtype=np.float64)[:, None]
    k = np.arange(n, dtype=np.float64)[None, :]
    lower = k < j
    w = np.zeros((n, n))
    if a == 0.0:
        jj = np.broadcast_to(j, (n, n))
        w[lower] = 1.0 / jj[lower]
        return w
    # (1 - q)/(1 - q^j) = expm1(-a)/expm1(-a j) in (0, 1]; q^{j-k-1} <= 1.
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.expm1(-a) / np.expm1(-a * j)  # (n, 1); row 0 is 0/0, masked below
    decay = np.exp(-a * np.where(lower, j - k - 1.0, 0.0))
    w[lower] = np.broadcast_to(norm * decay, (n, n))[lower]
    return w


def alibi_weights(n: int, lam: float) -> np.ndarray:
    """The causal ALiBi weight matrix of ``n`` tokens.

    Parameters
    ----------
    n : int
        Number of tokens ``N >= 1``.
    lam : float
        ALiBi slope ``lambda >= 0`` (``0``: uniform weights over the earlier tokens).

    Returns
    -------
    numpy.ndarray, shape (n, n)
        Strictly lower-triangular ``w[j, k] = e^{-(lam/n)(j-k)} / sum_{k'<j} e^{-(lam/n)(j-k')}``
        for ``k < j`` (0-based; row ``j`` is token ``j+1``); row 0 is zero, every other row
        sums to one.
    """
    n = check_int("n", n, 1)
    lam = check_slope(lam)
    if n * n > _MAX_ENTRIES:
        raise ValueError(f"n must be at most {int(_MAX_ENTRIES**0.5)} (an (n, n) matrix), got {n}")
    return _geometric_rows(n, lam / n)


def _log_h(x: np.ndarray) -> np.ndarray:
    """``log(x / (1 - e^{-x}))`` for ``x >= 0`` (``0`` at ``x = 0``), without cancellation."""
    out = np.zeros_like(x)
    pos = x > 0
    xp = x[pos]
    out[pos] = np.log(xp) - np.log(-np.expm1(-xp))
    return out


def kappa(s: object, s_prime: object, lam: float) -> np.ndarray:
    """The continuum ALiBi kernel ``kappa_lambda(s, s')`` (density in ``s'`` on ``[0, s)``).

    ``kappa_lambda(s, s') = lam e^{-lam (s - s')} / (1 - e^{-lam s})`` for ``0 <= s' < s``
    (``1/s`` for ``lam = 0``), and ``0`` for ``s' >= s``. Evaluated as
    ``exp(-lam (s - s') + log(lam s / (1 - e^{-lam s})) - log s)``: no overflow for any
    ``lam`` and continuous as ``lam -> 0``.

    Parameters
    ----------
    s : array_like
        Target positions in ``(0, 1]``.
    s_prime : array_like
        Source positions in ``[0, 1]``; broadcast against ``s``.
    lam : float
        ALiBi slope ``>= 0``.

    Returns
    -------
    numpy.ndarray
        ``kappa`` with the broadcast shape of ``s`` and ``s_prime``.
    """
    lam = check_slope(lam)
    s_arr = check_real("s", s)
    sp = check_real("s_prime", s_prime)
    if not np.all((s_arr > 0) & (s_arr <= 1)):
        raise ValueError("s must lie in (0, 1]")
    if not np.all((sp >= 0) & (sp <= 1)):
        raise ValueError("s_prime must lie in [0, 1]")
    try:
        s_b, sp_b = np.broadcast_arrays(s_arr, sp)
    except ValueError:
        raise ValueError(
            f"s and s_prime must broadcast, got shapes {s_arr.shape} and {sp.shape}"
        ) from None
    below = sp_b < s_b
    logk = -lam * (s_b - sp_b) + _log_h(lam * s_b) - np.log(s_b)
    return np.where(below, np.exp(np.where(below, logk, 0.0)), 0.0)


def slice_weights(n_s: int, lam: float) -> np.ndarray:
    """Quadrature weights of the causal slice coupling ``int_0^s kappa(s, s') g(s') ds'``.

    Cells ``[l h, (l+1) h)``, ``h = 1/n_s``; row ``i`` gives the value at ``s = i h`` (the left
    end of cell ``i``) from one value per earlier cell, by the exact cell integrals

        W[i, l] = int_{l h}^{(l+1) h} kappa(i h, s') ds' = (F((l+1)h) - F(l h)) / F(i h),

    ``F(s) = e^{lam s} - 1`` (``F(s) = s`` for ``lam = 0``): exact for piecewise-constant
    ``g``, first order (``O(h)``) for smooth ``g``. Rows sum to one (telescoping), row 0 is zero.
    The matrix equals :func:`alibi_weights` ``(n_s, lam)``: the ``N``-token system is the
    kinetic equation on ``N`` slices (see the module docstring).

    Parameters
    ----------
    n_s : int
        Number of slices ``>= 1``.
    lam : float
        ALiBi slope ``>= 0``.

    Returns
    -------
    numpy.ndarray, shape (n_s, n_s)
        Strictly lower-triangular weights, row ``i`` summing to one for ``i >= 1``.
    """
    n_s = check_int("n_s", n_s, 1)
    lam = check_slope(lam)
    if n_s * n_s > _MAX_ENTRIES:
        raise ValueError(
            f"n_s must be at most {int(_MAX_ENTRIES**0.5)} (an (n_s, n_s) matrix), got {n_s}"
        )
    # Cell integral (F((l+1)h) - F(lh)) / F(ih) = q^{i-l-1} (1-q)/(1-q^i), q = e^{-lam h}.
    return _geometric_rows(n_s, lam / n_s)
