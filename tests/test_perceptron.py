"""The perceptron term (numpy level): the field, its checks, its speed bound, its potential,
particles against the closed-form flows of width-one ReLU fields, and the relative entropy by
quadrature.

Closed forms (derived in the README section "Perceptrons and normalizing flows"): for
``v = w (a.x + b)_+`` with ``lam = a.w`` a point with ``s = a.x + b > 0`` moves to
``x + w s (e^{lam t} - 1)/lam`` (``s`` grows like ``e^{lam t}``), the others stay.
"""

import math

import numpy as np
import pytest

import attnflow as af
from attnflow.metrics import relative_entropy


def relu_flow(x, w, a, b, t):
    """The exact flow of ``w (a.x + b)_+`` for a time ``t`` (rows of ``x``)."""
    s = x @ a + b
    lam = float(a @ w)
    g = t if lam == 0 else math.expm1(lam * t) / lam
    return x + np.where(s > 0, s * g, 0.0)[:, None] * w


def test_field_is_the_sum_of_neurons_and_the_sphere_projects_it():
    rng = np.random.default_rng(0)
    W, A, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 3)), rng.standard_normal(4)
    x = rng.standard_normal((50, 3))
    for act, s in (
        ("relu", lambda z: np.maximum(z, 0)),
        ("tanh", np.tanh),
        ("sigmoid", lambda z: 1 / (1 + np.exp(-z))),
    ):
        p = af.Perceptron(W, A, b, activation=act)
        expect = sum(np.outer(s(x @ A[k] + b[k]), W[:, k]) for k in range(4))
        np.testing.assert_allclose(p.velocity(x, x), expect, rtol=1e-13, atol=1e-13)
    y = x / np.linalg.norm(x, axis=1, keepdims=True)
    ps = af.Perceptron(W, A, b, sphere=True)
    v = ps.velocity(y, y)
    np.testing.assert_allclose(np.sum(v * y, axis=1), 0.0, atol=1e-13)  # tangent
    f = af.Perceptron(W, A, b).velocity(y, y)
    np.testing.assert_allclose(v, f - np.sum(f * y, axis=1, keepdims=True) * y, atol=1e-13)
    assert not ps.needs_measure and ps.evaluate(y, None).shape == (50, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"W": np.ones((2, 3)), "A": np.ones((2, 2)), "b": np.ones(3)}, r"A must have shape"),
        ({"W": np.ones((2, 3)), "A": np.ones((3, 2)), "b": np.ones(2)}, r"b must have shape"),
        ({"W": np.ones(3), "A": np.ones((3, 1)), "b": np.ones(3)}, r"W must have shape"),
        ({"W": np.ones((2, 1)) * 1j, "A": np.ones((1, 2)), "b": [0.0]}, r"W must be real"),
        ({"W": np.ones((2, 1)), "A": [[np.nan, 0]], "b": [0.0]}, r"A must have finite"),
        ({"W": np.ones((2, 1)), "A": np.ones((1, 2)), "b": ["x"]}, r"b must be a real"),
        (
            {"W": np.ones((2, 1)), "A": np.ones((1, 2)), "b": [0.0], "activation": "gelu"},
            r"activation must be one of",
        ),
        ({"W": np.ones((1, 1)), "A": np.ones((1, 1)), "b": [0.0], "sphere": True}, r"d must be"),
    ],
)
def test_inputs_are_checked_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        af.Perceptron(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_speed_bound_holds_and_is_attained_for_one_neuron(act):
    rng = np.random.default_rng(1)
    p = af.Perceptron(
        rng.standard_normal((3, 5)), rng.standard_normal((5, 3)), rng.normal(0, 2, 5), act
    )
    x = rng.standard_normal((20000, 3))
    x *= 2.5 * rng.random((20000, 1)) ** (1 / 3) / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.linalg.norm(p.velocity(x, x), axis=1).max() <= p.speed_bound(2.5)
    # One neuron: the bound is the supremum, reached at x = R a/|a|.
    one = af.Perceptron.single([1.0, 2.0], [3.0, 4.0], 0.5, act)
    x1 = np.array([[0.6, 0.8]]) * 2.0
    assert np.linalg.norm(one.velocity(x1, x1)) == pytest.approx(one.speed_bound(2.0), rel=1e-14)


def test_gradient_perceptron_is_the_gradient_of_its_potential():
    rng = np.random.default_rng(2)
    A, b, c = rng.standard_normal((4, 3)), rng.standard_normal(4), rng.standard_normal(4)
    x = rng.standard_normal((30, 3))
    for act in ("relu", "tanh", "sigmoid"):
        p = af.Perceptron.gradient(A, b, c, act)
        np.testing.assert_allclose(p.gradient_coefficients(), c, rtol=1e-12)
        h = 1e-6
        fd = np.stack(
            [(p.potential(x + h * e) - p.potential(x - h * e)) / (2 * h) for e in np.eye(3)], 1
        )
        np.testing.assert_allclose(fd, p.velocity(x, x), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="gradient form"):
        af.Perceptron(rng.standard_normal((3, 2)), rng.standard_normal((2, 3)), [0, 0]).potential(x)


def test_divergence_is_the_trace_of_the_jacobian():
    rng = np.random.default_rng(3)
    p = af.Perceptron(
        rng.standard_normal((2, 3)), rng.standard_normal((3, 2)), rng.random(3), "tanh"
    )
    x, h = rng.standard_normal((10, 2)), 1e-6
    tr = sum(
        (p.velocity(x + h * e, x)[:, i] - p.velocity(x - h * e, x)[:, i]) / (2 * h)
        for i, e in enumerate(np.eye(2))
    )
    np.testing.assert_allclose(p.divergence(x), tr, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("w", "a", "b"),
    [
        ([1.0], [1.0], 0.0),  # 1-D: v = x_+
        ([0.0, 1.0], [1.0, 0.0], 0.0),  # shear
        ([-0.6, 0.3], [0.3, 0.2], 3.0),  # affine on |x| <= 5
        ([0.5, -1.0], [1.0, 1.0], -0.5),  # compressive, half-space
    ],
)
def test_particles_follow_the_exact_relu_flow(w, a, b):
    w, a = np.array(w), np.array(a)
    x0 = np.random.default_rng(4).standard_normal((500, w.size))
    sol = af.simulate(af.Perceptron.single(w, a, b), x0, 0.8, dt=0.01)
    # RK4 is exact to 1e-9 away from the kink; a step across it costs O(dt^2) for one token.
    err = np.linalg.norm(sol.final - relu_flow(x0, w, a, b, 0.8), axis=1)
    assert np.quantile(err, 0.95) < 1e-8 and err.max() < 1e-3


def test_piecewise_controls_are_consecutive_flows_and_a_sum_with_attention_runs():
    c1 = af.Perceptron.single([0.0, 1.0], [1.0, 0.0], 0.0)
    c2 = af.Perceptron.single([1.0, 0.0], [0.0, -1.0], 0.3)
    x0 = np.random.default_rng(5).standard_normal((300, 2))
    sol = af.simulate(af.Piecewise([0.5], [c1, c2]), x0, 1.0, dt=0.01)
    ex = relu_flow(relu_flow(x0, c1.W[:, 0], c1.A[0], 0.0, 0.5), c2.W[:, 0], c2.A[0], 0.3, 0.5)
    assert np.median(np.linalg.norm(sol.final - ex, axis=1)) < 1e-9
    both = af.SelfAttention(2, beta=1.0, sphere=False) + c1
    v = both.velocity(x0, x0)
    np.testing.assert_allclose(
        v,
        af.SelfAttention(2, beta=1.0, sphere=False).velocity(x0, x0) + c1.velocity(x0, x0),
        rtol=1e-13,
        atol=1e-13,
    )
    assert both.speed_bound(3.0) == pytest.approx(3.0 + c1.speed_bound(3.0))


def _gauss_cloud(f, n_cells=7, n_q=3, lo=-2.0, hi=3.0):
    """A 1-D cloud of Gauss-Legendre points (degree 2 n_q - 1) of the function ``f``."""
    xq, wq = np.polynomial.legendre.leggauss(n_q)
    edges = np.linspace(lo, hi, n_cells + 1)
    h = np.diff(edges)
    pts = (edges[:-1, None] + (xq[None, :] + 1) * h[:, None] / 2).reshape(-1, 1)
    om = (wq[None, :] * h[:, None] / 2).reshape(-1)
    return pts, om, om * f(pts[:, 0])


def test_relative_entropy_is_exact_for_the_quadrature_rule():
    # rho linear on each cell, log(rho / p) = g a cubic: the integrand rho g has degree 4 <= 5.
    rho = lambda x: 0.2 + 0.05 * (x + 2)  # noqa: E731
    g = lambda x: 0.3 - 0.1 * x + 0.05 * x**2 - 0.01 * x**3  # noqa: E731
    cloud = _gauss_cloud(rho)
    fwd = relative_entropy(cloud, lambda x: rho(x[:, 0]) * np.exp(-g(x[:, 0])))
    # int_{-2}^{3} rho g dx, exactly (numpy polynomial algebra).
    P = np.polynomial.Polynomial
    integrand = (P([0.2, 0.05]) + P([0.1])) * P([0.3, -0.1, 0.05, -0.01])
    exact = integrand.integ()(3.0) - integrand.integ()(-2.0)
    assert fwd.value == pytest.approx(exact, rel=1e-13)
    assert fwd.direction == "forward" and fwd.mass == pytest.approx(0.2 * 5 + 0.05 * 12.5)
    # Reverse: p log(p / rho) with p = rho e^{-g}: exact when p is the polynomial instead.
    p = lambda x: 0.1 + 0.02 * x**2  # noqa: E731
    rev = relative_entropy(
        _gauss_cloud(lambda x: p(x) * np.exp(-g(x))), lambda x: p(x[:, 0]), direction="reverse"
    )
    integrand = P([0.1, 0.0, 0.02]) * P([0.3, -0.1, 0.05, -0.01])
    assert rev.value == pytest.approx(integrand.integ()(3.0) - integrand.integ()(-2.0), rel=1e-13)


def test_relative_entropy_reports_mass_outside_and_infinities():
    law = af.Gaussian([0.0], [[1.0]])
    cloud = _gauss_cloud(lambda x: law.pdf(x[:, None]), n_cells=40, n_q=4, lo=-2.0, hi=2.0)
    r = relative_entropy(cloud, law)
    assert abs(r.value) < 1e-12  # rho = p on the mesh
    outside = 2 * 0.022750131948179195  # P(|Z| > 2)
    assert r.target_outside == pytest.approx(outside, rel=1e-9)
    assert r.mass_outside == pytest.approx(outside, rel=1e-9)
    assert abs(r.lumped) < 1e-9 and math.isnan(r.outflow)
    n = relative_entropy(cloud, law, normalize=True)
    assert abs(n.value) < 1e-12 and n.mass_outside == 0.0
    # Reverse with an empty cell: infinite; forward with p = 0 where rho > 0: infinite.
    pts, om, w = cloud
    w0 = np.where(pts[:, 0] > 1.5, 0.0, w)
    assert relative_entropy((pts, om, w0), law, direction="reverse").value == math.inf
    assert relative_entropy((pts, om, w0), law).value < math.inf
    assert relative_entropy(cloud, lambda x: np.where(x[:, 0] > 1.5, 0.0, 1.0)).value == math.inf
    with pytest.raises(ValueError, match="direction must be"):
        relative_entropy(cloud, law, direction="both")
