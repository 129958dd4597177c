"""Monte Carlo ensembles: R independent particle runs with independent, reproducible seeds.

Run ``r`` draws its initial tokens from ``numpy.random.SeedSequence(seed).spawn(R)[r]``, so
each run is the same whatever the number of MPI ranks; with ``comm`` the runs are dealt
round-robin to the ranks and gathered on every rank. The runs of a rank advance in lockstep
(one step of every run, then the next), which changes nothing in any run but lets a checkpoint
hold all runs at the same step.

Noise (a :class:`~attnflow.Diffusion` term): run ``r``'s generator
``default_rng(SeedSequence(seed).spawn(R)[r])`` draws the run's initial tokens and then the
normals of its steps (the split scheme of :mod:`attnflow.particles.integrate`), so a noisy
run is the same bitwise whatever the number of ranks. A checkpoint holds every run's generator
state (``ParticleState.rng_states``); a resumed noisy ensemble continues each stream from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from attnflow.cloud import Cloud
from attnflow.dynamics import Dynamics
from attnflow.kernels.choice import plan_kernels
from attnflow.laws import Law
from attnflow.model import check_causal
from attnflow.particles.integrate import RK4, Euler
from attnflow.particles.stepping import (
    check_restart,
    interval_drift_free,
    interval_sigmas,
    march,
    noise_stats,
    split_step,
)
from attnflow.resources import check_field_overflow, check_particle_run, memory_budget
from attnflow.solutions import EnsembleSolution, Status
from attnflow.states import CheckpointError, ParticleState, rng_from_json, rng_states_json
from attnflow.timegrid import check_dt, check_every, time_grid
from attnflow.validation import as_points, check_int

__all__ = ["EnsembleSolution", "ensemble"]

logger = logging.getLogger(__name__)


def ensemble(
    model: Dynamics,
    law: Law,
    n_particles: int,
    n_runs: int,
    t_final: float,
    *,
    dt: float,
    seed: int,
    save_times: Sequence[float] | None = None,
    method: RK4 | Euler = RK4(),
    comm: Any = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[ParticleState], None] | None = None,
    restart: ParticleState | None = None,
    progress: Callable[[float, int], None] | None = None,
    kernel: Any = "auto",
) -> EnsembleSolution:
    """Run ``n_runs`` independent particle systems of ``n_particles`` tokens drawn from ``law``.

    The runs of a rank advance together, step by step (they share the time grid), so that a
    checkpoint holds every run at the same step.

    Parameters
    ----------
    model : the dynamics (any :class:`~attnflow.dynamics.Dynamics`); law : the initial law
        (same ``d``, sphere or R^d).
    n_particles, n_runs : tokens per run and number of runs (ints >= 1).
    t_final, dt, save_times, method : as for :func:`~attnflow.simulate`.
    seed : run ``r`` draws its tokens, then (noisy model) the normals of its steps, from
        ``default_rng(SeedSequence(seed).spawn(n_runs)[r])``.
    comm : an ``mpi4py`` communicator: the runs are dealt round-robin to its ranks.
    checkpoint_every : with ``K > 0``, ``on_checkpoint(state)`` is called on every rank
        (collectively) after every ``K``-th step with a
        :class:`~attnflow.states.ParticleState` holding all runs (arrays on rank 0 only).
    restart : a :class:`~attnflow.states.ParticleState` of the same ensemble (same
        ``seed``, sizes, ``dt``, ``t_final``, ``save_times``), on every rank: the runs
        continue from it (on any number of ranks) and end bitwise as uninterrupted ones.
    progress : ``progress(t, step)`` after every step, on every rank.
    kernel : how the kernel sums of the attention terms are computed: ``"auto"`` (default:
        the direct engine, or the spectral method for zonal kernels on S^1 and S^2 when it is
        cheaper; see :mod:`attnflow.kernels.choice`), ``"recomputed"`` (always the engine),
        ``"spectral"`` / ``SpectralKernel(tol)``. Recorded in ``stats["kernel"]``.

    A causal model runs through :func:`attnflow.causal.prompt_ensemble` (the same seeds; no
    checkpoints, restarts, progress or kernel choices); a sum holding a causal term is refused.

    Returns an :class:`~attnflow.solutions.EnsembleSolution` (identical on every rank and for
    any rank count); ``stats`` holds ``steps``, ``rhs_evaluations`` (per run: steps with a
    drift × stages), ``wall_time``, ``dt``, ``method``, ``ranks``, ``seed`` and ``noise``
    (``None``, or the scheme, the ``sigma`` of each interval between events and the weak
    order).
    """
    if check_causal(model):  # token order matters: the causal particle solver
        from attnflow.causal.particles import ensemble_causal

        return ensemble_causal(
            model,
            law,
            n_particles,
            n_runs,
            t_final,
            dt=dt,
            seed=seed,
            save_times=save_times,
            method=method,
            comm=comm,
            checkpoint_every=checkpoint_every,
            restart=restart,
            progress=progress,
            kernel=kernel,
        )
    if not isinstance(model, Dynamics):
        raise TypeError(f"model must be a Dynamics, got {type(model).__name__}")
    if not isinstance(law, Law):
        raise TypeError(f"law must be a Law, got {type(law).__name__}")
    if law.d != model.d or law.on_sphere != model.sphere:
        raise ValueError("law must live where the model's tokens live (same d, sphere or R^d)")
    n_particles = check_int("n_particles", n_particles, 1)
    n_runs = check_int("n_runs", n_runs, 1)
    seed = check_int("seed", seed, 0)
    if not isinstance(method, (RK4, Euler)):
        raise TypeError(f"method must be RK4() or Euler(), got {method!r}")
    dt = check_dt(dt)
    grid = time_grid(t_final, save_times, breakpoints=model.breakpoints)
    ts = grid.save_times
    every = check_every(checkpoint_every, on_checkpoint)
    sigmas = interval_sigmas(model, grid)
    drift_free = interval_drift_free(model, grid)
    noisy = any(s > 0 for s in sigmas)
    # Steps, memory and USA overflow, before anything is allocated (attnflow.resources).
    check_particle_run(
        model,
        n_particles,
        ts.size,
        grid.t_final,
        dt,
        stages=method.stages,
        n_runs=n_runs,
        comm=comm,
        what="ensemble",
    )
    d = model.d
    plan = plan_kernels(
        model,
        kernel,
        n_targets=n_particles,
        n_sources=n_particles,
        solver="particles",
        budget=None if comm is None else comm.bcast(memory_budget(), root=0),
    )
    if restart is not None:
        check_restart(restart, dt, grid, (n_runs, n_particles, d))
        if restart.seed != seed:
            raise CheckpointError(f"the checkpoint has seed {restart.seed}, this run {seed}")
        if noisy and (len(restart.rng_states) != n_runs or not all(restart.rng_states)):
            raise CheckpointError("the checkpoint holds no generator states for this noisy run")
    seeds = np.random.SeedSequence(seed).spawn(n_runs)
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    mine = list(range(rank, n_runs, size))
    w = np.full(n_particles, 1.0 / n_particles)
    geo = model.geometry
    start = time.perf_counter()
    xs: dict[int, np.ndarray] = {}
    saved: dict[int, list[np.ndarray]] = {}
    status: dict[int, Status] = {}
    rng_state: dict[int, str] = {}
    gens: dict[int, np.random.Generator] = {}
    step0 = segment0 = segment_step0 = 0
    wall0 = 0.0
    for r in mine:
        if restart is None:
            g = np.random.default_rng(seeds[r])
            x0 = law.sample(n_particles, g)
            xs[r] = as_points("x0", x0, d, on_sphere=model.sphere).copy()
            saved[r], status[r] = [], Status.SUCCESS
            rng_state[r] = rng_states_json([g.bit_generator.state])[0]
        else:
            xs[r] = np.array(restart.x[r], dtype=np.float64)
            saved[r] = list(restart.saved[r])
            status[r] = Status(restart.status[r])
            rng_state[r] = restart.rng_states[r] if restart.rng_states else ""
            g = rng_from_json(rng_state[r]) if noisy else np.random.default_rng(seeds[r])
        gens[r] = g
    if restart is None and not model.sphere:  # R^d: the field bound needs the drawn tokens
        check_field_overflow(model, points=[xs[r] for r in mine], comm=comm)
    if restart is not None:
        step0, segment0 = restart.step, restart.segment
        segment_step0, wall0 = restart.segment_step, restart.wall_time

    active: dict[str, Any] = {"k": -1, "dyn": model}
    counts = {"drift_steps": step0}  # a restart's earlier steps are counted as drift steps

    def field(y: np.ndarray, t: float) -> np.ndarray:
        return active["dyn"].evaluate(y, Cloud(y, w), t, kernel=plan)

    def advance(t: float, h: float, k: int) -> None:
        if active["k"] != k:  # the dynamics of this interval between events
            active["k"], active["dyn"] = k, model.on_interval(*grid.segment(k))
        sigma = sigmas[k]
        drift = None if drift_free[k] else (lambda y: method.step(field, y, t, h))
        counts["drift_steps"] += drift is not None
        for r in mine:
            if status[r] is Status.SUCCESS:
                z = gens[r].standard_normal((2, n_particles, d)) if sigma > 0 else None
                xs[r] = split_step(geo, drift, xs[r], h, sigma, z)

    def record(j: int) -> bool:
        for r in mine:
            if status[r] is Status.SUCCESS:
                saved[r].append(xs[r].copy())
                if not np.all(np.isfinite(xs[r])):
                    status[r] = Status.NONFINITE
                    logger.warning("run %d: non-finite token positions at t=%g; stopping", r, ts[j])
        # Collective checkpoints need every rank in the loop; otherwise stop when all is done.
        return bool(every) or any(status[r] is Status.SUCCESS for r in mine)

    def checkpoint(t: float, step: int, segment: int, segment_step: int) -> None:
        if noisy:
            for r in mine:
                rng_state[r] = rng_states_json([gens[r].bit_generator.state])[0]
        local = {
            r: (
                xs[r],
                np.stack(saved[r]) if saved[r] else np.zeros((0, n_particles, d)),
                status[r].value,
                rng_state[r],
            )
            for r in mine
        }
        parts = comm.gather(local, root=0) if comm is not None else [local]
        if rank == 0:
            runs = {r: v for p in parts for r, v in p.items()}
            order = range(n_runs)
            x_all = np.stack([runs[r][0] for r in order])
            saved_all = [runs[r][1] for r in order]
            status_all = tuple(runs[r][2] for r in order)
            rng_all = tuple(runs[r][3] for r in order)
        else:
            x_all, saved_all, status_all, rng_all = None, None, (), ()
        on_checkpoint(
            ParticleState(
                t=t,
                step=step,
                segment=segment,
                segment_step=segment_step,
                dt=dt,
                t_final=grid.t_final,
                save_times=ts.copy(),
                x=x_all,
                saved=saved_all,
                status=status_all,
                seed=seed,
                rng_states=rng_all,
                wall_time=wall0 + time.perf_counter() - start,
            )
        )

    n_steps = step0
    if every or any(status[r] is Status.SUCCESS for r in mine):
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
    mine_runs = {r: (np.stack(saved[r]), status[r]) for r in mine}
    if comm is not None:
        parts = comm.allgather(mine_runs)
        runs = {r: v for p in parts for r, v in p.items()}
    else:
        runs = mine_runs
    n_saved = min(runs[r][0].shape[0] for r in range(n_runs))
    if rank == 0:
        logger.info("ensemble: %d runs of %d tokens on %d rank(s)", n_runs, n_particles, size)
    x = np.stack([runs[r][0][:n_saved] for r in range(n_runs)])
    stats = {
        "steps": int(n_steps),
        "rhs_evaluations": int(counts["drift_steps"]) * method.stages,
        "wall_time": wall0 + time.perf_counter() - start,
        "dt": dt,
        "method": type(method).__name__,
        "ranks": size,
        "seed": seed,
        "noise": noise_stats(sigmas, method.order),
        "kernel": "+".join(r["method"] for r in plan.describe()) or "none",
        "kernel_plan": plan.describe(),
    }
    return EnsembleSolution(
        t=ts[:n_saved],
        x=x,
        weights=w,
        run_status=tuple(runs[r][1] for r in range(n_runs)),
        stats=stats,
    )
