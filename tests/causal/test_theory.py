"""The closed-form lost-in-the-middle theory against independent routes (pure numpy, MPI-safe)."""

import math

import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.special import iv, ive

from attnflow.causal import (
    alibi_weights,
    correlation_kernel,
    discrete_correlation,
    discrete_retrieval_score,
    kappa,
    log_mode_rate,
    mode_rate,
    profile_minimum,
    retrieval_score,
    retrieval_score_slope,
    retrieval_weights,
    t_crit,
)

S_CHECK = np.array([1 / 8, 1 / 4, 1 / 2, 3 / 4, 7 / 8])


def psi_series(c, y, terms=200):
    """psi_c(y) = sum_k c^{k+1} y^k / (k! (k+1)!) by its defining series."""
    term, total = c, c
    for k in range(terms):
        term *= c * y / ((k + 1) * (k + 2))
        total += term
    return total


def f_lam(s, lam):
    return np.expm1(lam * s) if lam > 0 else s


def test_mode_rate():
    for n, beta in [(1, 1.0), (3, 0.5), (7, 20.0)]:
        assert math.isclose(mode_rate(n, beta), n * n * iv(n, beta), rel_tol=1e-13)
    # no overflow in the log: I_1(2000) ~ e^2000
    assert math.isclose(log_mode_rate(1, 2000.0), 2000.0 + math.log(ive(1, 2000.0)), rel_tol=1e-15)


@pytest.mark.parametrize("lam", [0.0, 1.5])
def test_closed_form_is_the_series(lam):
    # R = kappa(1, s) psi_{a t}(log(F(1)/F(s))), compared with the series term by term,
    # across the small-z Taylor branch, the ive branch and the Hankel branch.
    beta, n = 1.3, 2
    a = mode_rate(n, beta)
    for t in [1e-14, 1e-3, 0.7, 5.0]:
        for s in [1e-6, 0.2, 0.6, 1 - 1e-12, 1.0]:
            y = math.log(f_lam(1.0, lam) / f_lam(s, lam))
            ref = float(kappa(1.0, s, lam)) if s < 1 else lam / -math.expm1(-lam) if lam else 1
            ref *= psi_series(a * t, y)
            got = float(correlation_kernel(n, beta, lam, t, s))
            assert math.isclose(got, ref, rel_tol=1e-12), (t, s, got, ref)
    # large z: psi_c(y) = sqrt(c/y) I_1(2 sqrt(cy)); log form against iv where it is finite
    # (z = 2 sqrt(c y) ~ 400), and finite logs far beyond float64 range of R itself
    t, s = 4e4 / a, 0.5
    y = math.log(f_lam(1.0, lam) / f_lam(s, lam))
    c = a * t
    ref = math.log(float(kappa(1.0, s, lam)) * math.sqrt(c / y) * iv(1, 2 * math.sqrt(c * y)))
    got = float(correlation_kernel(n, beta, lam, t, s, log=True))
    assert math.isclose(got, ref, rel_tol=1e-13)
    huge = correlation_kernel(n, 1000.0, lam, [1.0, 1e6], [0.5, 0.3], log=True)
    assert np.all(np.isfinite(huge)) and huge[1] > huge[0] > 700


def test_kernel_edges_and_broadcasting():
    n, beta, lam = 1, 1.0, 2.0
    a = mode_rate(n, beta)
    out = correlation_kernel(n, beta, lam, np.array([[0.0], [1.0]]), [0.0, 0.5, 1.0])
    assert out.shape == (2, 3)
    assert np.all(out[0] == 0)  # t = 0: only the atom
    assert np.isinf(out[1, 0])  # primacy singularity at s = 0
    # s -> 1: a t kappa(1, 1)
    assert math.isclose(out[1, 2], a * lam / -math.expm1(-lam), rel_tol=1e-14)
    # causality with an interior target: zero after it
    assert correlation_kernel(n, beta, lam, 1.0, 0.8, target=0.5) == 0.0
    np.testing.assert_array_equal(correlation_kernel(n, beta, lam, 1.0, 0.0, log=True), np.inf)


@pytest.mark.parametrize("lam", [0.0, 2.0])
@pytest.mark.parametrize("t", [0.5, 2.0])
def test_mass_is_exponential_growth(lam, t):
    # int_0^1 R(t; 1, s) ds = e^{a t} - 1 (substitute y = log(F(1)/F(s)))
    n, beta = 1, 1.0
    a = mode_rate(n, beta)
    mass = quad(
        lambda s: float(correlation_kernel(n, beta, lam, t, s)),
        0,
        1,
        limit=200,
        epsabs=1e-13,
        epsrel=1e-11,
    )[0]
    assert math.isclose(mass, math.expm1(a * t), rel_tol=1e-8)


