import numpy as np
import pytest
from conftest import random_sphere
from scipy.special import logsumexp

from attnflow.kernels import _numba, kernel_sums, naive_kernel_sums


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
