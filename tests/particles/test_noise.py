"""Noisy particles: dx_i = X[mu_N](x_i) dt + sqrt(2 sigma) dB_i on S^{d-1} and in R^d.

Exact references: free Brownian motion (E<x_t, x_0> = e^{-sigma (d-1) t}, E|x_t - x_0|^2 =
2 sigma d t), the weak error of the scheme computed by quadrature (the law of one Brownian step
is zonal, so E<x_n, x_0> = m(h/2)^{2n} with m the one-half-step mean), the linear growth rates
of the uniform state on S^1 with noise, and the Gaussian moment equations in R^d with the
covariance's 2 sigma I. Seeds, ranks and restarts: bitwise.

All tests are pure numpy on every rank (or use COMM_WORLD collectively), so they are MPI-safe.
"""

import numpy as np
import pytest
from mpi4py import MPI
from scipy import integrate, stats
from scipy.integrate import solve_ivp
from scipy.special import ive

import attnflow as af
from attnflow.layers import residual_layers
from attnflow.states import CheckpointError

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def _uniform_sphere(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scheme_mean(d, sigma, h, t, corrected=True):
    """E<x_t, x_0> of the scheme for free Brownian motion, by quadrature.

    One half step of length tau = h/2 is the geodesic step of length r = b |xi|,
    |xi|^2 = 2 sigma tau chi^2_{d-1}, b^2 = 1/(1 + (d-2) sigma tau/3); its law is zonal about
    the start, so <x, x_0> is multiplied by m = E cos r at every half step (Funk–Hecke).
    ``corrected=False``: b = 1 (the plain geodesic step, weak order 1).
    """
    tau = 0.5 * h
    s2 = 2.0 * sigma * tau / ((1.0 + (d - 2) * sigma * tau / 3.0) if corrected else 1.0)
    m = integrate.quad(
        lambda q: np.cos(np.sqrt(s2 * q)) * stats.chi2.pdf(q, d - 1), 0, np.inf, limit=200
    )[0]
    return m ** (2 * round(t / h))


def correlation(d, sigma, t, dt, n, seed):
    """Sample mean and standard error of <x_t, x_0> over n free tokens."""
    x0 = _uniform_sphere(n, d, seed)
    sol = af.simulate(af.Diffusion(sigma, d=d, sphere=True), x0, t, dt=dt, rng=seed + 1)
    c = np.einsum("ij,ij->i", sol.final, x0)
    assert sol.stats["noise"]["weak_order"] == 2
    assert np.allclose(np.linalg.norm(sol.final, axis=1), 1.0, atol=1e-14)
    return c.mean(), c.std(ddof=1) / np.sqrt(n)


# -- (a) free Brownian motion -----------------------------------------------------------------
@pytest.mark.parametrize("d", [2, 3, 5])
def test_free_brownian_motion_on_the_sphere(d):
    """E<x_t, x_0> = e^{-sigma (d-1) t} within 3 s.e. at a small step (h = 0.05, 10^5 tokens).

    The scheme's own bias at this step (quadrature) is below a tenth of the s.e., so the
    comparison is with the exact law; on S^1 the step is exact in law, so one step of the whole
    time (h = t) is compared as well.
    """
    sigma, t, n = 0.5, 1.0, 100_000
    exact = np.exp(-sigma * (d - 1) * t)
    mean, se = correlation(d, sigma, t, 0.05, n, seed=10 + d)
    assert abs(scheme_mean(d, sigma, 0.05, t) - exact) < 0.1 * se
    assert abs(mean - exact) < 3 * se, (mean, exact, se)
    if d == 2:
        mean, se = correlation(d, sigma, t, t, n, seed=20)
        assert abs(scheme_mean(d, sigma, t, t) - exact) < 1e-10
        assert abs(mean - exact) < 3 * se, (mean, exact, se)


def test_weak_order_two_on_s4():
    """Weak order 2 on S^4 (sigma = 1, t = 0.5; 2e5 tokens).

    At the large steps h = 0.5 and 0.25 the scheme's bias is 17 and 4 standard errors: the
    sample means agree with the scheme's quadrature values within 3 s.e. there (the law of the
    code is the law of the derived scheme, bias included) and are more than 3 s.e. away from the
    uncorrected geodesic step (b = 1, weak order 1). The quadrature errors then fall at order 2
    (the local order from the ratio of successive errors tends to 2 as h halves: 2.12, 2.05,
    2.02, the excess halving like the O(h^3) remainder).
    """
    d, sigma, t, n = 5, 1.0, 0.5, 200_000
    exact = np.exp(-sigma * (d - 1) * t)
    for k, h in enumerate([0.5, 0.25]):
        mean, s = correlation(d, sigma, t, h, n, seed=100 + k)
        q = scheme_mean(d, sigma, h, t)
        assert abs(mean - q) < 3 * s, (h, mean - exact, q - exact, s)
        assert abs(mean - scheme_mean(d, sigma, h, t, corrected=False)) > 3 * s
    errs = np.array([scheme_mean(d, sigma, t / 2**j, t) - exact for j in range(5)])
    p = np.log2(errs[:-1] / errs[1:])
    assert np.all(np.diff(np.abs(p - 2.0)) < 0) and abs(p[-1] - 2.0) < 0.02, p


def test_free_brownian_motion_in_rd():
    """E|x_t - x_0|^2 = 2 sigma d t (exact in law at any step: one step of the whole time)."""
    d, sigma, t, n = 3, 0.7, 2.0, 100_000
    x0 = np.random.default_rng(3).standard_normal((n, d))
    for dt in (t, 0.25):
        sol = af.simulate(af.Diffusion(sigma, d=d, sphere=False), x0, t, dt=dt, rng=4)
        q = np.sum((sol.final - x0) ** 2, axis=1)
        se = q.std(ddof=1) / np.sqrt(n)
        assert abs(q.mean() - 2 * sigma * d * t) < 3 * se, (dt, q.mean(), se)


# -- (b) growth rates of the uniform state on S^1 ---------------------------------------------
def growth_rate(normalized, beta, sigma, mode, n, runs, t, seed):
    """Rate of the ensemble mean of the empirical mode ``mode`` and its jackknife s.e.

    The runs with +eps and -eps share their random numbers (PerturbedCircle draws one uniform
    per token, then the Brownian increments follow from the same seeds): half their difference
    D cancels the common fluctuations and every even order in eps. The rate is the weighted
    least-squares slope (through the origin, weights (D(t)/D(0))^2 as var(log D) ~ var D/D^2)
    of log(D(t)/D(0)), D averaged over the runs.
    """
    model = af.SelfAttention(2, beta=beta, normalized=normalized) + af.Diffusion(sigma)
    ts = np.linspace(0.0, t, 5)
    amp = []
    for eps in (0.05, -0.05):
        law = af.PerturbedCircle(eps, mode)
        ens = af.ensemble(model, law, n, runs, t, dt=0.1, seed=seed, save_times=ts)
        th = np.arctan2(ens.x[..., 1], ens.x[..., 0])  # (runs, times, n)
        amp.append(np.cos(mode * th).mean(axis=2))  # (runs, times)
    diff = 0.5 * (amp[0] - amp[1])

    def rate(dk):
        ratio = dk / dk[0]
        return np.sum(ratio**2 * np.log(ratio) * ts) / np.sum(ratio**2 * ts * ts)

    est = rate(diff.mean(axis=0))
    jack = np.array([rate(np.delete(diff, r, axis=0).mean(axis=0)) for r in range(runs)])
    se = np.sqrt((runs - 1) / runs * np.sum((jack - jack.mean()) ** 2))
    return est, se


@pytest.mark.parametrize(
    "normalized, mode", [(True, 1), (True, 2), (True, 3), (False, 1), (False, 2)]
)
def test_growth_rates_of_the_uniform_state_on_s1(normalized, mode):
    """Mode n of a perturbation of the uniform state grows at n^2 (I_n(b)/(b I_0(b)) - sigma)
    (SA) or n^2 (I_n(b)/b - sigma) (USA), within 3 jackknife s.e. (beta = 1, sigma = 0.2: mode 1
    grows, modes 2 and 3 decay; 16 runs of 500 tokens, t = 1, dt = 0.1)."""
    beta, sigma = 1.0, 0.2
    scale = ive(0, beta) if normalized else np.exp(-beta)
    theory = mode**2 * (ive(mode, beta) / (beta * scale) - sigma)
    est, se = growth_rate(normalized, beta, sigma, mode, 500, 16, 1.0, seed=5)
    assert abs(est - theory) < 3 * se, (est, theory, se)


# -- (c) a Gaussian in R^d stays Gaussian -----------------------------------------------------
def gaussian_moments(m0, S0, Q, K, V, beta, sigma, t):
    """m' = V(m + S A m), S' = V S A S + S A^T S V^T + 2 sigma I (A = beta K^T Q)."""
    d = m0.size
    A = beta * K.T @ Q

    def rhs(_, y):
        m, S = y[:d], y[d:].reshape(d, d)
        dS = V @ S @ A @ S + S @ A.T @ S @ V.T + 2 * sigma * np.eye(d)
        return np.concatenate([V @ (m + S @ A @ m), dS.ravel()])

    y = solve_ivp(rhs, [0, t], np.concatenate([m0, S0.ravel()]), rtol=1e-12, atol=1e-12).y[:, -1]
    return y[:d], y[d:].reshape(d, d)


def test_gaussian_moments_with_noise():
    """SA with K = -Q in R^2 plus noise: the sample mean and covariance (8 runs of 1000 tokens)
    follow the moment ODEs within 3 s.e. (across runs) in every entry; without the 2 sigma I
    the covariance is off by many s.e. (the test can fail)."""
    Q, K, V = np.eye(2), -np.eye(2), np.array([[1.0, 0.3], [-0.2, 0.8]])
    beta, sigma, t = 1.0, 0.2, 1.0
    m0, S0 = np.array([0.5, 0.0]), np.array([[0.5, 0.1], [0.1, 0.3]])
    model = af.SelfAttention(2, beta=beta, Q=Q, K=K, V=V, sphere=False) + af.Diffusion(sigma)
    ens = af.ensemble(model, af.Gaussian(m0, S0), 1000, 8, t, dt=0.1, seed=21)
    x = ens.x[:, -1]  # (runs, n, d)
    means = x.mean(axis=1)
    covs = np.stack([np.cov(xr.T) for xr in x])
    m_ex, S_ex = gaussian_moments(m0, S0, Q, K, V, beta, sigma, t)
    _, S_no = gaussian_moments(m0, S0, Q, K, V, beta, 0.0, t)
    for est, ex in ((means, m_ex), (covs, S_ex)):
        se = est.std(axis=0, ddof=1) / np.sqrt(est.shape[0])
        assert np.all(np.abs(est.mean(axis=0) - ex) < 3 * se), (est.mean(axis=0), ex, se)
    se = covs.std(axis=0, ddof=1) / np.sqrt(8)
    assert np.max(np.abs(covs.mean(axis=0) - S_no) / se) > 10


# -- (d) seeds, ranks, restarts, validation ---------------------------------------------------
def _noisy_case():
    model = af.SelfAttention(3, beta=4.0) + af.Diffusion(0.3)
    x0 = af.VonMisesFisher([0.0, 0.0, 1.0], 2.0).sample(61, 8)  # odd: uneven rank blocks
    return model, x0


def test_same_seed_same_run_other_seed_other_run():
    model, x0 = _noisy_case()
    kw = dict(dt=0.1, save_times=[0.0, 0.5, 1.0])
    a = af.simulate(model, x0, 1.0, rng=7, **kw)
    b = af.simulate(model, x0, 1.0, rng=np.random.SeedSequence(7), **kw)
    c = af.simulate(model, x0, 1.0, rng=np.random.default_rng(7), **kw)
    d = af.simulate(model, x0, 1.0, rng=8, **kw)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.x, c.x)
    assert not np.allclose(a.x[-1], d.x[-1])
    assert a.stats["noise"] == {
        "scheme": a.stats["noise"]["scheme"],
        "sigma": [0.3, 0.3, 0.3],
        "weak_order": 2,
    }
    e = af.simulate(model, x0, 1.0, rng=7, method=af.Euler(), **kw)
    assert e.stats["noise"]["weak_order"] == 1
    # A deterministic model ignores rng (and records no noise).
    det = af.SelfAttention(3, beta=4.0) + af.Diffusion(0.0)
    p = af.simulate(det, x0, 1.0, rng=7, **kw)
    q = af.simulate(det, x0, 1.0, **kw)
    np.testing.assert_array_equal(p.x, q.x)
    assert p.stats["noise"] is None
    # Ensembles: same seed, same runs; independent runs.
    law = af.UniformSphere(3)
    e1 = af.ensemble(model, law, 40, 3, 0.5, dt=0.1, seed=3)
    e2 = af.ensemble(model, law, 40, 3, 0.5, dt=0.1, seed=3)
    np.testing.assert_array_equal(e1.x, e2.x)
    assert not np.allclose(e1.x[0, -1], e1.x[1, -1])
    assert e1.stats["noise"]["sigma"] == [0.3, 0.3]


