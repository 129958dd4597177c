"""Fused, tiled, threaded kernel sums compiled with numba.

The hot loop evaluates ``exp`` with a vectorisable polynomial (Cody–Waite range reduction,
degree-10 Chebyshev interpolant on ``|r| <= ln2/2``, exponent bits built by integer
arithmetic) so that LLVM emits SIMD code for the whole tile; numba has no vector math library
(SVML) here, and a call to libm's scalar ``exp`` would cap the throughput at a few hundred
million pairs per second. Relative accuracy of the exponential is < 5e-16 on ``[-708, 0]``;
arguments below ``-708`` give 0 (or e^-708 in the fused loop, see :func:`_fused_tile`).

The module is long but one idea: the compiled kernel-sum engine (the exponential, the fused
and two-pass tiles, hardmax, the assembled dense and sparse matrices and the bounding-ball
tree of the sparse assembly share the same tile loops and the same exponential; splitting
them would put numba's compilation units apart and duplicate the inlined helpers).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba.core import types
from numba.extending import intrinsic

__all__ = [
    "exp_inline",
    "exp_nonpositive",
    "hardmax_sums",
    "prefer_wide_vectors",
    "softmax_sums",
    "tile_max",
]

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125
_LN2_LO = 1.4286068203094173e-06
_XMIN = -708.0

# Fast-math flags: no 'reassoc' for the exponential (keeps the Cody–Waite reduction exact),
# 'reassoc' for the reductions (lets them vectorise). Never 'ninf'/'nnan': zero weights are
# encoded as log-weight -inf and must compare correctly.
_EXP_FLAGS = {"contract", "nsz", "arcp"}
_SUM_FLAGS = {"contract", "nsz", "arcp", "reassoc"}
_MAX_FLAGS = {"nnan", "nsz"}  # maxima: -inf is expected, NaN never is


@intrinsic
def _bits_to_float(typingctx, x):
    """Reinterpret the bits of an int64 as a float64 (LLVM ``bitcast``)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


@intrinsic
def _prefer_wide_vectors(typingctx):
    """Let LLVM vectorise the enclosing function with 512-bit registers where available.

    LLVM's default tuning for AVX-512 CPUs prefers 256-bit vectors; the string attribute
    ``"prefer-vector-width"="512"`` lifts that for the one function that calls this, which
    doubles the throughput of the exponential on CPUs with two 512-bit FMA units. On CPUs
    without AVX-512 the attribute has no effect.
    """
    sig = types.none()

    def codegen(context, builder, signature, args):
        # llvmlite only validates enum attributes; a string attribute is printed verbatim.
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(inline="always", fastmath=_EXP_FLAGS)
def _exp1_clamped(x):
    """``exp(max(x, -708))``: no zero below -708 (saves the mask in the fused loop)."""
    x = max(x, _XMIN)
    kf = np.floor(x * _LOG2E + 0.5)
    r = x - kf * _LN2_HI
    r = r - kf * _LN2_LO
    # Degree-10 polynomial interpolating e^r at the 11 Chebyshev points of [-ln2/2, ln2/2]
    # (computed in 50-digit arithmetic; max relative error 3.3e-16 including Horner rounding).
    p = 2.7626357241447223e-07
    p = p * r + 2.764018079620985e-06
    p = p * r + 2.4801504346997686e-05
    p = p * r + 0.00019841170270440067
    p = p * r + 0.0013888888932488599
    p = p * r + 0.008333333385667782
    p = p * r + 0.04166666666657314
    p = p * r + 0.16666666666554406
    p = p * r + 0.5000000000000006
    p = p * r + 1.0000000000000067
    p = p * r + 1.0
    scale = _bits_to_float((np.int64(kf) + 1023) << 52)
    return p * scale


@nb.njit(inline="always", fastmath=_EXP_FLAGS)
def _exp1(x):
    """``exp(x)`` for ``x <= 0``, exactly 0 below -708 (and for -inf)."""
    e = _exp1_clamped(x)
    return 0.0 if x < _XMIN else e


