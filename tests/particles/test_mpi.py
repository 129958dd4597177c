"""Serial == parallel: the same run on 1 and on all ranks gives identical tokens."""

import numpy as np
import pytest
from mpi4py import MPI

from attnflow import Gaussian, PerturbedCircle, SelfAttention, ensemble, simulate


@pytest.mark.mpi
def test_simulate_is_independent_of_the_rank_count(comm):
    x0 = PerturbedCircle(0.1, 3).sample(257, 7)  # odd size: uneven blocks over ranks
    m = SelfAttention(2, beta=9.0)
    par = simulate(m, x0, 2.0, dt=0.05, save_times=[0.0, 1.0, 2.0], comm=comm)
    ser = simulate(m, x0, 2.0, dt=0.05, save_times=[0.0, 1.0, 2.0], comm=MPI.COMM_SELF)
    np.testing.assert_array_equal(par.x, ser.x)
    # ...and every rank holds the same result.
    ref = comm.bcast(par.x if comm.rank == 0 else None, root=0)
    np.testing.assert_array_equal(par.x, ref)


@pytest.mark.mpi
def test_ensemble_is_independent_of_the_rank_count(comm):
    m = SelfAttention(2, beta=1.0, K=-np.eye(2), sphere=False)
    law = Gaussian([0.5, 0.0], [[1.0, 0.2], [0.2, 0.5]])
    par = ensemble(m, law, 50, 5, 0.5, dt=0.1, seed=11, comm=comm)
    ser = ensemble(m, law, 50, 5, 0.5, dt=0.1, seed=11)
    np.testing.assert_array_equal(par.x, ser.x)
    assert par.x.shape == (5, 2, 50, 2)
    # Independent seeds: the runs differ from each other.
    assert not np.allclose(par.x[0, 0], par.x[1, 0])
