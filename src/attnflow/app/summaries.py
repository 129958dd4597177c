"""The summary of a run (``summary.json``): what each solver did, their comparison, status.

:func:`fem_summary` (mass drift, energies, cluster counts of the finite element solution),
:func:`particle_summary` (status of every run, energies, sphere error, clusters),
:func:`comparison_summary` (W1, L1, the error of the mean, clusters, per save time),
:func:`non_finite` (why a result is not finite: then the run is not ``complete``) and
:func:`jsonable` (NaN and inf become ``null``, numpy values plain JSON).

Noise: the finite element summary holds the free energy ``sigma int rho log rho - E`` and the
entropy when the solver records them, and on the sphere both solvers report the order
parameter ``|int x rho(dx)|`` (0 for the uniform state; the first Fourier mode on S^1: the
quantity of a phase-transition sweep over ``model.noise``). Causal runs:
:func:`kinetic_summary` (the slices of :class:`~attnflow.fem.causal.KineticSolution`) and
:func:`causal_summary` (W1 per slice between the kinetic density and the tokens of the
prompts at the positions of the slice, on S^1; the retrieval correlation of the prompts).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from attnflow.app import build
from attnflow.app.config import Config
from attnflow.solutions import EnsembleSolution, FieldSolution, Status

__all__ = [
    "causal_summary",
    "comparison_summary",
    "fem_summary",
    "jsonable",
    "kinetic_summary",
    "non_finite",
    "order_parameter",
    "particle_log_energy",
    "particle_summary",
    "slice_rows",
]


def jsonable(x: Any) -> Any:
    """NaN and inf become null; numpy scalars and arrays become Python values."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, Status):
        return x.value
    return x