@nb.njit(fastmath=_EXP_FLAGS, cache=True)
def exp_nonpositive(x):
    """Elementwise ``exp`` of an array of non-positive numbers (shape preserved, float64)."""
    _prefer_wide_vectors()
    flat = x.ravel()
    out = np.empty_like(flat)
    for j in range(flat.size):
        out[j] = _exp1(flat[j])
    return out.reshape(x.shape)


# Index arithmetic below uses unsigned integers (``np.uintp``): numba then skips its
# negative-index wrap-around, which would otherwise turn every load into a gather.


@nb.njit(inline="always", fastmath=_EXP_FLAGS)
def _exp_tile(buf, n, shift):
    for j in range(n):
        u = np.uintp(j)
        buf[u] = _exp1(buf[u] - shift)


@nb.njit(inline="always", fastmath=_SUM_FLAGS)
def _scores_tile(buf, a, i, bT, logw, j0, n):
    for j in range(n):
        buf[np.uintp(j)] = logw[np.uintp(j0 + j)]
    for k in range(a.shape[1]):
        c = a[i, k]
        for j in range(n):
            buf[np.uintp(j)] += c * bT[k, np.uintp(j0 + j)]


@nb.njit(inline="always", fastmath=_MAX_FLAGS)
def _max2(x, y):
    return x if x > y else y


@nb.njit(inline="always", fastmath=_MAX_FLAGS)
def _tile_max(buf, n, scratch):
    """Maximum of ``buf[:n]`` by pairwise halving into ``scratch``.

    A running-max loop does not vectorise in numba; elementwise maxima of two halves do
    (``vmaxpd``), so the tile is folded in half until eight values remain.
    """
    m = -np.inf
    if n < 16:
        for j in range(n):
            m = _max2(m, buf[np.uintp(j)])
        return m
    h = n // 2
    hu = np.uintp(h)
    for j in range(h):
        u = np.uintp(j)
        scratch[u] = _max2(buf[u], buf[u + hu])
    if n % 2:
        m = buf[np.uintp(n - 1)]
    while h > 8:
        if h % 2:
            m = _max2(m, scratch[np.uintp(h - 1)])
        h //= 2
        hu = np.uintp(h)
        for j in range(h):
            u = np.uintp(j)
            scratch[u] = _max2(scratch[u], scratch[u + hu])
    for j in range(h):
        m = _max2(m, scratch[np.uintp(j)])
    return m


@nb.njit(inline="always", fastmath=_SUM_FLAGS)
def _tile_sum(buf, n):
    s = 0.0
    for j in range(n):
        s += buf[np.uintp(j)]
    return s


@nb.njit(inline="always", fastmath=_SUM_FLAGS)
def _tile_dot(buf, vT, k, j0, n):
    s = 0.0
    for j in range(n):
        s += buf[np.uintp(j)] * vT[k, np.uintp(j0 + j)]
    return s


@nb.njit(inline="always", fastmath=_SUM_FLAGS)
def _scores_max_tile(buf, scratch, a, i, bT, logw, j0, n):
    """Scores of target ``i`` against a source tile into ``buf``; returns their maximum."""
    p = a.shape[1]
    if p == 3:  # fused fast path for the common 3-dimensional case
        c0 = a[i, 0]
        c1 = a[i, 1]
        c2 = a[i, 2]
        for j in range(n):
            u = np.uintp(j0 + j)
            buf[np.uintp(j)] = logw[u] + c0 * bT[0, u] + c1 * bT[1, u] + c2 * bT[2, u]
    elif p == 2:
        c0 = a[i, 0]
        c1 = a[i, 1]
        for j in range(n):
            u = np.uintp(j0 + j)
            buf[np.uintp(j)] = logw[u] + c0 * bT[0, u] + c1 * bT[1, u]
    else:
        _scores_tile(buf, a, i, bT, logw, j0, n)
    return _tile_max(buf, n, scratch)


@nb.njit(inline="always", fastmath=_EXP_FLAGS)
def _e(x):
    return _exp1(x)


@nb.njit(inline="always", fastmath=_EXP_FLAGS)
def _e_clamped(x):
    return _exp1_clamped(x)


