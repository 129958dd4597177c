"""Stationary states of the noisy mean-field equation on S^1: Newton, continuation, stability,
against the linear theory and the spectral reference (attnflow.studies.phase_transitions).

Collective on COMM_WORLD (every assertion on global values): runs serially and under mpiexec.
"""

import numpy as np
import pytest
from mpi4py import MPI

import attnflow as af
import attnflow.fem as af_fem
from attnflow.fem import circle_mesh
from attnflow.fem.stationary import StationaryProblem, continuation, stationary_state
from attnflow.studies.phase_transitions import (
    critical_noise,
    spectral_branch,
    spectral_stationary_state,
    tricritical_beta,
)

BETA = 2.0


def model(beta, sigma, normalized=True):
    return af.SelfAttention(2, beta=beta, normalized=normalized) + af.Diffusion(sigma)


def l1_error(st, ref):
    """L1 distance of the FE density (cell quadrature) to the spectral profile, rotated to the
    FE state's mean direction (the continuum state is only defined up to rotation)."""
    pts, w = st.points, st.point_weights
    m = st.weights @ pts
    phi = np.arctan2(m[1], m[0])
    th = np.arctan2(pts[:, 1], pts[:, 0]) - phi
    x = np.stack([np.cos(th), np.sin(th)], axis=1)
    return float(np.sum(np.abs(st.weights - w * ref(x))))


@pytest.fixture(scope="module")
def reference():
    sigma = 0.8 * critical_noise(BETA)
    return sigma, spectral_stationary_state(BETA, sigma, n=129, guess=0.6)


@pytest.mark.parametrize("degree,order", [(0, 1.0), (1, 2.0)])
def test_newton_converges_and_agrees_with_the_spectral_reference(reference, degree, order):
    sigma, ref = reference
    assert ref.converged
    errors = []
    for n in (32, 64):
        st = stationary_state(
            model(BETA, sigma),
            circle_mesh(n),
            af.VonMisesFisher([1.0, 0.0], 2.0),
            degree=degree,
            kernel="dense",
        )
        h = np.array(st.residual_history)
        assert st.converged and h[-1] < 1e-10
        # quadratic once in the basin: r_{k+1} <= C r_k^2, C = |J^-1| |R''| / 2 ~ 100 here
        # (measured 40-100); 1e-12: the differenced Jacobian's floor
        small = np.flatnonzero((h[:-1] < 1e-2) & (h[:-1] > 1e-9))
        assert small.size >= 2
        assert np.all(h[small + 1] <= 300 * h[small] ** 2 + 1e-12), h
        assert st.iterations <= 8
        assert abs(st.mass - 1.0) < 1e-13
        assert st.leading_eigenvalue < 0  # the non-uniform state below sigma_c is stable
        errors.append(l1_error(st, ref))
    rate = np.log2(errors[0] / errors[1])
    assert abs(rate - order) < 0.25, (errors, rate)
    assert errors[1] < (0.1 if degree == 0 else 0.01)


def test_matrix_free_newton_gives_the_same_state(reference):
    sigma, _ = reference
    mesh = circle_mesh(48)
    guess = af.VonMisesFisher([1.0, 0.0], 2.0)
    P = StationaryProblem(model(BETA, sigma), mesh, degree=1, kernel="dense")
    dense = stationary_state(None, mesh, guess, problem=P, stability=False)
    mf = stationary_state(None, mesh, guess, problem=P, jacobian="mf", stability=False)
    assert dense.converged and mf.converged
    # DG1 keeps the rotation symmetry almost exactly (its eigenvalue is ~1e-8): the two
    # iterations may stop at slightly rotated copies; compare what rotations keep
    assert abs(dense.amplitude - mf.amplitude) < 1e-9
    assert abs(np.sort(dense.dofs.ravel())[-1] - np.sort(mf.dofs.ravel())[-1]) < 1e-6
    assert abs(mf.mass - 1.0) < 1e-13
    assert mf.stats["tendency_evaluations"] < dense.stats["tendency_evaluations"]


@pytest.mark.parametrize("degree", [0, 1])
def test_the_time_stepper_keeps_the_newton_state(reference, degree):
    """An independent route: the Newton state is a fixed point of MeanFieldSolver.solve
    (IMEX ARKIMEX 2E: stage-consistent, so the steady states of the semi-discrete equation are
    fixed points of every step)."""
    sigma, _ = reference
    mesh = circle_mesh(32)
    law = af.VonMisesFisher([1.0, 0.0], 2.0)
    st = stationary_state(
        model(BETA, sigma), mesh, law, degree=degree, kernel="dense", stability=False
    )
    solver = af_fem.MeanFieldSolver(
        model(BETA, sigma),
        mesh,
        law,
        degree=degree,
        kernel="dense",
        normalize=True,
        petsc_options={"ts_arkimex_type": "2e"},
    )
    solver.set_initial_dofs(st.dofs)
    sol = solver.solve(2.0, energy=False)
    assert np.abs(sol.dofs - st.dofs).max() < 1e-11


