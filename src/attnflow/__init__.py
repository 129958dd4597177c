"""attnflow: the mean-field dynamics of transformer self-attention.

``import attnflow`` needs numpy, scipy and numba only. The particle solver lives here; the
finite element solver is imported explicitly (``attnflow.fem``) and needs dolfinx.
"""

from attnflow import compare, geometry, io, kernels, laws, metrics
from attnflow.kernels import kernel_sums
from attnflow.laws import (
    Box,
    DensityLaw,
    Gaussian,
    Mixture,
    PerturbedCircle,
    UniformBall,
    UniformSphere,
    VonMisesFisher,
)
from attnflow.model import SelfAttention
from attnflow.particles import RK4, EnsembleSolution, Euler, ensemble, simulate
from attnflow.solutions import Solution, Status

__version__ = "0.1.0"

__all__ = [
    "RK4",
    "Box",
    "DensityLaw",
    "EnsembleSolution",
    "Euler",
    "Gaussian",
    "Mixture",
    "PerturbedCircle",
    "SelfAttention",
    "Solution",
    "Status",
    "UniformBall",
    "UniformSphere",
    "VonMisesFisher",
    "compare",
    "ensemble",
    "geometry",
    "io",
    "kernel_sums",
    "kernels",
    "laws",
    "metrics",
    "simulate",
]
