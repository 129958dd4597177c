import contextlib

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


@contextlib.contextmanager
def numba_threads(n: int):
    """Run a block with ``n`` numba threads, restoring the previous count afterwards."""
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)


@pytest.fixture
def one_numba_thread():
    """Tiny problems: one numba thread (the machine's cores are shared; thread start-up and
    oversubscription dominate), restored afterwards. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_numba_thread")`` in a module."""
    with numba_threads(1):
        yield


def serial_env() -> dict[str, str]:
    """The environment of a serial child process: the MPI launcher's variables removed, so that
    a child that loads mpi4py.MPI under ``mpiexec`` starts as a singleton instead of joining (and
    failing or hanging in) the parent's job."""
    import os

    prefixes = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "MPI_LOCALRANKID")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
