"""Causal particle systems (attnflow.causal.particles): structure, independent routes, order,
seeds and ranks, and the Monte Carlo route of the lost-in-the-middle correlation."""

import math

import numpy as np
import pytest
from mpi4py import MPI

import attnflow as af
from attnflow.causal import theory
from attnflow.causal.particles import (
    CausalInteraction,
    causal_velocity,
    correlation_mc,
    prompt_ensemble,
    simulate_prompts,
)
from attnflow.causal.weights import alibi_weights
from attnflow.resources import ResourceError

COMM = MPI.COMM_WORLD


def sphere_points(rng, shape):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_matrices(rng, d):
    return [np.eye(d) + 0.4 * rng.standard_normal((d, d)) for _ in range(3)]


def models(rng):
    """One of each form, on S^1, S^2 and in R^3 (softmax), with ALiBi slopes."""
    q, k, v = random_matrices(rng, 3)
    return [
        CausalInteraction(2, beta=1.5, lam=2.0),
        CausalInteraction(3, beta=2.0, lam=0.5),
        af.SelfAttention(3, beta=3.0, Q=q, K=k, V=v, causal=True, alibi=1.5),
        af.SelfAttention(3, beta=3.0, Q=q, K=k, causal=True, alibi=1.5),  # V = I: token 1 fixed
        af.SelfAttention(3, beta=2.0, Q=q, K=k, V=v, sphere=False, centered=True, causal=True),
    ]


def initial(model, rng, shape):
    return sphere_points(rng, shape) if model.sphere else 0.7 * rng.standard_normal(shape)


# -- structure ----------------------------------------------------------------------------------
def test_token_one_is_fixed_and_perturbations_travel_forward_only(rng):
    n = 9
    for model in models(rng):
        x0 = initial(model, rng, (1, n, model.d))
        y0 = x0.copy()
        k = 4  # 0-based: perturb token 5
        y0[0, k] = initial(model, rng, (model.d,)) if model.sphere else y0[0, k] + 0.3
        sol = simulate_prompts(model, np.concatenate([x0, y0]), 0.6, dt=0.05)
        x, y = sol.x[0, -1], sol.x[1, -1]
        # token 1 sees nothing (interaction form) or itself only (softmax): velocity 0, or
        # P_x V (x - c x) for softmax with a general V
        v1 = causal_velocity(model, sol.x[:, -1])[:, 0]
        x1 = sol.x[:, -1, 0]
        if isinstance(model, CausalInteraction) or model.centered:
            assert np.all(v1 == 0.0)
            np.testing.assert_allclose(x1, sol.x[:, 0, 0], rtol=0, atol=1e-15)
        else:
            u = x1 @ model.V.T
            np.testing.assert_allclose(v1, u - np.sum(u * x1, 1)[:, None] * x1, atol=1e-15)
        np.testing.assert_array_equal(x[:k], y[:k])  # earlier tokens: bitwise unchanged
        assert np.all(np.linalg.norm(x[k:] - y[k:], axis=1) > 1e-8)  # later tokens feel it
        assert np.linalg.norm(x[1:] - x0[0, 1:]) > 1e-3  # and the dynamics does move tokens


