"""Hardmax layers with normalisation: exact contraction, leaders, ties, clusters, and the
continuous-time limit (attnflow.layers.hardmax)."""

import math

import numpy as np
import pytest

import attnflow as af
from attnflow import layers

pytestmark = pytest.mark.usefixtures("one_numba_thread")

SQUARE = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])


def test_layer_is_the_residual_map_of_hardmax_attention():
    """One hardmax layer = the generic residual layer, 1/(1+alpha) form, with SelfAttention
    (beta = inf, Q = A, plain average) as the field."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((30, 3))
    B = rng.standard_normal((3, 3))
    A = B @ B.T + np.eye(3)
    dyn = af.SelfAttention(3, beta=math.inf, Q=A, sphere=False)
    generic = layers.residual_layers(dyn, z, 3, 0.7, normalisation="convex")
    ours = layers.hardmax_layers(z, 3, 0.7, A=A)
    assert np.allclose(generic.points, ours.points, rtol=0, atol=1e-13)


def test_follower_contracts_by_exactly_one_over_one_plus_alpha_and_leaders_stay():
    z0 = np.vstack([SQUARE, [[0.7, 0.9], [-0.2, -0.6]]])  # followers of (1,1) and (-1,-1)
    alpha = 0.8
    sol = layers.hardmax_layers(z0, 20, alpha)
    assert sorted(sol.leaders.tolist()) == [0, 1, 2, 3]
    assert np.array_equal(sol.points[:, :4], np.broadcast_to(SQUARE, (21, 4, 2)))
    for follower, leader in ((4, 0), (5, 3)):
        dist = np.linalg.norm(sol.points[:, follower] - SQUARE[leader], axis=1)
        assert np.allclose(dist[1:] / dist[:-1], 1 / (1 + alpha), rtol=1e-9, atol=0)


def test_tie_between_two_vertices_ends_at_the_midpoint():
    """(r, 0) scores r with (1, 1) and (1, -1) and r^2 < r with itself: it moves to their
    mean (1, 0), 1 - r shrinking by 1/(1 + alpha) per layer; the midpoint is a cluster that is
    not a leader."""
    alpha = 1.0
    z0 = np.vstack([SQUARE, [[0.25, 0.0]]])
    sol = layers.hardmax_layers(z0, 45, alpha)
    gap = 1 - sol.points[:, 4, 0]
    assert np.all(sol.points[:, 4, 1] == 0.0)
    exact = gap[:-1] > 1e-11  # below, r - r^2 < tie_rtol: the token ties with itself too
    assert np.allclose(gap[1:][exact] / gap[:-1][exact], 1 / (1 + alpha), rtol=1e-6, atol=0)
    assert abs(sol.final[4, 0] - 1.0) < 1e-12
    assert 4 not in sol.leaders
    assert len(sol.stats["centres"]) == 5


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_clouds_end_on_the_leaders(seed):
    """Gaussian cloud, A SPD: after enough layers every token is within 1e-12 of a leader."""
    rng = np.random.default_rng(seed)
    d, n, alpha = 3, 60, 1.0
    B = rng.standard_normal((d, d))
    A = B @ B.T / d + 0.5 * np.eye(d)
    z0 = rng.standard_normal((n, d))
    sol = layers.hardmax_layers(z0, 60, alpha, A=A)
    leaders = sol.final[sol.leaders]
    # Leaders are fixed points; once followers are within the tie tolerance (1e-12 of the
    # score) of a leader they tie with it and the leader moves by at most ~1e-12 |z|.
    scale = np.abs(z0).max()
    assert np.abs(leaders - z0[sol.leaders]).max() < 1e-11 * scale
    dist = np.linalg.norm(sol.final[:, None] - leaders[None], axis=2).min(axis=1)
    assert dist.max() < 1e-12
    assert len(sol.stats["centres"]) == sol.leaders.size


def test_continuous_time_limit_with_time_log_one_plus_alpha():
    """Layers at t = l log(1 + alpha) against af.simulate of SelfAttention(beta=inf,
    centered=True): exact for followers of fixed leaders, O(alpha) in general."""
    z0 = np.vstack([SQUARE, [[0.7, 0.9], [-0.2, -0.6]]])
    alpha = 0.05
    n = 40
    sol = layers.hardmax_layers(z0, n, alpha)
    dyn = af.SelfAttention(2, beta=math.inf, sphere=False, centered=True)
    ode = af.simulate(dyn, z0, float(layers.hardmax_time(n, alpha)), dt=0.01, kernel="recomputed")
    assert np.allclose(ode.final, sol.final, rtol=0, atol=1e-8)

    rng = np.random.default_rng(4)
    z0 = rng.standard_normal((25, 2))
    t = 1.5
    errs = []
    for alpha in (0.04, 0.02, 0.01):
        n = round(t / math.log1p(alpha))
        sol = layers.hardmax_layers(z0, n, alpha)
        ode = af.simulate(dyn, z0, float(layers.hardmax_time(n, alpha)), dt=1e-3)
        errs.append(np.abs(ode.final - sol.final).max())
    assert errs[2] < errs[1] < errs[0] < 0.2
