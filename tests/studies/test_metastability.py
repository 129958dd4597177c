import itertools
import math

import numpy as np
import pytest
from conftest import numba_threads

from attnflow import SelfAttention, UniformSphere, metrics, simulate
from attnflow.studies.metastability import (
    cluster_count_sweep,
    default_gaps,
    energy_staircase,
    most_unstable_mode,
    pair_merge_time,
)

# These problems are small: threads only add synchronisation (and stall on a busy host).
pytestmark = pytest.mark.usefixtures("one_numba_thread")


def circle(th):
    return np.stack([np.cos(th), np.sin(th)], axis=-1)


# -- linear theory ---------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [10.0, 100.0, 1000.0, 1e4])
def test_most_unstable_mode_is_near_sqrt_2_beta(beta):
    n, lam = most_unstable_mode(beta)
    assert abs(n - math.sqrt(2 * beta)) <= 1
    assert 0.6 < lam < 2 / math.e + 1e-3
    # lambda_n = n^2 I_n / (beta I_0) is smaller at the neighbours.
    from scipy.special import ive

    rate = lambda m: m**2 * ive(m, beta) / (beta * ive(0, beta))  # noqa: E731
    assert rate(n) == pytest.approx(lam, rel=1e-12)
    assert rate(n - 1) < lam and rate(n + 1) < lam


# -- cluster counts --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep():
    with numba_threads(1):
        return cluster_count_sweep((20, 100, 500), n_tokens=512, n_runs=2, seed=3)


def measured_growth_rate(beta: float, n: int, m: int = 512, eps: float = 1e-6) -> float:
    """Growth rate of mode ``n`` of the uniform state, measured on the model's own field.

    Tokens at ``phi_j = 2 pi j / m`` (the uniform state: stationary) are displaced by
    ``eps cos(n phi_j)``; a displacement mode ``delta theta`` carries the density mode
    ``-d(delta theta)/dphi`` and both grow at the rate ``lambda_n`` of the continuity equation,
    so the tangential velocities are ``lambda_n eps cos(n phi_j) + O(eps^3)`` (the field vanishes
    on the uniform state, and the sums over the m equispaced tokens are trapezoidal rules of
    periodic integrands: aliasing ``~ I_{m-n}(beta)/I_0(beta) < e^{-200}`` here). A central
    difference in ``eps`` and the projection on ``cos(n phi)`` give ``lambda_n`` to
    ``O((n eps)^2) ~ 1e-9`` plus round-off ``~ 1e-16 / eps``: no Bessel function involved.
    """
    phi = 2 * np.pi * np.arange(m) / m
    model = SelfAttention(2, beta)
    mode = np.cos(n * phi)

    def tangential(e: float) -> np.ndarray:
        th = phi + e * mode
        v = model.velocity(circle(th), circle(th))
        return v[:, 1] * np.cos(th) - v[:, 0] * np.sin(th)

    dv = (tangential(eps) - tangential(-eps)) / (2 * eps)
    lam = dv @ mode / (mode @ mode)
    # mode n is an eigenvector of the linearised field (rotation invariance)
    assert np.max(np.abs(dv - lam * mode)) < 1e-7 * abs(lam)
    return float(lam)


def test_cluster_count_grows_like_the_most_unstable_mode(sweep):
    assert sweep.counts.shape == (3, 2)
    assert np.all(np.diff(sweep.mean) > 0)
    np.testing.assert_array_equal(sweep.n_star, [most_unstable_mode(b)[0] for b in (20, 100, 500)])
    ratio = sweep.mean / sweep.n_star
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    assert 0.35 < sweep.exponent < 0.65


def test_counting_time_is_when_the_fastest_linear_mode_has_grown_by_n_to_the_1_5(sweep):
    """The counting time is defined by the linear theory of the uniform state: the fastest
    mode, of size N^{-1/2} in the empirical measure of N tokens, has been amplified by
    e^{lambda_{n*} t_count} = N^{1.5} (N^{1/2} for the linear phase, as long again for the
    collapse, then a margin). Its rate and n* are measured on the model's field, independently
    of the Bessel formula the study uses."""
    for beta, n_star, rate, t in zip(
        sweep.betas, sweep.n_star, sweep.growth_rate, sweep.t_count, strict=True
    ):
        lam = [measured_growth_rate(beta, n) for n in (n_star - 1, n_star, n_star + 1)]
        assert lam[1] > lam[0] and lam[1] > lam[2]  # n* is the most unstable mode
        assert rate == pytest.approx(lam[1], rel=1e-7)
        assert math.exp(lam[1] * t) == pytest.approx(512**1.5, rel=1e-6)


def test_counting_criterion_on_a_simulated_metastable_state_is_invariant(rng):
    beta = 200.0
    x0 = UniformSphere(2).sample(256, np.random.default_rng(11))
    _, lam = most_unstable_mode(beta)
    x = simulate(SelfAttention(2, beta), x0, 1.5 * math.log(256) / lam, dt=0.1).final
    gap = 1 / math.sqrt(beta)
    k = metrics.circle_gap_clusters(x, gap=gap)
    assert 10 <= k <= 30  # n* = 20
    th = np.arctan2(x[:, 1], x[:, 0])
    for rot in rng.uniform(0, 2 * np.pi, 8):
        y = circle(th + rot)[rng.permutation(th.size)]
        assert metrics.circle_gap_clusters(y, gap=gap) == k
    # The metastable state separates scales: thresholds 0.5 to 2 / sqrt(beta) agree.
    for f in (0.5, 2.0):
        assert metrics.circle_gap_clusters(x, gap=f * gap) == k


