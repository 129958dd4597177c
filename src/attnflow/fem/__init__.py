"""Finite element solver of the mean-field equation (needs dolfinx; import explicitly)."""

from mpi4py import MPI  # noqa: F401  (before dolfinx: libmpi must be loaded first)

from attnflow.fem.causal import CausalSolver
from attnflow.fem.deposit import deposit
from attnflow.fem.kernel_operator import (
    DenseKernel,
    KernelOperator,
    RecomputedKernel,
    SparseKernel,
)
from attnflow.fem.meshes import box_mesh, circle_mesh, icosphere, sphere_mesh
from attnflow.fem.solver import MeanFieldSolver
from attnflow.fem.stationary import (
    Branch,
    StationaryProblem,
    StationaryState,
    continuation,
    stationary_state,
)
from attnflow.fem.velocity import NodalVelocity
from attnflow.solutions import FieldSolution

__all__ = [
    "Branch",
    "CausalSolver",
    "DenseKernel",
    "FieldSolution",
    "KernelOperator",
    "MeanFieldSolver",
    "NodalVelocity",
    "RecomputedKernel",
    "SparseKernel",
    "StationaryProblem",
    "StationaryState",
    "box_mesh",
    "circle_mesh",
    "continuation",
    "deposit",
    "icosphere",
    "sphere_mesh",
    "stationary_state",
]
