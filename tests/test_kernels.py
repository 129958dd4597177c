import numpy as np
import pytest
from conftest import random_sphere
from scipy.special import logsumexp

from attnflow.kernels import (
    _numba,
    kernel_matrix,
    kernel_matrix_sparse,
    kernel_sums,
    naive_kernel_sums,
)


def direct(a, b, v, w):
    """Direct formula via scipy's log-sum-exp: log den and the softmax average of v."""
    s = a @ b.T
    with np.errstate(divide="ignore"):
        logw = np.log(w)
    lse = logsumexp(s + logw, axis=1)
    p = np.exp(s + logw - lse[:, None])
    return lse, p @ v


@pytest.mark.parametrize("beta", [0.1, 1.0, 100.0, 1e4])
@pytest.mark.parametrize("d", [2, 3, 16])
def test_engine_matches_direct_formula(rng, beta, d):
    a = random_sphere(rng, 300, d)
    b = random_sphere(rng, 1500, d)
    v = rng.standard_normal((1500, d))
    w = rng.random(1500)
    w[::5] = 0.0
    s = kernel_sums(beta * a, b, v, w)
    lse, avg = direct(beta * a, b, v, w)
    assert np.all(np.isfinite(s.shift)) and np.all(np.isfinite(s.num))
    # The shift is a lower bound of the maximum (within 600), so den >= 1 up to round-off.
    assert np.all(s.den >= 1.0 - 1e-9) and np.all(s.den <= 1500 * np.exp(600.0))
    np.testing.assert_allclose(s.shift + np.log(s.den), lse, rtol=1e-14, atol=1e-10)
    np.testing.assert_allclose(s.num / s.den[:, None], avg, rtol=1e-10, atol=1e-12)


def test_engine_matches_naive_reference(rng):
    a, b = rng.standard_normal((64, 3)), rng.standard_normal((3000, 3))
    v, w = rng.standard_normal((3000, 3)), rng.random(3000)
    s, r = kernel_sums(a, b, v, w), naive_kernel_sums(a, b, v, w)
    assert np.all(s.shift <= r.shift + 1e-12) and np.all(s.shift >= r.shift - 600)
    np.testing.assert_allclose(s.shift + np.log(s.den), r.shift + np.log(r.den), rtol=1e-14)
    np.testing.assert_allclose(s.num / s.den[:, None], r.num / r.den[:, None], rtol=1e-11)


def test_permutation_invariance(rng):
    a, b = 30 * random_sphere(rng, 50, 3), random_sphere(rng, 2000, 3)
    v, w = rng.standard_normal((2000, 2)), rng.random(2000)
    p = rng.permutation(2000)
    s1, s2 = kernel_sums(a, b, v, w), kernel_sums(a, b[p], v[p], w[p])
    np.testing.assert_allclose(s1.num / s1.den[:, None], s2.num / s2.den[:, None], rtol=1e-12)
    np.testing.assert_allclose(s1.shift + np.log(s1.den), s2.shift + np.log(s2.den), rtol=1e-14)


def test_no_nan_when_mass_is_far_at_large_beta(rng):
    # Sources at the north pole, targets at the south pole, beta = 1e4: every kernel value is
    # below e^{-19000}; the shifted sums still give the right (finite) average.
    b = np.array([[0.0, 0.0, 1.0], [0.0, 0.01, 0.99995]])
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    a = 1e4 * np.array([[0.0, 0.0, -1.0], [0.0, 0.6, -0.8]])
    s = kernel_sums(a, b, b, np.array([0.5, 0.5]))
    assert np.all(np.isfinite(s.num)) and np.all(s.den >= 1)
    _, avg = direct(a, b, b, np.array([0.5, 0.5]))
    np.testing.assert_allclose(s.num / s.den[:, None], avg, rtol=1e-9, atol=1e-14)


def test_zero_weights_contribute_nothing(rng):
    a, b, v = rng.standard_normal((10, 3)), rng.standard_normal((100, 3)), rng.random((100, 3))
    w = rng.random(100)
    w[50:] = 0.0
    s_all = kernel_sums(a, b, v, w)
    s_half = kernel_sums(a, b[:50], v[:50], w[:50])
    np.testing.assert_allclose(
        s_all.num / s_all.den[:, None], s_half.num / s_half.den[:, None], rtol=1e-14
    )
    s_none = kernel_sums(a, b, v, np.zeros(100))
    assert np.all(s_none.den == 0) and np.all(np.isneginf(s_none.shift))


def test_tiles_and_blocks_boundaries(rng):
    # Sizes around the tile (multiples of 64) and target-block (32) boundaries.
    for n_t, n_s in [(1, 1), (31, 63), (33, 65), (65, 1025), (97, 2049)]:
        a, b = 5 * rng.standard_normal((n_t, 2)), rng.standard_normal((n_s, 2))
        v, w = rng.standard_normal((n_s, 2)), rng.random(n_s)
        s, r = kernel_sums(a, b, v, w), naive_kernel_sums(a, b, v, w)
        np.testing.assert_allclose(s.num / s.den[:, None], r.num / r.den[:, None], rtol=1e-11)