@pytest.mark.parametrize("lam", [0.0, 2.0])
def test_closed_form_vs_discrete_first_order(lam):
    # N expm(t A_N)[N-1, k] at s = (k+1)/N -> R(t; 1, s), measured rate ~ 1.
    n, beta, times = 1, 1.0, [0.5, 2.0]
    ref = correlation_kernel(n, beta, lam, np.array(times)[:, None], S_CHECK[None, :])
    errs = []
    for big_n in [16, 64, 256]:
        s, c = discrete_correlation(n, beta, lam, times, big_n)
        k = np.rint(S_CHECK * big_n).astype(int) - 1
        np.testing.assert_allclose(s[k], S_CHECK, rtol=1e-15)
        assert np.all(c[:, -1] == big_n)  # the atom: the last token's own phase
        errs.append(np.abs(c[:, k] - ref).max() / np.abs(ref).max())
    rates = np.log(np.array(errs[:-1]) / errs[1:]) / math.log(4)
    assert errs[-1] < 0.02
    # measured: rates 1.02-1.05 (16 -> 64), 1.005-1.014 (64 -> 256)
    assert np.all(np.abs(rates - 1) < 0.1) and abs(rates[-1] - 1) < 0.03, (errs, rates)


def test_discrete_diagonal_and_row_sum():
    # expm(t A) has a unit diagonal (A strictly lower-triangular) and, A's rows summing to
    # a except row 0, row sums e^{a t} - (the part that came from token 1's frozen phase).
    n, beta, lam, t, big_n = 2, 0.8, 1.0, 1.5, 40
    a = mode_rate(n, beta)
    e = scipy.linalg.expm(t * a * alibi_weights(big_n, lam))
    np.testing.assert_allclose(np.diag(e), 1.0, rtol=0, atol=1e-15)
    _, c = discrete_correlation(n, beta, lam, t, big_n)
    np.testing.assert_allclose(c[0], big_n * e[-1], rtol=1e-14)
    assert c[0, :-1].sum() / big_n < math.expm1(a * t)


def volterra_by_quadrature(a, lam, t, s0, m):
    """R(t; s, s0) for s in [s0, 1] from the Volterra ODE, trapezoid rule on m cells.

    R' = a k(s, s0) + a int_{s0}^{s} k(s, s') R(s') ds' (the atom at s0 propagated once),
    R(0) = 0, with the smooth kernel k(s, s') = F'(s')/F(s) (= kappa for s' < s); the value at
    s0 is the right limit R(s0+). A linear ODE, solved exactly in t by an augmented matrix
    exponential.
    """
    s = np.linspace(s0, 1.0, m + 1)
    h = s[1] - s[0]
    fp = lam * np.exp(lam * s) if lam > 0 else np.ones_like(s)
    f = f_lam(s, lam)
    q = np.zeros((m + 1, m + 1))
    for i in range(1, m + 1):
        wts = np.full(i + 1, h)
        wts[[0, -1]] = h / 2
        q[i, : i + 1] = wts * fp[: i + 1] / f[i]
    b = fp[0] / f
    aug = np.zeros((m + 2, m + 2))
    aug[: m + 1, : m + 1] = a * q
    aug[: m + 1, -1] = a * b
    return s, scipy.linalg.expm(t * aug)[: m + 1, -1]


@pytest.mark.parametrize("lam", [0.0, 2.5])
def test_closed_form_vs_direct_volterra_solution(lam):
    n, beta, t, s0 = 1, 1.0, 1.5, 0.3
    a = mode_rate(n, beta)
    errs = []
    for m in [50, 100, 200]:
        s, r = volterra_by_quadrature(a, lam, t, s0, m)
        # every target s_i > s0 at once: the general two-point kernel R(t; s_i, s0)
        ref = np.array([float(correlation_kernel(n, beta, lam, t, s0, target=x)) for x in s])
        errs.append(np.abs(r - ref).max() / np.abs(ref).max())
    rates = np.log2(np.array(errs[:-1]) / errs[1:])
    assert errs[-1] < 1e-4
    assert np.all(np.abs(rates - 2) < 0.1), (errs, rates)  # trapezoid: second order