def test_interaction_velocity_is_the_weighted_sum_of_gradients(rng):
    """grad_S e^{beta <x_j, x_k>} summed with the ALiBi weights, by loops; on S^1 the
    companion code's W'(theta_j - theta_k) with W = e^{beta cos}."""
    n, beta, lam = 7, 1.7, 3.0
    w = alibi_weights(n, lam)
    x = sphere_points(rng, (n, 3))
    v = causal_velocity(CausalInteraction(3, beta, lam), x)
    for j in range(n):
        ref = np.zeros(3)
        for k in range(j):
            g = beta * np.exp(beta * x[j] @ x[k]) * x[k]
            ref += w[j, k] * (g - (x[j] @ g) * x[j])
        np.testing.assert_allclose(v[j], ref, rtol=1e-13, atol=1e-15)
    theta = rng.uniform(0, 2 * np.pi, n)
    v2 = causal_velocity(
        CausalInteraction(2, beta, lam), np.stack([np.cos(theta), np.sin(theta)], 1)
    )
    dtheta = np.cos(theta) * v2[:, 1] - np.sin(theta) * v2[:, 0]
    diff = theta[:, None] - theta[None, :]
    wprime = -beta * np.sin(diff) * np.exp(beta * np.cos(diff))
    np.testing.assert_allclose(dtheta, np.sum(w * wprime, axis=1), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("sphere", [True, False])
def test_causal_softmax_is_attention_over_the_prefix_by_the_kernel_engine(rng, sphere):
    """Token j: SelfAttention's field (the kernel engine) of the prefix x_1..x_j with the
    weights e^{-(lam/N)(j-k)} (the ALiBi bias moved into the weights); lam = 0 and the last
    token: the full (non-causal) SA velocity of the whole prompt."""
    n, d = 11, 3
    q, k, v = random_matrices(rng, d)
    x = sphere_points(rng, (n, d)) if sphere else rng.standard_normal((n, d))
    for lam, centered in ((0.0, False), (2.5, True)):
        causal = af.SelfAttention(
            d, 4.0, Q=q, K=k, V=v, sphere=sphere, centered=centered, causal=True, alibi=lam
        )
        full = af.SelfAttention(d, 4.0, Q=q, K=k, V=v, sphere=sphere, centered=centered)
        vel = causal_velocity(causal, x)
        for j in range(n):
            wts = np.exp(-(lam / n) * (j - np.arange(j + 1)))
            ref = full.velocity(x[j : j + 1], x[: j + 1], wts / wts.sum())[0]
            np.testing.assert_allclose(vel[j], ref, rtol=1e-12, atol=1e-14)
        if lam == 0.0:
            np.testing.assert_allclose(vel[-1], full.velocity(x[-1:], x)[0], rtol=1e-12)


def test_softmax_without_content_attends_with_the_alibi_weights(rng):
    """Q = 0: the scores are the ALiBi bias alone, so token j averages x_k, k <= j, with
    e^{-(lam/N)(j-k)}; the k < j part is (1 - a_jj) alibi_weights[j] (a_jj the self weight)."""
    n, lam = 8, 4.0
    x = sphere_points(rng, (n, 3))
    m = af.SelfAttention(3, 1.0, Q=np.zeros((3, 3)), causal=True, alibi=lam)
    vel = causal_velocity(m, x)
    w = alibi_weights(n, lam)
    for j in range(1, n):
        self_w = 1.0 / np.sum(np.exp(-(lam / n) * np.arange(j + 1)))
        u = (1.0 - self_w) * (w[j] @ x)
        np.testing.assert_allclose(vel[j], u - (u @ x[j]) * x[j], rtol=1e-12, atol=1e-15)


def test_softmax_at_beta_1e4_stays_finite(rng):
    x0 = sphere_points(rng, (3, 24, 3))
    m = af.SelfAttention(3, beta=1e4, causal=True, alibi=2.0)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is fine
        sol = simulate_prompts(m, x0, 0.5, dt=0.05)
    assert sol.status is af.Status.SUCCESS and np.all(np.isfinite(sol.x))
    np.testing.assert_allclose(np.linalg.norm(sol.x, axis=-1), 1.0, atol=1e-14)


def test_rescaled_interaction_runs_in_the_time_e_beta_t(rng):
    beta = 2.0
    x0 = sphere_points(rng, (2, 6, 3))
    plain = simulate_prompts(CausalInteraction(3, beta, 1.0), x0, 0.3, dt=0.003)
    fast = CausalInteraction(3, beta, 1.0, rescale=True)
    scaled = simulate_prompts(fast, x0, 0.3 * math.exp(beta), dt=0.003 * math.exp(beta))
    np.testing.assert_allclose(scaled.x[:, -1], plain.x[:, -1], atol=1e-12)


# -- the integrator -----------------------------------------------------------------------------
def test_rk4_has_order_four(rng):
    q, k, v = random_matrices(rng, 3)
    for model in (
        CausalInteraction(3, beta=1.0, lam=1.0),
        af.SelfAttention(3, 2.0, Q=q, K=k, V=v, causal=True, alibi=1.0),
    ):
        x0 = sphere_points(rng, (1, 6, 3))
        ref = simulate_prompts(model, x0, 1.0, dt=1 / 320).x[0, -1]
        errs = [
            np.abs(simulate_prompts(model, x0, 1.0, dt=h).x[0, -1] - ref).max()
            for h in (1 / 10, 1 / 20, 1 / 40)
        ]
        orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
        assert np.all((orders > 3.7) & (orders < 4.4)), orders


def test_companion_code_trajectory_is_reproduced():
    """borjanG/2026-lost-in-the-middle, generate_alibi_particle_circle_dynamics.py: its
    ``build_causal_weights``, ``force`` and ``rk4_step`` (verbatim, in theta) and its run
    (64 tokens in 4 clusters, seed 17, beta = lam = 1, dt = 0.0025) to t = 0.5; our RK4 in
    R^2 plus retraction with the same dt agrees to the O(dt^4) difference of the schemes."""

    def build_causal_weights(n_tokens, lam):
        weights = np.zeros((n_tokens, n_tokens), dtype=float)
        for j in range(1, n_tokens):
            k = np.arange(j)
            coeffs = np.exp(-(lam / n_tokens) * (j - k))
            weights[j, :j] = coeffs / coeffs.sum()
        return weights

    def force(theta, beta, weights):
        out = np.zeros_like(theta)
        for j in range(1, theta.size):
            diff = theta[j] - theta[:j]
            interaction = -beta * np.sin(diff) * np.exp(beta * np.cos(diff))
            out[j] = np.dot(weights[j, :j], interaction)
        return out

    def rk4_step(theta, dt, beta, weights):
        k1 = force(theta, beta, weights)
        k2 = force(theta + 0.5 * dt * k1, beta, weights)
        k3 = force(theta + 0.5 * dt * k2, beta, weights)
        k4 = force(theta + dt * k3, beta, weights)
        return theta + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    n_tokens, beta, lam, dt = 64, 1.0, 1.0, 0.0025
    rng = np.random.default_rng(17)
    labels = np.repeat(np.arange(4), math.ceil(n_tokens / 4))[:n_tokens]
    centers = np.linspace(0.1, 1.9, 4, endpoint=True) * math.pi
    theta0 = np.mod(centers[labels] + rng.normal(0.0, 0.075, size=n_tokens), 2.0 * math.pi)
    weights = build_causal_weights(n_tokens, lam)
    np.testing.assert_allclose(alibi_weights(n_tokens, lam), weights, rtol=1e-13, atol=0)
    theta = theta0.copy()
    for _ in range(200):
        theta = rk4_step(theta, dt, beta, weights)
    x0 = np.stack([np.cos(theta0), np.sin(theta0)], axis=-1)[None]
    sol = simulate_prompts(CausalInteraction(2, beta, lam), x0, 0.5, dt=dt)
    ours = np.arctan2(sol.x[0, -1, :, 1], sol.x[0, -1, :, 0])
    assert np.abs(theta - theta0).max() > 0.3  # the tokens moved
    assert np.abs(np.angle(np.exp(1j * (ours - theta)))).max() < 1e-10


def test_save_times_chunks_and_seeds(rng):
    model = CausalInteraction(2, beta=1.0, lam=1.0)
    kw = {"dt": 0.07, "seed": 5, "save_times": [0.0, 0.25, 0.6]}
    a = prompt_ensemble(model, 10, 7, 0.6, **kw)
    np.testing.assert_array_equal(a.t, [0.0, 0.25, 0.6])
    for chunk in (1, 3):
        b = prompt_ensemble(model, 10, 7, 0.6, chunk_prompts=chunk, **kw)
        np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.x, prompt_ensemble(model, 10, 7, 0.6, **kw).x)
    seeds = np.random.SeedSequence(5).spawn(7)
    for r in (0, 6):
        x0 = af.UniformSphere(2).sample(10, np.random.default_rng(seeds[r]))
        np.testing.assert_array_equal(a.x[r, 0], x0)
    c = simulate_prompts(model, a.x[:, 0], 0.6, dt=0.07, save_times=[0.0, 0.25, 0.6])
    np.testing.assert_array_equal(a.x, c.x)
    assert not np.allclose(a.x[0], a.x[1])
    assert a.stats["seed"] == 5 and a.stats["steps"] == 4 + 5