def test_exponential_accuracy():
    x = np.concatenate([np.linspace(-708, 0, 200001), [-1e-300, -0.0]])
    np.testing.assert_allclose(_numba.exp_nonpositive(x), np.exp(x), rtol=5e-16, atol=0)
    assert np.all(_numba.exp_nonpositive(np.array([-709.0, -1e5, -np.inf])) == 0.0)


def test_hardmax_ties_split_by_weight():
    a = np.array([[1.0, 0.0]])
    b = np.array([[0.5, 1.0], [0.5, -1.0], [0.2, 0.0], [0.5, 0.3]])
    v = np.array([[0.0, 1.0], [0.0, -1.0], [5.0, 5.0], [1.0, 1.0]])
    w = np.array([0.25, 0.25, 0.3, 0.0])  # the last source ties too but has zero weight
    s = kernel_sums(a, b, v, w, hardmax=True)
    np.testing.assert_allclose(s.num / s.den[:, None], [[0.0, 0.0]], atol=1e-15)
    assert s.shift[0] == 0.5 and s.den[0] == 0.5


@pytest.mark.parametrize("beta", [1.0, 100.0, 1e4])
@pytest.mark.parametrize("geometry", ["sphere", "plane"])
def test_pruned_sparse_matrix_equals_all_pairs_for_any_scores(rng, beta, geometry):
    """Branch and bound over group balls finds exactly the groups all pairs keeps, for a
    general (non-symmetric) Q^T K, uneven groups and weights, on S^2 and in R^3."""
    from attnflow.kernels import kernel_matrix_sparse

    n_t, n_g = 300, 700
    sizes = rng.integers(1, 7, size=n_g)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    x = random_sphere(rng, n_t, 3)
    centres = random_sphere(rng, n_g, 3) if geometry == "sphere" else rng.normal(size=(n_g, 3))
    y = np.repeat(centres, sizes, axis=0) + 0.02 * rng.normal(size=(starts[-1], 3))
    Q, K = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    a, b = beta * x @ Q.T, y @ K.T
    v = rng.normal(size=(starts[-1], 3))
    w = rng.uniform(0.1, 1.0, size=starts[-1])
    full = kernel_matrix_sparse(a, b, v, w, starts, 1e-12, prune=False)
    fast = kernel_matrix_sparse(a, b, v, w, starts, 1e-12)
    for f, g in zip(full, fast, strict=True):
        np.testing.assert_array_equal(f, g)
    if beta == 1e4:
        assert full[1][-1] < 0.05 * n_t * n_g  # sparse at low temperature


# -- the assembled kernel matrix, against the engine ------------------------------------------
EPS = np.finfo(float).eps


