"""Dynamics as a sum of terms: sums, multi-head attention, piecewise-in-time dynamics, the
measure type and the solution files (numpy only)."""

import numpy as np
import pytest
from conftest import random_sphere

import attnflow as af

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def heads(d=3, sphere=True):
    g = np.random.default_rng(5)
    h1 = af.SelfAttention(d, beta=4.0, sphere=sphere)
    h2 = af.SelfAttention(
        d,
        beta=2.0,
        Q=g.standard_normal((d, d)),
        K=g.standard_normal((d, d)),
        V=g.standard_normal((d, d)),
        sphere=sphere,
    )
    h3 = af.SelfAttention(d, beta=1.5, normalized=False, V=-np.eye(d), sphere=sphere)
    return h1, h2, h3


def test_one_head_multihead_is_the_head_bitwise(rng):
    h = heads()[1]
    x = random_sphere(rng, 300, 3)
    np.testing.assert_array_equal(af.MultiHead([h]).velocity(x, x), h.velocity(x, x))
    a = af.simulate(h, x, 0.5, dt=0.05)
    b = af.simulate(af.MultiHead([h]), x, 0.5, dt=0.05)
    np.testing.assert_array_equal(a.x, b.x)


@pytest.mark.parametrize("sphere", [True, False])
def test_sum_of_heads_is_the_sum_of_their_velocities(rng, sphere):
    h1, h2, h3 = heads(sphere=sphere)
    x = random_sphere(rng, 200, 3) if sphere else rng.standard_normal((200, 3))
    w = rng.random(200)
    expected = h1.velocity(x, x, w) + h2.velocity(x, x, w) + h3.velocity(x, x, w)
    for dyn in (h1 + h2 + h3, af.MultiHead([h1, h2, h3]), af.Sum(h1, af.Sum(h2, h3))):
        got = dyn.velocity(x, x, w)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    assert (h1 + h2 + h3).terms() == (h1, h2, h3)


def test_output_matrix_multiplies_the_summed_ambient_field(rng):
    h1, h2, _ = heads()
    out = np.random.default_rng(8).standard_normal((3, 3))
    x = random_sphere(rng, 150, 3)
    cloud = af.Cloud(x)
    ambient = h1.ambient_velocity(x, cloud, 0.0) + h2.ambient_velocity(x, cloud, 0.0)
    expected = af.geometry.sphere().project(x, ambient @ out.T)
    got = af.MultiHead([h1, h2], output=out).velocity(x, cloud)
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12)
    # The speed bound of a sum is the sum of the bounds (the CFL step uses it).
    assert (h1 + h2).speed_bound(2.0) == pytest.approx(h1.speed_bound(2.0) + h2.speed_bound(2.0))


def test_terms_must_share_their_space():
    with pytest.raises(ValueError, match="same space"):
        af.SelfAttention(3) + af.SelfAttention(2)
    with pytest.raises(ValueError, match="same space"):
        af.SelfAttention(3) + af.SelfAttention(3, sphere=False)
    with pytest.raises(TypeError, match="SelfAttention"):
        af.MultiHead([af.SelfAttention(2) + af.SelfAttention(2)])
    with pytest.raises(ValueError, match="times must hold"):
        af.Piecewise([1.0, 2.0], [af.SelfAttention(2), af.SelfAttention(2)])
    with pytest.raises(ValueError, match="increasing"):
        af.Piecewise([2.0, 1.0], [af.SelfAttention(2)] * 3)


def test_piecewise_selects_the_piece_of_each_time():
    a, b, c = (af.SelfAttention(2, beta=v) for v in (1.0, 2.0, 3.0))
    p = af.Piecewise([1.0, 2.5], [a, b, c])
    assert p.piece_at(0.0) is a and p.piece_at(1.0) is b and p.piece_at(2.49) is b
    assert p.piece_at(2.5) is c and p.breakpoints == (1.0, 2.5)
    assert p.on_interval(1.0, 2.5) is b  # both ends are switching times: the open interval
    with pytest.raises(ValueError, match="switching time"):
        p.on_interval(0.5, 1.5)
    # Breakpoints of nested dynamics are merged.
    assert (p + af.Piecewise([0.5], [a, b])).breakpoints == (0.5, 1.0, 2.5)


