"""MeanFieldSolver checkpoints: a solve resumed from any checkpoint ends bitwise equal."""

from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import attnflow as af
from attnflow.app.checkpoint import read_checkpoint, write_checkpoint
from attnflow.fem import MeanFieldSolver, circle_mesh
from attnflow.states import CheckpointError

TIMES = [0.0, 0.4, 1.0]


def solver(degree=1, comm=MPI.COMM_WORLD, cells=64):
    return MeanFieldSolver(
        af.SelfAttention(2, beta=9.0),
        circle_mesh(cells, comm),
        af.PerturbedCircle(0.3, 3),
        degree=degree,
    )


@pytest.mark.parametrize("degree", [0, 1])
def test_resume_from_every_checkpoint_is_bitwise(degree):
    ref = solver(degree).solve(1.0, TIMES)
    states = []
    run = solver(degree).solve(1.0, TIMES, checkpoint_every=3, on_checkpoint=states.append)
    np.testing.assert_array_equal(run.weights, ref.weights)  # checkpoints change nothing
    assert len(states) == ref.n_steps // 3 > 3
    comm = MPI.COMM_WORLD
    for s in states:
        # The dof arrays live on rank 0; every rank of a restart needs them.
        s.dofs, s.saved_dofs = comm.bcast((s.dofs, s.saved_dofs), root=0)
        out = solver(degree).solve(1.0, TIMES, restart=s)
        np.testing.assert_array_equal(out.weights, ref.weights)
        np.testing.assert_array_equal(out.dofs, ref.dofs)
        np.testing.assert_array_equal(out.energy, ref.energy)
        assert out.n_steps == ref.n_steps


def test_checkpoint_files_round_trip_and_restart_rewrites_the_output(tmp_path_factory):
    comm = MPI.COMM_WORLD
    out = Path(comm.bcast(str(tmp_path_factory.mktemp("rs")) if comm.rank == 0 else None))
    states = []
    ref = solver().solve(1.0, TIMES, checkpoint_every=5, on_checkpoint=states.append)
    if comm.rank == 0:
        write_checkpoint(out / "fem.npz", states[2], "cfg")
    comm.Barrier()
    state, text = read_checkpoint(out / "fem.npz")
    assert text == "cfg" and state.segment == 2 and len(state.t_saved) == 2
    res = solver().solve(1.0, TIMES, output_dir=out / "pv", restart=state)
    np.testing.assert_array_equal(res.weights, ref.weights)
    comm.Barrier()
    xdmf = (out / "pv" / "density.xdmf").read_text()
    assert xdmf.count('<Time Value="') == 2 * len(TIMES)  # density + velocity per save
    with pytest.raises(CheckpointError, match="save_times"):
        solver().solve(1.0, [0.0, 1.0], restart=state)
    with pytest.raises(CheckpointError, match="CFL step"):
        solver(cells=80).solve(1.0, TIMES, restart=state)


@pytest.mark.mpi
def test_global_dofs_are_partition_independent():
    comm = MPI.COMM_WORLD
    s = solver(1, comm)
    dofs = s.global_dofs(root=None)
    ser = solver(1, MPI.COMM_SELF).global_dofs(root=None)
    np.testing.assert_array_equal(dofs, ser)
    s.set_global_dofs(2 * dofs)
    np.testing.assert_array_equal(s.global_dofs(root=None), 2 * dofs)
