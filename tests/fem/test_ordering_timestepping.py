"""attnflow.fem.ordering (partition-independent cell order) and attnflow.fem.timestepping
(PETSc options in and out)."""

import numpy as np
import pytest
from mpi4py import MPI
from petsc4py import PETSc

import attnflow as af
from attnflow.fem import MeanFieldSolver, sphere_mesh
from attnflow.fem.ordering import InputOrder
from attnflow.fem.timestepping import DEFAULT_TS_OPTIONS, inserted_options


def test_inserted_options_are_removed_and_global_ones_restored():
    opts = PETSc.Options()
    opts.setValue("tst_ts_type", "euler")  # a user's global option
    try:
        with inserted_options("tst_", {"ts_max_steps": 7, "ts_monitor": True}, DEFAULT_TS_OPTIONS):
            assert opts.getString("tst_ts_type") == "euler"  # global beats the defaults
            assert opts.getString("tst_ts_ssp_type") == "rks3"
            assert opts.getInt("tst_ts_max_steps") == 7
        assert opts.getString("tst_ts_type") == "euler"
        assert not any(opts.hasName(k) for k in ("tst_ts_ssp_type", "tst_ts_max_steps"))
        with pytest.raises(RuntimeError), inserted_options("tst_", {"ts_type": "rk"}):
            assert opts.getString("tst_ts_type") == "rk"  # explicit beats global
            raise RuntimeError  # removed even when the block raises
        assert opts.getString("tst_ts_type") == "euler"
    finally:
        opts.delValue("tst_ts_type")


@pytest.mark.mpi
def test_input_order_gathers_the_same_array_on_any_partition():
    comm = MPI.COMM_WORLD
    law = af.VonMisesFisher([0.0, 0.6, 0.8], 3.0)
    model = af.SelfAttention(3, beta=2.0)
    par = MeanFieldSolver(model, sphere_mesh(2, comm), law, degree=1, kernel="dense")
    ser = MeanFieldSolver(model, sphere_mesh(2, MPI.COMM_SELF), law, degree=1, kernel="dense")
    assert isinstance(par.order, InputOrder) and par.order.n_cells_global == 320
    np.testing.assert_allclose(par.global_dofs(root=None), ser.global_dofs(root=None), rtol=1e-14)
    pts = par.order.gather_points(par.cloud.points, par.cloud.n_q)
    ref = ser.order.gather_points(ser.cloud.points, ser.cloud.n_q)
    np.testing.assert_allclose(pts, ref, rtol=0, atol=1e-15)
