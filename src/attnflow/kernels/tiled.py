"""Kernel sums for larger score dimensions (p >= 4): BLAS tiles, flash-attention style.

For targets ``a`` (n_t, p), sources ``b`` (n_s, p), values ``v`` (n_s, m) and log-weights
``logw`` (n_s,), :func:`tiled_softmax_sums` returns the same ``(shift, den, num)`` as the
fused engine (:func:`attnflow.kernels.kernel_sums`): ``shift_i`` within 600 below the largest
log-weighted score ``max_j (a_i . b_j + logw_j)`` (the exact maximum at large ``beta``),
``den_i = sum_j exp(a_i . b_j + logw_j - shift_i) >= 1`` and ``num_i = sum_j (...) v_j``.

The targets are cut into tiles of ``TARGET_TILE`` rows, the sources into tiles of
``source_tile(p, m)`` rows. For each pair of tiles

1. the scores ``S = A_tile @ B_tile.T`` are one BLAS matrix product (``np.dot`` inside numba,
   i.e. ``dgemm`` of scipy's BLAS, into a buffer that stays in L2);
2. one compiled pass over ``S`` adds the log-weights, and per target either (a) finds the
   tile's maximum and rescales the running sums when it grows (online softmax), or (b) skips
   the maximum once the running maximum is within 600 of the a priori bound
   ``|a_i| max_j |b_j| + max_j logw_j`` (no term can then exceed e^600); it then overwrites
   ``S`` with ``exp(S - shift)`` and adds the row sums to ``den``. The exponential is the
   engine's vectorised polynomial (:mod:`attnflow.kernels._numba`) fused with the shift and
   the row sum: 1.3-1.4 G/s per core on these tiles, against 0.9 G/s for numpy's SIMD
   ``np.exp`` alone and 0.4 G/s for ``np.exp`` with the separate shift and sum passes
   (measured on this 2-core machine);
3. ``num += E @ V_tile`` is a second BLAS product.

Threading: target tiles are spread over numba's threads (``prange``); each tile is computed
by one thread with single-threaded BLAS: ``threadpoolctl`` limits the BLAS libraries to one
thread for the duration of the call (about 30 us), since BLAS's own threads would fight
numba's for the cores (and OpenBLAS serialises concurrent threaded calls). The thread count
is numba's (``NUMBA_NUM_THREADS`` / ``OMP_NUM_THREADS``). Without ``threadpoolctl`` the result
is the same, only oversubscribed.

Bitwise rows: a target's result depends only on that target and the sources, never on which
or how many other targets are evaluated in the same call, nor on the thread count (the MPI
solvers rely on it: a token's velocity is the same on 1 or 3 ranks). Hence

- every BLAS call has one shape whatever ``n_t`` is: a partial target tile is zero-padded to
  ``TARGET_TILE`` rows (up to ``TARGET_TILE - 1`` wasted rows of products, which matters only
  when very few targets meet many sources); the source tiles depend on ``n_s``, ``p``, ``m``;
- the sources are zero-padded (weight 0) to a multiple of ``SOURCE_ALIGN``: OpenBLAS rounded
  the scores of the last 8 target rows of a tile differently from the other rows when the
  source count of the tile was not a multiple of 8 (measured); with aligned counts every
  position of a tile gave the same bits, for any ``p`` and ``m`` tried (4-200);
- a row's pass (its bound, maximum, exponentials, sums) reads nothing of the other rows.

The BLAS part is an observed property of OpenBLAS, not a documented one:
``tests/test_kernels_tiled.py`` checks every offset of the targets in their tile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba as nb
import numpy as np

from attnflow.kernels import _numba

__all__ = [
    "MIN_DIM",
    "SAFE_EXCESS",
    "SOURCE_ALIGN",
    "TARGET_TILE",
    "source_tile",
    "tiled_softmax_sums",
]

#: Smallest score dimension ``p`` sent here by ``kernel_sums`` (p <= 3 has fused loops).
MIN_DIM = 4

#: Targets per tile. Fixed (never adapted to ``n_t``) so that every BLAS call has one shape.
TARGET_TILE = 128

#: Every source tile holds a multiple of this many sources (the last one zero-padded).
SOURCE_ALIGN = 16

#: Largest ``bound - shift`` for which a tile skips its maximum (as in the fused engine).
SAFE_EXCESS = _numba.SAFE_EXCESS

#: Bytes of one score tile plus its source and value tiles: they stay in the L2 cache.
_TILE_BYTES = 1 << 20

_SUM_FLAGS = {"contract", "nsz", "arcp", "reassoc"}


def source_tile(p: int, m: int) -> int:
    """Sources per tile for score dimension ``p`` and value dimension ``m``: a multiple of
    64 in [256, 1024] such that the score, source and value tiles fit in ``_TILE_BYTES``."""
    per_source = 8 * (TARGET_TILE + p + m)
    return int(max(256, min(1024, _TILE_BYTES // per_source // 64 * 64)))


@nb.njit(fastmath=_SUM_FLAGS, cache=True)
def _rows_pass(s, nr, logw, j0, bound, run_max, run_den, acc, scratch):
    """Step 2 above for the first ``nr`` rows of the score tile ``s`` (tt, n), in place."""
    _numba.prefer_wide_vectors()
    n = s.shape[1]
    m = acc.shape[1]
    for t in range(nr):
        sh = run_max[t]
        fused = bound[t] - sh <= SAFE_EXCESS
        if not fused:
            row = s[t]
            for j in range(n):
                row[np.uintp(j)] += logw[np.uintp(j0 + j)]
            mx = _numba.tile_max(row, n, scratch)
            if mx > sh:
                if sh > -np.inf:
                    fac = _numba.exp_inline(sh - mx)
                    run_den[t] *= fac
                    for k in range(m):
                        acc[t, k] *= fac
                sh = mx
                run_max[t] = mx
            if sh == -np.inf:  # every weight so far is zero: contribute nothing
                for j in range(n):
                    s[t, j] = 0.0
                continue
            d = 0.0
            for j in range(n):
                e = _numba.exp_inline(s[t, j] - sh)
                s[t, j] = e
                d += e
        else:
            d = 0.0
            for j in range(n):
                e = _numba.exp_inline(s[t, j] + logw[j0 + j] - sh)
                s[t, j] = e
                d += e
        run_den[t] += d


@nb.njit(fastmath=_SUM_FLAGS, cache=True)
def _row_bounds(a, i0, nr, bnorm_max, lw_max, out):
    """A priori score bounds ``|a_i| max_j |b_j| + max_j logw_j`` of rows ``i0:i0+nr``."""
    p = a.shape[1]
    for t in range(nr):
        q = 0.0
        for k in range(p):
            q += a[i0 + t, k] * a[i0 + t, k]
        out[t] = np.sqrt(q) * bnorm_max + lw_max


@nb.njit(cache=True)
def _target_tile(a, b, v, logw, bnorm_max, lw_max, i0, tt, ts, shift, den, num):
    """All source tiles for the targets ``i0:i0+tt`` (fewer at the end, zero-padded)."""
    n_t, p = a.shape
    n_s = b.shape[0]
    m = v.shape[1]
    nr = min(tt, n_t - i0)
    at = np.zeros((tt, p))
    at[:nr] = a[i0 : i0 + nr]
    bound = np.empty(tt)
    _row_bounds(a, i0, nr, bnorm_max, lw_max, bound)
    sbuf = np.empty(tt * ts)
    scratch = np.empty(ts // 2 + 1)
    tmp = np.empty((tt, m))
    run_max = np.full(tt, -np.inf)
    run_den = np.zeros(tt)
    acc = np.zeros((tt, m))
    for j0 in range(0, n_s, ts):
        n = min(ts, n_s - j0)
        s = sbuf[: tt * n].reshape(tt, n)
        np.dot(at, b[j0 : j0 + n].T, s)
        _rows_pass(s, nr, logw, j0, bound, run_max, run_den, acc, scratch)
        if m > 0:
            np.dot(s, v[j0 : j0 + n], tmp)
            for t in range(nr):
                for k in range(m):
                    acc[t, k] += tmp[t, k]
    for t in range(nr):
        shift[i0 + t] = run_max[t]
        den[i0 + t] = run_den[t]
        for k in range(m):
            num[i0 + t, k] = acc[t, k]


@nb.njit(parallel=True, cache=True)
def _tiled(a, b, v, logw, tt, ts):
    n_t = a.shape[0]
    n_s, p = b.shape
    bnorm_max = 0.0
    for j in range(n_s):
        q = 0.0
        for k in range(p):
            q += b[j, k] * b[j, k]
        bnorm_max = max(bnorm_max, np.sqrt(q))
    lw_max = -np.inf
    for j in range(n_s):
        lw_max = max(lw_max, logw[j])
    shift = np.empty(n_t)
    den = np.empty(n_t)
    num = np.empty((n_t, v.shape[1]))
    n_tiles = (n_t + tt - 1) // tt
    for blk in nb.prange(n_tiles):
        _target_tile(a, b, v, logw, bnorm_max, lw_max, blk * tt, tt, ts, shift, den, num)
    return shift, den, num


_controller = None


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Limit the BLAS libraries to one thread (numba's threads own the cores meanwhile)."""
    global _controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - correct without it, only oversubscribed
        yield
        return
    if _controller is None:
        import scipy.linalg  # noqa: F401  (loads the BLAS that numba's np.dot calls)

        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield


