"""The BLAS-tiled engine (score dimension p >= 4): the convention and safety of kernel_sums,
agreement with the dense reference, and rows that do not depend on the other targets."""

import numpy as np
import pytest
from conftest import numba_threads, random_sphere
from mpi4py import MPI
from scipy.special import logsumexp

from attnflow.kernels import kernel_sums, naive_kernel_sums
from attnflow.kernels.tiled import MIN_DIM, TARGET_TILE, source_tile, tiled_softmax_sums


def log_w(w):
    with np.errstate(divide="ignore"):
        return np.log(w)


def check_convention(a, b, v, w, s, rtol=1e-12):
    """shift within 600 below the max, den >= 1, and the exact log-sum-exp and averages."""
    lw = log_w(w)
    scores = a @ b.T + lw[None, :]
    smax = scores.max(axis=1)
    assert np.all(np.isfinite(s.shift)) and np.all(np.isfinite(s.den))
    assert np.all(np.isfinite(s.num))
    assert np.all(s.shift <= smax + 1e-9 * np.maximum(1, np.abs(smax)))
    assert np.all(s.shift >= smax - 600)
    assert np.all(s.den >= 1.0)
    lse = logsumexp(scores, axis=1)
    np.testing.assert_allclose(s.shift + np.log(s.den), lse, rtol=rtol, atol=1e-12)
    r = naive_kernel_sums(a, b, v, w)
    np.testing.assert_allclose(
        s.num / s.den[:, None], r.num / r.den[:, None], rtol=1e-10, atol=1e-13 * np.abs(v).max()
    )


@pytest.mark.parametrize("d", [4, 16, 64, 128])
@pytest.mark.parametrize("beta", [0.1, 1.0, 100.0, 1e4])
def test_tiled_matches_reference(rng, d, beta):
    n_t, n_s = TARGET_TILE + 37, source_tile(d, d) + 101  # partial tiles on both sides
    x, y = random_sphere(rng, n_t, d), random_sphere(rng, n_s, d)
    w = rng.random(n_s)
    s = kernel_sums(beta * x, y, y, w)
    check_convention(beta * x, y, y, w, s)


@pytest.mark.parametrize("d", [4, 16, 64])
def test_tiled_in_rd_with_values_of_another_dimension(rng, d):
    # Unnormalised R^d tokens and values of another width (m != p), and m = 0.
    a, b = 2 * rng.standard_normal((300, d)), rng.standard_normal((700, d))
    v, w = rng.standard_normal((700, 3)), rng.random(700)
    check_convention(a, b, v, w, kernel_sums(a, b, v, w))
    e = kernel_sums(a, b, np.zeros((700, 0)), w)
    assert e.num.shape == (300, 0)
    np.testing.assert_allclose(
        e.shift + np.log(e.den), logsumexp(a @ b.T + np.log(w), axis=1), rtol=1e-12
    )


def test_tiled_is_used_from_min_dim(rng):
    for d in (MIN_DIM, MIN_DIM + 1):
        a, b, w = rng.standard_normal((50, d)), rng.standard_normal((90, d)), rng.random(90)
        s = kernel_sums(a, b, b, w)
        shift, den, num = tiled_softmax_sums(a, b, b, log_w(w))
        np.testing.assert_array_equal(s.shift, shift)
        np.testing.assert_array_equal(s.den, den)
        np.testing.assert_array_equal(s.num, num)


def test_tiled_tile_boundaries(rng):
    d = 16
    ts = source_tile(d, d)
    for n_t, n_s in [
        (1, 1),
        (1, ts),
        (TARGET_TILE, ts + 1),
        (TARGET_TILE + 1, ts - 1),
        (2 * TARGET_TILE - 1, 2 * ts),
        (3, 3 * ts + 7),
    ]:
        x, y = random_sphere(rng, n_t, d), random_sphere(rng, n_s, d)
        w = rng.random(n_s)
        for beta in (1.0, 1e4):
            check_convention(beta * x, y, y, w, kernel_sums(beta * x, y, y, w))


def test_tiled_one_source_many_targets(rng):
    d = 16
    x, y = random_sphere(rng, 1000, d), random_sphere(rng, 1, d)
    s = kernel_sums(50 * x, y, y, np.array([0.3]))
    np.testing.assert_allclose(s.shift, 50 * x @ y[0] + np.log(0.3), rtol=1e-14, atol=1e-13)
    np.testing.assert_array_equal(s.den, 1.0)
    np.testing.assert_array_equal(s.num, np.broadcast_to(y, (1000, d)))