@pytest.mark.mpi
def test_ranks_agree_bitwise(rng):
    q, k, v = random_matrices(np.random.default_rng(3), 3)
    for model in (
        CausalInteraction(2, beta=1.0, lam=1.0),
        af.SelfAttention(3, 5.0, Q=q, K=k, V=v, causal=True, alibi=2.0),
    ):
        kw = {"dt": 0.1, "seed": 9, "save_times": [0.0, 0.5, 1.0]}
        par = prompt_ensemble(model, 13, 7, 1.0, comm=COMM, **kw)
        ser = prompt_ensemble(model, 13, 7, 1.0, comm=MPI.COMM_SELF, chunk_prompts=2, **kw)
        np.testing.assert_array_equal(par.x, ser.x)
        ref = COMM.bcast(par.x if COMM.rank == 0 else None, root=0)
        np.testing.assert_array_equal(par.x, ref)
        assert par.stats["ranks"] == COMM.size


# -- the routes of attnflow.simulate / ensemble and the refusals --------------------------------
def test_attnflow_simulate_and_ensemble_run_causal_models_as_prompts(rng):
    m = af.SelfAttention(3, 2.0, causal=True, alibi=1.0)
    x0 = sphere_points(rng, (12, 3))
    one = af.simulate(m, x0, 0.5, dt=0.1, save_times=[0.0, 0.5])
    ref = simulate_prompts(m, x0[None], 0.5, dt=0.1, save_times=[0.0, 0.5])
    assert isinstance(one, af.Solution)
    np.testing.assert_array_equal(one.x, ref.x[0])
    law = af.UniformSphere(2)
    ens = af.ensemble(CausalInteraction(2, 1.0, 0.5), law, 8, 4, 0.4, dt=0.1, seed=2)
    np.testing.assert_array_equal(
        ens.x, prompt_ensemble(CausalInteraction(2, 1.0, 0.5), 8, 4, 0.4, dt=0.1, seed=2).x
    )
    with pytest.raises(ValueError, match="weights"):
        af.simulate(m, x0, 0.5, dt=0.1, weights=np.full(12, 1 / 12))
    with pytest.raises(ValueError, match="checkpoint_every"):
        af.ensemble(m, af.UniformSphere(3), 8, 2, 0.4, dt=0.1, seed=1, checkpoint_every=1,
                    on_checkpoint=print)  # fmt: skip
    with pytest.raises(ValueError, match="sum, multi-head"):
        af.simulate(m + af.SelfAttention(3), x0, 0.5, dt=0.1)
    with pytest.raises(ValueError, match="sum, multi-head"):
        af.simulate(af.MultiHead([m, m]), x0, 0.5, dt=0.1)
    with pytest.raises(ValueError, match="not a field"):
        m.velocity(x0, x0)
    with pytest.raises(ValueError, match="energy"):
        m.log_energy(x0)