# -- the staircase ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def staircase():
    return energy_staircase((500, 1000, 4000), n_save=111)


def test_energy_is_a_nondecreasing_staircase(staircase):
    st = staircase
    assert st.log_energy.shape == st.times.shape == st.n_clusters.shape == (3, 111)
    assert np.all(np.isfinite(st.log_energy))
    # Lyapunov (Q = K = V = I): log E never decreases, to round-off of log E ~ beta.
    steps = np.diff(st.log_energy, axis=1)
    assert np.all(steps >= -1e-14 * st.betas[:, None] * 16), steps.min()
    # Clusters disappear one at a time, from 6 to 1, each at a merge time.
    dn = np.diff(st.n_clusters, axis=1)
    assert set(np.unique(dn)) <= {0, -1}
    for row, merges in zip(st.n_clusters, st.merge_times, strict=True):
        assert row[0] == 6 and row[-1] == 1
        np.testing.assert_array_equal(np.unique(row), np.arange(1, 7))
        assert np.all(np.isfinite(merges)) and np.all(np.diff(merges) > 0)
        # Metastability: every plateau lasts much longer than the previous one.
        assert np.all(merges[1:] / merges[:-1] > 10)


def test_plateaus_are_the_energies_of_point_clusters(staircase):
    # On a plateau E/E_max = sum_c m_c^2 (clusters collapsed to points, cross terms negligible).
    st = staircase
    i = list(st.betas).index(1000)
    s, merges = st.rescaled_times, st.rescaled_merge_times[i]
    assert np.unique(np.round(st.log_energy_ratio[i], 2)).size >= 2
    edges = np.concatenate([merges, [s[-1]]])
    for lo, hi in itertools.pairwise(edges):
        k = np.argmin(np.abs(s - 0.5 * (lo + hi)))
        th = st.angles[i, k]
        cut = np.flatnonzero(np.diff(th) > st.threshold[i])
        masses = np.diff(np.concatenate([[0], cut + 1, [th.size]])) / th.size
        assert st.log_energy_ratio[i, k] == pytest.approx(np.log(np.sum(masses**2)), abs=2e-3)
    assert st.log_energy_ratio[i, -1] == pytest.approx(0.0, abs=1e-9)


def test_rescaled_time_lines_up_the_staircases(staircase):
    st = staircase
    m = st.rescaled_merge_times
    assert np.all(np.abs(m - m[1]) < 0.15), m
    assert np.all(np.abs(m[:, :4] - m[1, :4]) < 0.05), m
    # In the raw time the same merges are orders of magnitude apart.
    assert st.merge_times[2, -1] / st.merge_times[0, -1] > 1e10


def test_a_lone_pair_merges_at_the_two_token_prediction():
    # Two tokens at theta_ref merge at t_ref (the quadrature of the two-token ODE), i.e. at s = 1;
    # at beta = 4000 this is t ~ 6e12, and a plateau velocity of e^-34.
    st = energy_staircase((1000, 4000), n_tokens=2, gaps=[1.0], s_final=1.2, n_save=13)
    np.testing.assert_allclose(st.merge_times[:, 0], st.t_ref, rtol=1e-5)
    np.testing.assert_allclose(st.rescaled_merge_times[:, 0], 1.0, atol=1e-6)
    # A pair at a * theta_ref merges near s = a^2 (minus the log-prefactor correction).
    for beta in (1000.0, 4000.0):
        ref = math.log(beta) / math.sqrt(beta)
        t_ref = pair_merge_time(beta, ref, 1 / math.sqrt(beta))
        s = math.log1p(pair_merge_time(beta, 0.8 * ref, 1 / math.sqrt(beta))) / math.log1p(t_ref)
        assert 0.5 < s < 0.64


def test_default_gaps():
    np.testing.assert_allclose(default_gaps(6), [0.7, 0.4, 0.5, 0.6, 0.8])
    for n in range(2, 9):
        g = default_gaps(n)
        assert g.shape == (n - 1,) and np.unique(g).size == n - 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: energy_staircase(()), "betas must"),
        (lambda: energy_staircase((1000, -5)), "betas must"),
        (lambda: energy_staircase((1000, math.nan)), "betas must"),
        (lambda: energy_staircase((1000,), n_tokens=1), "n_tokens must"),
        (lambda: energy_staircase((1000,), n_tokens=4, gaps=[0.5, 0.6]), "gaps must"),
        (lambda: energy_staircase((1000,), s_final=0), "s_final must"),
        (lambda: energy_staircase((5,)), "betas: at beta=5"),
        (lambda: cluster_count_sweep([]), "betas must"),
        (lambda: cluster_count_sweep([-1.0]), "betas must"),
        (lambda: cluster_count_sweep([10.0], n_tokens=1), "n_tokens must"),
        (lambda: cluster_count_sweep([10.0], n_runs=0), "n_runs must"),
        (lambda: pair_merge_time(10.0, 4.0, 0.1), "theta must"),
    ],
)
def test_bad_input_raises_one_line_naming_the_parameter(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