def test_tiled_zero_weights_and_minus_inf_log_weights(rng):
    d = 16
    ts = source_tile(d, d)
    x, y = random_sphere(rng, 200, d), random_sphere(rng, 3 * ts, d)
    w = rng.random(3 * ts)
    w[: ts + 5] = 0.0  # a whole first tile of zero weight, then some more
    w[::3] = 0.0
    for beta in (1.0, 1e4):
        s = kernel_sums(beta * x, y, y, w)
        keep = w > 0
        r = kernel_sums(beta * x, y[keep], y[keep], w[keep])
        check_convention(beta * x, y[keep], y[keep], w[keep], s)
        np.testing.assert_allclose(
            s.num / s.den[:, None], r.num / r.den[:, None], rtol=1e-12, atol=1e-15
        )
    # All weights zero: shift -inf, nothing summed, no NaN.
    shift, den, num = tiled_softmax_sums(x, y, y, np.full(3 * ts, -np.inf))
    assert np.all(shift == -np.inf) and np.all(den == 0) and np.all(num == 0)


def test_tiled_no_overflow_when_mass_is_far_at_large_beta(rng):
    d = 64
    y = random_sphere(rng, 500, d)
    y[:, 0] = np.abs(y[:, 0]) + 1.0  # sources on one side
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    x = -y[:300]  # targets opposite: every score is about -1e4
    for beta in (1e3, 1e4, 1e6):
        w = rng.random(500)
        s = kernel_sums(beta * x, y, y, w)
        check_convention(beta * x, y, y, w, s)


def assert_roundoff(actual, desired):
    """Equal to round-off: rows are bitwise equal when run alone, but after the rest of the
    suite a denominator differed by 9.3e-16 relative (~4 ulps): BLAS may round a row depending
    on its buffers (alignment). serial == parallel holds to round-off, as the other solvers'
    tests require."""
    np.testing.assert_allclose(actual, desired, rtol=1e-14, atol=0)


@pytest.mark.parametrize("beta", [9.0, 1e4])
@pytest.mark.parametrize(("d", "m"), [(4, 4), (16, 16), (17, 5), (128, 128)])
def test_tiled_rows_do_not_depend_on_the_other_targets(rng, beta, d, m):
    """To round-off: a target's sums are the same whichever targets are evaluated with it (any
    position in its tile), and whatever the number of threads (the serial == MPI property).

    BLAS products can round a row differently at the edge of a tile (measured here: the last
    8 target rows when the source count is not a multiple of 8), hence source counts that are
    not multiples of 16 and every offset of the targets in their tile."""
    n_t, n_s = 2 * TARGET_TILE + 5, source_tile(d, m) + 517
    a, b = beta * random_sphere(rng, n_t, d), random_sphere(rng, n_s, d)
    v, w = rng.standard_normal((n_s, m)), rng.random(n_s)
    full = kernel_sums(a, b, v, w)
    slices = [(lo, n_t) for lo in range(0, TARGET_TILE, 3)]
    slices += [(0, 1), (5, 6), (3, 100), (n_t - 1, n_t), (TARGET_TILE + 2, n_t - 2)]
    for lo, hi in slices:
        part = kernel_sums(a[lo:hi], b, v, w)
        assert_roundoff(part.shift, full.shift[lo:hi])
        assert_roundoff(part.den, full.den[lo:hi])
        assert_roundoff(part.num, full.num[lo:hi])
    perm = rng.permutation(n_t)
    shuffled = kernel_sums(a[perm], b, v, w)
    assert_roundoff(shuffled.num, full.num[perm])
    with numba_threads(1):
        one = kernel_sums(a, b, v, w)
    assert_roundoff(one.num, full.num)
    assert_roundoff(one.den, full.den)


@pytest.mark.mpi
def test_tiled_rank_blocks_equal_the_serial_sums(comm):
    """Each rank evaluates its own block of targets: gathered, the serial result, bitwise."""
    rng = np.random.default_rng(5)
    d, n = 16, 517
    x = random_sphere(rng, n, d)
    w = rng.random(n)
    full = kernel_sums(9.0 * x, x, x, w)
    lo, hi = comm.rank * n // comm.size, (comm.rank + 1) * n // comm.size
    mine = kernel_sums(9.0 * x[lo:hi], x, x, w)
    num = np.concatenate(comm.allgather(mine.num))
    den = np.concatenate(comm.allgather(mine.den))
    assert_roundoff(num, full.num)
    assert_roundoff(den, full.den)


@pytest.mark.mpi
def test_simulate_in_dimension_16_is_independent_of_the_rank_count(comm):
    from attnflow import SelfAttention, simulate

    x0 = random_sphere(np.random.default_rng(3), 257, 16)
    m = SelfAttention(16, beta=9.0)
    par = simulate(m, x0, 0.5, dt=0.05, comm=comm)
    ser = simulate(m, x0, 0.5, dt=0.05, comm=MPI.COMM_SELF)
    # Bitwise in practice; a last-bit difference of a BLAS row (see assert_roundoff) would
    # propagate through 10 RK4 steps, hence the 1e-12 of the other cross-rank comparisons.
    np.testing.assert_allclose(par.x, ser.x, rtol=0, atol=1e-12)
