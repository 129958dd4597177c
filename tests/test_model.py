import math

import numpy as np
import pytest
from conftest import random_sphere
from scipy.spatial.transform import Rotation

from attnflow import SelfAttention


def test_velocity_matches_definition(rng):
    d = 3
    Q, K, V = (rng.standard_normal((d, d)) for _ in range(3))
    x, y, w = random_sphere(rng, 7, d), random_sphere(rng, 40, d), rng.random(40)
    for normalized in (True, False):
        m = SelfAttention(d, beta=2.5, Q=Q, K=K, V=V, normalized=normalized)
        e = np.exp(2.5 * (x @ Q.T) @ (y @ K.T).T) * w
        f = e @ (y @ V.T)
        if normalized:
            f /= e.sum(1, keepdims=True)
        f -= np.sum(f * x, 1, keepdims=True) * x
        np.testing.assert_allclose(m.velocity(x, y, w), f, rtol=1e-12, atol=1e-14)
    m = SelfAttention(d, beta=2.5, Q=Q, K=K, V=V, sphere=False)
    e = np.exp(2.5 * (x @ Q.T) @ (y @ K.T).T) * w
    f = e @ (y @ V.T) / e.sum(1, keepdims=True)
    np.testing.assert_allclose(m.velocity(x, y, w), f, rtol=1e-12)


def test_rotation_equivariance_on_the_sphere(rng):
    m = SelfAttention(3, beta=7.0)
    x, y, w = random_sphere(rng, 20, 3), random_sphere(rng, 500, 3), rng.random(500)
    R = Rotation.random(random_state=3).as_matrix()
    np.testing.assert_allclose(
        m.velocity(x @ R.T, y @ R.T, w), m.velocity(x, y, w) @ R.T, rtol=1e-11, atol=1e-14
    )


def test_velocity_is_tangent_and_finite_at_huge_beta(rng):
    m = SelfAttention(3, beta=1e4)
    x, y = random_sphere(rng, 200, 3), random_sphere(rng, 300, 3)
    v = m.velocity(x, y)
    assert np.all(np.isfinite(v))
    assert np.max(np.abs(np.sum(v * x, axis=1))) < 1e-14


def test_usa_relation_and_rescaling(rng):
    x, y = random_sphere(rng, 5, 2), random_sphere(rng, 30, 2)
    sa = SelfAttention(2, beta=3.0)
    usa = SelfAttention(2, beta=3.0, normalized=False)
    usa_r = SelfAttention(2, beta=3.0, normalized=False, rescale_usa=True)
    z = (np.exp(3.0 * x @ y.T) / 30).sum(1, keepdims=True)
    np.testing.assert_allclose(usa.velocity(x, y), z * sa.velocity(x, y), rtol=1e-12)
    np.testing.assert_allclose(usa_r.velocity(x, y), math.exp(-3.0) * usa.velocity(x, y))
    with pytest.raises(FloatingPointError, match="rescale_usa"):
        SelfAttention(2, beta=1e4, normalized=False).velocity(x, y)
    assert np.all(
        np.isfinite(SelfAttention(2, 1e4, normalized=False, rescale_usa=True).velocity(x, y))
    )


def test_hardmax_velocity_is_the_large_beta_limit(rng):
    Q = np.array([[1.0, 0.3], [0.0, 0.5]])
    x, y = random_sphere(rng, 6, 2), random_sphere(rng, 25, 2)
    hard = SelfAttention(2, beta=math.inf, Q=Q).velocity(x, y)
    betas = (1e2, 1e3, 1e4)
    errs = [np.abs(SelfAttention(2, beta=b, Q=Q).velocity(x, y) - hard).max() for b in betas]
    assert errs[0] > errs[1] > errs[2]
    # Laplace: the error is at most (n - 1) e^{-beta gap} |v_j - v_k| (|v| <= 1, plus the
    # projection), gap = smallest distance between the best and second-best score.
    s = np.sort((x @ Q.T) @ y.T, axis=1)
    gap = np.min(s[:, -1] - s[:, -2])
    for b, e in zip(betas, errs, strict=True):
        assert e <= 24 * 2 * math.exp(-b * gap) + 1e-13


def test_energy_matches_definition_and_log_energy_is_stable(rng):
    x, w = random_sphere(rng, 50, 3), rng.random(50)
    m = SelfAttention(3, beta=2.0)
    e = (w[:, None] * w[None] * np.exp(2.0 * x @ x.T)).sum() / 4.0
    assert m.energy(x, w) == pytest.approx(e, rel=1e-13)
    big = SelfAttention(3, beta=1e4)
    le = big.log_energy(x, w)
    # All mass at one point: E = e^beta / (2 beta) exactly.
    one = np.tile(x[:1], (4, 1))
    assert big.log_energy(one) == pytest.approx(1e4 - math.log(2e4), rel=1e-15)
    assert math.isfinite(le) and big.energy(x, w) == math.inf


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d": 1}, "d must be >= 2"),
        ({"d": 3, "beta": 0.0}, "beta must be"),
        ({"d": 3, "beta": -1.0}, "beta must be"),
        ({"d": 3, "beta": float("nan")}, "beta must be"),
        ({"d": 3, "Q": np.eye(2)}, r"Q must have shape \(3, 3\)"),
        ({"d": 3, "V": np.full((3, 3), np.nan)}, "V must have finite"),
        ({"d": 3, "K": np.diag([1.0, np.inf, 1.0])}, "K must have finite"),
        ({"d": 3, "beta": math.inf, "normalized": False}, "hardmax is SA-only"),
        ({"d": 3, "rescale_usa": True}, "USA only"),
    ],
)
def test_invalid_model_raises_naming_the_field(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SelfAttention(**kwargs)


def test_invalid_velocity_input(rng):
    m = SelfAttention(3)
    x = random_sphere(rng, 4, 3)
    with pytest.raises(ValueError, match="targets must have shape"):
        m.velocity(x[:, :2], x)
    with pytest.raises(ValueError, match="sources must be finite"):
        m.velocity(x, np.where(np.eye(4, 3) > 0, np.nan, x))
    with pytest.raises(ValueError, match="weights must be >= 0"):
        m.velocity(x, x, np.array([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="weights must have shape"):
        m.velocity(x, x, np.ones(3))
    with pytest.raises(ValueError, match="unit sphere"):
        m.velocity(2 * x, x)
    with pytest.raises(ValueError, match="zero mass"):
        m.velocity(x, x, np.zeros(4))


def test_model_is_immutable():
    m = SelfAttention(2)
    with pytest.raises(AttributeError):
        m.beta = 3.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        m.Q[0, 0] = 2.0
