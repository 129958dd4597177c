"""Kernel sums on weighted point clouds: the one engine behind both solvers.

For targets ``a_i`` (already scaled by ``beta``), sources ``b_j`` with weights ``w_j`` and values
``v_j`` the engine returns, per target,

    shift_i <= max_j (a_i . b_j + log w_j) <= shift_i + 600
    den_i   = sum_j w_j exp(a_i . b_j - shift_i)           (den_i >= 1)
    num_i   = sum_j w_j exp(a_i . b_j - shift_i) v_j

from which the softmax (SA) velocity ``num/den``, the unnormalised (USA) velocity
``exp(shift) num`` and log-sum-exp energies (``shift + log den``) follow without overflow for
any ``beta``. The log-weights are folded into the shift, and the shift is a running maximum:
the largest term is at least 1 and at most e^600, so the denominator can neither overflow nor
underflow, whatever ``beta`` is. (The shift is the exact maximum when the scores spread over
more than 600, i.e. at large ``beta``; otherwise tiles skip their maximum and are summed in
one fused pass, see :mod:`attnflow.kernels._numba`.)

With ``hardmax=True`` the zero-temperature limit is taken instead: only the sources whose
score ties the maximum (relative tolerance ``tie_rtol``) count, with their weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnflow.kernels import _numba
from attnflow.kernels.choice import (
    AutoKernel,
    DenseKernel,
    RecomputedKernel,
    SparseKernel,
    SpectralKernel,
)
from attnflow.kernels.spectral import zonal_sums
from attnflow.kernels.tiled import MIN_DIM as TILED_MIN_DIM
from attnflow.kernels.tiled import tiled_softmax_sums

__all__ = [
    "AutoKernel",
    "DenseKernel",
    "KernelSums",
    "RecomputedKernel",
    "SparseKernel",
    "SpectralKernel",
    "kernel_matrix",
    "kernel_matrix_sparse",
    "kernel_sums",
    "naive_kernel_sums",
    "zonal_sums",
]

#: Sparse assembly visits all pairs when more than this fraction of them is kept.
PRUNE_MAX_FRACTION = 0.5

#: Relative tolerance under which two scores are a tie in the hardmax limit.
TIE_RTOL = 1e-12


@dataclass(frozen=True)
class KernelSums:
    """Stabilised kernel sums.

    Attributes
    ----------
    shift : (n_t,) per-target shift, within 600 below the largest log-weighted score
        (``-inf`` where every weight is zero).
    den : (n_t,) shifted denominators, ``>= 1`` where some weight is positive.
    num : (n_t, m) shifted numerators.
    """

    shift: np.ndarray
    den: np.ndarray
    num: np.ndarray


def _c(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float64)


def kernel_sums(
    a: np.ndarray,
    b: np.ndarray,
    values: np.ndarray,
    weights: np.ndarray,
    *,
    hardmax: bool = False,
    tie_rtol: float = TIE_RTOL,
) -> KernelSums:
    """Stabilised kernel sums of the weighted sources at every target.

    Parameters
    ----------
    a : (n_t, p) targets, already multiplied by ``beta`` (unscaled when ``hardmax``).
    b : (n_s, p) sources.
    values : (n_s, m) values carried by the sources (``m`` may be 0).
    weights : (n_s,) non-negative source weights.
    hardmax : take the zero-temperature limit (argmax ties weighted by ``weights``).

    The arrays are not validated here (the model does that); they are copied to contiguous
    float64 only when needed. Compiled, fused and threaded (numba); memory is
    O((n_t + n_s) (p + m)).
    """
    a = _c(a)
    bT = _c(np.asarray(b).T)
    vT = _c(np.asarray(values).T)
    w = _c(weights)
    if hardmax:
        shift, den, num = _numba.hardmax_sums(a, bT, vT, w, float(tie_rtol))
    else:
        with np.errstate(divide="ignore"):
            logw = np.log(w)
        if a.shape[1] >= TILED_MIN_DIM:  # BLAS tiles (scores and values by dgemm)
            shift, den, num = tiled_softmax_sums(a, b, values, logw)
        else:
            shift, den, num = _numba.softmax_sums(a, bT, vT, logw)
    return KernelSums(shift=shift, den=den, num=num)


def naive_kernel_sums(
    a: np.ndarray, b: np.ndarray, values: np.ndarray, weights: np.ndarray
) -> KernelSums:
    """Reference: the dense ``n_t x n_s`` numpy formulation (memory O(n_t n_s)).

    Stabilised with the same log-weight shift, so it agrees with :func:`kernel_sums` to
    round-off; used by the tests and as the baseline of ``benchmarks/kernel_throughput.py``.
    """
    with np.errstate(divide="ignore"):
        s = a @ b.T + np.log(weights)[None, :]
    shift = s.max(axis=1)
    e = np.exp(s - shift[:, None])
    return KernelSums(shift=shift, den=e.sum(axis=1), num=e @ values)


def kernel_matrix(
    a: np.ndarray, b: np.ndarray, values: np.ndarray, weights: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The linear map behind :func:`kernel_sums`, summed over groups of sources.

    Sources are grouped into contiguous ranges ``starts[g]:starts[g+1]`` (the quadrature points
    of one cell); source weights are the fixed quadrature weights. Returns ``shift`` (n_t,)
    and ``mat`` (n_t, m + 1, n_g): for group coefficients ``c`` (n_g,) (a density constant on
    each cell), ``mat[:, 0] @ c`` and ``mat[:, 1:] @ c`` are the ``den`` and ``num`` of
    :func:`kernel_sums` with weights ``weights * c[group]``, but shifted by the
    density-independent ``shift``, so ``den`` may underflow where no mass is near.
    """
    with np.errstate(divide="ignore"):
        logw = np.log(_c(weights))
    return _numba.softmax_matrix(
        _c(a),
        _c(np.asarray(b).T),
        _c(np.asarray(values).T),
        logw,
        np.ascontiguousarray(starts, dtype=np.int64),
    )


