"""ALiBi weights, the continuum kernel kappa_lambda and the slice quadrature (pure numpy)."""

import math

import numpy as np
import pytest
from scipy.integrate import quad

from attnflow.causal import alibi_weights, kappa, slice_weights


def alibi_by_definition(n, lam):
    """The definition, term by term (as in the companion code's build_causal_weights)."""
    w = np.zeros((n, n))
    for j in range(1, n):
        k = np.arange(j)
        c = np.exp(-(lam / n) * (j - k))
        w[j, :j] = c / c.sum()
    return w


@pytest.mark.parametrize("lam", [0.0, 1e-9, 0.7, 3.0, 40.0])
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_alibi_matches_definition_rows_sum_to_one(n, lam):
    w = alibi_weights(n, lam)
    assert w.shape == (n, n)
    np.testing.assert_allclose(w, alibi_by_definition(n, lam), rtol=1e-12, atol=1e-15)
    assert np.all(w >= 0) and np.all(np.triu(w) == 0)  # strictly lower-triangular
    assert np.all(w[0] == 0)  # token 1 does not move
    np.testing.assert_allclose(w[1:].sum(axis=1), 1.0, rtol=0, atol=1e-14)


def test_alibi_extreme_slope_is_finite():
    # lam/N = 1e5: the definition's e^{-1e5} underflows, the geometric form does not.
    w = alibi_weights(8, 8e5)
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w[1:].sum(axis=1), 1.0, atol=1e-14)
    np.testing.assert_allclose(np.diag(w, -1), 1.0)  # all weight on the previous token


@pytest.mark.parametrize("lam", [0.0, 2.0, 9.0])
def test_kappa_is_a_probability_density(lam):
    for s in [0.05, 0.5, 1.0]:
        mass = quad(lambda x, s=s: float(kappa(s, x, lam)), 0, s, epsabs=1e-13, epsrel=1e-13)[0]
        assert abs(mass - 1) < 1e-10
    assert kappa(0.5, 0.7, lam) == 0.0  # causality
    assert kappa(0.5, 0.5, lam) == 0.0


def test_kappa_closed_forms_and_continuity_in_lambda():
    s, sp = np.array([0.3, 1.0, 0.8]), np.array([0.1, 0.5, 0.0])
    np.testing.assert_allclose(kappa(s, sp, 0.0), 1 / s, rtol=1e-15)
    lam = 2.5
    ref = lam * np.exp(-lam * (s - sp)) / (1 - np.exp(-lam * s))
    np.testing.assert_allclose(kappa(s, sp, lam), ref, rtol=1e-14)
    # F'(s')/F(s), F = e^{lam s} - 1
    np.testing.assert_allclose(kappa(s, sp, lam), lam * np.exp(lam * sp) / np.expm1(lam * s))
    np.testing.assert_allclose(kappa(s, sp, 1e-10), 1 / s, rtol=1e-9)
    assert kappa(np.ones((3, 1)), np.zeros(4), 1.0).shape == (3, 4)  # broadcasting


@pytest.mark.parametrize("lam", [0.0, 3.0])
def test_scaled_weights_converge_to_kappa_second_order(lam):
    # N w_jk is the cell average of kappa(j/N, .) over [k/N, (k+1)/N]: N w -> kappa at the
    # cell midpoint with an O(1/N^2) error.
    s, sp = 0.75, 0.25
    errs = []
    for n in [16, 64, 256]:
        w = alibi_weights(n, lam)
        j, k = round(s * n), round(sp * n)
        errs.append(abs(n * w[j, k] - float(kappa(s, (k + 0.5) / n, lam))))
    if lam == 0.0:
        assert max(errs) < 1e-13  # kappa_0 is constant in s'
        return
    rates = np.log(np.array(errs[:-1]) / errs[1:]) / math.log(4)
    # measured 2.05, 2.01: the rate tends to 2 from above
    assert np.all(np.abs(rates - 2) < 0.1) and abs(rates[-1] - 2) < 0.03, rates


@pytest.mark.parametrize("lam", [0.0, 0.5, 6.0])
def test_slice_weights_are_cell_integrals_and_alibi(lam):
    n_s = 9
    w = slice_weights(n_s, lam)
    h = 1 / n_s
    for i, c in [(1, 0), (4, 0), (4, 3), (8, 2), (8, 7)]:
        f = lambda x, i=i: float(kappa(i * h, x, lam))  # noqa: E731
        cell = quad(f, c * h, (c + 1) * h, epsrel=1e-13)[0]
        assert abs(w[i, c] - cell) < 1e-13
    np.testing.assert_allclose(w, alibi_weights(n_s, lam), rtol=1e-15, atol=0)
    np.testing.assert_allclose(w[1:].sum(axis=1), 1.0, atol=1e-14)
    assert np.all(w[0] == 0)


def aggregate(w, n_s, j):
    """Weights of token row j summed over the n_s blocks of M = N/n_s tokens."""
    m = w.shape[0] // n_s
    return w[j].reshape(n_s, m).sum(axis=1)


@pytest.mark.parametrize("lam", [0.0, 2.0, 7.0])
def test_alibi_aggregated_into_blocks_tends_to_slice_weights(lam):
    n_s = 8
    ws = slice_weights(n_s, lam)
    errs = []
    for m in [4, 16, 64, 256]:
        w = alibi_weights(n_s * m, lam)
        # The first token of block i (0-based row i M) sees exactly the slice weights.
        for i in [1, 3, 7]:
            np.testing.assert_allclose(aggregate(w, n_s, i * m), ws[i], rtol=1e-12, atol=1e-15)
        # The token at s_J = J/N = i/n_s (1-based J = i M: 0-based row i M - 1, the last of
        # block i - 1): O(1/N) away, as its own block still holds tokens it attends to.
        errs.append(max(np.abs(aggregate(w, n_s, i * m - 1) - ws[i]).max() for i in [3, 7]))
    rates = np.log(np.array(errs[:-1]) / errs[1:]) / math.log(4)
    # measured at lam = 7: 1.06, 1.015, 1.004 (tends to 1 from above)
    assert np.all(np.abs(rates - 1) < 0.1) and abs(rates[-1] - 1) < 0.03, (errs, rates)


def test_validation():
    with pytest.raises(ValueError, match="n must"):
        alibi_weights(0, 1.0)
    with pytest.raises(ValueError, match="n must"):
        alibi_weights(2.5, 1.0)
    with pytest.raises(ValueError, match="n must"):
        alibi_weights(True, 1.0)
    with pytest.raises(ValueError, match="n must be at most"):
        alibi_weights(10**6, 1.0)
    with pytest.raises(ValueError, match="lam"):
        alibi_weights(4, -1.0)
    with pytest.raises(ValueError, match="lam"):
        alibi_weights(4, math.nan)
    with pytest.raises(TypeError, match="lam"):
        alibi_weights(4, 1j)
    with pytest.raises(TypeError, match="lam"):
        alibi_weights(4, "x")
    with pytest.raises(ValueError, match="n_s must"):
        slice_weights(0, 1.0)
    with pytest.raises(ValueError, match="lam"):
        slice_weights(4, math.inf)
    with pytest.raises(ValueError, match=r"s must lie in \(0, 1\]"):
        kappa(0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"s must lie in \(0, 1\]"):
        kappa(1.5, 0.0, 1.0)
    with pytest.raises(ValueError, match="s_prime must lie"):
        kappa(0.5, -0.1, 1.0)
    with pytest.raises(ValueError, match="s_prime must be real"):
        kappa(0.5, 0.1j, 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        kappa(np.full(3, 0.5), np.zeros(4), 1.0)
