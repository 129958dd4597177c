import math

import numpy as np
import pytest
from conftest import random_sphere
from scipy.integrate import quad
from scipy.optimize import brentq

from attnflow import RK4, Euler, SelfAttention, Status, simulate


def two_token_gap(beta: float, phi0: float, t: float, normalized: bool = True) -> float:
    """Exact angle between two tokens on S^1 (Q=K=V=I, weights 1/2) at time t.

    Each token moves toward the other with angular speed sin(phi) / (1 + e^{beta(1-cos phi)})
    (SA) or e^{beta cos phi} sin(phi) / 2 (USA), so phi' = -2 (that speed) and
    t(phi) = int_phi^phi0 du / (2 speed(u)): one quadrature and one root find.
    """

    def rate(u):
        if normalized:
            return 2 * math.sin(u) / (1 + math.exp(beta * (1 - math.cos(u))))
        return math.exp(beta * math.cos(u)) * math.sin(u)

    def time_to(phi):
        return quad(lambda u: 1 / rate(u), phi, phi0, epsabs=0.0, epsrel=1e-13, limit=200)[0]

    return brentq(lambda p: time_to(p) - t, 1e-12, phi0, xtol=1e-15, rtol=1e-15)


def circle(angles):
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def gap_of(x):
    return math.acos(np.clip(np.dot(x[0], x[1]), -1, 1))


@pytest.mark.parametrize("normalized", [True, False])
def test_two_tokens_match_the_closed_form(normalized):
    beta, phi0, T = 2.0, 1.2, 1.5
    m = SelfAttention(2, beta=beta, normalized=normalized)
    sol = simulate(m, circle(np.array([0.3, 0.3 + phi0])), T, dt=0.01)
    assert sol.status is Status.SUCCESS
    assert abs(gap_of(sol.final) - two_token_gap(beta, phi0, T, normalized)) < 1e-8
    # The midpoint angle is conserved by symmetry.
    mid = np.arctan2(*sol.final.sum(0)[::-1])
    assert abs(mid - (0.3 + phi0 / 2)) < 1e-12


@pytest.mark.parametrize(("method", "order"), [(RK4(), 4), (Euler(), 1)])
def test_observed_order_in_dt(method, order):
    beta, phi0, T = 1.0, 1.0, 2.0
    exact = two_token_gap(beta, phi0, T)
    m = SelfAttention(2, beta=beta)
    dts = [0.2, 0.1, 0.05] if order == 4 else [0.02, 0.01, 0.005]
    errs = [
        abs(
            gap_of(simulate(m, circle(np.array([0.0, phi0])), T, dt=dt, method=method).final)
            - exact
        )
        for dt in dts
    ]
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(orders - order) < 0.15), orders


def test_points_stay_on_the_sphere(rng):
    m = SelfAttention(3, beta=5.0, V=rng.standard_normal((3, 3)))
    sol = simulate(m, random_sphere(rng, 300, 3), 3.0, dt=0.05, save_times=np.linspace(0, 3, 7))
    assert np.max(np.abs(np.linalg.norm(sol.x, axis=2) - 1.0)) < 1e-12


def test_antipodal_pair_and_equiangular_configurations_are_stationary():
    m = SelfAttention(2, beta=4.0)
    x = circle(np.array([0.7, 0.7 + np.pi]))
    np.testing.assert_allclose(simulate(m, x, 5.0, dt=0.1).final, x, atol=1e-15)
    y = circle(2 * np.pi * np.arange(7) / 7 + 0.1)
    np.testing.assert_allclose(simulate(m, y, 5.0, dt=0.1).final, y, atol=1e-13)
    z = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    np.testing.assert_allclose(simulate(SelfAttention(3, 9.0), z, 2.0, dt=0.1).final, z, atol=0)


@pytest.mark.parametrize("normalized", [True, False])
def test_energy_never_decreases(rng, normalized):
    m = SelfAttention(3, beta=3.0, normalized=normalized)
    sol = simulate(m, random_sphere(rng, 80, 3), 4.0, dt=0.02, save_times=np.linspace(0, 4, 41))
    e = np.array([m.log_energy(x) for x in sol.x])
    assert np.all(np.diff(e) >= -1e-13) and e[-1] > e[0] + 0.1


def test_euclidean_symmetric_case_energy_and_rd_tokens(rng):
    A = rng.standard_normal((2, 2))
    A = 0.2 * (A + A.T)
    m = SelfAttention(2, beta=1.0, Q=np.eye(2), K=A, V=A, sphere=False)
    sol = simulate(m, rng.standard_normal((60, 2)), 1.0, dt=0.01, save_times=np.linspace(0, 1, 11))
    e = np.array([m.log_energy(x) for x in sol.x])
    assert np.all(np.diff(e) >= -1e-13)


def test_hardmax_dynamics_runs_and_moves_toward_the_argmax():
    # Q x . K y with K = -I on S^1: every token runs toward its antipode's nearest neighbour.
    Q = np.array([[1.0, 0.0], [0.0, 1.0]])
    K = np.array([[0.0, -1.0], [1.0, 0.0]])  # rotation by +90 degrees
    m = SelfAttention(2, beta=math.inf, Q=Q, K=K)
    x = circle(np.array([0.0, 0.5, 2.0]))
    sol = simulate(m, x, 1.0, dt=0.01)
    assert sol.status is Status.SUCCESS and np.all(np.isfinite(sol.x))
    assert np.max(np.abs(np.linalg.norm(sol.final, axis=1) - 1)) < 1e-12


def test_save_times_are_hit_exactly(rng):
    m = SelfAttention(2, beta=1.0)
    ts = [0.0, 0.013, 0.5, 1.0]
    sol = simulate(m, random_sphere(rng, 10, 2), 1.0, dt=0.1, save_times=ts)
    np.testing.assert_array_equal(sol.t, ts)
    assert sol.x.shape == (4, 10, 2) and sol.n_steps == 1 + 5 + 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dt": 0.0}, "dt must be"),
        ({"dt": -0.1}, "dt must be"),
        ({"dt": float("nan")}, "dt must be"),
        ({"dt": 0.1, "save_times": [0.5, 0.2]}, "save_times must be increasing"),
        ({"dt": 0.1, "save_times": [0.0, 2.0]}, r"save_times must be increasing and lie"),
        ({"dt": 0.1, "weights": -np.ones(5)}, "weights must be >= 0"),
        ({"dt": 0.1, "method": "rk4"}, "method must be"),
    ],
)
def test_bad_input_is_rejected_before_any_work(rng, kwargs, match):
    m = SelfAttention(2)
    with pytest.raises((ValueError, TypeError), match=match):
        simulate(m, random_sphere(rng, 5, 2), 1.0, **kwargs)


def test_bad_initial_tokens(rng):
    m = SelfAttention(2)
    x = random_sphere(rng, 5, 2)
    x[2, 0] = np.nan
    with pytest.raises(ValueError, match="x0 must be finite"):
        simulate(m, x, 1.0, dt=0.1)
    with pytest.raises(ValueError, match="x0 must have shape"):
        simulate(m, np.ones((5, 3)) / np.sqrt(3), 1.0, dt=0.1)
    with pytest.raises(ValueError, match="t_final must be"):
        simulate(m, random_sphere(rng, 5, 2), -1.0, dt=0.1)
