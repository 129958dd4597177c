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

from attnflow.causal.particles import *  # noqa: F403
from attnflow.causal.particles import __all__ as _particles_all
from attnflow.causal.theory import *  # noqa: F403
from attnflow.causal.theory import __all__ as _theory_all
from attnflow.causal.weights import *  # noqa: F403
from attnflow.causal.weights import __all__ as _weights_all

__all__ = [*_weights_all, *_particles_all, *_theory_all]