def grouped_problem(rng, beta, geometry, n_t=150, n_g=400):
    """Targets on S^2 scaled by beta through a general Q; sources in uneven groups (1 to 6
    points, and one of 40) around centres on S^2 or in R^3, through a general K."""
    sizes = rng.integers(1, 7, size=n_g)
    sizes[n_g // 2] = 40
    starts = np.concatenate([[0], np.cumsum(sizes)])
    n_s = int(starts[-1])
    centres = random_sphere(rng, n_g, 3) if geometry == "sphere" else rng.normal(size=(n_g, 3))
    y = np.repeat(centres, sizes, axis=0) + 0.05 * rng.normal(size=(n_s, 3))
    if geometry == "sphere":
        y /= np.linalg.norm(y, axis=1, keepdims=True)
    Q, K = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    a, b = beta * random_sphere(rng, n_t, 3) @ Q.T, y @ K.T
    v = rng.normal(size=(n_s, 3))
    w = rng.uniform(0.1, 1.0, size=n_s)
    group = np.repeat(np.arange(n_g), sizes)
    return a, b, v, w, starts, group


def roundoff(a, b, w):
    """A bound of the round-off of a log-sum-exp ``log sum_j w_j e^{a_i . b_j}`` computed in
    two ways: each score ``a . b + log w`` to ``p eps sum_k |a_k b_k| + eps |log w|``, the exp to
    a few eps, the sum of ``n_s`` positive terms to ``n_s eps`` (relative)."""
    p, n_s = a.shape[1], b.shape[0]
    score = np.max(np.abs(a) @ np.abs(b).T) * p + np.max(np.abs(np.log(w)))
    return 2 * EPS * (score + n_s + 4)


@pytest.mark.parametrize("beta", [1.0, 100.0, 1e4])
@pytest.mark.parametrize("geometry", ["sphere", "plane"])
def test_kernel_matrix_times_cell_coefficients_is_the_engine(rng, beta, geometry):
    """``mat[:, 0] @ c`` and ``mat[:, 1:] @ c`` are the engine's den and num for the weights
    ``w_j c[group(j)]``, shifted by the density-independent shift: the log-sum-exp
    ``shift + log(mat[:, 0] @ c)`` and the average ``num / den`` agree."""
    a, b, v, w, starts, group = grouped_problem(rng, beta, geometry)
    c = rng.uniform(0.1, 2.0, size=starts.size - 1)
    shift, mat = kernel_matrix(a, b, v, w, starts)
    assert mat.shape == (a.shape[0], 4, starts.size - 1)
    ref = kernel_sums(a, b, v, w * c[group])
    den, num = mat[:, 0] @ c, mat[:, 1:] @ c
    tol = roundoff(a, b, w * c[group])
    # shift is the largest log-weighted score (with the weights w, not w c): every entry <= size
    np.testing.assert_allclose(shift, naive_kernel_sums(a, b, v, w).shift, rtol=0, atol=tol)
    assert np.all(mat[:, 0] <= np.diff(starts) * (1 + tol))
    np.testing.assert_allclose(shift + np.log(den), ref.shift + np.log(ref.den), rtol=0, atol=tol)
    np.testing.assert_allclose(
        num / den[:, None], ref.num / ref.den[:, None], rtol=0, atol=2 * tol * np.abs(v).max()
    )


@pytest.mark.parametrize("beta", [1.0, 100.0, 1e4])
@pytest.mark.parametrize("geometry", ["sphere", "plane"])
def test_sparse_kernel_matrix_is_the_dense_one_without_the_dropped_cells(rng, beta, geometry):
    """The CSR matrix keeps a group (cell) exactly when one of its terms reaches ``tol`` times
    the row's largest term; kept entries equal the dense ones, and the dropped ones change the
    sums by less than ``tol`` per dropped source. ``prune`` does not change the matrix."""
    a, b, v, w, starts, _ = grouped_problem(rng, beta, geometry)
    tol = 1e-8
    n_t, n_g = a.shape[0], starts.size - 1
    sizes = np.diff(starts)
    shift, mat = kernel_matrix(a, b, v, w, starts)
    sparse = kernel_matrix_sparse(a, b, v, w, starts, tol)
    for f, g in zip(
        sparse, kernel_matrix_sparse(a, b, v, w, starts, tol, prune=False), strict=True
    ):
        np.testing.assert_array_equal(f, g)
    s_shift, indptr, groups, values = sparse
    r = roundoff(a, b, w)
    np.testing.assert_allclose(s_shift, shift, rtol=0, atol=r)
    # The kept set: the groups with a term >= tol (terms exp(score - shift), from the engine's
    # own reference scores), away from the boundary by the round-off.
    with np.errstate(divide="ignore"):
        score = a @ b.T + np.log(w)[None, :] - shift[:, None]
    top = np.maximum.reduceat(score, starts[:-1], axis=1)  # (n_t, n_g) best term of each group
    dense_rows = np.zeros((n_t, n_g), dtype=bool)
    for i in range(n_t):
        kept = groups[indptr[i] : indptr[i + 1]]
        assert np.all(np.diff(kept) > 0)  # sorted, no duplicates
        dense_rows[i, kept] = True
        np.testing.assert_allclose(
            values[indptr[i] : indptr[i + 1]], mat[i][:, kept].T, rtol=r, atol=r
        )
    clear = np.abs(top - np.log(tol)) > r
    np.testing.assert_array_equal(dense_rows[clear], (top >= np.log(tol))[clear])
    if beta == 1e4:
        assert indptr[-1] < 0.05 * n_t * n_g  # sparse at low temperature
    # Dropped terms: for any cell coefficients c > 0 the sums differ by less than tol per
    # dropped source (times c and |v|), relative to a den >= min(c) (the best term is 1).
    c = rng.uniform(0.1, 2.0, size=n_g)
    rows = np.repeat(np.arange(n_t), np.diff(indptr))
    den_s = np.bincount(rows, weights=values[:, 0] * c[groups], minlength=n_t)
    gap = mat[:, 0] @ c - den_s
    bound = tol * (~dense_rows * (c * sizes)).sum(axis=1)
    assert np.all(gap >= -r * den_s) and np.all(gap <= bound + r * den_s)
    assert np.all(den_s >= c.min() * (1 - r))
    abs_v = np.add.reduceat(np.abs(v), starts[:-1], axis=0)  # (n_g, 3) sum_{j in g} |v_j|
    for k in range(3):
        num_s = np.bincount(rows, weights=values[:, 1 + k] * c[groups], minlength=n_t)
        bound = tol * (~dense_rows * (c * abs_v[:, k])).sum(axis=1)
        err = np.abs(mat[:, 1 + k] @ c - num_s)
        assert np.all(err <= bound + r * np.abs(v).max() * den_s)
