"""Spectral kernel sums (attnflow.kernels.spectral) against the direct engine."""

import math

import numpy as np
import pytest
from conftest import random_sphere

from attnflow.kernels import kernel_sums
from attnflow.kernels.spectral import (
    MAX_KAPPA,
    TRANSFORM_ERROR,
    _magnitudes,
    spectral_plan,
    tail_bound,
    zonal_sums,
)

KAPPAS = [0.1, 1.0, 10.0, 100.0, 1000.0]


def cap(rng, n, d, spread=0.3):
    """``n`` points concentrated around the last axis (angular spread ~ ``spread``)."""
    y = random_sphere(rng, n, d) * spread + np.eye(d)[-1]
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def errors(s, r):
    """Relative error of den, error of num/den (units of the speed bound 1) and of num
    relative to den (the USA velocity), spectral ``s`` against the engine ``r``."""
    log_ratio = np.log(s.den) + s.shift - np.log(r.den) - r.shift
    den = np.abs(np.expm1(log_ratio))
    vel = np.abs(s.num / s.den[:, None] - r.num / r.den[:, None]).max(axis=1)
    # |e^{shift} num error| / (e^{shift} den), both in the engine's shift
    sv = s.num / s.den[:, None] * np.exp(log_ratio)[:, None]
    usa = np.abs(sv - r.num / r.den[:, None]).max(axis=1)
    return den.max(), vel.max(), usa.max()


def engine(x, y, w, kappa):
    return kernel_sums(kappa * x, y, y, w)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kappa", [*KAPPAS, -0.1, -10.0, -1000.0, 1e4])
