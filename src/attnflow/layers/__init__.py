"""Discrete-depth models: transformers layer by layer, and their continuous limits.

* :mod:`~attnflow.layers.residual`: residual layer maps ``x <- N(x + eta F(x))`` for any
  :class:`~attnflow.Dynamics` (layer norm onto the sphere, the ``1/(1 + alpha)`` form, none);
* :mod:`~attnflow.layers.random_heads`: random multi-head layers, Gaussian weights resampled per
  layer and head, seeded, the same on any number of ranks;
* :mod:`~attnflow.layers.homogenized`: their homogenized SDE limit (common noise, the
  normalisation's Itô term), closed forms for one and two tokens, a weak-order-1 scheme;
* :mod:`~attnflow.layers.hardmax`: hardmax layers with normalisation, leaders and clusters.

numpy-level (numpy, scipy, numba through the kernel engine).
"""

from attnflow.layers.hardmax import (
    argmax_sets,
    cluster_centres,
    hardmax_layer,
    hardmax_layers,
    hardmax_time,
)
from attnflow.layers.homogenized import (
    attention_covariance,
    homogenized_sde,
    one_token_correlation,
    pair_drift,
    pair_moments_beta0,
)
from attnflow.layers.random_heads import (
    GaussianHeads,
    attention_means,
    layer_time,
    multihead_of,
    random_head_layers,
    split_runs,
)
from attnflow.layers.residual import NORMALISATIONS, normalise, record_layers, residual_layers
from attnflow.layers.results import LayerEnsemble, LayerSolution

__all__ = [
    "NORMALISATIONS",
    "GaussianHeads",
    "LayerEnsemble",
    "LayerSolution",
    "argmax_sets",
    "attention_covariance",
    "attention_means",
    "cluster_centres",
    "hardmax_layer",
    "hardmax_layers",
    "hardmax_time",
    "homogenized_sde",
    "layer_time",
    "multihead_of",
    "normalise",
    "one_token_correlation",
    "pair_drift",
    "pair_moments_beta0",
    "random_head_layers",
    "record_layers",
    "residual_layers",
    "split_runs",
]
