"""The kinetic solver of causal attention, attnflow.fem.CausalSolver.

Exact checks: mass of every slice, slice 0 of the interaction form frozen, slice 0 of the
softmax form = the mean-field solver, causality (earlier slices bitwise unchanged), the
linearised growth = the discrete Volterra matrix exponential expm(t r_n W) (the exact
semi-discrete reference), first-order convergence in the number of slices, 1 = 2 = 3 ranks.
"""

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI
from petsc4py import PETSc
from scipy.integrate import quad
from scipy.linalg import expm
from scipy.special import iv

import attnflow as af
from attnflow.causal import CausalInteraction, alibi_weights, correlation_kernel, slice_weights
from attnflow.fem import CausalSolver, MeanFieldSolver, box_mesh, circle_mesh, sphere_mesh
from attnflow.fem.causal import KineticSolution, mixture_weights

BETA = 2.0
FORMS = ("interaction", "softmax")


def model(form: str, lam: float = 1.0, d: int = 2):
    if form == "interaction":
        return CausalInteraction(d, BETA, lam)
    return af.SelfAttention(d, BETA, causal=True, alibi=lam)


def rate(form: str, n: int) -> float:
    """Linear rate of Fourier mode n around the uniform density on S^1 (module docstring)."""
    r = n * n * iv(n, BETA)
    return r if form == "interaction" else r / (BETA * iv(0, BETA))


def bumpy(s: float, x: np.ndarray) -> np.ndarray:
    """A nonuniform initial density whose peak turns with the position s."""
    theta = np.arctan2(x[:, 1], x[:, 0])
    return np.exp(2.0 * np.cos(theta - 2.0 * np.pi * s))


# -- the slice coupling (numpy) -----------------------------------------------------------------
@pytest.mark.parametrize("lam", [0.0, 2.5])
def test_mixture_weights(lam):
    n = 9
    np.testing.assert_array_equal(mixture_weights(n, lam, "interaction"), slice_weights(n, lam))
    w = mixture_weights(n, lam, "softmax")
    i, l_ = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    raw = np.where(l_ <= i, np.exp(-lam / n * (i - l_)), 0.0)
    np.testing.assert_allclose(w, raw / raw.sum(axis=1, keepdims=True), rtol=1e-14, atol=0)
    # Without its diagonal (renormalised) it is the strict ALiBi weight matrix of n tokens.
    strict = np.tril(w, -1)[1:]
    np.testing.assert_allclose(
        strict / strict.sum(axis=1, keepdims=True), alibi_weights(n, lam)[1:], rtol=1e-13
    )
    assert mixture_weights(1, lam, "softmax").tolist() == [[1.0]]


# -- conservation and causality ---------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("degree", [0, 1])
def test_mass_of_every_slice_is_conserved_and_densities_stay_positive(form, degree):
    solver = CausalSolver(model(form), circle_mesh(48), bumpy, n_slices=6, degree=degree)
    t = 0.4 if form == "interaction" else 2.0  # the interaction field is beta e^beta faster
    sol = solver.solve(t, [0.0, t / 2, t])
    assert sol.status is af.Status.SUCCESS and sol.mass.shape == (3, 6)
    np.testing.assert_allclose(sol.mass[0], 1.0, rtol=1e-14)  # normalised slices
    assert np.max(np.abs(sol.mass - sol.mass[0])) <= 1e-13
    assert np.all(sol.min_density >= 0)
    # Beyond the linear regime: the late slices have moved.
    change = np.abs(sol.weights[-1, 1:] - sol.weights[0, 1:]).max(axis=1)
    assert change.max() > 0.1 * sol.weights[0].max()


def test_slice_zero_of_the_interaction_form_does_not_move():
    sol = CausalSolver(model("interaction"), circle_mesh(48), bumpy, n_slices=4).solve(
        0.3, [0.0, 0.3]
    )
    # Its right-hand side is exactly 0; the SSP stage combinations (1/3 u + 2/3 u, ...) round.
    np.testing.assert_allclose(sol.weights[-1, 0], sol.weights[0, 0], rtol=1e-13, atol=0)
    assert np.max(np.abs(sol.weights[-1, 1] - sol.weights[0, 1])) > 1e-2


