"""Noise in the finite element solver: the diffusion operator, IMEX time stepping, the free
energy, against exact theory (issue 13).

* Pure diffusion: ``e^{i n theta}`` on S^1 decays at ``sigma n^2`` (DG0 on the uniform polygon:
  exactly ``sigma sin^2(n pi/N) / sin^2(pi/N)``), spherical harmonics of degree l at
  ``sigma l (l + 1)``, Neumann cosines on a box at ``sigma |k|^2``, the mean kept.
* Linear stability of the uniform state (Q = K = V = I): the noiseless rates of
  :func:`attnflow.studies.metastability.log_growth_rates` (S^1: ``n^2 I_n / (beta I_0)`` (SA),
  ``n^2 I_n / beta`` (USA); S^2 from Funk–Hecke) minus ``sigma l (l + d - 2)``: the Laplace–
  Beltrami eigenvalue of the mode, since ``sigma Delta`` acts on the perturbation alone.
* A Gaussian in R^2 (SA, K = -Q): the field of a Gaussian ``N(m, S)`` is affine,
  ``X(x) = V (m + S A x)`` with ``A = beta K^T Q``, so the Fokker–Planck equation keeps it
  Gaussian with ``m' = E X = V (m + S A m)`` and ``S' = E[(X - m')(x - m)^T] + transpose + 2 sigma
  I = V S A S + S A^T S V^T + 2 sigma I`` (``int x x^T sigma Delta rho = 2 sigma I``).
* Mass to round-off, rho >= 0, the free energy of USA non-increasing, serial == parallel.

Accuracy tests use ``ts_arkimex_type 3`` (third order, L-stable) so that the time error is
negligible; the default ARKIMEX 1BEE (first order, positivity preserving) is checked for its
order and for positivity.
"""

import numpy as np
import pytest
from mpi4py import MPI
from scipy.integrate import solve_ivp
from scipy.special import eval_legendre, ive

import attnflow as af
from attnflow.fem import MeanFieldSolver, box_mesh, circle_mesh, sphere_mesh
from attnflow.fem.diffusion import diffusion_matrix
from attnflow.solutions import FieldSolution
from attnflow.studies.metastability import log_growth_rates

ORDER3 = {"ts_arkimex_type": "3"}
serial = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="serial reference")


def theta(points):
    return np.arctan2(points[:, 1], points[:, 0])


def mode_rates(sol, ns, T):
    """Growth rates of cos(n theta) from the first and last save."""
    th = theta(sol.points)
    return np.array(
        [
            np.log((sol.weights[1] @ np.cos(n * th)) / (sol.weights[0] @ np.cos(n * th))) / T
            for n in ns
        ]
    )


# -- the operator --------------------------------------------------------------------------------
@serial
@pytest.mark.parametrize("degree", [0, 1])
@pytest.mark.parametrize("mesh", ["circle", "sphere", "interval", "box"])
def test_the_operator_is_symmetric_conservative_and_positive_semidefinite(mesh, degree):
    if degree == 0 and mesh == "box":
        pytest.skip("refused: see test_dg0_is_refused_on_non_admissible_boxes")
    make = {
        "circle": lambda: circle_mesh(24, MPI.COMM_SELF),
        "sphere": lambda: sphere_mesh(1, MPI.COMM_SELF),
        "interval": lambda: box_mesh(1, 1.0, 10, MPI.COMM_SELF),
        "box": lambda: box_mesh(2, 1.0, 4, MPI.COMM_SELF),
    }[mesh]
    import dolfinx.fem

    W = dolfinx.fem.functionspace(make(), ("DG", degree))
    A = diffusion_matrix(W).convert("dense").getDenseArray()
    scale = np.abs(A).max()
    assert np.abs(A - A.T).max() <= 1e-13 * scale
    assert np.abs(A.sum(axis=0)).max() <= 1e-13 * scale  # mass is conserved
    ev = np.linalg.eigvalsh(A)
    assert abs(ev[0]) <= 1e-12 * scale and ev[1] > 1e-6 * scale  # kernel: the constants only
    if degree == 0:  # an M-matrix
        off = A - np.diag(np.diag(A))
        assert off.max() <= 0