def order_parameter(points: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``|sum_i w_i x_i / |x_i|| / sum_i w_i``: the norm of the mean of a measure on the sphere
    (points projected radially; uniform weights when ``weights`` is None). 0 for the uniform
    state, 1 for one point mass; on S^1 it is ``2 pi |rho_hat_1|``, the first Fourier mode."""
    x = np.asarray(points, dtype=float)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    w = np.full(x.shape[0], 1.0) if weights is None else np.maximum(np.asarray(weights), 0.0)
    total = float(w.sum())
    return float(np.linalg.norm(w @ x) / total) if total > 0 else float("nan")


def fem_summary(cfg: Config, sol: FieldSolution, info: dict) -> dict[str, Any]:
    m0 = sol.mass[0]
    drift = np.abs(sol.mass - m0) / m0
    out = {
        "n_cells": info.get("n_cells"),
        "n_dofs": info.get("n_dofs"),
        "degree": cfg.fem.degree,
        "kernel": cfg.fem.kernel,
        "dt": sol.dt,
        "n_steps": sol.stats["steps"],
        "wall_time": sol.stats["wall_time"],
        "mass_initial": m0,
        "mass_final": sol.mass[-1],
        "mass_drift": float(drift.max()),
        "outflow_final": float(sol.outflow[-1]),
        "min_density": float(sol.min_density.min()),
        "log_energy_initial": float(sol.energy[0]),
        "log_energy_final": float(sol.energy[-1]),
        "t": sol.t,
        "mass": sol.mass,
        "log_energy": sol.energy,
    }
    if cfg.mesh is not None and cfg.mesh.type == "box":
        out["mass_note"] = "box mesh: mass leaves through the outflow boundary (outflow_final)"
    free = getattr(sol, "free_energy", None)
    if cfg.model.noise and free is not None:
        out["sigma"] = cfg.model.noise
        out["free_energy"] = np.asarray(free, dtype=float)
        out["free_energy_initial"] = float(free[0])
        out["free_energy_final"] = float(free[-1])
        entropy = getattr(sol, "entropy", None)
        if entropy is not None:
            out["entropy"] = np.asarray(entropy, dtype=float)
    if cfg.model.sphere:
        out["order_parameter"] = [order_parameter(sol.points, w) for w in sol.weights]
        out["order_parameter_final"] = out["order_parameter"][-1]
    clusters = build.clusters_fn(cfg)
    if clusters is not None:
        out["clusters"] = [int(clusters(sol.points, w)) for w in sol.weights]
    return out


def kinetic_summary(cfg: Config, sol: Any, info: dict) -> dict[str, Any]:
    """The summary of a :class:`~attnflow.fem.causal.KineticSolution`: the slices, the mass
    drift of every slice (max over slices and saves of ``|m_i(t) - m_i(0)| / m_i(0)``), the
    minimum density, and per slice the order parameter at the last save."""
    m0 = sol.mass[0]
    drift = np.abs(sol.mass - m0) / np.maximum(np.abs(m0), 1e-300)
    op = [order_parameter(sol.points, sol.weights[-1, i]) for i in range(sol.n_slices)]
    return {
        "n_cells": info.get("n_cells"),
        "n_dofs_per_slice": info.get("n_dofs"),
        "n_slices": sol.n_slices,
        "form": sol.stats.get("form"),
        "alibi": sol.stats.get("lam"),
        "degree": cfg.fem.degree,
        "kernel": sol.stats.get("kernel"),
        "dt": sol.dt,
        "n_steps": sol.n_steps,
        "wall_time": sol.wall_time,
        "t": sol.t,
        "s": sol.s,
        "mass_drift": float(drift.max()),
        "mass_final": sol.mass[-1],
        "min_density": float(sol.min_density.min()),
        "order_parameter_final": op,
        "log_energy_initial": None,
        "log_energy_final": None,
    }


def particle_log_energy(model, ens: EnsembleSolution) -> np.ndarray | None:
    """(R, n_saved) ``log E`` of every run at every save time (``None`` without an energy)."""
    if not getattr(model, "has_energy", False):  # (causal models have no energy)
        return None
    return np.array(
        [[model.log_energy(ens.cloud(r, k)) for k in range(ens.t.size)] for r in range(ens.n_runs)]
    )


def particle_summary(cfg: Config, ens: EnsembleSolution, energy) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n": cfg.particles.n,
        "runs": cfg.particles.runs,
        "dt": cfg.particles.dt,
        "method": cfg.particles.method,
        "n_steps": ens.stats["steps"],
        "wall_time": ens.stats["wall_time"],
        "status": [s.value for s in ens.run_status],
        "t": ens.t,
    }
    if cfg.model.causal:  # many prompts: counts and means, not one entry per prompt
        out["prompts"] = out.pop("runs")
        values, counts = np.unique(out.pop("status"), return_counts=True)
        out["status_counts"] = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
    if cfg.model.noise:
        out["sigma"] = cfg.model.noise
        out["seed"] = cfg.particles.seed
    if cfg.model.sphere:
        out["sphere_error"] = float(np.max(np.abs(np.linalg.norm(ens.x, axis=-1) - 1)))
        op = np.array([order_parameter(run[-1]) for run in ens.x])
        if not cfg.model.causal:
            out["order_parameter_final"] = op
        out["order_parameter_final_mean"] = float(op.mean())
    if energy is not None:
        out["log_energy_mean"] = energy.mean(axis=0)
        out["log_energy_initial"] = float(energy[:, 0].mean())
        out["log_energy_final"] = float(energy[:, -1].mean())
    clusters = build.clusters_fn(cfg)
    if clusters is not None:
        c = np.array([clusters(run[-1]) for run in ens.x])
        if not cfg.model.causal:
            out["clusters_final"] = c
        out["clusters_final_mean"] = float(c.mean())
    return out


def comparison_summary(cmp) -> dict[str, Any]:
    w1m, w1s = cmp.mean_sd(cmp.w1)
    l1m, l1s = cmp.mean_sd(cmp.l1)
    me, _ = cmp.mean_sd(cmp.mean_error)
    return {
        "t": cmp.t,
        "w1_method": cmp.w1_method,
        "w1_mean": w1m,
        "w1_sd": w1s,
        "w1_final_mean": float(w1m[-1]),
        "w1_final_sd": float(w1s[-1]),
        "l1_mean": l1m,
        "l1_sd": l1s,
        "mean_error": me,
        "clusters_fem": cmp.clusters_fem,
        "clusters_particles_mean": cmp.clusters_particles.mean(axis=0),
    }


def non_finite(cfg: Config, model, fem, ens, particle_energy) -> list[str]:
    """What makes a result not finite: a solver's status, a mass that is not finite, or an
    energy that was computed and is not finite. An energy that was not computed (a dynamics
    without one, ``model.has_energy`` False: several heads, perceptrons, controls; or
    ``fem.energy = false``) is recorded as NaN (``null`` in the summary) and is not a
    problem."""
    out = []
    if fem is not None:
        if fem.status is not Status.SUCCESS:
            out.append(f"finite elements: {fem.status.value}")
        computed = cfg.fem.energy and getattr(model, "has_energy", False)
        names = ("mass", "energy") if computed else ("mass",)
        if computed and cfg.model.noise and getattr(fem, "free_energy", None) is not None:
            names += ("free_energy",)
        for name in names:
            a = np.asarray(getattr(fem, name), dtype=float)
            if a.size and not np.all(np.isfinite(a)):
                out.append(f"finite elements: {name} not finite")
    if ens is not None:
        bad = [r for r, st in enumerate(ens.run_status) if st is not Status.SUCCESS]
        if bad:
            out.append(f"particles: runs {bad} {ens.run_status[bad[0]].value}")
        if particle_energy is not None and not np.all(np.isfinite(particle_energy)):
            out.append("particles: energy not finite")
    return out


def slice_rows(n_tokens: int, n_slices: int) -> np.ndarray:
    """(n_s,) the token row standing for every slice: slice ``i`` is the kinetic density at the
    position ``s_i = i / n_s``, row ``r`` is token ``r + 1`` at ``r / N`` (the convention of
    :class:`attnflow.fem.CausalSolver`: with ``n_s = N`` slice ``i`` is row ``i``); the row is
    ``round(i N / n_s)``, exact when ``n_s`` divides ``N``."""
    rows = np.rint(np.arange(n_slices) * n_tokens / n_slices).astype(int)
    return np.minimum(rows, n_tokens - 1)


def causal_summary(cfg: Config, fem: Any, ens: EnsembleSolution | None) -> dict[str, Any]:
    """The causal parts of a run's summary: ``causal`` (form, alibi, beta); with both solvers
    on S^1 ``comparison`` (at the last save time, the exact circle W1 between slice ``i`` of
    the kinetic density and the tokens at the position ``s_i`` of all prompts,
    :func:`slice_rows`: a Monte Carlo sample of ``particles.runs`` tokens); with
    particles on S^1 ``retrieval`` (the mode-1 correlation between the last token at the final
    time and the initial token at ``s_k = k/N``, :func:`attnflow.causal.correlation_mc`, and
    for the interaction form without rescaling from iid uniform tokens its ``N -> infinity``
    limit :func:`attnflow.causal.correlation_kernel`)."""
    from attnflow import metrics

    m = cfg.model
    out: dict[str, Any] = {"causal": {"form": m.form, "alibi": m.alibi, "beta": m.beta, "d": m.d}}
    circle = m.sphere and m.d == 2
    if fem is not None and ens is not None and circle:
        rows = slice_rows(ens.x.shape[2], fem.n_slices)
        w1 = np.empty(fem.n_slices)
        for i, r in enumerate(rows):
            cloud = fem.cloud(-1, i)
            w1[i] = metrics.wasserstein(
                cloud.points, cloud.weights, ens.x[:, -1, r], None, geometry="circle"
            ).value
        out["comparison"] = {
            "t": float(fem.t[-1]),
            "s": fem.s,
            "w1_slices_final": w1,
            "w1_final_mean": float(np.nanmean(w1)),
            "w1_final_max": float(np.nanmax(w1)),
            "token_rows": rows,
            "w1_method": "circle (exact): slice i against token row round(i N / n_s)",
        }
    if ens is not None and circle and ens.t[0] == 0.0 and ens.t.size > 1:
        from attnflow.causal import correlation_kernel, correlation_mc

        est = correlation_mc(ens, 1, control_variate=cfg.initial.type == "uniform")
        ret: dict[str, Any] = {
            "mode": 1,
            "t": float(est.t[-1]),
            "s": est.s,
            "mc": est.value[-1],
            "mc_stderr": est.stderr[-1],
            "prompts": est.n_prompts,
            "tokens": est.n_tokens,
        }
        if m.interaction and not m.rescale_usa and cfg.initial.type == "uniform":
            s = est.s[:-1]  # the last token itself is an atom of the limit (not included)
            ret["closed_form"] = np.append(
                correlation_kernel(1, m.beta, m.alibi, est.t[-1], s), np.nan
            )
        out["retrieval"] = ret
    return out