def test_piecewise_noise_per_interval():
    """Noise only after t = 0.5: the tokens at 0.5 are those of the deterministic run, and the
    recorded sigma is that of each interval."""
    sa = af.SelfAttention(2, beta=2.0)
    model = af.Piecewise([0.5], [sa, sa + af.Diffusion(0.4)])
    x0 = af.PerturbedCircle(0.2, 2).sample(50, 1)
    noisy = af.simulate(model, x0, 1.0, dt=0.1, save_times=[0.0, 0.5, 1.0], rng=2)
    det = af.simulate(sa, x0, 1.0, dt=0.1, save_times=[0.0, 0.5, 1.0])
    np.testing.assert_array_equal(noisy.x[1], det.x[1])
    assert not np.allclose(noisy.x[2], det.x[2])
    assert noisy.stats["noise"]["sigma"] == [0.0, 0.0, 0.4]


def _rank_counts(comm):
    model, x0 = _noisy_case()
    kw = dict(dt=0.1, save_times=[0.0, 0.5, 1.0], rng=5)
    par = af.simulate(model, x0, 1.0, comm=comm, **kw)
    ser = af.simulate(model, x0, 1.0, **kw)
    np.testing.assert_array_equal(par.x, ser.x)
    law = af.UniformSphere(3)
    pe = af.ensemble(model, law, 30, 5, 0.5, dt=0.1, seed=9, comm=comm)
    se = af.ensemble(model, law, 30, 5, 0.5, dt=0.1, seed=9)
    np.testing.assert_array_equal(pe.x, se.x)


