"""Issue 11, library side: degenerate inputs refused in one line before any work (item 6), USA
overflow refused at set-up or reported in one readable line, status never SUCCESS with a
non-finite energy (item 7), and the finite element solver's a priori checks (item 5)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from conftest import serial_env

import attnflow as af
from attnflow.meshdata import MeshError, check_mesh, circle_arrays, icosphere, read_mesh
from attnflow.resources import ResourceError

RNG_SEED = 7


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# -- complex input -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: af.SelfAttention(2, Q=np.eye(2) * (1 + 1j)), "Q"),
        (lambda: af.SelfAttention(2, V=np.eye(2).astype(complex)), "V"),
        (lambda: af.SelfAttention(2, beta=1 + 0j), "beta"),
        (lambda: af.SelfAttention(2, beta=np.complex128(2)), "beta"),
        (lambda: af.VonMisesFisher([1j, 0.0], 1.0), "mu"),
        (lambda: af.VonMisesFisher([1.0, 0.0], 1 + 1j), "kappa"),
        (lambda: af.Gaussian([0j, 0], np.eye(2)), "mean"),
        (lambda: af.Gaussian([0, 0], np.eye(2) * (1 + 0j)), "cov"),
        (lambda: af.PerturbedCircle(0.5 + 0.1j, 2), "eps"),
        (lambda: af.UniformBall(2, radius=1 + 0j), "radius"),
        (lambda: af.Box([0j], [1.0]), "lo"),
        (lambda: af.Mixture([af.UniformSphere(2)], [1 + 0j]), "probabilities"),
        (lambda: af.DensityLaw(lambda x: np.ones(len(x)), 2, bound=1j), "bound"),
    ],
)
def test_complex_parameters_are_refused_in_one_line(make, name):
    with pytest.raises((ValueError, TypeError)) as err:
        make()
    msg = _one_line(err)
    assert msg.startswith(name) and ("real" in msg or "complex" in msg)


def test_complex_positions_and_weights_are_refused():
    x0 = af.UniformSphere(2).sample(20, RNG_SEED)
    model = af.SelfAttention(2)
    with pytest.raises(ValueError) as err:
        af.simulate(model, x0.astype(complex), 0.1, dt=0.1)
    assert _one_line(err) == "x0 must be real, got complex values"
    with pytest.raises(ValueError, match=r"^weights must be real"):
        af.simulate(model, x0, 0.1, dt=0.1, weights=np.full(20, 0.05 + 0j))
    with pytest.raises(ValueError, match=r"^sources must be real"):
        model.log_energy(x0 + 0j)
    with pytest.raises(ValueError, match=r"^density values must be real"):
        af.DensityLaw(lambda x: np.ones(len(x)) + 0j, 2).sample(5, RNG_SEED)


# -- seeds, t_final = 0 ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_ensemble_names_a_bad_seed(seed):
    with pytest.raises(ValueError) as err:
        af.ensemble(af.SelfAttention(2), af.UniformSphere(2), 10, 2, 0.1, dt=0.1, seed=seed)
    assert _one_line(err).startswith("seed must be an int >= 0")


def test_t_final_zero_records_the_initial_state_only():
    x0 = af.UniformSphere(2).sample(30, RNG_SEED)
    sol = af.simulate(af.SelfAttention(2), x0, 0.0, dt=0.1)
    assert sol.status is af.Status.SUCCESS and sol.n_steps == 0
    np.testing.assert_array_equal(sol.t, [0.0])
    np.testing.assert_array_equal(sol.x[0], x0)
    ens = af.ensemble(af.SelfAttention(2), af.UniformSphere(2), 10, 2, 0.0, dt=0.1, seed=0)
    assert ens.x.shape == (2, 1, 10, 2) and ens.n_steps == 0


# -- meshes ------------------------------------------------------------------------------------
def _write(path, points, cells):
    np.savez(path, points=points, cells=cells)
    return path


def test_a_mesh_file_with_coincident_vertices_is_refused_naming_the_file(tmp_path):
    p, c = icosphere(1)
    dup = np.vstack([p, p[3:4]])
    c2 = c.copy()
    row = c2[np.flatnonzero((c == 3).any(axis=1))[0]]
    row[row == 3] = len(p)  # one cell uses the copy of vertex 3
    path = _write(tmp_path / "dup.npz", dup, c2)
    with pytest.raises(MeshError) as err:
        read_mesh(path)
    msg = _one_line(err)
    assert msg.startswith(str(path)) and "vertices 3 and 42 coincide" in msg


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("repeated vertex", "zero-area triangle"),
        ("flat triangle", "zero-area triangle"),
        ("zero-length segment", "zero-length segment"),
        ("flat tetrahedron", "zero-volume tetrahedron"),
        ("one cell flipped", "not consistently oriented: 1 of 80"),
        ("off the sphere", "on the unit sphere"),
        ("circle flipped", "not consistently oriented: 3 of 8"),
    ],
)
def test_degenerate_meshes_are_refused(tmp_path, case, match):
    p, c = icosphere(1)
    pc, cc = circle_arrays(8)
    if case == "repeated vertex":
        c = c.copy()
        c[4, 1] = c[4, 0]
    elif case == "flat triangle":
        p, c = np.array([[0.0, 0], [1, 0], [2, 0], [0, 1]]), np.array([[0, 1, 2], [0, 1, 3]])
    elif case == "zero-length segment":
        p, c = np.array([[0.0], [1.0], [2.0]]), np.array([[0, 1], [1, 1], [1, 2]])
    elif case == "flat tetrahedron":
        p = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
        c = np.array([[0, 1, 2, 3], [0, 1, 2, 4]])
    elif case == "one cell flipped":
        c = c.copy()
        c[10] = c[10, ::-1]
    elif case == "off the sphere":
        p = p * 1.001
    else:
        p, c = pc, cc.copy()
        c[[1, 4, 6]] = c[[1, 4, 6], ::-1]
    path = _write(tmp_path / "bad.npz", p, c)
    with pytest.raises(MeshError, match=match) as err:
        read_mesh(path)
    assert _one_line(err).startswith(str(path))


def test_valid_meshes_pass_and_inward_spheres_are_consistent():
    for level in (0, 3):
        check_mesh(*icosphere(level))
    p, c = icosphere(2)
    check_mesh(p, c[:, ::-1])  # every normal inward: consistent, accepted
    check_mesh(*circle_arrays(5))
    check_mesh(np.array([[0.0], [0.5], [1.0]]), np.array([[0, 1], [1, 2]]))


# -- USA overflow --------------------------------------------------------------------------------
def test_usa_kernel_bound_and_the_set_up_check():
    m = af.SelfAttention(3, beta=10.0, normalized=False, Q=2 * np.eye(3))
    assert m.log_kernel_bound(1.5) == pytest.approx(10 * 2.25 * 2)
    r = af.SelfAttention(3, beta=10.0, normalized=False, rescale_usa=True)
    assert r.log_kernel_bound(1.0) == pytest.approx(0.0)
    assert m.check_finite_field(1.0, 1.0) == pytest.approx(20.0)
    big = af.SelfAttention(2, beta=800.0, normalized=False)
    with pytest.raises(ValueError) as err:
        big.check_finite_field(1.0)
    msg = _one_line(err)
    assert "beta=800" in msg and "rescale_usa=True" in msg and "e^{8.0e+02}" in msg
    af.SelfAttention(2, beta=800.0, normalized=False, rescale_usa=True).check_finite_field(1.0)
    af.SelfAttention(2, beta=1e6).check_finite_field(1.0)  # SA: the field is bounded
    with pytest.raises(ValueError, match="scores"):
        af.SelfAttention(2, beta=1e308).check_finite_field(2.0)


def test_usa_that_must_overflow_is_refused_before_any_step():
    x0 = af.UniformSphere(2).sample(50, RNG_SEED)
    model = af.SelfAttention(2, beta=710.0, normalized=False)
    steps = []
    with pytest.raises(ValueError, match=r"beta=710.*rescale_usa=True") as err:
        af.simulate(model, x0, 1.0, dt=0.1, progress=lambda t, k: steps.append(k))
    _one_line(err)
    assert steps == []
    with pytest.raises(ValueError, match="beta=710"):
        af.ensemble(model, af.UniformSphere(2), 20, 2, 1.0, dt=0.1, seed=0)
    # In R^d the radius of the drawn tokens decides: a small cloud is fine, a large one is not.
    rd = af.SelfAttention(2, beta=100.0, normalized=False, sphere=False)
    af.ensemble(rd, af.UniformBall(2, radius=0.5), 20, 2, 0.0, dt=0.01, seed=0)
    with pytest.raises(ValueError, match="beta=100"):
        af.ensemble(rd, af.UniformBall(2, radius=3.0), 20, 2, 0.0, dt=0.01, seed=0)


def test_usa_overflow_during_a_run_is_one_readable_line():
    """beta = 700 passes the bound (e^700 < e^709) but dt = 0.1 throws the tokens off: the
    run raises one line naming beta and rescale_usa, not a 40-digit exponent nor a status."""
    x0 = af.UniformSphere(2).sample(50, RNG_SEED)
    with pytest.raises(FloatingPointError) as err:
        af.simulate(af.SelfAttention(2, beta=700.0, normalized=False), x0, 1.0, dt=0.1)
    msg = _one_line(err)
    assert "beta=700" in msg and "rescale_usa=True" in msg and len(msg) < 300
    # The field itself: an exponent beyond float64 is printed in scientific notation.
    m = af.SelfAttention(2, beta=5.0, normalized=False)
    x = np.array([[1.0, 0.0]])
    with pytest.raises(FloatingPointError) as err:
        m.field(x, np.array([1.2e4]), np.array([1.0]), np.array([[1.0, 0.0]]))
    assert "e^{1.2e+04}" in _one_line(err)
    # and the rescaled model runs at the same beta.
    sol = af.simulate(
        af.SelfAttention(2, beta=700.0, normalized=False, rescale_usa=True), x0, 0.5, dt=0.1
    )
    assert sol.status is af.Status.SUCCESS and np.all(np.isfinite(sol.x))


def test_status_overflow_is_a_status():
    assert af.Status("overflow") is af.Status.OVERFLOW
    assert af.Status.OVERFLOW is not af.Status.SUCCESS


# -- finite elements -----------------------------------------------------------------------------
def _fem():
    return pytest.importorskip("attnflow.fem")


def test_fem_refuses_a_law_of_the_wrong_space():
    fem = _fem()
    mesh = fem.circle_mesh(16)
    model = af.SelfAttention(2)
    for law, got in [(af.UniformSphere(3), "S^2 in R^3"), (af.UniformBall(2), "R^2")]:
        with pytest.raises(ValueError) as err:
            fem.MeanFieldSolver(model, mesh, law)
        msg = _one_line(err)
        assert msg.startswith("rho0") and "S^1 in R^2" in msg and got in msg
    with pytest.raises(ValueError, match=r"^rho0 values must be real"):
        fem.MeanFieldSolver(model, mesh, lambda x: np.ones(len(x)) + 0j)


def test_fem_solve_zero_records_the_initial_density():
    fem = _fem()
    solver = fem.MeanFieldSolver(af.SelfAttention(2), fem.circle_mesh(16), af.UniformSphere(2))
    sol = solver.solve(0.0)
    np.testing.assert_array_equal(sol.t, [0.0])
    assert sol.status is af.Status.SUCCESS and sol.n_steps == 0
    assert sol.weights.shape == (1, sol.points.shape[0])


def test_fem_usa_is_refused_at_set_up_or_by_its_cfl_step_count():
    fem = _fem()
    mesh = fem.circle_mesh(16)
    with pytest.raises(ValueError, match=r"beta=800.*rescale_usa"):
        fem.MeanFieldSolver(
            af.SelfAttention(2, beta=800, normalized=False), mesh, af.UniformSphere(2)
        )
    solver = fem.MeanFieldSolver(
        af.SelfAttention(2, beta=100, normalized=False), mesh, af.UniformSphere(2)
    )
    start = time.perf_counter()
    with pytest.raises(ResourceError) as err:  # CFL step ~ e^-100: ~1e44 steps
        solver.solve(1.0)
    assert time.perf_counter() - start < 0.5
    assert "CFL step" in _one_line(err) and "ATTNFLOW_MAX_STEPS" in str(err.value)


def test_fem_saves_that_cannot_fit_are_refused(monkeypatch):
    fem = _fem()
    solver = fem.MeanFieldSolver(af.SelfAttention(2), fem.circle_mesh(16), af.UniformSphere(2))
    monkeypatch.setenv("ATTNFLOW_MEMORY_BUDGET", "4K")
    with pytest.raises(ResourceError, match="1000 saved densities of 48 points"):
        solver.solve(1.0, save_times=np.linspace(0, 1, 1000))


def test_fem_dense_kernel_over_budget_is_refused_before_assembly(monkeypatch):
    """The refusal comes before the kernel matrix is assembled (the assembly function is
    replaced by one that fails) and in a small fraction of the assembly's time."""
    fem = _fem()
    import attnflow.fem.kernel_operator as ko

    mesh = fem.sphere_mesh(3)
    model = af.SelfAttention(3, beta=5.0)
    law = af.UniformSphere(3)
    fem.MeanFieldSolver(model, fem.sphere_mesh(0), law, degree=1, kernel=fem.DenseKernel())
    start = time.perf_counter()
    fem.MeanFieldSolver(model, mesh, law, degree=1, kernel=fem.DenseKernel())
    assembly = time.perf_counter() - start

    def no_assembly(*args, **kwargs):
        raise AssertionError("the kernel matrix was assembled")

    monkeypatch.setattr(ko, "kernel_matrix", no_assembly)
    monkeypatch.setenv("ATTNFLOW_MEMORY_BUDGET", "16M")
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        fem.MeanFieldSolver(model, mesh, law, degree=1, kernel=fem.DenseKernel())
    refused = time.perf_counter() - start
    msg = _one_line(err)
    assert "dense" in msg and "16.0 MiB" in msg
    assert refused < 0.25 * assembly and refused < 1.0, (refused, assembly)