def test_tail_bound_holds(d, kappa):
    """The a priori bound T(L) is above the true tail, for the chosen degree and others."""
    for tol in (1e-8, 1e-12):
        plan = spectral_plan(kappa, d, tol)
        assert plan.tail <= max(1e-5 * tol, 1e-16)
        n = plan.degree + 4000
        t = _magnitudes(kappa, d, n)
        assert t[-1] == 0.0 or t[-1] < 1e-300  # the sum below is the whole tail
        for L in {plan.degree, plan.degree // 2, plan.degree + 10}:
            true_tail = math.fsum(t[L + 1 :])
            bound = tail_bound(kappa, d, L)
            assert true_tail <= bound * (1 + 1e-12)
        # the degree is the smallest that meets the target
        if plan.degree > 0:
            assert tail_bound(kappa, d, plan.degree - 1) > max(1e-5 * tol, 1e-16)
    # sqrt(kappa) growth: L / sqrt(2 |kappa| log(1/eps)) stays bounded
    if abs(kappa) >= 10:
        assert spectral_plan(kappa, d, 1e-10).degree < 1.3 * math.sqrt(2 * abs(kappa) * 37) + 40


@pytest.mark.parametrize("tol", [1e-8, 1e-12])
@pytest.mark.parametrize("kappa", [*KAPPAS, -10.0, -1000.0])
@pytest.mark.parametrize("d", [2, 3])
def test_spectral_matches_engine(rng, d, kappa, tol):
    y = random_sphere(rng, 4000, d)
    w = rng.random(4000)
    w[::5] = 0.0  # weights with zeros
    x = random_sphere(rng, 600, d)
    s = zonal_sums(x, y, w, kappa, tol=tol)
    r = engine(x, y, w, kappa)
    den, vel, usa = errors(s, r)
    assert den <= tol / 2 and usa <= tol / 2 and vel <= tol, (den, vel, usa, s.recomputed)
    if tol == 1e-8:  # uniform clouds: the spectral path itself is what is tested (at
        # kappa = 1000 a few targets in the holes of 3200 sources fall below the floor)
        assert s.recomputed <= (30 if abs(kappa) >= 1000 else 0)
    trusted = s.shift == abs(kappa) + math.log(w.sum())
    assert trusted.sum() == 600 - s.recomputed
    assert np.all(s.den[trusted] <= 1.0 + 1e-12)


@pytest.mark.parametrize("kappa", [1.0, 10.0, 100.0, -100.0])
@pytest.mark.parametrize("d", [2, 3])
def test_transform_error_is_within_its_claim(rng, d, kappa):
    """The (empirical) transform error factor: measured below TRANSFORM_ERROR / 2."""
    for y in (random_sphere(rng, 20000, d), cap(rng, 20000, d)):
        w = rng.random(20000)
        x = random_sphere(rng, 1000, d)
        s = zonal_sums(x, y, w, kappa, tol=1e-8)
        r = engine(x, y, w, kappa)
        W = w.sum()
        ok = s.shift == abs(kappa) + math.log(W)
        unit = np.exp(r.shift[ok] - abs(kappa) - math.log(W))
        err = max(
            np.abs(s.den[ok] - unit * r.den[ok]).max(),
            np.abs(s.num[ok] - unit[:, None] * r.num[ok]).max(),
        )
        assert err <= s.error
        assert err - s.plan.tail <= 0.5 * (s.error - s.plan.tail), err / s.error


@pytest.mark.parametrize("d", [2, 3])
def test_untrusted_targets_are_recomputed_exactly(rng, d):
    """A cloud in a cap, targets on the other side at kappa = 1000: the expansion's absolute
    error is far above those denominators (e^{-2000} of the maximum)."""
    y = cap(rng, 3000, d)
    w = rng.random(3000)
    far = -cap(rng, 200, d)
    near = cap(rng, 100, d, spread=0.1)
    x = np.concatenate([far, near])
    s = zonal_sums(x, y, w, 1000.0, tol=1e-8)
    r = engine(x, y, w, 1000.0)
    assert s.recomputed >= 200
    assert s.recomputed < 300  # the targets inside the cap stay spectral
    np.testing.assert_allclose(s.shift[:200], r.shift[:200], rtol=1e-14)
    np.testing.assert_allclose(s.den[:200], r.den[:200], rtol=1e-12)
    np.testing.assert_allclose(s.num[:200], r.num[:200], rtol=1e-12, atol=1e-12)
    den, vel, usa = errors(s, r)
    assert den <= 0.5e-8 and vel <= 1e-8 and usa <= 0.5e-8
    assert np.all(np.isfinite(s.shift)) and np.all(s.den > 0)


@pytest.mark.parametrize("d", [2, 3])
def test_values_false_and_degenerate_inputs(rng, d):
    y = random_sphere(rng, 500, d)
    w = rng.random(500)
    x = random_sphere(rng, 50, d)
    a = zonal_sums(x, y, w, 5.0)
    b = zonal_sums(x, y, w, 5.0, values=False)
    assert b.num.shape == (50, 0) and a.num.shape == (50, d)
    np.testing.assert_allclose(b.den, a.den, rtol=1e-12)
    z = zonal_sums(x, y, np.zeros(500), 5.0)  # no mass anywhere
    assert np.all(z.shift == -np.inf) and np.all(z.den == 0) and np.all(z.num == 0)
    e = zonal_sums(x[:0], y, w, 5.0)
    assert e.den.shape == (0,) and e.num.shape == (0, d)
    k0 = zonal_sums(x, y, w, 0.0)  # the constant kernel: den = 1 (units of W), num = mean
    np.testing.assert_allclose(k0.den, 1.0, rtol=1e-12)
    np.testing.assert_allclose(k0.num, np.tile(w @ y / w.sum(), (50, 1)), atol=1e-12)


def test_large_kappa_and_errors(rng):
    y = random_sphere(rng, 300, 3)
    w = rng.random(300)
    x = random_sphere(rng, 20, 3)
    s = zonal_sums(x, y, w, MAX_KAPPA, tol=1e-6, values=False)  # works (L ~ 700; recomputed)
    r = kernel_sums(MAX_KAPPA * x, y, np.zeros((300, 0)), w)
    assert np.abs(np.log(s.den) + s.shift - np.log(r.den) - r.shift).max() <= 1e-6
    with pytest.raises(ValueError, match="direct engine"):
        zonal_sums(x, y, w, 2 * MAX_KAPPA)
    with pytest.raises(ValueError, match="weights"):
        zonal_sums(x, y, -w, 1.0)
    with pytest.raises(ValueError, match="targets"):
        zonal_sums(x[:, :1], y, w, 1.0)
    with pytest.raises(ValueError, match="sources"):
        zonal_sums(x, y[:, :2], w, 1.0)


def test_transform_factor_is_documented():
    assert TRANSFORM_ERROR >= 2.0


@pytest.mark.mpi
@pytest.mark.parametrize("d", [2, 3])
def test_same_result_on_any_rank_count(comm, d):
    """Sources and targets split over the ranks (rank 0 without sources): the rows of every
    rank match the serial computation to round-off, including the recomputed targets."""
    rng = np.random.default_rng(20261203)
    y = np.concatenate([cap(rng, 3000, d), cap(rng, 2000, d, spread=0.05)])
    w = rng.random(5000)
    x = np.concatenate([random_sphere(rng, 301, d), -cap(rng, 50, d)])
    kappa = 300.0
    ser = zonal_sums(x, y, w, kappa, tol=1e-8)
    p, r = comm.size, comm.rank
    src = np.arange(5000) % max(p - 1, 1) + 1 == r if p > 1 else np.ones(5000, bool)
    tgt = np.arange(len(x)) % p == r
    par = zonal_sums(x[tgt], y[src], w[src], kappa, tol=1e-8, comm=comm)
    assert par.recomputed == ser.recomputed and ser.recomputed > 0
    # the engine's shift of a recomputed target depends on how the sources are split; the
    # sums it stands for do not
    scale = np.exp(par.shift - ser.shift[tgt])
    np.testing.assert_allclose(par.den * scale, ser.den[tgt], rtol=1e-12)
    dnum = np.abs(par.num * scale[:, None] - ser.num[tgt]).max(axis=1)
    assert np.all(dnum <= 1e-12 * ser.den[tgt])