@pytest.mark.parametrize("degree", [0, 1])
def test_slice_zero_of_the_softmax_form_is_the_mean_field_solution(degree):
    """Slice 0 attends to itself only: it is the SA mean-field equation (the same scheme)."""
    mesh = circle_mesh(48)
    f0 = af.VonMisesFisher([0.6, 0.8], 2.0)
    sol = CausalSolver(model("softmax"), mesh, f0, n_slices=3, degree=degree).solve(1.0)
    ref = MeanFieldSolver(af.SelfAttention(2, BETA), mesh, f0, degree=degree, normalize=True).solve(
        1.0, energy=False
    )
    np.testing.assert_allclose(sol.weights[:, 0], ref.weights, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("form", FORMS)
def test_a_slice_depends_only_on_the_slices_before_it(form):
    n_s, k = 8, 5

    def perturbed(s, x):
        return bumpy(s, x) * (1.0 + 0.5 * (s >= k / n_s) * (x[:, 0] > 0))

    mesh = circle_mesh(32)
    solver = CausalSolver(model(form), mesh, bumpy, n_slices=n_s)
    # The right-hand side of slice i < k does not see slices >= k: bitwise (same vectors).
    x = PETSc.Vec().createMPI((n_s * solver.n_dofs, PETSc.DETERMINE), comm=solver.comm)
    f = x.duplicate()
    x.array[:] = solver.initial_dofs.reshape(-1)
    solver.rhs(None, 0.0, x, f)
    before = f.array.reshape(n_s, -1).copy()
    x.array.reshape(n_s, -1)[k:] *= (1.0 + np.arange(n_s - k))[:, None]
    x.array.reshape(n_s, -1)[k:, ::3] += 0.1
    solver.rhs(None, 0.0, x, f)
    after = f.array.reshape(n_s, -1)
    np.testing.assert_array_equal(after[:k], before[:k])
    assert np.all(np.abs(after[k:] - before[k:]).max(axis=1) > 1e-3)
    for v in (x, f):
        v.destroy()
    # Whole solves: the earlier slices agree to round-off (BLAS sums may depend on the
    # alignment of the arrays of another solve), the later ones differ.
    a = solver.solve(0.3)
    b = CausalSolver(model(form), mesh, perturbed, n_slices=n_s).solve(0.3)
    np.testing.assert_allclose(a.weights[:, :k], b.weights[:, :k], rtol=1e-13, atol=0)
    assert np.all(np.max(np.abs(a.weights[-1, k:] - b.weights[-1, k:]), axis=1) > 1e-3)


# -- the linearised regime --------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_linear_growth_is_the_discrete_volterra_exponential(form):
    """Mode n of every slice grows like expm(t r_n W) g(0) (W the slice coupling): the
    semi-discrete solution, up to the O(h^2) error of the faceted mesh (relative errors
    measured 4.5e-3, 1.1e-3, 2.9e-4 at 64, 128, 256 cells: below h^2)."""
    n, eps, n_s, lam, cells = 2, 1e-4, 8, 1.0, 128
    law = af.PerturbedCircle(eps, n)
    sol = CausalSolver(model(form, lam), circle_mesh(cells), law, n_slices=n_s).solve(
        0.3, [0.0, 0.15, 0.3]
    )
    g0 = sol.fourier_modes(n, 0)
    h = 2 * np.pi / cells
    np.testing.assert_allclose(g0, eps / 2, rtol=h**2)  # the projection of eps cos(n theta)
    for k, t in enumerate(sol.t):
        ref = expm(t * rate(form, n) * mixture_weights(n_s, lam, form)) @ g0
        assert np.max(np.abs(sol.fourier_modes(n, k) / ref - 1)) < h**2
    assert np.all(np.abs(sol.fourier_modes(n + 1, -1)) < 1e-12)  # other modes stay zero


def test_slice_error_is_first_order():
    """f0 = (1 + eps s cos 2theta)/2pi, interaction form, lambda = 0: mode 2 of the slice at
    s = 1/2 at t = 1/r_2 against the closed-form Volterra resolvent R_2(t; 1/2, s) of
    attnflow.causal.theory, g(1/2, t) = g(1/2, 0) + int_0^{1/2} R(t; 1/2, s) g(s, 0) ds: the
    error halves with the slice width (the semi-discrete orders are 0.88 and 0.94 for 6, 12,
    24 slices, approaching 1; the mesh adds a relative 2e-3, O(h^2))."""
    n, eps, lam, cells = 2, 1e-4, 0.0, 96
    t = 1.0 / rate("interaction", n)
    kernel = partial(correlation_kernel, n, BETA, lam, t, target=0.5)
    ref = 0.5 + quad(lambda s: float(kernel(s)) * s, 0.0, 0.5, limit=200)[0]

    def f0(s, x):
        theta = np.arctan2(x[:, 1], x[:, 0])
        return 1.0 + eps * s * np.cos(n * theta)

    errs = []
    for n_s in (6, 12, 24):
        sol = CausalSolver(model("interaction", lam), circle_mesh(cells), f0, n_slices=n_s).solve(t)
        g = sol.fourier_modes(n, -1)[n_s // 2].real / (eps / 2)
        errs.append(abs(g - ref))
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 0.8) & (orders < 1.1)), (errs, orders)


