import itertools
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI
from scipy.integrate import solve_ivp
from scipy.special import ive

import attnflow as af
from attnflow.fem import (
    DenseKernel,
    MeanFieldSolver,
    RecomputedKernel,
    SparseKernel,
    box_mesh,
    circle_mesh,
    sphere_mesh,
)

CASES = {
    "circle": lambda comm: (
        af.SelfAttention(2, beta=9.0),
        circle_mesh(64, comm),
        af.PerturbedCircle(0.3, 3),
    ),
    "sphere": lambda comm: (
        af.SelfAttention(3, beta=4.0),
        sphere_mesh(2, comm),
        af.VonMisesFisher([0.0, 0.6, 0.8], 1.0),
    ),
    "box": lambda comm: (
        af.SelfAttention(2, beta=1.0, K=-np.eye(2), sphere=False),
        box_mesh(2, 3.0, 12, comm),
        af.Gaussian([0.5, 0.0], [[0.5, 0.1], [0.1, 0.3]]),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    ("kernel", "degree"), [(DenseKernel(), 0), (RecomputedKernel(), 0), (DenseKernel(), 1)]
)
def test_mass_is_conserved_and_density_stays_positive(case, kernel, degree):
    model, mesh, law = CASES[case](MPI.COMM_WORLD)
    solver = MeanFieldSolver(model, mesh, law, kernel=kernel, degree=degree)
    sol = solver.solve(2.0, [0.0, 1.0, 2.0])
    drift = np.abs(sol.mass + sol.outflow - sol.mass[0]) / sol.mass[0]
    assert np.all(drift <= 1e-12)
    if case != "box":
        assert np.all(np.abs(sol.mass - sol.mass[0]) <= 1e-12 * sol.mass[0])
    else:  # the mean drifts outward (m' = m - Sigma m): a little mass leaves the box
        assert 0 < sol.outflow[-1] < 1e-2 and np.all(np.diff(sol.outflow) >= -1e-15)
    assert np.all(sol.min_density >= 0)
    assert sol.weights.shape == (3, sol.points.shape[0]) and np.all(sol.weights >= 0)


@pytest.mark.parametrize("case", ["circle", "sphere"])
def test_energy_never_decreases_for_identity_weights(case):
    model, mesh, law = CASES[case](MPI.COMM_WORLD)
    sol = MeanFieldSolver(model, mesh, law).solve(3.0, np.linspace(0, 3, 7))
    assert np.all(np.diff(sol.energy) >= -1e-12) and sol.energy[-1] > sol.energy[0]


def test_dense_and_recomputed_kernels_agree():
    model, mesh, law = CASES["sphere"](MPI.COMM_WORLD)
    a = MeanFieldSolver(model, mesh, law, kernel=DenseKernel()).solve(1.0)
    b = MeanFieldSolver(model, mesh, law, kernel=RecomputedKernel()).solve(1.0)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-11, atol=1e-15)


def test_uniform_density_is_stationary_on_the_circle():
    sol = MeanFieldSolver(
        af.SelfAttention(2, beta=9.0), circle_mesh(50), af.UniformSphere(2)
    ).solve(5.0)
    np.testing.assert_allclose(sol.weights[-1], sol.weights[0], rtol=1e-12)


def test_uniform_density_on_the_sphere_is_stationary_up_to_the_mesh_error():
    # The icosphere is not exactly symmetric: the velocity of the uniform density is O(h^2)
    # and so is the change; it must shrink under refinement.
    changes = []
    for level in (2, 3, 4):
        sol = MeanFieldSolver(
            af.SelfAttention(3, beta=4.0),
            sphere_mesh(level),
            af.UniformSphere(3),
            kernel=RecomputedKernel(),
        ).solve(1.0)
        changes.append(np.max(np.abs(sol.weights[-1] / sol.weights[0] - 1)))
    assert changes[2] < 1e-3 and changes[0] > changes[1] > changes[2], changes


def growth_rate(beta, n, cells, degree=0):
    """Growth rate of mode n from a 1e-6 perturbation of the uniform density (linear regime)."""
    lam = n**2 * ive(n, beta) / (beta * ive(0, beta))
    T = min(1.0 / lam, 2.0)
    sol = MeanFieldSolver(
        af.SelfAttention(2, beta=beta),
        circle_mesh(cells, MPI.COMM_SELF),
        af.PerturbedCircle(1e-6, n),
        degree=degree,
    ).solve(T)
    a = sol.weights @ np.cos(n * np.arctan2(sol.points[:, 1], sol.points[:, 0]))
    return np.log(a[1] / a[0]) / T, lam


@pytest.mark.parametrize("beta", [1.0, 4.0, 9.0])
def test_circle_linear_growth_rates_dg0(beta):
    """lambda_n = n^2 I_n(beta) / (beta I_0(beta)), modes 1..6, within 3% at 100 cells."""
    for n in range(1, 7):
        rate, lam = growth_rate(beta, n, 100)
        assert abs(rate / lam - 1) < 0.03, (beta, n, rate, lam)


