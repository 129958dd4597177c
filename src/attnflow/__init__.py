"""attnflow: the mean-field dynamics of transformer self-attention.

``import attnflow`` needs numpy, scipy and numba only. The library: the measure type
(:class:`Cloud`), dynamics as sums of terms (:class:`Dynamics`, :class:`SelfAttention`,
:class:`MultiHead`, :class:`Piecewise`), laws, the kernel engine, the particle solver, metrics,
comparisons, studies and the solutions. The finite element solver is imported explicitly
(``attnflow.fem``) and needs dolfinx; the command line and run configurations are the
application layer (``attnflow.app``), which the library never imports.
"""

from attnflow import compare, geometry, io, kernels, laws, layers, metrics
from attnflow.cloud import Cloud
from attnflow.diffusion import Diffusion
from attnflow.dynamics import Dynamics, KernelTerm, Piecewise, Sum
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
from attnflow.model import MultiHead, SelfAttention
from attnflow.particles import RK4, Euler, ensemble, simulate
from attnflow.perceptron import Perceptron
from attnflow.solutions import EnsembleSolution, FieldSolution, Solution, Status, load_solution

__version__ = "0.1.0"

__all__ = [
    "RK4",
    "Box",
    "Cloud",
    "DensityLaw",
    "Diffusion",
    "Dynamics",
    "EnsembleSolution",
    "Euler",
    "FieldSolution",
    "Gaussian",
    "KernelTerm",
    "Mixture",
    "MultiHead",
    "Perceptron",
    "PerturbedCircle",
    "Piecewise",
    "SelfAttention",
    "Solution",
    "Status",
    "Sum",
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
    "layers",
    "load_solution",
    "metrics",
    "simulate",
]
