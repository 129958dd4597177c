"""Random multi-head layers and their homogenized SDE (attnflow.layers.random_heads,
attnflow.layers.homogenized): the layer map, seeds independent of the ranks, and the eta -> 0
limit against closed forms (3 standard errors)."""

import math

import numpy as np
import pytest

from attnflow import layers

pytestmark = pytest.mark.usefixtures("one_numba_thread")

E1, E2 = np.eye(3)[0], np.eye(3)[1]
PAIR = np.array([E1, E2])  # rho_0 = 0


def test_layer_is_the_residual_map_of_a_multihead():
    """One random layer = residual_layers(MultiHead of the same draws, layer norm)."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((7, 4))
    x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
    law = layers.GaussianHeads(4, 3, sigma=1.3)
    ours = layers.random_head_layers(x0, 1, 0.3, law, 2.0, seed=5)
    Q, K, V = law.sample(5, 1, 1)
    generic = layers.residual_layers(layers.multihead_of(Q[0], K[0], V[0], 2.0), x0, 1, 0.3)
    assert np.allclose(ours.points[0, 1], generic.final, rtol=0, atol=1e-14)
    assert ours.times[1] == pytest.approx(0.3**2 * 3 * 1.3**2)


class _FakeComm:
    """Two 'ranks' of 5 runs, run one after the other: allgather fills the other rank's part
    with NaN."""

    def __init__(self, rank: int) -> None:
        self.rank, self.size = rank, 2

    def allgather(self, part):
        counts = (3, 2)
        return [
            part if r == self.rank else np.full((counts[r], *part.shape[1:]), np.nan)
            for r in range(2)
        ]


@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_runs_do_not_depend_on_the_number_of_ranks(beta, comm):
    law = layers.GaussianHeads(3, 2)
    serial = layers.random_head_layers(PAIR, 6, 0.2, law, beta, n_runs=5, seed=9)
    if comm.size > 1:
        par = layers.random_head_layers(PAIR, 6, 0.2, law, beta, n_runs=5, seed=9, comm=comm)
        assert np.array_equal(par.points, serial.points)
    parts = [
        layers.random_head_layers(PAIR, 6, 0.2, law, beta, n_runs=5, seed=9, comm=_FakeComm(r))
        for r in (0, 1)
    ]
    assert np.array_equal(parts[0].points[0::2], serial.points[0::2])
    assert np.array_equal(parts[1].points[1::2], serial.points[1::2])
    sde = layers.homogenized_sde(PAIR, 0.1, 0.02, beta, n_runs=5, seed=3, n_features=2)
    sde1 = layers.homogenized_sde(
        PAIR, 0.1, 0.02, beta, n_runs=5, seed=3, n_features=2, comm=_FakeComm(1)
    )
    assert np.array_equal(sde1.points[1::2], sde.points[1::2])


def _within(mean, se, ref, k=3.0):
    assert np.all(np.abs(mean - ref) <= k * se), (mean, se, ref)


def test_one_token_decorrelates_like_brownian_motion_on_the_sphere():
    """E<x_t, x_0> = exp(-(d - 1) t / (2 d)), t = layers * eta^2 H sigma^2 (beta irrelevant)."""
    d, n_runs = 3, 3000
    law = layers.GaussianHeads(d, 2, sigma=0.8)
    eta = math.sqrt(0.005 / (2 * 0.8**2))  # dt = 0.005 per layer
    sol = layers.random_head_layers(E1[None], 200, eta, law, 1.0, n_runs=n_runs, seed=1, record=50)
    c = sol.points[:, :, 0] @ E1
    _within(
        c.mean(0), c.std(0) / math.sqrt(n_runs) + 1e-300, layers.one_token_correlation(d, sol.times)
    )


def test_pair_at_beta_zero_follows_the_closed_rho_sde():
    """Discrete model vs the backward Kolmogorov solution of the closed SDE for rho:
    means of rho and artanh(rho) within 3 standard errors; and the SDE scheme likewise."""
    d, n_runs = 3, 3000
    law = layers.GaussianHeads(d, 1)
    sol = layers.random_head_layers(
        PAIR, 200, math.sqrt(0.005), law, 0.0, n_runs=n_runs, seed=2, record=100
    )
    sde = layers.homogenized_sde(PAIR, 1.0, 0.01, 0.0, n_runs=n_runs, seed=3, record=50)
    assert np.allclose(sde.times, sol.times)
    ref_rho, ref_u = layers.pair_moments_beta0(d, 0.0, sol.times)
    for run in (sol, sde):
        rho = run.mean_cosine()
        u = np.arctanh(rho)
        se = lambda a: a.std(0) / math.sqrt(n_runs)  # noqa: E731
        _within(rho.mean(0)[1:], se(rho)[1:], ref_rho[1:])
        _within(u.mean(0)[1:], se(u)[1:], ref_u[1:])


def test_pair_at_positive_beta_discrete_against_sde():
    """beta = 2: discrete (H = 1, eta^2 = 0.005) vs the SDE scheme (2 features, dt = 0.02):
    E rho at t = 0.5, 1 within 3 combined standard errors; the initial collapse rate against
    pair_drift with C from Monte Carlo."""
    d, n_runs, beta = 3, 3000, 2.0
    dis = layers.random_head_layers(
        PAIR,
        200,
        math.sqrt(0.005),
        layers.GaussianHeads(d, 1),
        beta,
        n_runs=n_runs,
        seed=4,
        record=100,
    )
    sde = layers.homogenized_sde(
        PAIR, 1.0, 0.02, beta, n_runs=n_runs, seed=5, n_features=2, record=25
    )
    a, b = dis.mean_cosine(), sde.mean_cosine()
    se = np.hypot(a.std(0), b.std(0)) / math.sqrt(n_runs)
    _within(a.mean(0)[1:], se[1:], b.mean(0)[1:])


def test_collapse_rate_at_t0_matches_the_pair_drift():
    """(E rho_t - rho_0) / t at small t against pair_drift(rho_0, C) (C by Monte Carlo);
    the O(t) curvature of E rho is below the error bars at t = 0.1."""
    d, beta, n_runs = 4, 1.0, 4000
    rho0 = 0.3
    x0 = np.array([[1.0, 0, 0, 0], [rho0, math.sqrt(1 - rho0**2), 0, 0]])
    C, C_se = layers.attention_covariance(x0, beta, n_samples=40000, seed=6)
    rate = layers.pair_drift(rho0, C, d)
    sol = layers.random_head_layers(
        x0,
        20,
        math.sqrt(0.005),
        layers.GaussianHeads(d, 2),
        beta,
        n_runs=n_runs,
        seed=7,
        record=20,
    )
    t = sol.times[-1]
    r = (sol.mean_cosine()[:, -1] - rho0) / t
    assert abs(r.mean() - rate) <= 3 * (r.std() / math.sqrt(n_runs) + 3 * abs(C_se).max())