@pytest.mark.parametrize("beta,lam", [(1.0, 2.0), (3.0, 1.0), (0.5, 4.0)])
def test_t_crit_from_the_slope_at_one(beta, lam):
    tc = t_crit(beta, lam)
    w = retrieval_weights()
    a = np.array([mode_rate(n, beta) for n in range(1, 21)])
    assert math.isclose(tc, 2 * (1 - math.exp(-lam)) * (w @ a) / (w @ a**2), rel_tol=1e-12)

    # independent route: brentq on a one-sided finite difference of the closed-form profile
    def fd(t, d=1e-6):
        return float(retrieval_score(beta, lam, t, 1.0) - retrieval_score(beta, lam, t, 1 - d))

    root = brentq(fd, 0.2 * tc, 5 * tc, xtol=1e-14)
    assert abs(root / tc - 1) < 1e-4
    # the analytic slope agrees with central differences
    for t in [0.5 * tc, 2 * tc]:
        for s in [0.1, 0.5, 0.9]:
            h = 1e-5
            fdc = (retrieval_score(beta, lam, t, s + h) - retrieval_score(beta, lam, t, s - h)) / (
                2 * h
            )
            assert math.isclose(retrieval_score_slope(beta, lam, t, s), fdc, rel_tol=1e-6)


@pytest.mark.parametrize("beta,lam", [(1.0, 1.0), (1.0, 2.0), (3.0, 4.0), (0.5, 0.5)])
def test_u_shape_before_t_crit_and_no_recency_after(beta, lam):
    tc = t_crit(beta, lam)
    grid = np.linspace(1e-4, 1.0, 4001)
    for f in [0.2, 0.5, 0.9]:
        t = f * tc
        sl = retrieval_score_slope(beta, lam, t, grid, relative=True)
        changes = np.flatnonzero(np.diff(np.sign(sl)) != 0)
        assert changes.size == 1 and sl[0] < 0 < sl[-1]  # primacy, recency, one minimum
        s_min = profile_minimum(beta, lam, t)
        assert grid[changes[0]] <= s_min <= grid[changes[0] + 1]
        vals = retrieval_score(beta, lam, t, [1e-3, s_min, 1.0])
        assert vals[1] < vals[0] and vals[1] < vals[2]
        assert abs(float(retrieval_score_slope(beta, lam, t, s_min, relative=True))) < 1e-8
    for f in [1.1, 3.0]:
        assert retrieval_score_slope(beta, lam, f * tc, 1.0) < 0  # recency lost
    assert math.isnan(profile_minimum(beta, lam, 5 * tc))  # decreasing throughout


def test_minimum_moves_right_with_t():
    beta, lam = 1.0, 1.0
    tc = t_crit(beta, lam)
    mins = [profile_minimum(beta, lam, f * tc) for f in [0.1, 0.3, 0.6, 0.9, 0.999]]
    assert np.all(np.diff(mins) > 0)
    assert mins[-1] > 0.95  # lam < log 4: the minimum reaches s = 1 at t_crit


@pytest.mark.parametrize("lam", [1.0, 1.2, 1.6, 3.0])
def test_second_derivative_at_t_crit_single_mode(lam):
    # one mode: at t_crit, sign S''(1) = sign(k - 4 lam/3), k = lam/(1 - e^{-lam}),
    # i.e. positive iff lam < log 4 (the minimum reaches s = 1) and negative beyond.
    beta, w = 1.0, [1.0]
    tc = t_crit(beta, lam, weights=w)
    h = 1e-3
    s = np.array([1 - 2 * h, 1 - h, 1.0])
    v = retrieval_score(beta, lam, tc, s, weights=w)
    second = (v[0] - 2 * v[1] + v[2]) / h**2
    k = lam / -math.expm1(-lam)
    assert np.sign(second) == np.sign(k - 4 * lam / 3)
    if lam > math.log(4):
        # an interior maximum appears just above t_crit: the recency peak moves inside
        grid = np.linspace(0.01, 1.0, 20001)
        sl = retrieval_score_slope(beta, lam, 1.001 * tc, grid, weights=w, relative=True)
        assert np.flatnonzero(np.diff(np.sign(sl)) != 0).size == 2


def test_no_alibi_no_recency():
    beta = 1.0
    assert t_crit(beta, 0.0) == 0.0
    grid = np.linspace(1e-3, 1.0, 500)
    for t in [0.01, 1.0, 10.0]:
        assert np.all(retrieval_score_slope(beta, 0.0, t, grid) < 0)
        assert math.isnan(profile_minimum(beta, 0.0, t))


