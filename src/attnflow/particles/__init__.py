"""Particle Monte Carlo: the reference solver of the attention dynamics."""

from attnflow.particles.ensemble import EnsembleSolution, ensemble
from attnflow.particles.integrate import RK4, Euler, simulate

__all__ = ["RK4", "EnsembleSolution", "Euler", "ensemble", "simulate"]
