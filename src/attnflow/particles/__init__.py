"""Particle Monte Carlo: the reference solver of any dynamics (numpy + the kernel engine)."""

from attnflow.particles.ensemble import ensemble
from attnflow.particles.integrate import RK4, Euler, simulate
from attnflow.solutions import EnsembleSolution

__all__ = ["RK4", "EnsembleSolution", "Euler", "ensemble", "simulate"]
