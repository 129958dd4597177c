"""Low-temperature concentration (issue 5): the zero-temperature reference, hardmax particles,
the radial mean-field reduction and the beta sweep."""

import itertools
import math

import numpy as np
import pytest

import attnflow as af
from attnflow.metrics import wasserstein
from attnflow.studies.low_temperature import (
    concentration_rate,
    concentration_study,
    projection_map,
    radial_mean_field,
    zero_temperature_flow,
)


def _ring_and_interior(rng, m=720, n=300):
    """Leaders on the unit circle (every angle within pi/m) and tokens inside |x| < 0.9."""
    ang = 2 * np.pi * np.arange(m) / m
    ring = np.column_stack([np.cos(ang), np.sin(ang)])
    inner = af.UniformBall(2, 0.9).sample(n, rng)
    return ring, inner


def test_hardmax_particles_follow_the_zero_temperature_flow(rng):
    """beta = inf particles: every token runs straight to its leader, x(t) = y* + e^{-t}(x - y*),
    with y* the ring point best aligned with x (the leaders attend to themselves)."""
    ring, inner = _ring_and_interior(rng)
    x0 = np.vstack([ring, inner])
    model = af.SelfAttention(2, beta=math.inf, sphere=False, centered=True)
    sol = af.simulate(model, x0, 3.0, dt=0.01, save_times=[0.0, 1.0, 3.0])
    leader = ring[np.argmax(inner @ ring.T, axis=1)]
    for j, t in enumerate(sol.t):
        np.testing.assert_allclose(sol.x[j][: ring.shape[0]], ring, atol=1e-14)
        expected = leader + math.exp(-t) * (inner - leader)
        np.testing.assert_allclose(sol.x[j][ring.shape[0] :], expected, atol=1e-9)
    # With a dense ring the leaders approach the continuum projection map T(x) = x/|x|.
    cont = zero_temperature_flow(inner, 3.0)
    assert np.max(np.linalg.norm(sol.x[-1][ring.shape[0] :] - cont, axis=1)) < 2 * np.pi / 720


def test_finite_beta_particles_approach_hardmax(rng):
    ring, inner = _ring_and_interior(rng, m=180, n=200)
    x0 = np.vstack([ring, inner])
    ref = af.simulate(
        af.SelfAttention(2, beta=math.inf, sphere=False, centered=True), x0, 1.0, dt=0.02
    )
    dist = []
    for beta in [10.0, 100.0, 1e3, 1e4]:
        model = af.SelfAttention(2, beta=beta, sphere=False, centered=True)
        sol = af.simulate(model, x0, 1.0, dt=0.02)
        assert np.all(np.isfinite(sol.x))
        dist.append(wasserstein(sol.x[-1], None, ref.x[-1], None, p=2).value)
    assert all(b < a for a, b in itertools.pairwise(dist)), dist
    # Tokens at radius r feel the temperature 1/(beta r): those near the origin stay soft.
    assert dist[-1] < 0.05 * dist[0]


def test_radial_field_matches_the_kernel_engine():
    """m(r) - r from the Bessel reduction equals the centred velocity of the same radial law
    put on a fine polar grid and evaluated by the kernel engine (the 2-D softmax)."""
    beta = 30.0
    flow = radial_mean_field(beta, [0.0], n=120)
    r, w = flow.r[0], flow.w
    n_ang = 512
    ang = 2 * np.pi * (np.arange(n_ang) + 0.5) / n_ang
    pts = (r[:, None, None] * np.stack([np.cos(ang), np.sin(ang)], -1)[None]).reshape(-1, 2)
    wts = np.repeat(w / n_ang, n_ang)
    model = af.SelfAttention(2, beta=beta, sphere=False, centered=True)
    targets = np.column_stack([r[::10], np.zeros(r[::10].size)])
    v = model.velocity(targets, pts, wts)
    from attnflow.studies.low_temperature import _radial_field

    np.testing.assert_allclose(v[:, 1], 0.0, atol=1e-12)
    np.testing.assert_allclose(v[:, 0], _radial_field(r, w, beta, 2)[::10], rtol=1e-9, atol=1e-12)


def test_radial_mean_field_agrees_with_particles():
    """Independent check of the reduction: N = 1500 tokens with the particle solver, W2 to the
    limit within sampling error of the radial mean field (beta = 10 and 30) while the flow is
    rotation invariant. Later the tokens on the sphere break the symmetry (clusters along it,
    seeded by sampling noise), which moves them away from T # mu_0 faster than the exactly
    symmetric radial flow: the particles are then farther from the limit."""
    s = concentration_study(
        [10.0, 30.0], t_final=3.0, n_times=7, fit_from=10.0, n_particles=1500, dt=0.02, seed=3
    )
    early = s.t <= 1.0
    np.testing.assert_allclose(s.particles_to_limit[:, early], s.to_limit[:, early], rtol=0.03)
    assert np.all(s.particles_to_limit[:, -1] > s.to_limit[:, -1])


def test_concentration_sweep_rates():
    s = concentration_study([10.0, 100.0, 1e3, 1e4], t_final=14.0, n_times=57)
    # The zero-temperature flow: W2 = e^{-t} W2(mu_0, T#mu_0) = e^{-t}/sqrt(6) in the disc.
    # (to the quadrature error of the radial grid: cells are 9% wide in 1 - r)
    np.testing.assert_allclose(s.zero_temperature, np.exp(-s.t) / math.sqrt(6), rtol=3e-3)
    assert np.all(np.diff(s.floor) < 0)  # closer to the limit at lower temperature
    assert np.all(s.floor[1:] < concentration_rate(s.betas[1:]))  # within the proven rate
    assert s.floor_slope < s.rate_slope  # at least as fast as sqrt(log(beta+1)/beta)
    assert 0.7 < s.time_slope < 1.3  # closest approach at t ~ log beta
    assert np.all(np.diff(s.t_floor) > 0)
    # The terminal phase: after the closest approach the distance grows again.
    assert np.all(s.to_limit[:, -1] > s.floor)
    # And the distance to the zero-temperature flow shrinks with beta at a fixed time.
    j = np.searchsorted(s.t, 3.0)
    assert np.all(np.diff(s.to_flow[:, j]) < 0)


def test_projection_map_and_bad_input():
    x = np.array([[0.3, 0.4], [-2.0, 0.0]])
    np.testing.assert_allclose(projection_map(x), [[0.6, 0.8], [-1.0, 0.0]])
    with pytest.raises(ValueError, match="origin"):
        projection_map(np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"^betas"):
        concentration_study([10.0])
    with pytest.raises(ValueError, match=r"^betas"):
        concentration_study([100.0, 10.0])
    with pytest.raises(ValueError, match=r"^beta must"):
        radial_mean_field(math.inf, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"^times"):
        radial_mean_field(10.0, [1.0, 0.5])
    with pytest.raises(ValueError, match=r"^n_particles"):
        concentration_study([10.0, 100.0], n_particles=1)


@pytest.mark.mpi
def test_concentration_study_is_independent_of_the_rank_count(comm):
    """The betas are dealt over the ranks: every rank returns the serial study, bitwise."""
    kw = dict(t_final=2.0, n_times=5, n_radial=60, n_particles=40, dt=0.1, seed=2)
    betas = [10.0, 100.0, 1e3]
    par = concentration_study(betas, comm=comm, **kw)
    ser = concentration_study(betas, **kw)
    for name in ("to_limit", "to_flow", "zero_temperature", "floor", "particles_to_limit"):
        np.testing.assert_array_equal(getattr(par, name), getattr(ser, name))
