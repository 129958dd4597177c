"""The finite element solver runs any dynamics: sums of heads, piecewise-in-time dynamics; and
its hygiene (solve twice, PETSc options in and out)."""

import numpy as np
import pytest
from mpi4py import MPI
from petsc4py import PETSc

import attnflow as af
from attnflow.compare import compare
from attnflow.fem import MeanFieldSolver, circle_mesh

pytestmark = pytest.mark.usefixtures("one_numba_thread")

TWO_HEADS = af.MultiHead(
    [
        af.SelfAttention(2, beta=4.0),
        af.SelfAttention(2, beta=1.0, Q=[[1.0, 0.5], [0.0, 1.0]], V=[[0.0, -1.0], [1.0, 0.0]]),
    ]
)


def test_two_heads_fem_and_particles_agree_like_n_to_the_minus_half():
    law = af.PerturbedCircle(0.3, 2)
    fem = MeanFieldSolver(TWO_HEADS, circle_mesh(200, MPI.COMM_SELF), law, degree=1).solve(
        0.5, [0.0, 0.5]
    )
    assert len(fem.stats["kernel_plan"]) == 2  # one kernel operator per head
    means = []
    for n in (200, 3200):
        ens = af.ensemble(TWO_HEADS, law, n, 8, 0.5, dt=0.05, seed=3, save_times=[0.0, 0.5])
        c = compare(fem, ens, TWO_HEADS, geometry="circle")
        assert np.all(np.isnan(c.energy_particles))  # a sum of heads has no energy
        means.append(c.mean_sd(c.w1)[0])
    ratio = means[0] / means[1]  # 16 times more tokens: 4 times smaller distance
    assert np.all((ratio > 2.5) & (ratio < 6.5)), ratio


def test_one_operator_per_head_and_the_velocity_is_their_sum():
    mesh = circle_mesh(64, MPI.COMM_SELF)
    law = af.PerturbedCircle(0.3, 2)
    both = MeanFieldSolver(TWO_HEADS, mesh, law, degree=1)
    assert len(both.velocity.operators) == 2
    parts = [MeanFieldSolver(h, mesh, law, degree=1) for h in TWO_HEADS.heads]
    u = []
    for s in (both, *parts):
        s.velocity(s.rho, s.u)
        u.append(s.u.x.array.copy())
    np.testing.assert_allclose(u[0], u[1] + u[2], rtol=1e-12, atol=1e-14)
    # The CFL bound is the sum of the heads' speed bounds.
    assert both.dt == pytest.approx(1.0 / (1.0 / parts[0].dt + 1.0 / parts[1].dt))


def test_piecewise_fem_equals_two_consecutive_solves():
    a, b = af.SelfAttention(2, beta=9.0), af.SelfAttention(2, beta=2.0, V=-np.eye(2))
    mesh = circle_mesh(128, MPI.COMM_SELF)
    law = af.PerturbedCircle(0.2, 3)
    whole = MeanFieldSolver(af.Piecewise([1.0], [a, b]), mesh, law, degree=1).solve(2.0, [0.0, 2.0])
    first = MeanFieldSolver(a, mesh, law, degree=1).solve(1.0)
    second_solver = MeanFieldSolver(b, mesh, law, degree=1)
    second_solver.set_initial_dofs(first.dofs)
    second = second_solver.solve(1.0)
    assert whole.stats["steps"] == first.stats["steps"] + second.stats["steps"]
    # The same steps; the times differ in their last bits (t = 1 + k dt against k dt).
    np.testing.assert_allclose(whole.dofs, second.dofs, rtol=1e-12, atol=1e-13)
    straight = MeanFieldSolver(a, mesh, law, degree=1).solve(2.0)
    assert np.abs(straight.dofs - whole.dofs).max() > 1e-3


def test_solve_twice_gives_the_same_solution_and_leaves_no_options():
    solver = MeanFieldSolver(
        af.SelfAttention(2, beta=4.0), circle_mesh(64, MPI.COMM_SELF), af.PerturbedCircle(0.3, 2)
    )
    one = solver.solve(0.5, [0.0, 0.25, 0.5])
    two = solver.solve(0.5, [0.0, 0.25, 0.5])
    np.testing.assert_array_equal(one.weights, two.weights)
    assert one.stats["steps"] == two.stats["steps"] and one.stats["rhs_evaluations"] > 0
    opts = PETSc.Options()
    assert not [k for k in opts.getAll() if k.startswith("attnflow_")]


def test_petsc_options_are_used_then_removed_and_global_ones_restored():
    model = af.SelfAttention(2, beta=4.0)
    mesh, law = circle_mesh(64, MPI.COMM_SELF), af.PerturbedCircle(0.3, 2)
    ref = MeanFieldSolver(model, mesh, law).solve(0.5)  # SSPRK(4,3), the default
    opts = PETSc.Options()
    opts.setValue("attnflow_ts_ssp_num_stages", "9")  # a user's global option: SSPRK(9,3)
    try:
        nine = MeanFieldSolver(model, mesh, law).solve(0.5)  # global options beat defaults
        assert 0 < np.abs(nine.dofs - ref.dofs).max() < 1e-6
        rk4 = MeanFieldSolver(
            model, mesh, law, petsc_options={"ts_type": "rk", "ts_rk_type": "4"}
        ).solve(0.5)
        # A different scheme, the same solution to the time discretisation error.
        assert 0 < np.abs(rk4.dofs - ref.dofs).max() < 1e-6
        assert not opts.hasName("attnflow_ts_rk_type") and not opts.hasName("attnflow_ts_type")
        # Explicit options beat global ones, for the solve only.
        four = MeanFieldSolver(model, mesh, law, petsc_options={"ts_ssp_num_stages": 4})
        np.testing.assert_array_equal(four.solve(0.5).dofs, ref.dofs)
        assert opts.getString("attnflow_ts_ssp_num_stages") == "9"
        other = MeanFieldSolver(model, mesh, law, petsc_options_prefix="x_")
        np.testing.assert_array_equal(other.solve(0.5).dofs, ref.dofs)
        assert not opts.hasName("x_ts_ssp_num_stages")
    finally:
        opts.delValue("attnflow_ts_ssp_num_stages")


def test_kernel_choice_is_checked_before_any_work():
    with pytest.raises(ValueError, match="kernel must be"):
        MeanFieldSolver(
            af.SelfAttention(2), circle_mesh(16, MPI.COMM_SELF), af.UniformSphere(2), kernel="x"
        )