def kernel_matrix_sparse(
    a: np.ndarray,
    b: np.ndarray,
    values: np.ndarray,
    weights: np.ndarray,
    starts: np.ndarray,
    tol: float,
    *,
    prune: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`kernel_matrix` truncated to CSR: groups whose every term is below ``tol`` times
    the row's largest term are dropped.

    Returns ``shift`` (n_t,), ``indptr`` (n_t + 1,), ``groups`` (nnz,) and ``values``
    (nnz, m + 1). With ``beta <Q x, K y>`` and Q = K = I on the sphere the kept cells lie
    within the angle ``arccos(1 - log(1/tol) / beta)`` of the best-aligned source.

    With ``prune`` (default) a bounding-ball tree over the groups (branch and bound on
    ``a . b <= a . c + |a| r``) finds, per target, the groups that can be kept, for any Q, K,
    on the sphere or in R^d: the cost is then proportional to the entries kept (plus a
    tree walk over the boundary of the kept region), not to all pairs; when more than
    ``PRUNE_MAX_FRACTION`` of the pairs are kept (high temperature) all pairs are visited.
    ``prune=False`` always visits all pairs; both give the same matrix.
    """
    with np.errstate(divide="ignore"):
        logw = np.log(_c(weights))
    a, bT, vT = _c(a), _c(np.asarray(b).T), _c(np.asarray(values).T)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    log_tol = float(np.log(tol))
    if prune:
        tree = _numba.group_tree(bT, logw, starts)
        ptr, cand = _numba.tree_candidates(a, bT, logw, starts, log_tol, tree, PRUNE_MAX_FRACTION)
    else:
        ptr, cand = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return _numba.softmax_matrix_sparse(a, bT, vT, logw, starts, log_tol, ptr, cand)