@pytest.mark.parametrize("beta", [1.0, 4.0, 9.0])
def test_circle_linear_growth_rates_dg1(beta):
    """Modes 1..6 within 1% at 200 cells (the polygonal geometry dominates the error)."""
    for n in range(1, 7):
        rate, lam = growth_rate(beta, n, 200, degree=1)
        assert abs(rate / lam - 1) < 0.01, (beta, n, rate, lam)


def test_gaussian_in_the_plane_matches_the_moment_equations():
    """SA with K = -Q: a Gaussian stays Gaussian, m' = V(m + S A m), S' = V S A S + S A^T S V^T."""
    Q, K, V = np.eye(2), -np.eye(2), np.eye(2)
    A = 1.0 * K.T @ Q
    m0, S0 = np.array([0.5, 0.0]), np.array([[0.5, 0.1], [0.1, 0.3]])

    def rhs(t, y):
        m, S = y[:2], y[2:].reshape(2, 2)
        return np.concatenate([V @ (m + S @ A @ m), (V @ S @ A @ S + S @ A.T @ S @ V.T).ravel()])

    T = 1.0
    ex = solve_ivp(rhs, [0, T], np.concatenate([m0, S0.ravel()]), rtol=1e-12, atol=1e-12).y[:, -1]
    m_ex, S_ex = ex[:2], ex[2:].reshape(2, 2)
    model = af.SelfAttention(2, beta=1.0, Q=Q, K=K, V=V, sphere=False)
    l1 = []
    for n in (16, 24):
        sol = MeanFieldSolver(model, box_mesh(2, 4.0, n), af.Gaussian(m0, S0), degree=1).solve(T)
        w, p = sol.weights[-1], sol.points
        mean = w @ p / w.sum()
        cov = ((p - mean).T * w) @ (p - mean) / w.sum()
        exact = af.Gaussian(m_ex, S_ex).pdf(p)
        l1.append(np.sum(np.abs(w - sol.point_weights * exact)))
    assert np.max(np.abs(mean - m_ex)) < 0.02 * np.max(np.abs(m_ex))
    assert np.max(np.abs(cov - S_ex)) < 0.02 * np.max(np.abs(S_ex))
    assert l1[1] < 0.6 * l1[0], l1


def test_circle_growth_rate_error_shrinks_at_second_order():
    errs = [abs(growth_rate(9.0, 6, c)[0] / growth_rate(9.0, 6, c)[1] - 1) for c in (50, 100, 200)]
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(orders > 1.8), orders


