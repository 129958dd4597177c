import numpy as np
import pytest
from mpi4py import MPI


@pytest.fixture
def comm():
    return MPI.COMM_WORLD


@pytest.fixture(autouse=True)
def _mpi_barrier():
    """Barrier teardown (dolfinx style): ranks leave every test together."""
    yield
    if MPI.COMM_WORLD.size > 1:
        MPI.COMM_WORLD.Barrier()


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


def random_sphere(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)