def test_dg0_is_refused_on_non_admissible_boxes():
    model = af.SelfAttention(2, beta=1.0, sphere=False) + af.Diffusion(0.1)
    with pytest.raises(ValueError, match="admissible"):
        MeanFieldSolver(model, box_mesh(2, 1.0, 4), af.Gaussian([0, 0], np.eye(2) * 0.1))


@serial
def test_dg0_rates_on_the_uniform_circle_are_the_three_point_laplacian():
    """B cos(n theta_K) = sin^2(n pi / N) / sin^2(pi / N) cos(n theta_K) to round-off: the
    two-point flux of the polygon (exact for n = 1)."""
    N = 40
    s = MeanFieldSolver(
        af.Diffusion(1.0, d=2, sphere=True),
        circle_mesh(N, MPI.COMM_SELF),
        lambda x: 1.0 + 0 * x[:, 0],
    )
    B = s.diffusion_operator.B.convert("dense").getDenseArray()
    centres = s.cloud.points.reshape(N, -1, 2).mean(axis=1)
    for n in range(1, 6):
        v = np.cos(n * theta(centres))
        lam = np.sin(n * np.pi / N) ** 2 / np.sin(np.pi / N) ** 2
        np.testing.assert_allclose(B @ v, lam * v, atol=1e-11 * lam)


# -- pure diffusion ------------------------------------------------------------------------------
def pure_diffusion_rates(degree, cells, ns=(1, 2, 3, 4), sigma=0.1, T=0.5):
    rho0 = lambda x: 1.0 + 0.2 * sum(np.cos(n * theta(x)) for n in ns)  # noqa: E731
    model = af.Diffusion(sigma, d=2, sphere=True)
    sol = MeanFieldSolver(
        model, circle_mesh(cells), rho0, degree=degree, petsc_options=ORDER3
    ).solve(T)
    assert np.abs(sol.mass[-1] - sol.mass[0]) <= 1e-13 * sol.mass[0]
    return -mode_rates(sol, ns, T) / (sigma * np.array(ns) ** 2) - 1


@pytest.mark.parametrize("degree", [0, 1])
def test_circle_modes_decay_at_sigma_n_squared(degree):
    """Modes 1..4 within 1% at 100 cells, error O(h^2) (falls by ~4 at 200 cells)."""
    e1 = np.abs(pure_diffusion_rates(degree, 100))
    e2 = np.abs(pure_diffusion_rates(degree, 200))
    assert e1.max() < 0.01, e1
    assert np.all(e2[1:] < e1[1:] / 3.5), (e1, e2)  # mode 1 of DG0 is exact (round-off)


@pytest.mark.parametrize(("degree", "tol"), [(0, 0.01), (1, 0.02)])
def test_spherical_harmonics_decay_at_sigma_l_l_plus_1(degree, tol):
    """Zonal harmonics l = 1, 2, 3 on sphere_mesh(3): DG0 within 1%, DG1 within 2% (the
    operator's eigenvalues are within 0.6% (l = 1) .. 0.4% (l = 3) for DG0 and 0.6% .. 1.8%
    for DG1 there, falling at O(h^2))."""
    sigma, T, ls = 0.05, 1.0, (1, 2, 3)
    rho0 = lambda x: 1.0 + 0.2 * sum(eval_legendre(ll, x[:, 2]) for ll in ls)  # noqa: E731
    sol = MeanFieldSolver(
        af.Diffusion(sigma, d=3, sphere=True),
        sphere_mesh(3),
        rho0,
        degree=degree,
        dt=0.05,
        petsc_options=ORDER3,
    ).solve(T)
    z = sol.points[:, 2] / np.linalg.norm(sol.points, axis=1)
    for ll in ls:
        a = sol.weights @ eval_legendre(ll, z)
        rate = -np.log(a[1] / a[0]) / T
        assert abs(rate / (sigma * ll * (ll + 1)) - 1) < tol, (ll, rate)
    assert np.abs(sol.mass[-1] - sol.mass[0]) <= 1e-13 * sol.mass[0]