@pytest.mark.mpi
def test_serial_equals_parallel():
    comm = MPI.COMM_WORLD
    for case, degree in [(c, d) for c in sorted(CASES) for d in (0, 1)]:
        par = MeanFieldSolver(*CASES[case](comm), degree=degree).solve(1.0, [0.0, 1.0])
        ser = MeanFieldSolver(*CASES[case](MPI.COMM_SELF), degree=degree).solve(1.0, [0.0, 1.0])
        np.testing.assert_allclose(par.weights, ser.weights, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(par.energy, ser.energy, rtol=1e-12)


def test_output_files_are_written_only_where_asked(tmp_path_factory, monkeypatch):
    comm = MPI.COMM_WORLD
    out = Path(comm.bcast(str(tmp_path_factory.mktemp("out")) if comm.rank == 0 else None))
    monkeypatch.chdir(out)
    model, mesh, law = CASES["circle"](comm)
    solver = MeanFieldSolver(model, mesh, law)
    solver.solve(0.5)
    comm.Barrier()
    listed = list(out.iterdir())
    comm.Barrier()  # every rank lists before rank 0 creates the output directory below
    assert listed == []  # nothing in the working directory by default
    solver.solve(0.5, [0.0, 0.25, 0.5], output_dir=out / "run")
    comm.Barrier()
    assert {"density.xdmf", "density.h5"} <= {p.name for p in (out / "run").iterdir()}


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: MeanFieldSolver(af.SelfAttention(3), circle_mesh(8), af.UniformSphere(2)),
            "model.d must equal",
        ),
        (
            lambda: MeanFieldSolver(
                af.SelfAttention(2, sphere=False), circle_mesh(8), af.UniformSphere(2)
            ),
            "model.sphere must match",
        ),
        (
            lambda: MeanFieldSolver(
                af.SelfAttention(2), circle_mesh(8), lambda x: -np.ones(len(x))
            ),
            "rho0 must be >= 0",
        ),
        (
            lambda: MeanFieldSolver(
                af.SelfAttention(2), circle_mesh(8), lambda x: np.zeros(len(x))
            ),
            "positive mass",
        ),
        (
            lambda: MeanFieldSolver(
                af.SelfAttention(2), circle_mesh(8), af.UniformSphere(2), degree=2
            ),
            "degree must be 0 or 1",
        ),
        (
            lambda: MeanFieldSolver(
                af.SelfAttention(2), circle_mesh(8), af.UniformSphere(2), cfl=2
            ),
            "cfl must be",
        ),
        (
            lambda: MeanFieldSolver(
                af.SelfAttention(2), circle_mesh(8), af.UniformSphere(2), kernel="dens"
            ),
            "kernel must be",
        ),
        (
            lambda: MeanFieldSolver(af.SelfAttention(2), circle_mesh(8), af.UniformSphere(2)).solve(
                1.0, [0.5, 0.2]
            ),
            "save_times must be increasing",
        ),
    ],
)
def test_bad_input_is_rejected(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_sparse_kernel_matches_dense_and_drops_entries_as_beta_grows():
    law = af.Mixture(
        [af.VonMisesFisher([0.0, 0.0, 1.0], 3.0), af.VonMisesFisher([1.0, 0.0, 0.0], 3.0)],
        [0.5, 0.5],
    )
    nnz = []
    for beta in (10.0, 100.0, 1000.0):
        model = af.SelfAttention(3, beta=beta)
        dense = MeanFieldSolver(model, sphere_mesh(2), law, kernel=DenseKernel())
        sparse = MeanFieldSolver(model, sphere_mesh(2), law, kernel=SparseKernel(1e-12))
        a, b = dense.solve(0.3), sparse.solve(0.3)
        np.testing.assert_allclose(b.weights, a.weights, rtol=1e-9, atol=1e-14)
        nnz.append(sparse.velocity.matrix_entries)
        assert nnz[-1] <= dense.velocity.matrix_entries
    assert nnz[0] > nnz[1] > nnz[2]


@pytest.mark.parametrize("kernel", [DenseKernel(), SparseKernel(1e-12)])
def test_denominator_underflow_is_handled(kernel):
    """beta = 1e4, all mass near the north pole: at the south the fixed-shift denominator
    underflows to 0; the velocity there is 0 by definition, everything stays finite."""
    model = af.SelfAttention(3, beta=1e4)
    cap = lambda x: (x[:, 2] > 0.5).astype(float)  # noqa: E731  (no mass in the south)
    solver = MeanFieldSolver(model, sphere_mesh(3), cap, kernel=kernel)
    _, den, _ = solver.velocity.sums(solver.rho)
    south = solver.velocity.targets[:, 2] < -0.5
    assert np.all(den[south] == 0) and np.all(np.isfinite(den))
    solver.velocity(solver.rho, solver.u)
    u = solver.u.x.array.reshape(-1, 3)[: solver.velocity.n_nodes]
    assert np.all(np.isfinite(u)) and np.all(u[south] == 0)
    sol = solver.solve(0.2, [0.0, 0.1, 0.2])
    assert np.all(np.abs(sol.mass / sol.mass[0] - 1) < 1e-12) and np.all(sol.min_density >= 0)
    assert np.all(np.isfinite(sol.weights)) and np.all(np.isfinite(sol.energy))


def test_every_save_interval_uses_the_cfl_step():
    solver = MeanFieldSolver(
        af.SelfAttention(2, beta=9.0), circle_mesh(50), af.PerturbedCircle(0.05, 4)
    )
    ts = np.linspace(0.0, 2.0, 9)
    sol = solver.solve(2.0, ts)
    expected = sum(int(np.ceil((b - a) / solver.dt - 1e-9)) for a, b in itertools.pairwise(ts))
    assert sol.n_steps == expected


def test_deposit_of_a_fem_cloud_on_its_box_mesh_is_its_cell_masses():
    from attnflow.fem import deposit

    comm = MPI.COMM_WORLD
    model, mesh, law = CASES["box"](comm)
    sol = MeanFieldSolver(model, mesh, law).solve(0.2)
    masses, outside = deposit(mesh, sol.points, sol.weights[-1])
    m = sol.cell_masses()
    np.testing.assert_allclose(masses, m / m.sum(), atol=1e-14)
    assert outside == 0.0
    far = np.array([[10.0, 0.0], [0.1, 0.1]])
    masses, outside = deposit(mesh, far)
    assert outside == 0.5 and masses.sum() == pytest.approx(0.5)


@pytest.mark.parametrize("beta", [10.0, 1000.0, 1e4])
def test_pruned_sparse_assembly_gives_the_all_pairs_matrix(beta):
    from attnflow.kernels import kernel_matrix_sparse

    solver = MeanFieldSolver(
        af.SelfAttention(3, beta=beta),
        sphere_mesh(3, MPI.COMM_SELF),
        af.VonMisesFisher([0.0, 0.0, 1.0], 1.0),
        kernel=SparseKernel(1e-12),
    )
    (vel,) = solver.velocity.operators.values()  # one attention term: one operator
    starts = np.arange(vel.src_dofs.size + 1) * vel.n_q
    args = (vel.a, vel.b, vel.v, vel.src_w, starts, 1e-12)
    full = kernel_matrix_sparse(*args, prune=False)
    fast = kernel_matrix_sparse(*args)
    for f, g in zip(full, fast, strict=True):
        np.testing.assert_array_equal(f, g)
    kept = fast[1][-1] / (vel.n_nodes * vel.src_dofs.size)
    assert (kept > 0.9) if beta == 10.0 else (kept < 0.05)