@nb.njit(inline="always", fastmath=_SUM_FLAGS)
def _exp_accumulate_tile(buf, shift, vT, j0, n, acc, t):
    """Adds ``exp(buf - shift)`` to the denominator (returned) and ``... * v`` to ``acc[t]``."""
    m = vT.shape[0]
    d = 0.0
    if m == 3:
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        for j in range(n):
            u = np.uintp(j0 + j)
            e = _e(buf[np.uintp(j)] - shift)
            d += e
            s0 += e * vT[0, u]
            s1 += e * vT[1, u]
            s2 += e * vT[2, u]
        acc[t, 0] += s0
        acc[t, 1] += s1
        acc[t, 2] += s2
    elif m == 2:
        s0 = 0.0
        s1 = 0.0
        for j in range(n):
            u = np.uintp(j0 + j)
            e = _e(buf[np.uintp(j)] - shift)
            d += e
            s0 += e * vT[0, u]
            s1 += e * vT[1, u]
        acc[t, 0] += s0
        acc[t, 1] += s1
    else:
        _exp_tile(buf, n, shift)
        d = _tile_sum(buf, n)
        for k in range(m):
            acc[t, k] += _tile_dot(buf, vT, k, j0, n)
    return d


#: Number of targets that share one pass over a source tile (the tile stays in L1 meanwhile).
TARGET_BLOCK = 32
#: Bytes of source data per tile: it stays in the L1 cache (48 KiB here); 32 KiB measured best.
TILE_BYTES = 32 * 1024


#: Largest ``bound - shift`` for which tiles skip their maximum: every term is then at most
#: e^600, and n_s e^600 stays far below the float64 limit for any n_s < 1e40.
SAFE_EXCESS = 600.0


@nb.njit(inline="always", fastmath=_SUM_FLAGS)
def _fused_tile(a, i, bT, vT, logw, j0, n, shift, acc, t):
    """Scores, exponentials and sums in one pass for one target (no maximum, no buffer).

    Terms below e^-708 count as e^-708 (not 0): against a denominator >= 1 that is at most
    n_s * 3e-308 relative, and it spares a compare per pair in the hottest loop.
    """
    p = a.shape[1]
    m = vT.shape[0]
    d = 0.0
    if p == 3 and m == 3:
        c0 = a[i, 0]
        c1 = a[i, 1]
        c2 = a[i, 2]
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        for j in range(n):
            u = np.uintp(j0 + j)
            x = logw[u] + c0 * bT[0, u] + c1 * bT[1, u] + c2 * bT[2, u]
            e = _e_clamped(x - shift)
            d += e
            s0 += e * vT[0, u]
            s1 += e * vT[1, u]
            s2 += e * vT[2, u]
        acc[t, 0] += s0
        acc[t, 1] += s1
        acc[t, 2] += s2
    elif p == 2 and m == 2:
        c0 = a[i, 0]
        c1 = a[i, 1]
        s0 = 0.0
        s1 = 0.0
        for j in range(n):
            u = np.uintp(j0 + j)
            x = logw[u] + c0 * bT[0, u] + c1 * bT[1, u]
            e = _e_clamped(x - shift)
            d += e
            s0 += e * vT[0, u]
            s1 += e * vT[1, u]
        acc[t, 0] += s0
        acc[t, 1] += s1
    return d