def test_box_neumann_modes_decay_and_the_mean_is_kept():
    """[-1, 1]^2, no-flux: cos(k pi (x + 1) / 2) decays at sigma (k pi / 2)^2 (DG1 with 24 cells
    per direction: within 1% for k = 1, 2; 1.1% for k = 2 at 16 cells)."""
    sigma, T = 0.1, 1.0
    model = af.Diffusion(sigma, d=2, sphere=False)

    def rho0(x):
        return 1.0 + 0.5 * np.cos(np.pi * (x[:, 0] + 1) / 2) + 0.3 * np.cos(np.pi * (x[:, 1] + 1))

    mesh = box_mesh(2, 1.0, 24)
    sol = MeanFieldSolver(model, mesh, rho0, degree=1, dt=0.05, petsc_options=ORDER3).solve(T)
    p = sol.points
    for k, f in (
        (np.pi / 2, np.cos(np.pi * (p[:, 0] + 1) / 2)),
        (np.pi, np.cos(np.pi * (p[:, 1] + 1))),
    ):
        a = sol.weights @ f
        assert abs(-np.log(a[1] / a[0]) / T / (sigma * k**2) - 1) < 0.01
    assert np.abs(sol.mass[-1] - sol.mass[0]) <= 1e-13 * sol.mass[0]
    assert np.abs(sol.outflow).max() <= 1e-13 * sol.mass[0]  # no-flux: nothing leaves


def test_the_default_imex_scheme_is_first_order_in_time():
    """ARKIMEX 1BEE: the error of the decay rate halves with the step."""
    sigma, T, n = 0.2, 1.0, 3
    rho0 = lambda x: 1.0 + 0.5 * np.cos(n * theta(x))  # noqa: E731
    model = af.Diffusion(sigma, d=2, sphere=True)
    mesh = circle_mesh(64)
    exact = MeanFieldSolver(model, mesh, rho0, dt=0.01, petsc_options=ORDER3).solve(T)
    errs = []
    for dt in (0.1, 0.05):
        sol = MeanFieldSolver(model, mesh, rho0, dt=dt).solve(T)
        errs.append(abs(mode_rates(sol, [n], T)[0] / mode_rates(exact, [n], T)[0] - 1))
    assert 1.7 < errs[0] / errs[1] < 2.3, errs


# -- linear stability with attention -------------------------------------------------------------
def circle_rates(normalized, beta, sigma, degree, cells=200, ns=(1, 2, 3, 4)):
    """FE growth rates of modes ns from one run with a 1e-6 perturbation of every mode."""
    n = np.array(ns, dtype=float)
    lam = np.exp(log_growth_rates(beta, ns, d=2, normalized=normalized)) - sigma * n**2
    T = min(1.0 / np.abs(lam).max(), 2.0)
    rho0 = lambda x: (1 + 1e-6 * sum(np.cos(k * theta(x)) for k in ns)) / (2 * np.pi)  # noqa: E731
    model = af.SelfAttention(2, beta=beta, normalized=normalized) + af.Diffusion(sigma)
    sol = MeanFieldSolver(
        model, circle_mesh(cells, MPI.COMM_SELF), rho0, degree=degree, petsc_options=ORDER3
    ).solve(T)
    return mode_rates(sol, ns, T), lam


@serial
@pytest.mark.parametrize("degree", [0, 1])
@pytest.mark.parametrize(("normalized", "beta", "sigma"), [(True, 4.0, 0.1), (False, 1.0, 0.3)])
def test_circle_growth_rates_with_noise(normalized, beta, sigma, degree):
    """n^2 (I_n(beta) / (beta I_0(beta)) - sigma) (SA), n^2 (I_n(beta) / beta - sigma) (USA):
    modes 1..4 (growing and decaying) within 1% at 200 cells."""
    rate, lam = circle_rates(normalized, beta, sigma, degree)
    ref = ive(np.arange(1, 5), beta) * np.exp(beta) / beta
    if normalized:
        ref = ref / (ive(0, beta) * np.exp(beta))
    np.testing.assert_allclose(lam, np.arange(1, 5) ** 2 * (ref - sigma), rtol=1e-12)
    assert np.any(lam > 0) and np.any(lam < 0)
    np.testing.assert_allclose(rate, lam, rtol=0.01)


