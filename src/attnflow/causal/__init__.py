"""Causal (decoder) attention: tokens at positions ``s_j = j/N`` see only earlier tokens.

* :mod:`attnflow.causal.weights`: the ALiBi position weights ``w_jk`` and their continuum limit
  ``kappa_lambda(s, s')``.
* :mod:`attnflow.causal.particles`: the causal particle systems (the interaction form of the
  lost-in-the-middle paper and causal softmax attention with an ALiBi bias), batched over many
  iid prompts.
* :mod:`attnflow.causal.theory`: the linearised kinetic equation around the uniform state, the
  correlation kernel in closed form (a Volterra resolvent in Bessel functions), the retrieval
  profile, ``t_crit`` and the interior minimum.

The kinetic PDE for ``f(t, s, x)`` is solved by :class:`attnflow.fem.CausalSolver`.
"""

from attnflow.causal.particles import (
    CausalInteraction,
    CorrelationEstimate,
    causal_velocity,
    correlation_mc,
    ensemble_causal,
    prompt_ensemble,
    prompt_memory,
    simulate_causal,
    simulate_prompts,
)
from attnflow.causal.theory import (
    correlation_kernel,
    discrete_correlation,
    discrete_retrieval_score,
    log_mode_rate,
    mode_rate,
    profile_minimum,
    retrieval_score,
    retrieval_score_slope,
    retrieval_weights,
    t_crit,
)
from attnflow.causal.weights import (
    alibi_weights,
    check_slope,
    kappa,
    slice_weights,
)

__all__ = [
    "CausalInteraction",
    "CorrelationEstimate",
    "alibi_weights",
    "causal_velocity",
    "check_slope",
    "correlation_kernel",
    "correlation_mc",
    "discrete_correlation",
    "discrete_retrieval_score",
    "ensemble_causal",
    "kappa",
    "log_mode_rate",
    "mode_rate",
    "profile_minimum",
    "prompt_ensemble",
    "prompt_memory",
    "retrieval_score",
    "retrieval_score_slope",
    "retrieval_weights",
    "simulate_causal",
    "simulate_prompts",
    "slice_weights",
    "t_crit",
]