def test_any_number_of_ranks_gives_the_same_noisy_runs():
    """1 rank vs all ranks of COMM_WORLD (a real check under mpiexec -n 2)."""
    _rank_counts(MPI.COMM_WORLD)


@pytest.mark.mpi
def test_three_ranks_give_the_same_noisy_runs(comm):
    _rank_counts(comm)


def test_generators_that_differ_between_ranks_are_refused(comm):
    model, x0 = _noisy_case()
    if comm.size == 1:
        pytest.skip("needs several ranks")
    with pytest.raises(ValueError, match="rng"):
        af.simulate(model, x0, 0.2, dt=0.1, comm=comm, rng=comm.rank)


def test_restarted_noisy_runs_end_bitwise_equal(tmp_path_factory, comm):
    """simulate and ensemble: restart from a checkpoint (also through the application's npz
    files) ends bitwise as the uninterrupted run."""
    from attnflow.app.checkpoint import read_checkpoint, write_checkpoint

    model, x0 = _noisy_case()
    kw = dict(dt=0.1, save_times=[0.0, 0.45, 1.0], comm=comm)
    full = af.simulate(model, x0, 1.0, rng=np.random.default_rng(12), **kw)
    states = []
    af.simulate(model, x0, 1.0, rng=12, checkpoint_every=3, on_checkpoint=states.append, **kw)
    state = states[1]  # after 6 steps, inside the second interval
    assert state.rng_states and state.rng_states[0]
    again = af.simulate(model, x0, 1.0, restart=state, **kw)  # rng comes from the state
    np.testing.assert_array_equal(again.x, full.x)
    path = comm.bcast(str(tmp_path_factory.mktemp("ck")) if comm.rank == 0 else None)
    if comm.rank == 0:
        write_checkpoint(f"{path}/particles-00000006.npz", state)
    comm.Barrier()
    read, _ = read_checkpoint(f"{path}/particles-00000006.npz")
    np.testing.assert_array_equal(af.simulate(model, x0, 1.0, restart=read, **kw).x, full.x)

    law = af.UniformSphere(3)
    ekw = dict(dt=0.1, seed=4, save_times=[0.0, 0.45, 1.0], comm=comm)
    efull = af.ensemble(model, law, 30, 3, 1.0, **ekw)
    estates = []
    af.ensemble(model, law, 30, 3, 1.0, checkpoint_every=4, on_checkpoint=estates.append, **ekw)
    est = comm.bcast(estates[1] if comm.rank == 0 else None)
    np.testing.assert_array_equal(
        af.ensemble(model, law, 30, 3, 1.0, restart=est, **ekw).x, efull.x
    )
    # Without its generator states a noisy restart is refused.
    est.rng_states = ()
    with pytest.raises(CheckpointError, match="generator"):
        af.ensemble(model, law, 30, 3, 1.0, restart=est, **ekw)


