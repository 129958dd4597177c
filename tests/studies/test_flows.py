"""Normalizing flows: the exact ReLU flow and its pushforward relative entropy (numpy), and the
greedy fit of piecewise-constant controls by the finite element solver."""

import math

import numpy as np
import pytest

import attnflow as af
from attnflow.studies.flows import fit_controls, pushforward_kl, relu_flow

BASE = af.Gaussian([0.0, 0.0], np.eye(2))
S2 = 0.3


def two_gaussians(x):
    """0.5 N((-1.5, 0), 0.3 I) + 0.5 N((1.5, 0), 0.3 I) (numpy, fast)."""
    r1 = (x[:, 0] + 1.5) ** 2 + x[:, 1] ** 2
    r2 = (x[:, 0] - 1.5) ** 2 + x[:, 1] ** 2
    return 0.5 * (np.exp(-r1 / (2 * S2)) + np.exp(-r2 / (2 * S2))) / (2 * np.pi * S2)


TARGET = af.Mixture(
    [af.Gaussian([-1.5, 0], S2 * np.eye(2)), af.Gaussian([1.5, 0], S2 * np.eye(2))], [0.5, 0.5]
)


def test_relu_flow_is_the_flow_and_its_log_jacobian_the_integrated_divergence():
    rng = np.random.default_rng(0)
    w, a, b = np.array([0.4, -0.7]), np.array([0.6, 0.8]), 0.2
    x = rng.standard_normal((200, 2))
    y, logj = relu_flow(x, w, a, b, 0.7)
    sol = af.simulate(af.Perceptron.single(w, a, b), x, 0.7, dt=0.005)
    assert np.median(np.linalg.norm(sol.final - y, axis=1)) < 1e-9
    # Semigroup: two half steps are one step; the log-Jacobians add.
    y1, l1 = relu_flow(x, w, a, b, 0.35)
    y2, l2 = relu_flow(y1, w, a, b, 0.35)
    np.testing.assert_allclose(y2, y, atol=1e-13)
    np.testing.assert_allclose(l1 + l2, logj, atol=1e-13)
    # log J = int_0^t div v along the path = (a.w) t on the moving half-space.
    h = 1e-6
    for i in range(5):
        J = np.stack(
            [
                (
                    relu_flow(x[i : i + 1] + h * e, w, a, b, 0.7)[0]
                    - relu_flow(x[i : i + 1] - h * e, w, a, b, 0.7)[0]
                )[0]
                / (2 * h)
                for e in np.eye(2)
            ],
            axis=1,
        )
        if abs(x[i] @ a + b) > 1e-3:
            assert math.log(np.linalg.det(J)) == pytest.approx(logj[i], abs=1e-7)


def test_pushforward_kl_of_the_shear_is_t_squared_over_four():
    # KL(T#N(0, I) | N(0, I)) = t^2/4 for the shear e2 (x1)_+ (closed form), by a fine
    # midpoint rule on [-8, 8]^2.
    n = 400
    g = (np.arange(n) + 0.5) / n * 16 - 8
    X, Y = np.meshgrid(g, g)
    pts = np.stack([X.ravel(), Y.ravel()], axis=1)
    om = np.full(pts.shape[0], (16 / n) ** 2)
    rho = BASE.pdf(pts)
    logp = lambda y: -0.5 * np.sum(y**2, axis=1) - np.log(2 * np.pi)  # noqa: E731
    kl = pushforward_kl(
        pts,
        om,
        rho,
        logp,
        np.array([0.0, 1.0]),
        np.array([1.0, 0.0]),
        0.0,
        1.0,
        length=100.0,
        target_outside=0.0,
    )
    assert kl == pytest.approx(0.25, rel=1e-6)


def test_fit_controls_decreases_the_relative_entropy_and_moves_particles_toward_the_target():
    fit = fit_controls(BASE, two_gaussians, 3, cells=16, length=5.0)
    kl = fit.kl
    assert kl.shape == (4,) and np.all(np.diff(kl) < 0), kl
    assert kl[-1] < 0.6 * kl[0]
    # The search predicts the FE relative entropy (exact pushforward of the FE density) to 2%.
    np.testing.assert_allclose(fit.kl_search, kl[1:], rtol=0.02)
    assert fit.stats["fem_solves"] >= 4 and len(fit.solutions) == 3
    for s in fit.solutions:
        assert s.min_density.min() >= 0
        np.testing.assert_allclose(s.mass + s.outflow, s.mass[0], rtol=1e-12)
    # The same controls applied to particles: their empirical law moves toward the target.
    x0 = BASE.sample(1500, 1)
    y = TARGET.sample(1500, 2)
    sol = af.simulate(fit.dynamics, x0, float(fit.times[-1]), dt=0.01)
    w0 = af.metrics.wasserstein(x0, None, y, None).value
    w1 = af.metrics.wasserstein(sol.final, None, y, None).value
    assert w1 < 0.75 * w0, (w0, w1)
