"""Studies built from the solvers: convergence of the PDE against particles (more to come)."""

from attnflow.studies.convergence import ConvergenceStudy, fit_slope, w1_convergence

__all__ = ["ConvergenceStudy", "fit_slope", "w1_convergence"]