def test_uniform_state_stability_changes_sign_at_sigma_c():
    sc = critical_noise(BETA)
    P = StationaryProblem(model(BETA, sc), circle_mesh(64), degree=1, kernel="dense")
    lam = {}
    for f in (0.9, 1.1):
        st = stationary_state(None, None, P.solver.global_dofs(root=None), problem=P, sigma=f * sc)
        assert st.residual_history[0] < 1e-12  # the uniform state is an exact discrete zero
        assert st.amplitude < 1e-12
        lam[f] = st.leading_eigenvalue
    # mode 1: lambda = sigma_c - sigma (each side, within 1% of sigma_c)
    assert lam[0.9] > 0 > lam[1.1]
    np.testing.assert_allclose([lam[0.9], lam[1.1]], [0.1 * sc, -0.1 * sc], atol=0.01 * sc)


def test_continuation_finds_sigma_c_and_a_stable_supercritical_branch():
    sc = critical_noise(BETA)
    br = continuation(
        model(BETA, 1.1 * sc),
        circle_mesh(64),
        stop=0.6 * sc,
        ds=0.05 * sc,
        degree=1,
        kernel="dense",
        max_steps=10,
    )
    (bif,) = br.bifurcations
    assert abs(bif["sigma"] - sc) < 0.01 * sc
    uni, new = br.branch == 0, br.branch == 1
    above = uni & (br.sigma > 1.01 * sc)
    below = uni & (br.sigma < 0.99 * sc)
    assert np.all(br.stable[above]) and not np.any(br.stable[below])
    assert new.sum() >= 5 and np.all(br.stable[new]) and br.folds == []
    assert np.all(br.sigma[new] < bif["sigma"])  # supercritical: the branch lives below
    assert np.all(np.diff(br.amplitude[new]) > 0)
    for st in br.states:
        assert st.converged and abs(st.mass - 1.0) < 1e-12
    # the branch follows the spectral reference: sigma/sigma_c at the same amplitude
    ks = np.flatnonzero(new)
    ref = spectral_branch(BETA, br.amplitude[ks], n=65, stability=False)
    dev = np.abs(br.sigma[ks] / bif["sigma"] - ref.sigma / sc)
    assert dev.max() < 2e-3, dev


@pytest.mark.parametrize("side", ["below", "above"])
def test_usa_transition_type_changes_at_beta_star(side):
    """USA: continuous (no fold, stable branch) below beta_* = 2.447, a fold at sigma_f >
    sigma_c above it with the branch unstable before the fold and stable after.

    64 cells: the kernel sums see the quadrature points on the chords, ``|y| = 1 - O(h^2)``,
    which lowers the USA field by ``~ beta pi^2 / (2 N^2)`` (0.5% at beta = 4, N = 64; 1.1% at
    N = 48): the O(h^2) shift of sigma_c."""
    beta = 0.8 * tricritical_beta(2) if side == "below" else 4.0
    sc = critical_noise(beta, normalized=False)
    br = continuation(
        model(beta, 1.05 * sc, normalized=False),
        circle_mesh(64),
        stop=0.5 * sc,
        ds=0.06 * sc,
        degree=0,
        kernel="dense",
        max_steps=14,
        max_amplitude=0.8,
    )
    (bif,) = br.bifurcations
    assert abs(bif["sigma"] - sc) < 0.01 * sc
    new = br.branch == 1
    if side == "below":
        assert br.folds == [] and np.all(br.stable[new])
        assert np.all(br.sigma[new] < bif["sigma"])
    else:
        (fold,) = br.folds
        assert fold["sigma"] > bif["sigma"]
        before = new & (br.amplitude < fold["amplitude"] - 0.05)
        after = new & (br.amplitude > fold["amplitude"] + 0.05)
        assert before.sum() >= 1 and after.sum() >= 1
        assert not np.any(br.stable[before]) and np.all(br.stable[after])


def test_bad_input_is_refused():
    mesh = circle_mesh(8)
    dyn = model(BETA, 0.1)
    with pytest.raises(ValueError, match="jacobian"):
        stationary_state(dyn, mesh, af.UniformSphere(2), jacobian="lu")
    with pytest.raises(ValueError, match="parameter"):
        continuation(dyn, mesh, parameter="beta", stop=0.05)
    with pytest.raises(TypeError, match="initial_guess"):
        stationary_state(dyn, mesh, 3.0)
    with pytest.raises(ValueError, match="sphere"):
        StationaryProblem(af.SelfAttention(2, beta=1.0, sphere=False), mesh)
    assert MPI.COMM_WORLD.allreduce(1) == MPI.COMM_WORLD.size