@pytest.mark.parametrize("beta,lam,f", [(1.0, 2.0, 0.5), (1.0, 1.0, 0.5), (3.0, 4.0, 0.5)])
def test_minimum_closed_form_vs_discrete(beta, lam, f):
    t = f * t_crit(beta, lam)
    s_min = profile_minimum(beta, lam, t)
    errs = []
    for big_n in [16, 64, 256]:
        s, v = discrete_retrieval_score(beta, lam, t, big_n)
        v, s = v[0, :-1], s[:-1]  # without the atom of the last token
        i = int(np.argmin(v))
        assert 0 < i < big_n - 2  # an interior discrete minimum
        y0, y1, y2 = v[i - 1 : i + 2]
        s_d = s[i] + 0.5 * (s[1] - s[0]) * (y0 - y2) / (y0 - 2 * y1 + y2)  # parabola
        errs.append(abs(s_d - s_min))
    # measured: 0.044, 0.010, 0.0025 (O(1/N), about 0.6/N)
    assert errs[-1] < 1.5 / 256
    assert errs[0] / errs[-1] > 8  # ~ 16 for O(1/N)


def test_retrieval_weights_and_score():
    w = retrieval_weights(20, 8.0)
    np.testing.assert_allclose(w, np.exp(-(np.pi**2) * np.arange(1, 21) ** 2 / 128))
    beta, lam, t = 1.0, 2.0, 0.7
    s = np.array([0.1, 0.5, 0.9])
    ref = sum(w[n - 1] * correlation_kernel(n, beta, lam, t, s) for n in range(1, 21))
    np.testing.assert_allclose(retrieval_score(beta, lam, t, s), ref, rtol=1e-13)
    np.testing.assert_allclose(
        retrieval_score(beta, lam, t, s, log=True), np.log(ref), rtol=1e-13, atol=1e-13
    )
    one = retrieval_score(beta, lam, t, s, weights=[0.0, 1.0])
    np.testing.assert_allclose(one, correlation_kernel(2, beta, lam, t, s), rtol=1e-14)
    big = retrieval_score(500.0, lam, 50.0, [0.2, 0.5], log=True)
    assert np.all(np.isfinite(big))


def test_validation():
    with pytest.raises(ValueError, match="n must"):
        correlation_kernel(0, 1.0, 1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="beta"):
        correlation_kernel(1, -1.0, 1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="lam"):
        correlation_kernel(1, 1.0, -0.1, 1.0, 0.5)
    with pytest.raises(ValueError, match="t must be finite and >= 0"):
        correlation_kernel(1, 1.0, 1.0, -1.0, 0.5)
    with pytest.raises(ValueError, match="t must be finite"):
        correlation_kernel(1, 1.0, 1.0, math.inf, 0.5)
    with pytest.raises(ValueError, match=r"s must lie in \[0, 1\]"):
        correlation_kernel(1, 1.0, 1.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="broadcast"):
        correlation_kernel(1, 1.0, 1.0, np.ones(3), np.full(4, 0.5))
    with pytest.raises(ValueError, match="target"):
        correlation_kernel(1, 1.0, 1.0, 1.0, 0.5, target=0.0)
    with pytest.raises(ValueError, match="target"):
        correlation_kernel(1, 1.0, 1.0, 1.0, 0.5, target=1.5)
    with pytest.raises(ValueError, match="weights"):
        retrieval_score(1.0, 1.0, 1.0, 0.5, weights=[-1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        t_crit(1.0, 1.0, weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="n_max"):
        retrieval_weights(0)
    with pytest.raises(ValueError, match="resolution"):
        retrieval_weights(5, 0.0)
    with pytest.raises(ValueError, match=r"s must lie in \(0, 1\]"):
        retrieval_score_slope(1.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="t must be"):
        profile_minimum(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="n_tokens"):
        discrete_correlation(1, 1.0, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="n_tokens must be at most"):
        discrete_correlation(1, 1.0, 1.0, 1.0, 10**5)
    with pytest.raises(ValueError, match="too large"):
        discrete_correlation(1, 1.0, 1.0, 1e4, 8)
    with pytest.raises(ValueError, match="1-D"):
        discrete_correlation(1, 1.0, 1.0, np.ones((2, 2)), 8)
