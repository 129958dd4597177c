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


def test_hardmax_tokens_follow_the_argmax_token_to_the_closed_form():
    """Hardmax (beta = inf) with Q = I, K = V = I rotated: every token follows the leader.

    With K the rotation by +90 degrees, <Q x_i, K x_j> = <x_i, R x_j> = sin(theta_i - theta_j).
    For tokens at angles in [0, pi/2] the maximiser for token i > 0 is the token of smallest
    angle, the leader at 0 (sin increases on [0, pi/2]): the *farthest* token, not the nearest
    nor itself. The leader's own scores are sin(-theta_j) <= 0, largest for itself, so it has
    the velocity P_x x = 0. Token i moves with P_{x_i} x_0, i.e. theta_i' = -sin(theta_i); the
    angles stay in [0, pi/2], so the argmax never switches and
    tan(theta_i(t)/2) = tan(theta_i(0)/2) e^{-t}.
    """
    K = np.array([[0.0, -1.0], [1.0, 0.0]])  # rotation by +90 degrees
    m = SelfAttention(2, beta=math.inf, Q=np.eye(2), K=K)
    th0 = np.array([0.0, 0.3, 0.9, 1.5])
    x = circle(th0)

    # The field at t = 0: P_{x_i} x_0 = -sin(theta_i) e_theta(theta_i).
    tangent = np.stack([-np.sin(th0), np.cos(th0)], axis=1)
    np.testing.assert_allclose(
        m.velocity(x, x), -np.sin(th0)[:, None] * tangent, rtol=0, atol=1e-15
    )

    T = 2.0
    exact = 2 * np.arctan(np.tan(th0 / 2) * np.exp(-T))
    sol = simulate(m, x, T, dt=0.025, save_times=np.linspace(0, T, 9))
    assert sol.status is Status.SUCCESS
    # The leader does not move; the others approach it monotonically, keeping their order.
    np.testing.assert_array_equal(sol.x[:, 0], np.tile([1.0, 0.0], (9, 1)))
    th = np.arctan2(sol.x[..., 1], sol.x[..., 0])
    assert np.all(np.diff(th[:, 1:], axis=0) < 0) and np.all(np.diff(th, axis=1) > 0)
    # The angles converge to the closed form at RK4's order 4 (the argmax never switches, so
    # the field is smooth along the trajectories).
    errs = []
    for dt in (0.1, 0.05, 0.025):
        final = simulate(m, x, T, dt=dt).final
        errs.append(np.max(np.abs(np.arctan2(final[:, 1], final[:, 0]) - exact)))
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(orders - 4) < 0.15), (errs, orders)


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
