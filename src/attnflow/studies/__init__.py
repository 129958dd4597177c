"""Studies built from the solvers: convergence of the PDE against particles, and the
low-temperature regime (concentration, cluster counts, metastability)."""

from attnflow.studies.convergence import ConvergenceStudy, fit_slope, w1_convergence
from attnflow.studies.low_temperature import (
    ConcentrationStudy,
    concentration_rate,
    concentration_study,
    radial_mean_field,
)
from attnflow.studies.metastability import (
    ClusterCountStudy,
    StaircaseStudy,
    cluster_count_sweep,
    energy_staircase,
)

__all__ = [
    "ClusterCountStudy",
    "ConcentrationStudy",
    "ConvergenceStudy",
    "StaircaseStudy",
    "cluster_count_sweep",
    "concentration_rate",
    "concentration_study",
    "energy_staircase",
    "fit_slope",
    "radial_mean_field",
    "w1_convergence",
]