def test_fem_dense_memory_estimate_against_the_measured_peak(tmp_path):
    """resources.fem_memory against the growth of the peak RSS (VmHWM) of a dense DG1 run on
    S^2 (a process of its own; the forms are compiled before the baseline)."""
    _fem()
    import subprocess
    import sys

    script = tmp_path / "peak.py"
    script.write_text(
        "import numpy as np\n"
        "import attnflow as af, attnflow.fem as fem\n"
        "from attnflow import resources as R\n"
        "def hwm():  # VmHWM, not ru_maxrss: that one keeps the forking parent's peak\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1]) * 1024\n"
        "m, law = af.SelfAttention(3, beta=5.0), af.UniformSphere(3)\n"
        "fem.MeanFieldSolver(m, fem.sphere_mesh(0), law, degree=1,"
        " kernel=fem.DenseKernel()).solve(0.01)\n"
        "mesh = fem.sphere_mesh(3)\n"
        "base = hwm()\n"
        "s = fem.MeanFieldSolver(m, mesh, law, degree=1, kernel=fem.DenseKernel())\n"
        "s.solve(0.02, save_times=np.linspace(0, 0.02, 5))\n"
        "peak = hwm()\n"
        "est = R.fem_memory(R.mesh_counts('sphere', level=3), degree=1, n_save=5)\n"
        "print(peak - base, est)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env=serial_env(),
    )
    grown, est = (int(v) for v in out.stdout.split()[-2:])
    assert 0.9 * grown <= est <= 1.5 * grown, (grown, est)


def test_fem_energy_that_is_not_finite_never_comes_with_success(monkeypatch):
    fem = _fem()
    solver = fem.MeanFieldSolver(af.SelfAttention(2), fem.circle_mesh(16), af.UniformSphere(2))
    assert solver.solve(0.1).status is af.Status.SUCCESS
    monkeypatch.setattr(af.SelfAttention, "log_energy", lambda self, *a, **k: math.nan)
    sol = solver.solve(0.1)
    assert np.all(np.isnan(sol.energy)) and sol.status is af.Status.OVERFLOW
    assert solver.solve(0.1, energy=False).status is af.Status.SUCCESS  # NaN = not computed