@nb.njit(fastmath=_SUM_FLAGS, cache=True)
def _softmax_block(a, bT, vT, logw, bound, i0, i1, tile, shift, den, num):
    """Online max-shifted sums for targets ``i0:i1``, sweeping the sources tile by tile.

    The source tile (``bT``, ``vT``, ``logw`` columns) is re-used from L1 by every target of
    the block: without this blocking the loop is bound by L2 bandwidth, not by arithmetic.

    The shift is the running maximum. Once it is within ``SAFE_EXCESS`` of the a priori
    ``bound[i]`` on every score of target ``i``, later tiles cannot overflow against it and
    are done in one fused pass without their own maximum (the shift stays a lower bound of the
    true maximum, so the denominator is still >= 1); otherwise a tile first computes its
    maximum and rescales the running sums (flash-attention style).
    """
    _prefer_wide_vectors()
    m = vT.shape[0]
    p = a.shape[1]
    n_s = bT.shape[1]
    nb_t = i1 - i0
    buf = np.empty(tile)
    scratch = np.empty(tile // 2 + 1)
    run_max = np.full(nb_t, -np.inf)
    run_den = np.zeros(nb_t)
    acc = np.zeros((nb_t, m))
    for j0 in range(0, n_s, tile):
        n = min(tile, n_s - j0)
        for t in range(nb_t):
            fusable = (p == 3 and m == 3) or (p == 2 and m == 2)
            if fusable and bound[i0 + t] - run_max[t] <= SAFE_EXCESS:
                run_den[t] += _fused_tile(a, i0 + t, bT, vT, logw, j0, n, run_max[t], acc, t)
                continue
            tmax = _scores_max_tile(buf, scratch, a, i0 + t, bT, logw, j0, n)
            if tmax > run_max[t]:
                if run_max[t] > -np.inf:
                    fac = _exp1(run_max[t] - tmax)
                    run_den[t] *= fac
                    for k in range(m):
                        acc[t, k] *= fac
                run_max[t] = tmax
            if run_max[t] == -np.inf:
                continue
            run_den[t] += _exp_accumulate_tile(buf, run_max[t], vT, j0, n, acc, t)
    for t in range(nb_t):
        shift[i0 + t] = run_max[t]
        den[i0 + t] = run_den[t]
        for k in range(m):
            num[i0 + t, k] = acc[t, k]


@nb.njit(parallel=True, cache=True)
def softmax_sums(a, bT, vT, logw):
    """Max-shifted kernel sums, one online (flash-attention style) pass per target.

    Parameters
    ----------
    a : (n_t, p) float64, C-contiguous — transformed targets (already multiplied by beta).
    bT : (p, n_s) float64, C-contiguous — transformed sources, transposed.
    vT : (m, n_s) float64, C-contiguous — source values, transposed.
    logw : (n_s,) float64 — log of the source weights (``-inf`` for zero weight).

    Returns
    -------
    shift : (n_t,) a shift with ``max_j (a_i . b_j + logw_j) - 600 <= shift_i <=`` that maximum
        (the exact maximum when beta is large; ``-inf`` if every weight is zero)
    den : (n_t,) ``sum_j exp(a_i . b_j + logw_j - shift_i)`` (``>= 1``, or 0)
    num : (n_t, m) ``sum_j exp(a_i . b_j + logw_j - shift_i) v_j``
    """
    n_t = a.shape[0]
    m = vT.shape[0]
    # Sources per tile, a multiple of 64 between 64 and 1024, sized to stay in L1.
    tile = max(64, min(1024, TILE_BYTES // (8 * (a.shape[1] + m + 2)) // 64 * 64))
    shift = np.empty(n_t)
    den = np.empty(n_t)
    num = np.empty((n_t, m))
    # A priori bound on the scores of each target: sum_k |a_ik| max_j |b_kj| + max_j log w_j.
    p = a.shape[1]
    colmax = np.zeros(p)
    for k in range(p):
        for j in range(bT.shape[1]):
            colmax[k] = max(colmax[k], abs(bT[k, j]))
    lwmax = -np.inf
    for j in range(logw.shape[0]):
        lwmax = max(lwmax, logw[j])
    bound = np.empty(n_t)
    for i in range(n_t):
        s = lwmax
        for k in range(p):
            s += abs(a[i, k]) * colmax[k]
        bound[i] = s
    n_blocks = (n_t + TARGET_BLOCK - 1) // TARGET_BLOCK
    for blk in nb.prange(n_blocks):
        i0 = blk * TARGET_BLOCK
        i1 = min(n_t, i0 + TARGET_BLOCK)
        _softmax_block(a, bT, vT, logw, bound, i0, i1, tile, shift, den, num)
    return shift, den, num


@nb.njit(parallel=True, fastmath=_SUM_FLAGS, cache=True)
def hardmax_sums(a, bT, vT, w, rtol):
    """Zero-temperature sums: weights restricted to the argmax set of the scores.

    For each target, ``shift_i = max_{j: w_j > 0} a_i . b_j``; sources with
    ``a_i . b_j >= shift_i - rtol * max(1, |shift_i|)`` form the tie set, over which
    ``den_i = sum w_j`` and ``num_i = sum w_j v_j``. Shapes as in :func:`softmax_sums`,
    ``w`` holds the weights themselves.
    """
    n_t = a.shape[0]
    m = vT.shape[0]
    n_s = bT.shape[1]
    p = a.shape[1]
    shift = np.empty(n_t)
    den = np.empty(n_t)
    num = np.empty((n_t, m))
    for i in nb.prange(n_t):
        best = -np.inf
        for j in range(n_s):
            if w[j] > 0.0:
                s = 0.0
                for k in range(p):
                    s += a[i, k] * bT[k, j]
                best = max(best, s)
        tol = rtol * max(1.0, abs(best))
        d = 0.0
        acc = np.zeros(m)
        for j in range(n_s):
            if w[j] > 0.0:
                s = 0.0
                for k in range(p):
                    s += a[i, k] * bT[k, j]
                if s >= best - tol:
                    d += w[j]
                    for k in range(m):
                        acc[k] += w[j] * vT[k, j]
        shift[i] = best
        den[i] = d
        for k in range(m):
            num[i, k] = acc[k]
    return shift, den, num


@nb.njit(parallel=True, fastmath=_SUM_FLAGS, cache=True)
def softmax_matrix(a, bT, vT, logw, starts):
    """Kernel matrix summed over groups of sources (cells of quadrature points).

    For targets ``a`` (n_t, p), sources ``bT`` (p, n_s) with values ``vT`` (m, n_s) and
    log-weights ``logw`` (n_s,), and groups ``starts`` (n_g + 1,) (group g holds sources
    ``starts[g]:starts[g+1]``), returns ``shift`` (n_t,) with
    ``shift_i = max_j (a_i . b_j + logw_j)`` and ``mat`` (n_t, m + 1, n_g) with
    ``mat[i, 0, g] = sum_{j in g} exp(a_i . b_j + logw_j - shift_i)`` and
    ``mat[i, 1 + k, g]`` the same sum weighted by ``v_kj``.
    """
    n_t = a.shape[0]
    p = a.shape[1]
    m = vT.shape[0]
    n_s = bT.shape[1]
    n_g = starts.shape[0] - 1
    shift = np.empty(n_t)
    mat = np.zeros((n_t, m + 1, n_g))
    for i in nb.prange(n_t):
        s = np.empty(n_s)
        for j in range(n_s):
            acc = logw[j]
            for k in range(p):
                acc += a[i, k] * bT[k, j]
            s[j] = acc
        best = -np.inf
        for j in range(n_s):
            best = max(best, s[j])
        shift[i] = best
        if best == -np.inf:
            continue
        for g in range(n_g):
            for j in range(starts[g], starts[g + 1]):
                e = _exp1(s[j] - best)
                mat[i, 0, g] += e
                for k in range(m):
                    mat[i, 1 + k, g] += e * vT[k, j]
    return shift, mat


@nb.njit(inline="always")
def _n_candidates(i, n_g, cand_ptr):
    return n_g if cand_ptr.shape[0] == 0 else cand_ptr[i + 1] - cand_ptr[i]


@nb.njit(inline="always")
def _candidate(i, c, cand_ptr, cand):
    return c if cand_ptr.shape[0] == 0 else cand[cand_ptr[i] + c]


@nb.njit(inline="always", fastmath=_SUM_FLAGS)
def _candidate_scores(a, i, bT, logw, starts, cand_ptr, cand, s):
    """Scores of the candidate sources of target ``i`` into ``s`` (candidate order); max."""
    n_g = starts.shape[0] - 1
    best = -np.inf
    pos = 0
    for c in range(_n_candidates(i, n_g, cand_ptr)):
        g = _candidate(i, c, cand_ptr, cand)
        for j in range(starts[g], starts[g + 1]):
            acc = logw[j]
            for k in range(a.shape[1]):
                acc += a[i, k] * bT[k, j]
            s[pos] = acc
            best = max(best, acc)
            pos += 1
    return best


@nb.njit(parallel=True, fastmath=_SUM_FLAGS, cache=True)
def softmax_matrix_sparse(a, bT, vT, logw, starts, log_tol, cand_ptr, cand):
    """Truncated :func:`softmax_matrix` in CSR form.

    A group (cell) is kept in row ``i`` when one of its sources has
    ``a_i . b_j + logw_j - shift_i >= log_tol``; dropped entries are each below ``e^{log_tol}``
    times the row's largest term. Only the groups ``cand[cand_ptr[i]:cand_ptr[i+1]]`` are
    visited for target ``i`` (all groups when ``cand_ptr`` is empty); they must contain every
    group that can be kept and the group of the row's best source, and the result is then the
    same as visiting all groups, at a cost proportional to the candidates. Returns ``shift``
    (n_t,), ``indptr`` (n_t + 1,), ``groups`` (nnz,) and ``values`` (nnz, m + 1).
    """
    n_t = a.shape[0]
    m = vT.shape[0]
    n_g = starts.shape[0] - 1
    max_group = 0
    for g in range(n_g):
        max_group = max(max_group, starts[g + 1] - starts[g])
    shift = np.empty(n_t)
    counts = np.zeros(n_t, dtype=np.int64)
    for i in nb.prange(n_t):
        s = np.empty(_n_candidates(i, n_g, cand_ptr) * max_group)
        best = _candidate_scores(a, i, bT, logw, starts, cand_ptr, cand, s)
        shift[i] = best
        cnt = 0
        pos = 0
        for c in range(_n_candidates(i, n_g, cand_ptr)):
            g = _candidate(i, c, cand_ptr, cand)
            n = starts[g + 1] - starts[g]
            for j in range(n):
                if s[pos + j] - best >= log_tol:
                    cnt += 1
                    break
            pos += n
        counts[i] = cnt
    indptr = np.zeros(n_t + 1, dtype=np.int64)
    for i in range(n_t):
        indptr[i + 1] = indptr[i] + counts[i]
    groups = np.empty(indptr[n_t], dtype=np.int64)
    values = np.zeros((indptr[n_t], m + 1))
    for i in nb.prange(n_t):
        s = np.empty(_n_candidates(i, n_g, cand_ptr) * max_group)
        best = _candidate_scores(a, i, bT, logw, starts, cand_ptr, cand, s)
        out = indptr[i]
        pos = 0
        for c in range(_n_candidates(i, n_g, cand_ptr)):
            g = _candidate(i, c, cand_ptr, cand)
            n = starts[g + 1] - starts[g]
            keep = False
            for j in range(n):
                if s[pos + j] - best >= log_tol:
                    keep = True
                    break
            if keep:
                groups[out] = g
                for j in range(n):
                    e = _exp1(s[pos + j] - best)
                    values[out, 0] += e
                    for k in range(m):
                        values[out, 1 + k] += e * vT[k, starts[g] + j]
                out += 1
            pos += n
    return shift, indptr, groups, values


# -- candidate groups by branch and bound ------------------------------------------------------
# Score bound of a ball (centre c, radius r) of sources: a.b <= a.c + |a| r (Cauchy–Schwarz).
_LEAF = 8


@nb.njit(cache=True)
def group_tree(bT, logw, starts):
    """Bounding-ball tree over the source groups (for :func:`tree_candidates`).

    Groups are split recursively at the median of their centres along the widest coordinate,
    down to at most ``_LEAF`` groups per leaf. Returns ``perm`` (n_g,) (groups in tree order),
    per node ``lo, hi`` (range in ``perm``), ``left`` (-1 for leaves; right child = left + 1),
    ``centre`` (n_nodes, p), ``radius``, ``lwmax`` (largest log-weight below the node), and per
    group ``gc`` (n_g, p), ``gr``, ``glw``.
    """
    p = bT.shape[0]
    n_g = starts.shape[0] - 1
    gc = np.zeros((n_g, p))
    gr = np.zeros(n_g)
    glw = np.full(n_g, -np.inf)
    for g in range(n_g):
        n = starts[g + 1] - starts[g]
        for j in range(starts[g], starts[g + 1]):
            for k in range(p):
                gc[g, k] += bT[k, j] / n
            glw[g] = max(glw[g], logw[j])
        for j in range(starts[g], starts[g + 1]):
            r2 = 0.0
            for k in range(p):
                r2 += (bT[k, j] - gc[g, k]) ** 2
            gr[g] = max(gr[g], np.sqrt(r2))
    max_nodes = 2 * (n_g // _LEAF + 1) * 2 + 1
    lo = np.zeros(max_nodes, dtype=np.int64)
    hi = np.zeros(max_nodes, dtype=np.int64)
    left = np.full(max_nodes, -1, dtype=np.int64)
    perm = np.arange(n_g)
    lo[0], hi[0] = 0, n_g
    n_nodes = 1
    node = 0
    while node < n_nodes:  # breadth first: children are appended in pairs
        a, b = lo[node], hi[node]
        if b - a > _LEAF:
            widest, width = 0, -1.0
            for k in range(p):
                mn, mx = np.inf, -np.inf
                for t in range(a, b):
                    mn = min(mn, gc[perm[t], k])
                    mx = max(mx, gc[perm[t], k])
                if mx - mn > width:
                    widest, width = k, mx - mn
            keys = np.empty(b - a)
            for t in range(a, b):
                keys[t - a] = gc[perm[t], widest]
            order = np.argsort(keys, kind="mergesort")
            perm[a:b] = perm[a:b][order]
            mid = (a + b) // 2
            left[node] = n_nodes
            lo[n_nodes], hi[n_nodes] = a, mid
            lo[n_nodes + 1], hi[n_nodes + 1] = mid, b
            n_nodes += 2
        node += 1
    centre = np.zeros((n_nodes, p))
    radius = np.zeros(n_nodes)
    lwmax = np.full(n_nodes, -np.inf)
    for node in range(n_nodes):
        a, b = lo[node], hi[node]
        for t in range(a, b):
            for k in range(p):
                centre[node, k] += gc[perm[t], k] / (b - a)
        for t in range(a, b):
            g = perm[t]
            r2 = 0.0
            for k in range(p):
                r2 += (gc[g, k] - centre[node, k]) ** 2
            radius[node] = max(radius[node], np.sqrt(r2) + gr[g])
            lwmax[node] = max(lwmax[node], glw[g])
    return (
        perm,
        lo[:n_nodes].copy(),
        hi[:n_nodes].copy(),
        left[:n_nodes].copy(),
        centre,
        radius,
        lwmax,
        gc,
        gr,
        glw,
    )


@nb.njit(inline="always")
def _ball_bound(a, i, c, r, lw, anorm):
    acc = lw + anorm * r
    for k in range(a.shape[1]):
        acc += a[i, k] * c[k]
    return acc


@nb.njit(inline="always")
def _group_max(a, i, bT, logw, starts, g):
    best = -np.inf
    for j in range(starts[g], starts[g + 1]):
        acc = logw[j]
        for k in range(a.shape[1]):
            acc += a[i, k] * bT[k, j]
        best = max(best, acc)
    return best


@nb.njit(cache=True)
def _tree_best(a, i, anorm, bT, logw, starts, tree):
    """Exact row maximum by branch and bound (nodes whose bound is below the best so far are
    skipped; the child with the larger bound is searched first)."""
    perm, lo, hi, left, centre, radius, lwmax = tree[:7]
    stack = np.empty(128, dtype=np.int64)
    top = 1
    stack[0] = 0
    best = -np.inf
    while top > 0:
        top -= 1
        node = stack[top]
        if _ball_bound(a, i, centre[node], radius[node], lwmax[node], anorm) < best:
            continue
        if left[node] < 0:
            for t in range(lo[node], hi[node]):
                best = max(best, _group_max(a, i, bT, logw, starts, perm[t]))
        else:
            # Search first the child whose centre scores higher (the bound is dominated by
            # |a| r at low temperature, and would favour the wider child instead).
            c0, c1 = left[node], left[node] + 1
            u0 = _ball_bound(a, i, centre[c0], 0.0, lwmax[c0], anorm)
            u1 = _ball_bound(a, i, centre[c1], 0.0, lwmax[c1], anorm)
            first, second = (c0, c1) if u0 >= u1 else (c1, c0)
            stack[top] = second
            stack[top + 1] = first  # popped next
            top += 2
    return best


@nb.njit(cache=True)
def _tree_walk(a, i, anorm, bT, logw, starts, cut, tree, out, emit):
    """Groups with a source scoring at least ``cut``: counted, written to ``out`` if ``emit``."""
    perm, lo, hi, left, centre, radius, lwmax = tree[:7]
    stack = np.empty(128, dtype=np.int64)
    top = 1
    stack[0] = 0
    cnt = 0
    while top > 0:
        top -= 1
        node = stack[top]
        if _ball_bound(a, i, centre[node], radius[node], lwmax[node], anorm) < cut:
            continue
        if left[node] < 0:
            for t in range(lo[node], hi[node]):
                g = perm[t]
                if _group_max(a, i, bT, logw, starts, g) >= cut:
                    if emit:
                        out[cnt] = g
                    cnt += 1
        else:
            stack[top] = left[node]
            stack[top + 1] = left[node] + 1
            top += 2
    return cnt


@nb.njit(inline="always")
def _norm(a, i):
    acc = 0.0
    for k in range(a.shape[1]):
        acc += a[i, k] * a[i, k]
    return np.sqrt(acc)


@nb.njit(parallel=True, cache=True)
def tree_candidates(a, bT, logw, starts, log_tol, tree, max_fraction):
    """Per target, the groups :func:`softmax_matrix_sparse` keeps, found by branch and bound.

    The exact row maximum ``best`` comes from a first search; a second walk visits the nodes
    whose bound reaches ``best + log_tol`` and scores their groups exactly, so the candidates
    are exactly the kept groups (ascending, as when visiting all pairs). The cost is the kept
    entries plus the nodes and leaves on the boundary of the kept region. Returns CSR ``ptr``
    (n_t + 1,) and ``cand``; both empty (meaning "all groups") when more than
    ``max_fraction`` of all pairs would be kept, where visiting all pairs is cheaper.
    """
    n_t = a.shape[0]
    n_g = starts.shape[0] - 1
    cut = np.empty(n_t)
    counts = np.zeros(n_t, dtype=np.int64)
    dummy = np.empty(0, dtype=np.int64)
    for i in nb.prange(n_t):
        anorm = _norm(a, i)
        best = _tree_best(a, i, anorm, bT, logw, starts, tree)
        # The same comparison as softmax_matrix_sparse (score - best >= log_tol), rounded down
        # a hair so that a group on the edge is a candidate (it is then re-tested exactly).
        cut[i] = best + log_tol - 1e-12 * (1.0 + abs(best))
        counts[i] = _tree_walk(a, i, anorm, bT, logw, starts, cut[i], tree, dummy, False)
    ptr = np.zeros(n_t + 1, dtype=np.int64)
    for i in range(n_t):
        ptr[i + 1] = ptr[i] + counts[i]
    if ptr[n_t] > max_fraction * n_t * n_g:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    cand = np.empty(ptr[n_t], dtype=np.int64)
    for i in nb.prange(n_t):
        anorm = _norm(a, i)
        _tree_walk(a, i, anorm, bT, logw, starts, cut[i], tree, cand[ptr[i] : ptr[i + 1]], True)
        cand[ptr[i] : ptr[i + 1]].sort()  # the same column order as visiting all groups
    return ptr, cand


# Public handles of inlined helpers, for the other compiled engine of this package
# (:mod:`attnflow.kernels.tiled` fuses them into its own tile loop). ``exp_inline`` is exact to
# < 5e-16 relative on ``[-708, 709)``, 0 below -708 and for -inf; ``tile_max(buf, n, scratch)``
# is the vectorised maximum of ``buf[:n]`` (``scratch`` holds ``n // 2 + 1``).
exp_inline = _exp1
prefer_wide_vectors = _prefer_wide_vectors
tile_max = _tile_max
