"""Studies built from the solvers: convergence of the PDE against particles, and the
low-temperature regime (concentration, cluster counts, metastability), and normalizing flows
(piecewise-constant ReLU controls)."""

from attnflow.studies.cluster_counts import ClusterCounts, cluster_count_study
from attnflow.studies.convergence import ConvergenceStudy, fit_slope, w1_convergence
from attnflow.studies.flows import Control, FlowFit, fit_controls, pushforward_kl, relu_flow
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
from attnflow.studies.sentiment import SentimentStudy, sentiment_study

__all__ = [
    "ClusterCountStudy",
    "ClusterCounts",
    "ConcentrationStudy",
    "Control",
    "ConvergenceStudy",
    "FlowFit",
    "SentimentStudy",
    "StaircaseStudy",
    "cluster_count_study",
    "cluster_count_sweep",
    "concentration_rate",
    "concentration_study",
    "energy_staircase",
    "fit_controls",
    "fit_slope",
    "pushforward_kl",
    "radial_mean_field",
    "relu_flow",
    "sentiment_study",
    "w1_convergence",
]