def test_piecewise_particles_equal_two_consecutive_solves_bitwise(rng):
    a = af.SelfAttention(2, beta=9.0)
    b = af.SelfAttention(2, beta=1.0, V=-np.eye(2))  # repulsive: undoes some clustering
    x0 = random_sphere(rng, 120, 2)
    # 0.7 is not a multiple of dt: the solver must stop at the switching time 1.0 by itself.
    whole = af.simulate(af.Piecewise([1.0], [a, b]), x0, 2.0, dt=0.07, save_times=[0.0, 2.0])
    first = af.simulate(a, x0, 1.0, dt=0.07)
    second = af.simulate(b, first.final, 1.0, dt=0.07)
    np.testing.assert_array_equal(whole.final, second.final)
    assert whole.n_steps == first.n_steps + second.n_steps
    # Without stopping at the switch the result would differ.
    assert not np.array_equal(af.simulate(a, x0, 2.0, dt=0.07).final, whole.final)


def test_piecewise_ensemble_equals_two_consecutive_solves(rng):
    a = af.SelfAttention(2, beta=9.0)
    b = af.SelfAttention(2, beta=2.0, V=-np.eye(2))
    law = af.UniformSphere(2)
    whole = af.ensemble(af.Piecewise([1.0], [a, b]), law, 60, 2, 2.0, dt=0.1, seed=4)
    first = af.ensemble(a, law, 60, 2, 1.0, dt=0.1, seed=4)
    for r in range(2):
        second = af.simulate(b, first.x[r, -1], 1.0, dt=0.1)
        np.testing.assert_array_equal(whole.x[r, -1], second.final)


def test_cloud_is_validated_and_immutable():
    c = af.Cloud(np.zeros((3, 2)))
    np.testing.assert_array_equal(c.weights, np.full(3, 1 / 3))
    assert c.n == 3 and c.d == 2 and c.mass == pytest.approx(1.0)
    with pytest.raises(ValueError):
        c.points[0, 0] = 1.0
    for pts, w, match in [
        (np.zeros(3), None, "points must have shape"),
        (np.full((2, 2), np.nan), None, "points must be finite"),
        (np.zeros((2, 2)), [1.0, -1.0], "weights must be >= 0"),
        (np.zeros((2, 2)), [1.0], "weights must have shape"),
    ]:
        with pytest.raises(ValueError, match=match):
            af.Cloud(pts, w)
    with pytest.raises(TypeError, match="real"):
        af.Cloud(np.zeros((2, 2), dtype=complex))


def test_velocity_accepts_a_cloud_or_arrays(rng):
    m = af.SelfAttention(3, beta=3.0)
    x = random_sphere(rng, 50, 3)
    w = rng.random(50)
    np.testing.assert_array_equal(m.velocity(x, af.Cloud(x, w)), m.velocity(x, x, w))
    assert m.log_energy(af.Cloud(x, w)) == m.log_energy(x, w)


def test_solutions_round_trip_through_npz(tmp_path, rng):
    m = af.SelfAttention(2, beta=4.0)
    sol = af.simulate(m, random_sphere(rng, 30, 2), 1.0, dt=0.1, save_times=[0, 0.5, 1])
    ens = af.ensemble(m, af.UniformSphere(2), 20, 3, 1.0, dt=0.1, seed=1)
    for s in (sol, ens):
        back = af.load_solution(s.save(tmp_path / f"{s.kind}.npz"))
        assert type(back) is type(s) and back.status is s.status
        np.testing.assert_array_equal(back.x, s.x)
        np.testing.assert_array_equal(back.t, s.t)
        assert dict(back.stats) == dict(s.stats)
    assert sol.stats["steps"] == 10 and sol.stats["rhs_evaluations"] == 40
    assert ens.stats["steps"] == 10 and ens.run_status == (af.Status.SUCCESS,) * 3
    np.testing.assert_array_equal(ens.cloud(2, 1).points, ens.x[2, 1])
    with pytest.raises(ValueError, match="not a FieldSolution"):
        af.FieldSolution.load(tmp_path / "particles.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"bad\.npz"):
        af.load_solution(tmp_path / "bad.npz")
