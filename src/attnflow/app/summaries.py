"""The summary of a run (``summary.json``): what each solver did, their comparison, status.

:func:`fem_summary` (mass drift, energies, cluster counts of the finite element solution),
:func:`particle_summary` (status of every run, energies, sphere error, clusters),
:func:`comparison_summary` (W1, L1, the error of the mean, clusters, per save time),
:func:`non_finite` (why a result is not finite: then the run is not ``complete``) and
:func:`jsonable` (NaN and inf become ``null``, numpy values plain JSON).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from attnflow.app import build
from attnflow.app.config import Config
from attnflow.solutions import EnsembleSolution, FieldSolution, Status

__all__ = [
    "comparison_summary",
    "fem_summary",
    "jsonable",
    "non_finite",
    "particle_log_energy",
    "particle_summary",
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
    clusters = build.clusters_fn(cfg)
    if clusters is not None:
        out["clusters"] = [int(clusters(sol.points, w)) for w in sol.weights]
    return out


def particle_log_energy(model, ens: EnsembleSolution) -> np.ndarray | None:
    """(R, n_saved) ``log E`` of every run at every save time (``None`` without an energy)."""
    if not model.has_energy:
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
    if cfg.model.sphere:
        out["sphere_error"] = float(np.max(np.abs(np.linalg.norm(ens.x, axis=-1) - 1)))
    if energy is not None:
        out["log_energy_mean"] = energy.mean(axis=0)
        out["log_energy_initial"] = float(energy[:, 0].mean())
        out["log_energy_final"] = float(energy[:, -1].mean())
    clusters = build.clusters_fn(cfg)
    if clusters is not None:
        c = np.array([clusters(run[-1]) for run in ens.x])
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
        computed = cfg.fem.energy and model.has_energy
        names = ("mass", "energy") if computed else ("mass",)
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