@serial
def test_sphere_growth_rates_with_noise_converge_to_funk_hecke():
    """SA, beta = 4, sigma = 0.08 on S^2: l (l + 1) (I_{l+1/2}(beta) / (beta I_{1/2}(beta)) -
    sigma) for l = 1, 2 (growing) and 3 (decaying). DG0: the error falls at O(h^2) from level 2
    to 3, and the Richardson extrapolation of the two levels is within 1%. (The uniform state
    of the icosphere moves by O(h^2): the run without perturbation is subtracted.)"""
    beta, sigma, ls = 4.0, 0.08, (1, 2, 3)
    lam = np.exp(log_growth_rates(beta, ls, d=3)) - sigma * np.array([ll * (ll + 1) for ll in ls])
    T = 1.0
    model = af.SelfAttention(3, beta=beta) + af.Diffusion(sigma)
    rates = []
    for level in (2, 3):
        mesh = sphere_mesh(level, MPI.COMM_SELF)

        def solve(eps, mesh=mesh):
            rho0 = lambda x: 1.0 + eps * sum(eval_legendre(ll, x[:, 2]) for ll in ls)  # noqa: E731
            return MeanFieldSolver(model, mesh, rho0, petsc_options=ORDER3).solve(T)

        base, pert = solve(0.0), solve(1e-5)
        z = pert.points[:, 2] / np.linalg.norm(pert.points, axis=1)
        a = np.array([(pert.weights - base.weights) @ eval_legendre(ll, z) for ll in ls])
        rates.append(np.log(a[:, 1] / a[:, 0]) / T)
    errs = [np.abs(r / lam - 1) for r in rates]
    assert np.all(errs[1] < errs[0] / 3), errs
    assert np.all(errs[1] < 0.15), errs
    np.testing.assert_allclose((4 * rates[1] - rates[0]) / 3, lam, rtol=0.01)


# -- the Gaussian --------------------------------------------------------------------------------
@serial
def test_noisy_gaussian_matches_the_moment_equations():
    Q, K, V, beta, sigma, T = np.eye(2), -np.eye(2), np.eye(2), 1.0, 0.1, 1.0
    A = beta * K.T @ Q
    m0, S0 = np.array([0.5, 0.0]), np.array([[0.5, 0.1], [0.1, 0.3]])

    def rhs(t, y):
        m, S = y[:2], y[2:].reshape(2, 2)
        dS = V @ S @ A @ S + S @ A.T @ S @ V.T + 2 * sigma * np.eye(2)
        return np.concatenate([V @ (m + S @ A @ m), dS.ravel()])

    ex = solve_ivp(rhs, [0, T], np.concatenate([m0, S0.ravel()]), rtol=1e-12, atol=1e-12).y[:, -1]
    m_ex, S_ex = ex[:2], ex[2:].reshape(2, 2)
    model = af.SelfAttention(2, beta=beta, Q=Q, K=K, V=V, sphere=False) + af.Diffusion(sigma)
    sol = MeanFieldSolver(
        model, box_mesh(2, 3.2, 16, MPI.COMM_SELF), af.Gaussian(m0, S0), degree=1
    ).solve(T)
    w, p = sol.weights[-1], sol.points
    mean = w @ p / w.sum()
    cov = ((p - mean).T * w) @ (p - mean) / w.sum()
    assert np.max(np.abs(mean - m_ex)) < 0.02 * np.max(np.abs(m_ex))
    assert np.max(np.abs(cov - S_ex)) < 0.02 * np.max(np.abs(S_ex))
    assert abs(sol.outflow[-1]) < 1e-6  # the box [-3.2, 3.2]^2 holds the Gaussian
    assert np.abs(sol.mass + sol.outflow - sol.mass[0]).max() <= 1e-13