def test_input_validation():
    model, x0 = _noisy_case()
    with pytest.raises(ValueError, match="rng"):
        af.simulate(model, x0, 1.0, dt=0.1)
    for bad in (1.5, "7", True, [1, 2]):
        with pytest.raises(TypeError, match="rng"):
            af.simulate(model, x0, 1.0, dt=0.1, rng=bad)
    with pytest.raises(ValueError, match="rng"):
        af.simulate(model, x0, 1.0, dt=0.1, rng=-1)
    with pytest.raises(TypeError, match="rng"):  # checked for a deterministic model too
        af.simulate(af.SelfAttention(3, beta=1.0), x0, 1.0, dt=0.1, rng=1.5)
    with pytest.raises(ValueError, match="noise"):
        residual_layers(model, x0, 3, 0.1)


def test_kernel_plans_and_costs_with_a_diffusion_term():
    """A Diffusion term has no kernel: pure Brownian motion plans none, a sum plans the
    attention term only."""
    x0 = _uniform_sphere(20, 3, 0)
    pure = af.simulate(af.Diffusion(0.5, d=3, sphere=True), x0, 0.2, dt=0.1, rng=0)
    assert pure.stats["kernel"] == "none"
    model, _ = _noisy_case()
    both = af.simulate(model, x0, 0.2, dt=0.1, rng=0)
    assert len(both.stats["kernel_plan"]) == 1