def tiled_softmax_sums(
    a: np.ndarray, b: np.ndarray, values: np.ndarray, logw: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stabilised kernel sums by BLAS tiles (the convention of ``kernel_sums``).

    Parameters
    ----------
    a : (n_t, p) targets, already multiplied by ``beta``.
    b : (n_s, p) sources.
    values : (n_s, m) values carried by the sources (``m`` may be 0).
    logw : (n_s,) log of the source weights (``-inf`` for a zero weight).

    Returns
    -------
    shift : (n_t,) within 600 below ``max_j (a_i . b_j + logw_j)`` (``-inf`` if every weight
        is zero).
    den : (n_t,) ``sum_j exp(a_i . b_j + logw_j - shift_i)``, ``>= 1`` (or 0).
    num : (n_t, m) ``sum_j exp(a_i . b_j + logw_j - shift_i) v_j``.

    Row ``i`` of the result depends on ``a[i]`` and the sources only (bitwise).
    """
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    v = np.ascontiguousarray(values, dtype=np.float64)
    logw = np.ascontiguousarray(logw, dtype=np.float64)
    n_s = b.shape[0]
    if n_s % SOURCE_ALIGN:  # pad with zero-weight sources: every source tile a multiple of 16
        pad = SOURCE_ALIGN - n_s % SOURCE_ALIGN
        b = np.concatenate([b, np.zeros((pad, b.shape[1]))])
        v = np.concatenate([v, np.zeros((pad, v.shape[1]))])
        logw = np.concatenate([logw, np.full(pad, -np.inf)])
    ts = source_tile(a.shape[1], v.shape[1])
    with _single_threaded_blas():
        return _tiled(a, b, v, logw, TARGET_TILE, ts)