# -- mass, positivity, free energy, ranks --------------------------------------------------------
CLUSTER = {
    "circle": lambda comm, normalized=False: (
        af.SelfAttention(2, beta=6.0, normalized=normalized, rescale_usa=not normalized)
        + af.Diffusion(0.02),
        circle_mesh(96, comm),
        af.PerturbedCircle(0.3, 3),
    ),
    "sphere": lambda comm, normalized=False: (
        af.SelfAttention(3, beta=4.0, normalized=normalized, rescale_usa=not normalized)
        + af.Diffusion(0.02),
        sphere_mesh(2, comm),
        af.VonMisesFisher([0.0, 0.6, 0.8], 1.0),
    ),
}


@pytest.mark.parametrize("degree", [0, 1])
@pytest.mark.parametrize("case", sorted(CLUSTER))
def test_clustering_with_noise_keeps_mass_positivity_and_the_free_energy_decreases(case, degree):
    """USA with Q = K = V = I is the Wasserstein gradient flow of F = sigma int rho log rho - E:
    F must not increase (to 1e-9 relative: a step of ARKIMEX 1BEE is a discrete gradient
    step up to O(dt^2))."""
    model, mesh, law = CLUSTER[case](MPI.COMM_WORLD)
    sol = MeanFieldSolver(model, mesh, law, degree=degree, normalize=True).solve(
        4.0, np.linspace(0, 4, 9)
    )
    assert np.abs(sol.mass - 1.0).max() <= 1e-13
    assert np.all(sol.min_density >= 0)
    F = sol.free_energy
    assert np.all(np.isfinite(F)) and F[-1] < F[0]
    assert np.all(np.diff(F) <= 1e-9 * np.abs(F).max()), np.diff(F)
    np.testing.assert_allclose(F, 0.02 * sol.entropy - np.exp(sol.energy), rtol=1e-12)


def test_sa_is_not_the_gradient_flow_of_the_free_energy():
    """From a concentrated state (von Mises-Fisher, kappa = 50) F of SA *increases* (the noise
    spreads the cluster faster than SA pays for it in E; the SA field is the USA field divided by
    K rho), while F of USA decreases (DG0, S^1, beta = 6, sigma = 0.05)."""
    law = af.VonMisesFisher([1.0, 0.0], 50.0)
    F = {}
    for normalized in (True, False):
        model = af.SelfAttention(2, beta=6.0, normalized=normalized, rescale_usa=not normalized)
        sol = MeanFieldSolver(
            model + af.Diffusion(0.05), circle_mesh(200), law, normalize=True
        ).solve(3.0, np.linspace(0, 3, 7))
        F[normalized] = sol.free_energy
    assert np.all(np.diff(F[True]) > 0), F[True]
    assert np.all(np.diff(F[False]) < 0), F[False]


def test_free_energy_is_saved_and_loaded(tmp_path_factory):
    comm = MPI.COMM_WORLD
    model, mesh, law = CLUSTER["circle"](comm)
    sol = MeanFieldSolver(model, mesh, law).solve(0.5, [0.0, 0.5])
    path = comm.bcast(str(tmp_path_factory.mktemp("sol") / "sol.npz") if comm.rank == 0 else None)
    if comm.rank == 0:
        sol.save(path)
    comm.Barrier()
    back = FieldSolution.load(path)
    np.testing.assert_array_equal(back.free_energy, sol.free_energy)
    np.testing.assert_array_equal(back.entropy, sol.entropy)