def test_mean_field_solver_refuses_a_causal_model():
    from attnflow.fem import MeanFieldSolver

    with pytest.raises(ValueError, match="CausalSolver"):
        MeanFieldSolver(af.SelfAttention(2, causal=True), None, None)
    with pytest.raises(ValueError, match="CausalSolver"):
        MeanFieldSolver(CausalInteraction(2), None, None)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: CausalInteraction(1), "d must"),
        (lambda: CausalInteraction(2, beta=0.0), "beta"),
        (lambda: CausalInteraction(2, lam=-1.0), "lam"),
        (lambda: CausalInteraction(2, lam=math.nan), "lam"),
        (lambda: CausalInteraction(2, beta=800.0), "rescale=True"),
        (lambda: af.SelfAttention(2, alibi=1.0), "causal=True"),
        (lambda: af.SelfAttention(2, alibi=-1.0, causal=True), "alibi"),
        (lambda: af.SelfAttention(2, causal=True, normalized=False), "normalized=True"),
        (lambda: af.SelfAttention(2, math.inf, causal=True), "finite beta"),
    ],
)
def test_models_are_validated(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_runs_are_validated_before_work(rng, monkeypatch):
    m = CausalInteraction(3, 1.0, 1.0)
    x0 = sphere_points(rng, (2, 5, 3))
    with pytest.raises(ValueError, match="must be causal"):
        simulate_prompts(af.SelfAttention(3), x0, 1.0, dt=0.1)
    with pytest.raises(TypeError, match="CausalInteraction"):
        simulate_prompts("model", x0, 1.0, dt=0.1)
    with pytest.raises(ValueError, match=r"x0 must have shape \(P, N, 3\)"):
        simulate_prompts(m, x0[0], 1.0, dt=0.1)
    with pytest.raises(ValueError, match="unit sphere"):
        simulate_prompts(m, 2 * x0, 1.0, dt=0.1)
    with pytest.raises(ValueError, match="dt"):
        simulate_prompts(m, x0, 1.0, dt=0.0)
    with pytest.raises(ValueError, match="law must live"):
        prompt_ensemble(m, 5, 2, 1.0, dt=0.1, seed=0, law=af.UniformSphere(2))
    with pytest.raises(ValueError, match="n_prompts"):
        prompt_ensemble(m, 5, 0, 1.0, dt=0.1, seed=0)
    with pytest.raises(ResourceError, match="time steps"):
        prompt_ensemble(m, 5, 2, 1e300, dt=1e-300, seed=0)
    monkeypatch.setenv("ATTNFLOW_MEMORY_BUDGET", "1M")
    with pytest.raises(ResourceError, match="10000000 prompts"):
        prompt_ensemble(m, 64, 10_000_000, 1.0, dt=0.1, seed=0)


def test_correlation_mc_is_validated(rng):
    sol = prompt_ensemble(CausalInteraction(2, 1.0, 1.0), 6, 4, 0.2, dt=0.1, seed=1)
    with pytest.raises(ValueError, match="positions"):
        correlation_mc(sol, 1, [0])
    with pytest.raises(ValueError, match="positions"):
        correlation_mc(sol, 1, [7])
    with pytest.raises(ValueError, match="n must"):
        correlation_mc(sol, 0)
    with pytest.raises(ValueError, match="S\\^1"):
        correlation_mc(sphere_points(rng, (4, 2, 6, 3)), 1)
    est = correlation_mc(sol, 2, [1, 6])
    assert est.value.shape == (2, 2) and est.stderr.shape == (2, 2)
    np.testing.assert_array_equal(est.value[0], [0.0, 6.0])  # t = 0: 0, and N for k = N


# -- the Monte Carlo route of the retrieval correlation -----------------------------------------
def test_monte_carlo_correlation_matches_the_closed_form():
    """N E[Re e^{-i theta_N(t)} e^{i theta_k(0)}] over 10^4 iid uniform prompts (prompts split
    over COMM_WORLD) against theory.correlation_kernel, within 3 standard errors plus the
    O(1/N) bias of the N-token system, estimated by the discrete route
    |theory.discrete_correlation - correlation_kernel| (the finite-N linearised system); both
    the plain and the control-variate estimators. Positions away from s = 0 (the integrable
    primacy singularity, where the O(1/N) bias constant blows up)."""
    beta, lam, times = 1.0, 1.0, np.array([0.5, 1.0])
    for n_tok in (16, 32):
        sol = prompt_ensemble(
            CausalInteraction(2, beta, lam),
            n_tok,
            10_000,
            1.0,
            dt=0.1,
            seed=2026,
            save_times=[0.0, *times],
            comm=COMM,
        )
        ks = np.array([n_tok // 4, n_tok // 2, 3 * n_tok // 4, n_tok - 1])
        closed = theory.correlation_kernel(1, beta, lam, times[:, None], ks[None, :] / n_tok)
        _, disc = theory.discrete_correlation(1, beta, lam, times, n_tok)
        bias = np.abs(disc[:, ks - 1] - closed)
        for cv in (True, False):
            est = correlation_mc(sol, 1, ks, control_variate=cv)
            err = np.abs(est.value[1:] - closed)
            assert np.all(err <= 3 * est.stderr[1:] + bias), (n_tok, cv, err, est.stderr, bias)
        # the control variate is unbiased and much tighter at small t
        assert np.all(est.stderr[1] > 5 * correlation_mc(sol, 1, ks).stderr[1])
