"""Finite element solver of the mean-field equation (needs dolfinx; import explicitly)."""

from mpi4py import MPI  # noqa: F401  (before dolfinx: libmpi must be loaded first)

from attnflow.fem.attention import (
    AttentionVelocity,
    DenseKernel,
    RecomputedKernel,
    SparseKernel,
)
from attnflow.fem.deposit import deposit
from attnflow.fem.meshes import box_mesh, circle_mesh, icosphere, sphere_mesh
from attnflow.fem.solver import FieldSolution, MeanFieldSolver

__all__ = [
    "AttentionVelocity",
    "DenseKernel",
    "FieldSolution",
    "MeanFieldSolver",
    "RecomputedKernel",
    "SparseKernel",
    "box_mesh",
    "circle_mesh",
    "deposit",
    "icosphere",
    "sphere_mesh",
]
