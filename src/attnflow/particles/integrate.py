"""Time integration of the particle system ``dx_i = X[mu_N](x_i, t) dt + sqrt(2 sigma) dB_i``
for any dynamics (``sigma = 0`` unless the dynamics holds a :class:`~attnflow.Diffusion` term).

Deterministic scheme: explicit Runge–Kutta in the ambient space on the field ``P_x F(x)``
(whose flow keeps ``|x| = 1`` invariant), followed by the retraction ``x -> x/|x|`` after every
step on the sphere. The retraction is a projection onto the invariant manifold, so RK4 keeps
order 4 (the tests observe 4.0 on two tokens on S^1); points stay on the sphere to round-off.
Hardmax (``beta = inf``) has a discontinuous field: the order then drops at switching times.

Noise (``model.noisy``; ``B_i`` independent Brownian motions on ``S^{d-1}``, generator
``sigma Delta_S``, or in ``R^d``). Strang splitting of the generator ``L = A + sigma sum_i
Delta_i`` (``A`` the drift):

    x <- N_{h/2} ( retract( RK_h ( N_{h/2}(x) ) ) ),

``RK_h`` the deterministic step above, ``N_tau`` a Brownian step of length ``tau``
(:mod:`attnflow.geometry`, ``geometry.noise``) driven by standard normals drawn from the run's
generator:

* ``R^d``: ``N_tau(x) = x + sqrt(2 sigma tau) z``, exact in law;
* ``S^1``: the geodesic step by a ``N(0, 2 sigma tau)`` angle, exact in law;
* ``S^{d-1}``, ``d >= 3``: the geodesic step ``cos(r) x + sin(r) xi/|xi|``, ``xi = sqrt(2 sigma
  tau) b P_x z``, ``r = |xi|``, with the variance correction ``b^2 = 1/(1 + (d-2) sigma tau/3)``
  that matches ``E(1 - <x', x>)`` and ``E(1 - <x', x>)^2`` of the exact Brownian motion to
  ``O(tau^3)`` (derivation in :mod:`attnflow.geometry`): local weak error ``O(tau^3)``.

The Itô correction: the drift ``-sigma (d-1) x`` of Brownian motion on the sphere seen in
``R^d`` (``d<x_t, x_0> = -sigma (d-1) <x_t, x_0> dt``) comes from the curvature of the step:
``E<x', x> = E cos r = 1 - sigma (d-1) tau + O(tau^2)`` (the plain tangent step followed by
the retraction gives the same first order, ``E(1 + |xi|^2)^{-1/2} = 1 - sigma (d-1) tau +
O(tau^2)``, but its ``O(tau^2)`` term is wrong: weak order 1).

Strang splitting with free steps of local weak error ``O(h^3)`` and a drift step of order
``>= 2`` is of weak order 2; with :class:`Euler` it is of weak order 1. Observed
(``tests/particles/test_noise.py``, free Brownian motion, ``sigma = 1``, 10^6 tokens): on
``S^1`` ``E<x_t, x_0> = e^{-sigma t}`` at any step (exact); on ``S^4`` (``t = 0.5``) the errors
-0.0175, -0.0043 (+-0.0004) at ``h = 0.5, 0.25`` give the order 2.03, and they equal the
scheme's own expectation (quadrature of ``E cos r``); the uncorrected step (``b = 1``) would
err by -0.087, -0.038 (order 1). Table in ``docs/noise_particles.md``.

Random numbers: every step draws ``(2, N, d)`` standard normals from the run's generator (also
with ``comm``: every rank draws the normals of all tokens from the same generator and uses its
block's rows), so the run is the same bitwise on 1, 2 or 3 ranks. A step in an interval of
``sigma = 0`` (a :class:`~attnflow.Piecewise` dynamics) draws nothing.

MPI: with ``comm`` the tokens are split into contiguous blocks over the ranks; each stage
gathers all positions and each rank evaluates the field at its own block. Every token's
velocity is computed from the same sources in the same order whatever the number of ranks,
so results are identical (bitwise) for 1, 2 or 3 ranks.

Checkpoint and restart: ``checkpoint_every=K, on_checkpoint=f`` calls ``f`` with a
:class:`~attnflow.states.ParticleState` every ``K`` steps; ``restart=state`` continues from
one. The steps between two events (save times and switching times of a
:class:`~attnflow.Piecewise` dynamics) are fixed by the events and ``dt`` alone
(:mod:`attnflow.particles.stepping`), so a resumed run takes the same steps as an
uninterrupted one and ends bitwise equal, and no step mixes two pieces of a piecewise
dynamics. A noisy run stores its generator's state in the checkpoint
(``ParticleState.rng_states``) and resumes its stream from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnflow.cloud import Cloud
from attnflow.dynamics import Dynamics
from attnflow.kernels.choice import plan_kernels
from attnflow.model import check_causal
from attnflow.particles.stepping import (
    as_generator,
    blocks,
    check_restart,
    interval_drift_free,
    interval_sigmas,
    march,
    noise_stats,
    split_step,
)
from attnflow.resources import check_particle_run, memory_budget
from attnflow.solutions import Solution, Status
from attnflow.states import CheckpointError, ParticleState, rng_from_json, rng_states_json
from attnflow.timegrid import check_dt, check_every, time_grid
from attnflow.validation import as_points, as_weights

__all__ = ["RK4", "Euler", "simulate"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RK4:
    """Classical fourth-order Runge–Kutta."""

    order: int = 4

    #: Right-hand-side evaluations per step.
    stages: int = 4

    def step(self, f: Callable, x: np.ndarray, t: float, h: float) -> np.ndarray:
        """One step of size ``h`` from ``(t, x)`` for ``dx/dt = f(x, t)``."""
        k1 = f(x, t)
        k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = f(x + h * k3, t + h)
        return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


@dataclass(frozen=True)
class Euler:
    """Forward Euler (first order): the scheme of most published particle scripts."""

    order: int = 1

    #: Right-hand-side evaluations per step.
    stages: int = 1

    def step(self, f: Callable, x: np.ndarray, t: float, h: float) -> np.ndarray:
        """One step of size ``h`` from ``(t, x)`` for ``dx/dt = f(x, t)``."""
        return x + h * f(x, t)


def simulate(
    model: Dynamics,
    x0: np.ndarray,
    t_final: float,
    *,
    dt: float,
    save_times: Sequence[float] | None = None,
    weights: np.ndarray | None = None,
    method: RK4 | Euler = RK4(),
    comm: Any = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[ParticleState], None] | None = None,
    restart: ParticleState | None = None,
    progress: Callable[[float, int], None] | None = None,
    kernel: Any = "auto",
    rng: int | np.random.SeedSequence | np.random.Generator | None = None,
) -> Solution:
    """Integrate the particle system ``dx_i = X[mu_N](x_i, t) dt + sqrt(2 sigma) dB_i`` from
    ``x0`` to ``t_final`` (``sigma`` from the :class:`~attnflow.Diffusion` terms, if any).

    Parameters
    ----------
    model : the dynamics (any :class:`~attnflow.dynamics.Dynamics`: a
        :class:`~attnflow.SelfAttention`, a sum of terms, a :class:`~attnflow.MultiHead`, a
        :class:`~attnflow.Piecewise`, ...).
    x0 : (N, d) initial tokens (on the unit sphere if ``model.sphere``).
    t_final : final time (>= 0).
    dt : maximal step; between consecutive events (save times and the switching times of
        ``model``) the step is shortened uniformly so that every event is hit exactly.
    save_times : increasing times in ``[0, t_final]`` (default ``[0, t_final]``).
    weights : (N,) token weights (default ``1/N``), constant in time.
    method : :class:`RK4` (default) or :class:`Euler`.
    comm : an ``mpi4py`` communicator to split the tokens over ranks (default: serial).
    checkpoint_every : with ``K > 0``, ``on_checkpoint(state)`` is called on every rank after
        every ``K``-th step with a :class:`~attnflow.states.ParticleState` (one run).
    restart : a :class:`~attnflow.states.ParticleState` of the same run (same ``dt``,
        ``t_final``, ``save_times``; ``x0`` then only fixes the shape): the integration
        continues from it and ends bitwise as the uninterrupted one.
    progress : ``progress(t, step)`` after every step, on every rank.
    kernel : how the kernel sums of the attention terms are computed: ``"auto"`` (default:
        the direct engine, or the spectral method for zonal kernels on S^1 and S^2 when it is
        cheaper; see :mod:`attnflow.kernels.choice`), ``"recomputed"`` (always the engine),
        ``"spectral"`` / ``SpectralKernel(tol)``. Recorded in ``stats["kernel"]``.

    A causal model (``SelfAttention(..., causal=True)``, ``attnflow.causal.CausalInteraction``)
    runs as one prompt, tokens in the given order, through
    :func:`attnflow.causal.simulate_causal` (weights, checkpoints, restarts, progress and kernel
    choices are then refused); a sum holding a causal term is refused.

    Returns
    -------
    :class:`~attnflow.solutions.Solution` with ``x`` of shape ``(n_saved, N, d)``, identical on
    every rank; ``stats`` holds ``steps``, ``rhs_evaluations``, ``wall_time``, ``dt``,
    ``method`` and ``ranks``.
    """
    if check_causal(model):  # token order matters: one prompt of the causal particle solver
        from attnflow.causal.particles import simulate_causal

        return simulate_causal(
            model,
            x0,
            t_final,
            dt=dt,
            save_times=save_times,
            method=method,
            comm=comm,
            weights=weights,
            checkpoint_every=checkpoint_every,
            restart=restart,
            progress=progress,
            kernel=kernel,
        )
    if not isinstance(model, Dynamics):
        raise TypeError(f"model must be a Dynamics, got {type(model).__name__}")
    x = as_points("x0", x0, model.d, on_sphere=model.sphere).copy()
    n = x.shape[0]
    w = as_weights("weights", weights, n)
    if n == 0 or not np.any(w > 0):
        raise ValueError("weights must have a positive entry (x0 must hold tokens)")
    dt = check_dt(dt)
    grid = time_grid(t_final, save_times, breakpoints=model.breakpoints)
    if not isinstance(method, (RK4, Euler)):
        raise TypeError(f"method must be RK4() or Euler(), got {method!r}")
    every = check_every(checkpoint_every, on_checkpoint)
    gen = as_generator(rng)
    sigmas = interval_sigmas(model, grid)
    drift_free = interval_drift_free(model, grid)
    noisy = any(s > 0 for s in sigmas)
    if noisy and gen is None and restart is None:
        raise ValueError(
            "rng: the model is noisy (a Diffusion term): give rng= (a seed, a numpy "
            "SeedSequence or Generator)"
        )
    if noisy and restart is not None and not (restart.rng_states and restart.rng_states[0]):
        raise CheckpointError("the checkpoint holds no generator state for this noisy run")
    # Steps, memory and USA overflow, before anything is allocated (attnflow.resources).
    check_particle_run(
        model,
        n,
        grid.save_times.size,
        grid.t_final,
        dt,
        x0=x,
        mass=float(w.sum()),
        stages=method.stages,
        comm=comm,
    )
    if restart is not None:
        check_restart(restart, dt, grid, (1, n, model.d))
    plan = plan_kernels(
        model,
        kernel,
        n_targets=n,
        n_sources=n,
        solver="particles",
        budget=None if comm is None else comm.bcast(memory_budget(), root=0),
    )

    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    if noisy and restart is not None:
        gen = rng_from_json(restart.rng_states[0])
    if noisy and comm is not None:  # every rank must draw the same normals
        state = rng_states_json([gen.bit_generator.state])[0]
        if not all(comm.allgather(state == comm.bcast(state, root=0))):
            raise ValueError("rng: the generators differ between ranks (pass the same seed)")
    if not noisy:
        gen = None
    lo, hi = blocks(n, size)[rank]
    counts = [(b - a) * model.d for a, b in blocks(n, size)]
    geo = model.geometry
    ts = grid.save_times

    def gather(y_local: np.ndarray) -> np.ndarray:
        if comm is None:
            return y_local.copy()
        y_all = np.empty((n, model.d))
        comm.Allgatherv(np.ascontiguousarray(y_local), [y_all, counts])
        return y_all

    start = time.perf_counter()
    run: dict[str, Any] = {"x": x[lo:hi].copy(), "status": Status.SUCCESS, "rhs": 0}
    saved: list[np.ndarray] = []
    step0 = segment0 = segment_step0 = 0
    wall0 = 0.0
    if restart is not None:
        run["x"] = np.array(restart.x[0][lo:hi], dtype=np.float64)
        saved = list(restart.saved[0])
        run["status"] = Status(restart.status[0])
        step0, segment0 = restart.step, restart.segment
        segment_step0, wall0 = restart.segment_step, restart.wall_time
    active = {"k": -1, "dyn": model}

    def advance(t: float, h: float, k: int) -> None:
        if active["k"] != k:  # the dynamics of this interval between events
            active["k"], active["dyn"] = k, model.on_interval(*grid.segment(k))
        dyn = active["dyn"]

        def field(y_local: np.ndarray, s: float) -> np.ndarray:
            run["rhs"] += 1
            cloud = Cloud(y_local if comm is None else gather(y_local), w)
            return dyn.evaluate(y_local, cloud, s, kernel=plan)

        sigma = sigmas[k]
        # All tokens' normals on every rank (the same stream for any number of ranks).
        z = gen.standard_normal((2, n, model.d))[:, lo:hi] if sigma > 0 else None
        drift = None if drift_free[k] else (lambda y: method.step(field, y, t, h))
        run["x"] = split_step(geo, drift, run["x"], h, sigma, z)

    def record(j: int) -> bool:
        saved.append(gather(run["x"]))
        if not np.all(np.isfinite(saved[-1])):
            run["status"] = Status.NONFINITE
            if rank == 0:
                logger.warning("non-finite token positions at t=%g; stopping", ts[j])
            return False
        return True

    def checkpoint(t: float, step: int, segment: int, segment_step: int) -> None:
        x_all = gather(run["x"])
        on_checkpoint(
            ParticleState(
                t=t,
                step=step,
                segment=segment,
                segment_step=segment_step,
                dt=dt,
                t_final=grid.t_final,
                save_times=ts.copy(),
                x=x_all[None],
                saved=[np.stack(saved) if saved else np.zeros((0, n, model.d))],
                status=(run["status"].value,),
                rng_states=() if gen is None else rng_states_json([gen.bit_generator.state]),
                wall_time=wall0 + time.perf_counter() - start,
            )
        )

    if run["status"] is Status.SUCCESS:
        n_steps = march(
            grid,
            dt,
            advance,
            record,
            step0=step0,
            segment0=segment0,
            segment_step0=segment_step0,
            every=every,
            checkpoint=checkpoint,
            progress=progress,
        )
    else:
        n_steps = step0
    status = run["status"]
    if rank == 0:
        logger.debug("simulate: %d tokens, %d steps, status %s", n, n_steps, status.value)
    stats = {
        "steps": int(n_steps),
        "rhs_evaluations": int(run["rhs"]),
        "wall_time": wall0 + time.perf_counter() - start,
        "dt": dt,
        "method": type(method).__name__,
        "ranks": size,
        "noise": noise_stats(sigmas, method.order),
        "kernel": "+".join(r["method"] for r in plan.describe()) or "none",
        "kernel_plan": plan.describe(),
    }
    return Solution(t=ts[: len(saved)], x=np.stack(saved), weights=w, status=status, stats=stats)