@pytest.mark.mpi
def test_noisy_solves_agree_across_ranks():
    comm = MPI.COMM_WORLD
    cases = [("circle", 0), ("circle", 1), ("sphere", 1)]
    for case, degree in cases:
        par = MeanFieldSolver(*CLUSTER[case](comm, True), degree=degree, normalize=True).solve(
            0.5, [0.0, 0.5]
        )
        ser = MeanFieldSolver(
            *CLUSTER[case](MPI.COMM_SELF, True), degree=degree, normalize=True
        ).solve(0.5, [0.0, 0.5])
        np.testing.assert_allclose(par.weights, ser.weights, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(par.free_energy, ser.free_energy, rtol=1e-10)
    box = af.SelfAttention(2, beta=1.0, K=-np.eye(2), sphere=False) + af.Diffusion(0.05)
    law = af.Gaussian([0.5, 0.0], [[0.5, 0.1], [0.1, 0.3]])
    par = MeanFieldSolver(box, box_mesh(2, 3.0, 12, comm), law, degree=1).solve(0.5)
    ser = MeanFieldSolver(box, box_mesh(2, 3.0, 12, MPI.COMM_SELF), law, degree=1).solve(0.5)
    np.testing.assert_allclose(par.weights, ser.weights, rtol=1e-10, atol=1e-14)


# -- the API -------------------------------------------------------------------------------------
def test_tendency_is_the_semi_discrete_right_hand_side():
    """The tendency conserves mass, vanishes for the uniform density on S^1 and equals
    (rho(dt) - rho(0)) / dt of a tiny explicit Euler step."""
    comm = MPI.COMM_WORLD
    model, mesh, law = CLUSTER["circle"](comm, True)
    s = MeanFieldSolver(model, mesh, law, degree=1, normalize=True)
    x = s.rho.x.array[: s.n_dofs].copy()
    f = s.tendency(x)
    assert abs(comm.allreduce(float(s.cell_volume @ f))) <= 1e-13 * comm.allreduce(
        float(np.abs(f).sum())
    )
    s2 = MeanFieldSolver(model, mesh, af.UniformSphere(2), degree=1, normalize=True)
    assert (
        comm.allreduce(
            float(np.abs(s2.tendency(s2.rho.x.array[: s2.n_dofs].copy())).max()), op=MPI.MAX
        )
        < 1e-12
    )
    e = MeanFieldSolver(
        model, mesh, law, degree=1, normalize=True, dt=1e-6, petsc_options={"ts_type": "euler"}
    )
    dt = e.solve(1e-6).dt  # the step, capped by the explicit diffusion bound
    y = e.solve(dt)
    g = (e.rho.x.array[: e.n_dofs] - x) / dt
    assert y.n_steps == 1
    np.testing.assert_allclose(g, f, rtol=1e-7, atol=1e-9 * np.abs(f).max())


def test_explicit_time_stepping_of_the_noise_caps_the_step(caplog):
    model, mesh, law = CLUSTER["circle"](MPI.COMM_WORLD)
    imex = MeanFieldSolver(model, mesh, law, normalize=True)
    ex = MeanFieldSolver(model, mesh, law, normalize=True, petsc_options={"ts_type": "ssp"})
    a, b = imex.solve(1.0), ex.solve(1.0)
    assert b.dt < a.dt and b.stats["implicit"] is False and a.stats["implicit"] is True
    assert b.stats["ts_type"] == "ssp" and a.stats["ts_type"] == "arkimex"
    np.testing.assert_allclose(
        b.weights[-1], a.weights[-1], rtol=0.02, atol=1e-3 * a.weights[-1].max()
    )
    with pytest.raises(ValueError, match="ts_type"):
        MeanFieldSolver(model, mesh, law, petsc_options={"ts_type": "beuler"}).solve(0.1)


def test_bad_dt_is_refused():
    model, mesh, law = CLUSTER["circle"](MPI.COMM_WORLD)
    with pytest.raises(ValueError, match="dt"):
        MeanFieldSolver(model, mesh, law, dt=-1.0)
    with pytest.raises(ValueError, match="CFL"):
        MeanFieldSolver(model, mesh, law, dt=10.0)


def test_piecewise_diffusivity_is_that_of_each_interval():
    """Pure diffusion with sigma = 0.1 on [0, 1) and 0.3 after: mode n decays by
    exp(-n^2 (0.1 + 0.3 * 0.5)) at t = 1.5."""
    n = 2
    model = af.Piecewise(
        [1.0], [af.Diffusion(0.1, d=2, sphere=True), af.Diffusion(0.3, d=2, sphere=True)]
    )
    rho0 = lambda x: 1.0 + 0.5 * np.cos(n * theta(x))  # noqa: E731
    sol = MeanFieldSolver(
        model, circle_mesh(128), rho0, degree=1, dt=0.05, petsc_options=ORDER3
    ).solve(1.5)
    a = sol.weights @ np.cos(n * theta(sol.points))
    assert abs(np.log(a[1] / a[0]) / (-(n**2) * 0.25) - 1) < 0.005
