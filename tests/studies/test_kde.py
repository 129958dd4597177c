"""Modes of Gaussian KDEs: exact cases, grid refinement, Monte Carlo against Kac–Rice, and the
sqrt(beta log beta) growth of the whole-line count (Geshkovski–Rigollet–Sun)."""

import math

import numpy as np
import pytest
from scipy.special import ive

from attnflow.studies.kde import (
    circle_kde,
    count_modes,
    derivative_moments,
    expected_modes,
    kac_rice_circle,
    kac_rice_line,
    line_kde,
)


def test_kdes_are_probability_densities_with_consistent_derivatives():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(50)
    t = np.linspace(-8, 8, 40001)
    p = line_kde(t, x, 30.0)
    assert abs(np.trapezoid(p, t) - 1) < 1e-10
    np.testing.assert_allclose(np.gradient(p, t)[1:-1], line_kde(t, x, 30.0, 1)[1:-1], atol=1e-4)
    th = rng.uniform(0, 2 * np.pi, 20)
    g = np.linspace(0, 2 * np.pi, 4001)
    q = circle_kde(g, th, 1e4)  # ive: no overflow at beta = 1e4
    assert abs(np.trapezoid(circle_kde(g, th, 9.0), g) - 1) < 1e-12 and np.all(np.isfinite(q))
    d2 = circle_kde(g, th, 9.0, 2)
    np.testing.assert_allclose(np.gradient(circle_kde(g, th, 9.0, 1), g)[1:-1], d2[1:-1], atol=1e-3)


@pytest.mark.parametrize("factor", [1.9, 2.1])
def test_two_samples_are_bimodal_exactly_beyond_two_bandwidths(factor):
    """An equal mixture of two N(., h^2) is bimodal iff the means are more than 2 h apart."""
    beta = 400.0
    x = np.array([0.3, 0.3 + factor / math.sqrt(beta)])
    assert count_modes(x, beta) == (1 if factor < 2 else 2)
    assert count_modes(x, beta, grid_factor=64) == (1 if factor < 2 else 2)


@pytest.mark.parametrize("domain", ["line", "circle"])
@pytest.mark.parametrize("beta", [10.0, 100.0, 1e3, 1e4])
def test_refining_the_grid_does_not_change_the_count(domain, beta):
    rng = np.random.default_rng(int(beta))
    for _ in range(3):
        x = rng.standard_normal(500) if domain == "line" else rng.uniform(0, 2 * np.pi, 500)
        c = count_modes(x, beta, domain=domain)
        assert c == count_modes(x, beta, domain=domain, grid_factor=32) > 0


def test_the_count_equals_the_sign_changes_of_the_dense_derivative():
    """Far-tail samples (p' underflows to 0 between them) are modes of their own."""
    rng = np.random.default_rng(5)
    bulk = rng.standard_normal(100)
    x = np.concatenate([bulk, [9.0, 11.0, -12.0]])
    beta = 1e3
    t = np.linspace(x.min() - 0.1, x.max() + 0.1, 40_001)
    s = np.sign(line_kde(t, x, beta, 1))
    s = s[s != 0]
    dense = int(np.sum((s[:-1] > 0) & (s[1:] < 0)))
    assert count_modes(x, beta) == dense == count_modes(bulk, beta) + 3


def test_derivative_moments_match_the_closed_form_means():
    beta = 50.0
    t = np.linspace(-4, 4, 17)
    s2 = 1 + 1 / beta
    ps = np.exp(-(t**2) / (2 * s2)) / np.sqrt(2 * np.pi * s2)
    mean, cov = derivative_moments(t, beta, 10)
    np.testing.assert_allclose(mean[:, 0], -t / s2 * ps, atol=1e-14)
    np.testing.assert_allclose(mean[:, 1], (t**2 / s2**2 - 1 / s2) * ps, atol=1e-13)
    # bulk, large beta: Var p' ~ p(t) int K_h'^2 / n = p(t) beta^{3/2} / (4 sqrt(pi) n)
    _, cov = derivative_moments(np.array([0.0]), 1e6, 1)
    assert abs(cov[0, 0, 0] / (1e9 / (4 * np.sqrt(np.pi)) / np.sqrt(2 * np.pi)) - 1) < 1e-3


def test_monte_carlo_and_kac_rice_agree_in_a_bulk_window():
    beta, n, window = 100.0, 4000, (-0.5, 0.5)
    mc = expected_modes(beta, n, window=window, n_runs=300, seed=1)
    kr = kac_rice_line(beta, n, window)
    assert abs(mc.mean - kr) < 3 * mc.sem, (mc.mean, mc.sem, kr)
    assert mc.sem < 0.03 * kr  # the test can tell


def test_monte_carlo_and_kac_rice_agree_on_the_circle():
    beta = 100.0
    mc = expected_modes(beta, 2048, domain="circle", n_runs=40, seed=2)
    kr = kac_rice_circle(beta)
    assert abs(mc.mean - kr) < 3 * mc.sem, (mc.mean, mc.sem, kr)
    # Parseval sum -> sqrt(3 beta / 2)
    m = np.arange(1, 2000)
    i2 = ive(m, 1e4) ** 2
    assert abs(kac_rice_circle(1e4) - math.sqrt((m**4 @ i2) / (m**2 @ i2))) < 1e-9
    assert abs(kac_rice_circle(1e4) / math.sqrt(1.5e4) - 1) < 1e-3


def test_the_whole_line_count_grows_like_sqrt_beta_log_beta():
    """n = beta (inside n^c <~ beta <~ n^{2-c}): count / sqrt(beta log beta) stays in a narrow
    band over 1e2 .. 1e4, and from 1e3 to 1e4 the count grows by the factor of
    sqrt(beta log beta) (sqrt(10) * 1.155), not of sqrt(beta) alone, within 3 standard errors."""
    runs = {1e2: 40, 1e3: 24, 1e4: 12}
    res = {b: expected_modes(b, int(b), n_runs=r, seed=7) for b, r in runs.items()}
    const = {b: r.mean / math.sqrt(b * math.log(b)) for b, r in res.items()}
    assert all(0.35 < c < 0.6 for c in const.values()), const
    ratio = res[1e4].mean / res[1e3].mean
    se = ratio * math.hypot(res[1e4].sem / res[1e4].mean, res[1e3].sem / res[1e3].mean)
    predicted = math.sqrt(10 * math.log(1e4) / math.log(1e3))
    assert abs(ratio - predicted) < 3 * se, (ratio, se, predicted)
    assert ratio - math.sqrt(10) > 3 * se  # sqrt(beta) alone is excluded