# -- MPI ----------------------------------------------------------------------------------------
@pytest.mark.mpi
@pytest.mark.parametrize("degree", [0, 1])
def test_serial_equals_parallel(degree):
    comm = MPI.COMM_WORLD
    for form in FORMS:
        par = CausalSolver(model(form), circle_mesh(40, comm), bumpy, n_slices=4, degree=degree)
        ser = CausalSolver(
            model(form), circle_mesh(40, MPI.COMM_SELF), bumpy, n_slices=4, degree=degree
        )
        a, b = par.solve(0.3, [0.0, 0.3]), ser.solve(0.3, [0.0, 0.3])
        np.testing.assert_allclose(a.weights, b.weights, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(a.dofs, b.dofs, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(a.mass, b.mass, rtol=1e-13)
        assert a.stats["ranks"] == comm.size and a.dofs.shape == (4, 40, degree + 1)


# -- S^2 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_sphere_runs_and_conserves_every_slice(form):
    law = af.VonMisesFisher([0.0, 0.6, 0.8], 2.0)
    solver = CausalSolver(model(form, d=3), sphere_mesh(1), law, n_slices=3)
    sol = solver.solve(0.2, [0.0, 0.2])
    assert sol.weights.shape == (2, 3, sol.points.shape[0]) and sol.points.shape[1] == 3
    assert np.max(np.abs(sol.mass - sol.mass[0])) <= 1e-13 and np.all(sol.min_density >= 0)
    moved = np.max(np.abs(sol.weights[-1] - sol.weights[0]), axis=1)
    assert np.all(moved[1:] > 1e-4)
    if form == "interaction":  # slice 0 frozen (to the round-off of the stage combinations)
        assert moved[0] <= 1e-13 * sol.weights[0, 0].max()
    else:
        assert moved[0] > 1e-4


# -- the solution record and the files ------------------------------------------------------
def test_solution_views_and_round_trip(tmp_path_factory):
    comm = MPI.COMM_WORLD
    sol = CausalSolver(model("interaction"), circle_mesh(24), bumpy, n_slices=3).solve(
        0.1, [0.0, 0.1]
    )
    np.testing.assert_array_equal(sol.s, [0.0, 1 / 3, 2 / 3])
    one = sol.slice(2)
    assert isinstance(one, af.FieldSolution)
    np.testing.assert_array_equal(one.weights, sol.weights[:, 2])
    np.testing.assert_array_equal(sol.cloud(-1, 1).weights, np.maximum(sol.weights[-1, 1], 0))
    np.testing.assert_allclose(one.cloud(0).mass, 1.0, rtol=1e-13)
    out = Path(comm.bcast(str(tmp_path_factory.mktemp("kin")) if comm.rank == 0 else None))
    if comm.rank == 0:
        back = KineticSolution.load(sol.save(out / "kin.npz"))
        for name in ("t", "s", "mass", "weights", "points", "dofs"):
            np.testing.assert_array_equal(getattr(back, name), getattr(sol, name))
        assert back.stats["n_slices"] == 3 and back.status is sol.status
        with pytest.raises(ValueError, match="not a kinetic solution"):
            KineticSolution.load(one.save(out / "one.npz"))
    sphere = CausalSolver(
        model("interaction", d=3), sphere_mesh(0), af.UniformSphere(3), n_slices=2
    )
    with pytest.raises(ValueError, match="S\\^1"):
        sphere.solve(0.0).fourier_modes(1)


def test_output_files_are_written_only_where_asked(tmp_path_factory, monkeypatch):
    comm = MPI.COMM_WORLD
    out = Path(comm.bcast(str(tmp_path_factory.mktemp("out")) if comm.rank == 0 else None))
    monkeypatch.chdir(out)
    solver = CausalSolver(model("softmax"), circle_mesh(24), bumpy, n_slices=3, degree=1)
    solver.solve(0.1)
    comm.Barrier()
    empty = list(out.iterdir()) == []
    comm.Barrier()  # every rank has looked before rank 0 creates the output directory
    assert empty
    solver.solve(0.1, [0.0, 0.05, 0.1], output_dir=out / "run")
    comm.Barrier()
    names = {p.name for p in (out / "run").iterdir()}
    assert {"density.xdmf", "density.h5", "kinetic.pvd"} <= names
    text = (out / "run" / "density.xdmf").read_text()
    assert all(f"slice_{i:03d}" in text for i in range(3))
    assert len(list((out / "run" / "kinetic").glob("*.vtp"))) == 3


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: CausalSolver(af.SelfAttention(2), circle_mesh(8), bumpy, n_slices=2), "causal"),
        (lambda: CausalSolver("model", circle_mesh(8), bumpy, n_slices=2), "model must be"),
        (lambda: CausalSolver(model("softmax"), circle_mesh(8), bumpy, n_slices=0), "n_slices"),
        (lambda: CausalSolver(model("softmax"), circle_mesh(8), bumpy, n_slices=2.5), "n_slices"),
        (
            lambda: CausalSolver(model("softmax"), circle_mesh(8), bumpy, n_slices=2, degree=2),
            "degree",
        ),
        (lambda: CausalSolver(model("softmax"), circle_mesh(8), bumpy, n_slices=2, cfl=2), "cfl"),
        (
            lambda: CausalSolver(model("interaction", d=3), circle_mesh(8), bumpy, n_slices=2),
            "model.d",
        ),
        (
            lambda: CausalSolver(
                af.SelfAttention(2, causal=True, sphere=False),
                box_mesh(2, 1.0, 2),
                bumpy,
                n_slices=2,
            ),
            "sphere",
        ),
        (
            lambda: CausalSolver(
                model("softmax"), circle_mesh(8), lambda x: -np.ones(len(x)), n_slices=2
            ),
            ">= 0",
        ),
        (
            lambda: CausalSolver(
                model("softmax"), circle_mesh(8), lambda s, x: np.zeros(len(x)), n_slices=2
            ),
            "positive mass",
        ),
        (
            lambda: CausalSolver(model("softmax"), circle_mesh(8), lambda a, b, c: a, n_slices=2),
            "f0 must take",
        ),
        (
            lambda: CausalSolver(model("softmax"), circle_mesh(8), af.UniformSphere(3), n_slices=2),
            "f0 must be a law on S\\^1",
        ),
        (
            lambda: CausalSolver(model("softmax"), circle_mesh(8), bumpy, n_slices=2, kernel="x"),
            "kernel",
        ),
        (
            lambda: CausalSolver(model("softmax"), circle_mesh(8), bumpy, n_slices=2).solve(
                1.0, [0.5, 0.2]
            ),
            "save_times",
        ),
        (lambda: mixture_weights(4, 0.0, "causal"), "form must be one of"),
        (lambda: mixture_weights(4, -1.0, "softmax"), "lam"),
    ],
)
def test_bad_input_is_refused_in_one_line(make, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        make()
    assert "\n" not in str(info.value)
