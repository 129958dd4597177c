"""Execute a validated :class:`~attnflow.config.Config` into a run directory.

The run directory holds::

    config.toml            the resolved configuration
    summary.json           mass drift, energies, metrics, timings, versions, rank count
    run.log                the log of rank 0
    fem/density.xdmf/.h5   finite element density and velocity (ParaView), density.bp (VTX)
    fem_solution.npz       the finite element solution (save times, clouds, final dofs)
    particles/*.vtp, particles.pvd   particle runs as point-cloud series (ParaView)
    particles.npz          the particle ensemble (tokens at the save times)
    figures/summary.png    energies, W1, the final densities
    checkpoints/           fem-<step>.npz, particles-<step>.npz (see attnflow.checkpoint)

A phase (finite elements, then particles) whose result file exists is done; otherwise it
starts from its newest checkpoint when resuming, or from the beginning. Every function here
is collective over ``comm``; files are written by rank 0, atomically.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import platform
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

import attnflow
from attnflow import metrics
from attnflow.checkpoint import (
    CheckpointError,
    CheckpointWriter,
    latest_checkpoint,
    read_checkpoint,
    write_npz_atomic,
)
from attnflow.config import Config
from attnflow.logs import Progress
from attnflow.particles import RK4, EnsembleSolution, Euler, ensemble
from attnflow.solutions import Status

__all__ = ["RUN_FILES", "execute", "versions", "write_text_atomic"]

logger = logging.getLogger(__name__)

#: Names of the files a run writes in its directory.
RUN_FILES = {
    "config": "config.toml",
    "summary": "summary.json",
    "log": "run.log",
    "fem": "fem_solution.npz",
    "particles": "particles.npz",
    "checkpoints": "checkpoints",
}


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through ``path.tmp`` and a rename."""
    import os

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def versions(comm: Any = None) -> dict[str, Any]:
    """Versions of attnflow and its stack, and the MPI size."""
    import numba
    import scipy
    from mpi4py import MPI

    out: dict[str, Any] = {
        "attnflow": attnflow.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "mpi4py": __import__("mpi4py").__version__,
        "mpi_library": MPI.Get_library_version().splitlines()[0].strip(),
        "mpi_size": (comm if comm is not None else MPI.COMM_WORLD).size,
    }
    try:
        import dolfinx
        import petsc4py
        from petsc4py import PETSc

        out["dolfinx"] = dolfinx.__version__
        out["petsc"] = ".".join(map(str, PETSc.Sys.getVersion()))
        out["petsc4py"] = petsc4py.__version__
    except ImportError:
        out["dolfinx"] = out["petsc"] = out["petsc4py"] = None
    try:
        import tqdm

        out["tqdm"] = tqdm.__version__
    except ImportError:  # pragma: no cover
        out["tqdm"] = None
    return out


def _jsonable(x: Any) -> Any:
    """NaN and inf become null; numpy scalars and arrays become Python values."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, Status):
        return x.value
    return x


# -- helpers -----------------------------------------------------------------------------------
def _build_mesh(cfg: Config, comm):
    from attnflow.fem import box_mesh, circle_mesh, sphere_mesh
    from attnflow.fem.meshfile import load_mesh

    m = cfg.mesh
    if m.type == "circle":
        return circle_mesh(m.cells, comm)
    if m.type == "sphere":
        return sphere_mesh(m.level, comm)
    if m.type == "box":
        return box_mesh(cfg.model.d, m.length, m.cells, comm)
    return load_mesh(m.path, comm)


def _kernel(cfg: Config):
    from attnflow.fem import DenseKernel, RecomputedKernel, SparseKernel

    k = cfg.fem.kernel
    if k == "dense":
        return DenseKernel()
    if k == "sparse":
        return SparseKernel(tol=cfg.fem.tol)
    return RecomputedKernel()


def _check_checkpoint_config(path: Path, text: str, cfg: Config) -> None:
    """The checkpoint must come from the same problem (output and checkpoint may differ)."""
    try:
        old = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise CheckpointError(f"{path.name}: unreadable configuration") from None
    new = cfg.to_dict()
    for d in (old, new):
        for k in ("output", "checkpoint", "run"):
            d.pop(k, None)
    if old != new:
        diff = sorted(
            f"{s}.{k}"
            for s in set(old) | set(new)
            for k in set(old.get(s, {})) | set(new.get(s, {}))
            if old.get(s, {}).get(k) != new.get(s, {}).get(k)
        )
        raise CheckpointError(
            f"{path.name} was written for another configuration (differs in {', '.join(diff)})"
        )


def _save_fem(path: Path, sol) -> None:
    write_npz_atomic(
        path,
        t=sol.t,
        mass=sol.mass,
        outflow=sol.outflow,
        energy=sol.energy,
        min_density=sol.min_density,
        points=sol.points,
        point_weights=sol.point_weights,
        weights=sol.weights,
        dt=np.float64(sol.dt),
        n_steps=np.int64(sol.n_steps),
        wall_time=np.float64(sol.wall_time),
        points_per_cell=np.int64(sol.points_per_cell),
        dofs=sol.dofs,
    )


def _load_fem(path: Path):
    from attnflow.fem import FieldSolution

    with np.load(path, allow_pickle=False) as z:
        return FieldSolution(
            t=z["t"],
            mass=z["mass"],
            outflow=z["outflow"],
            energy=z["energy"],
            min_density=z["min_density"],
            points=z["points"],
            point_weights=z["point_weights"],
            weights=z["weights"],
            dt=float(z["dt"]),
            n_steps=int(z["n_steps"]),
            wall_time=float(z["wall_time"]),
            points_per_cell=int(z["points_per_cell"]),
            dofs=z["dofs"],
        )


def _save_particles(path: Path, ens: EnsembleSolution, n_steps: int, wall: float) -> None:
    write_npz_atomic(
        path,
        t=ens.t,
        x=ens.x,
        weights=ens.weights,
        status=np.array([s.value for s in ens.status]),
        n_steps=np.int64(n_steps),
        wall_time=np.float64(wall),
    )


def _load_particles(path: Path) -> tuple[EnsembleSolution, int, float]:
    with np.load(path, allow_pickle=False) as z:
        ens = EnsembleSolution(
            t=z["t"],
            x=z["x"],
            weights=z["weights"],
            status=tuple(Status(str(s)) for s in z["status"]),
        )
        return ens, int(z["n_steps"]), float(z["wall_time"])


def _clusters_fn(cfg: Config):
    m = cfg.model
    if m.sphere and m.d == 2:
        return metrics.circle_clusters
    if m.sphere and m.d == 3:
        return metrics.sphere_clusters
    return None


def _histogram_fn(cfg: Config):
    mesh = cfg.mesh
    if mesh is None:
        return None
    if mesh.type == "circle":
        return lambda x, w: metrics.circle_histogram(x, w, mesh.cells)
    if mesh.type == "sphere":
        return lambda x, w: metrics.sphere_histogram(x, w, mesh.level)
    return None


def _geometry(cfg: Config) -> str:
    m = cfg.model
    if not m.sphere:
        return "euclidean"
    return "circle" if m.d == 2 else "sphere"


# -- phases ------------------------------------------------------------------------------------
def _run_fem(cfg: Config, run_dir: Path, comm, *, resume: bool, quiet: bool, text: str):
    from attnflow.fem import MeanFieldSolver

    rank = comm.rank
    result = run_dir / RUN_FILES["fem"]
    if resume and result.exists():
        logger.info("finite elements: done before (%s)", result.name)
        return _load_fem(result), {"reused": True}
    start = time.perf_counter()
    model = cfg.model.build()
    mesh = _build_mesh(cfg, comm)
    solver = MeanFieldSolver(
        model,
        mesh,
        cfg.initial.density(cfg.model.d),
        degree=cfg.fem.degree,
        kernel=_kernel(cfg),
        cfl=cfg.fem.cfl,
        quadrature_degree=cfg.fem.quadrature_degree,
        normalize=cfg.initial.normalize,
    )
    setup = time.perf_counter() - start
    restart, writer = _checkpointing(cfg, run_dir, "fem", comm, resume=resume, text=text)
    n_cells = solver.n_cells_global
    logger.info(
        "finite elements: %d cells, DG%d, %s kernel, dt=%.4g, set-up %.2fs",
        n_cells,
        cfg.fem.degree,
        cfg.fem.kernel,
        solver.dt,
        setup,
    )
    with Progress(cfg.time.t_final, "fem", enabled=rank == 0 and not quiet) as bar:
        sol = solver.solve(
            cfg.time.t_final,
            cfg.time.save_times,
            output_dir=run_dir / "fem" if cfg.output.paraview else None,
            energy=cfg.fem.energy,
            checkpoint_every=cfg.checkpoint.every,
            on_checkpoint=writer,
            restart=restart,
            progress=bar.update,
        )
    if rank == 0:
        _save_fem(result, sol)
    info = {
        "reused": False,
        "resumed_from_step": None if restart is None else restart.step,
        "setup_seconds": setup,
        "checkpoints_written": 0 if writer is None else writer.count,
        "checkpoint_seconds": 0.0 if writer is None else writer.seconds,
        "n_cells": n_cells,
        "n_dofs": solver.n_cells_global * solver.cloud.cell_dofs.shape[1],
    }
    return sol, info


def _checkpointing(cfg: Config, run_dir: Path, kind: str, comm, *, resume: bool, text: str):
    """The state to resume ``kind`` ("fem" or "particles") from (None for a fresh start) and
    the checkpoint writer (None without checkpoints)."""
    ck_dir = run_dir / RUN_FILES["checkpoints"]
    restart = None
    if resume:
        path = latest_checkpoint(ck_dir, kind)
        if path is not None:
            restart, ck_text = read_checkpoint(path)
            _check_checkpoint_config(path, ck_text, cfg)
            logger.info("%s: resuming from %s (t=%.6g)", kind, path.name, restart.t)
    writer = None
    if cfg.checkpoint.every:
        writer = CheckpointWriter(
            ck_dir, kind, config_text=text, keep=cfg.checkpoint.keep, comm=comm
        )
    return restart, writer


def _run_particles(cfg: Config, run_dir: Path, comm, *, resume: bool, quiet: bool, text: str):
    rank = comm.rank
    result = run_dir / RUN_FILES["particles"]
    if resume and result.exists():
        logger.info("particles: done before (%s)", result.name)
        ens, n_steps, wall = _load_particles(result)
        return ens, {"reused": True, "n_steps": n_steps, "wall_time": wall}
    p = cfg.particles
    model = cfg.model.build()
    law = cfg.initial.law(cfg.model.d, cfg.model.sphere)
    restart, writer = _checkpointing(cfg, run_dir, "particles", comm, resume=resume, text=text)
    logger.info(
        "particles: %d run(s) of %d tokens, dt=%g, %s, on %d rank(s)",
        p.runs,
        p.n,
        p.dt,
        p.method,
        comm.size,
    )
    steps = {"n": 0}

    def progress_cb(t: float, step: int) -> None:
        steps["n"] = step
        bar.update(t, step)

    start = time.perf_counter()
    with Progress(cfg.time.t_final, "particles", enabled=rank == 0 and not quiet) as bar:
        ens = ensemble(
            model,
            law,
            p.n,
            p.runs,
            cfg.time.t_final,
            dt=p.dt,
            seed=p.seed,
            save_times=cfg.time.save_times,
            method=RK4() if p.method == "rk4" else Euler(),
            comm=comm,
            checkpoint_every=cfg.checkpoint.every,
            on_checkpoint=writer,
            restart=restart,
            progress=progress_cb,
        )
    wall = time.perf_counter() - start + (0.0 if restart is None else restart.wall_time)
    n_steps = max(steps["n"], 0 if restart is None else restart.step)
    if rank == 0:
        _save_particles(result, ens, n_steps, wall)
    info = {
        "reused": False,
        "resumed_from_step": None if restart is None else restart.step,
        "n_steps": n_steps,
        "wall_time": wall,
        "checkpoints_written": 0 if writer is None else writer.count,
        "checkpoint_seconds": 0.0 if writer is None else writer.seconds,
    }
    return ens, info


# -- summaries ---------------------------------------------------------------------------------
def _fem_summary(cfg: Config, sol, info: dict) -> dict[str, Any]:
    m0 = sol.mass[0]
    drift = np.abs(sol.mass - m0) / m0
    out = {
        "n_cells": info.get("n_cells"),
        "n_dofs": info.get("n_dofs"),
        "degree": cfg.fem.degree,
        "kernel": cfg.fem.kernel,
        "dt": sol.dt,
        "n_steps": sol.n_steps,
        "wall_time": sol.wall_time,
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
    clusters = _clusters_fn(cfg)
    if clusters is not None:
        out["clusters"] = [int(clusters(sol.points, w)) for w in sol.weights]
    return out


def _particle_summary(cfg: Config, ens: EnsembleSolution, info: dict) -> dict[str, Any]:
    model = cfg.model.build()
    out: dict[str, Any] = {
        "n": cfg.particles.n,
        "runs": cfg.particles.runs,
        "dt": cfg.particles.dt,
        "method": cfg.particles.method,
        "n_steps": info.get("n_steps"),
        "wall_time": info.get("wall_time"),
        "status": [s.value for s in ens.status],
        "t": ens.t,
    }
    if cfg.model.sphere:
        out["sphere_error"] = float(np.max(np.abs(np.linalg.norm(ens.x, axis=-1) - 1)))
    if not model.hardmax:
        e = np.array([[model._log_energy(x, ens.weights) for x in run] for run in ens.x])
        out["log_energy_mean"] = e.mean(axis=0)
        out["log_energy_initial"] = float(e[:, 0].mean())
        out["log_energy_final"] = float(e[:, -1].mean())
    clusters = _clusters_fn(cfg)
    if clusters is not None:
        c = np.array([clusters(run[-1]) for run in ens.x])
        out["clusters_final"] = c
        out["clusters_final_mean"] = float(c.mean())
    return out


def _compare(cfg: Config, fem, ens: EnsembleSolution):
    from attnflow.compare import compare

    return compare(
        fem,
        ens,
        cfg.model.build(),
        geometry=_geometry(cfg),
        histogram=_histogram_fn(cfg) if cfg.compare.l1 else None,
        clusters=_clusters_fn(cfg) if cfg.compare.clusters else None,
    )


def _comparison_summary(cmp) -> dict[str, Any]:
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


def _figures(cfg: Config, out: Path, fem, ens, cmp) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no figures (pip install attnflow[viz])")
        return None
    model = cfg.model.build()
    panels = ["energy", "density"] + (["w1"] if cmp is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    if fem is not None:
        ax.plot(fem.t, fem.energy, "k-", label="finite elements")
    if ens is not None and not model.hardmax:
        e = np.array([[model._log_energy(x, ens.weights) for x in run] for run in ens.x])
        ax.errorbar(ens.t, e.mean(0), yerr=e.std(0), capsize=2, label="particles")
    ax.set(xlabel="t", ylabel=r"$\log E$", title="interaction energy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax = axes[1]
    geometry = _geometry(cfg)
    if geometry == "circle":
        if fem is not None:  # the density at the quadrature points, by angle
            th = np.arctan2(fem.points[:, 1], fem.points[:, 0])
            dens = fem.weights[-1] / fem.point_weights / fem.mass[-1]
            order = np.argsort(th)
            ax.plot(th[order], dens[order], "k-", label="finite elements")
        if ens is not None:
            th = np.arctan2(ens.x[0, -1, :, 1], ens.x[0, -1, :, 0])
            bins = np.linspace(-np.pi, np.pi, max(8, min(90, ens.x.shape[2] // 20)) + 1)
            ax.hist(th, bins=bins, density=True, alpha=0.5, label="particles (run 0)")
        ax.set(xlabel=r"$\theta$", title=f"density at t = {cfg.time.save_times[-1]:g}")
        ax.legend()
    else:
        if geometry == "sphere":

            def proj(x):
                return np.arctan2(x[:, 1], x[:, 0]), np.arcsin(np.clip(x[:, 2], -1, 1))

            ax.set(xlabel="longitude", ylabel="latitude")
        else:

            def proj(x):
                return x[:, 0], x[:, 1] if x.shape[1] > 1 else np.zeros(len(x))

            ax.set(xlabel="x", ylabel="y")
        if fem is not None:
            u, v = proj(fem.points)
            ax.scatter(u, v, c=fem.weights[-1] / fem.point_weights, s=4, cmap="magma")
        if ens is not None:
            u, v = proj(ens.x[0, -1])
            ax.scatter(u, v, s=2, c="tab:cyan", alpha=0.6)
        ax.set_title(f"t = {cfg.time.save_times[-1]:g}")
    if cmp is not None:
        ax = axes[2]
        m, s = cmp.mean_sd(cmp.w1)
        ax.errorbar(cmp.t, m, yerr=s, capsize=2)
        ax.set(xlabel="t", ylabel=r"$W_1$", title="W1(finite elements, particles)")
    fig.suptitle(
        f"{cfg.run.name}: {cfg.model.attention}, d = {cfg.model.d}, "
        f"beta = {cfg.model.beta:g}, {cfg.model.space}"
    )
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.png"
    tmp = out / "summary.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


# -- the run -----------------------------------------------------------------------------------
def execute(
    cfg: Config,
    run_dir: str | Path,
    comm,
    *,
    resume: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run ``cfg`` into ``run_dir`` (created if needed; the CLI writes ``config.toml`` there
    first); collective.

    Returns the summary (on every rank; written to ``summary.json`` by rank 0).
    """
    run_dir = Path(run_dir)
    if comm.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    comm.Barrier()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    text = cfg.to_toml()
    timings: dict[str, float] = {}
    fem = ens = cmp = None
    summary: dict[str, Any] = {
        "status": "running",
        "name": cfg.run.name,
        "solvers": list(cfg.run.solvers),
        "ranks": comm.size,
        "resumed": bool(resume),
        "config": RUN_FILES["config"],
        "versions": versions(comm),
        "started": started,
    }
    if cfg.run.fem:
        s = time.perf_counter()
        fem, info = _run_fem(cfg, run_dir, comm, resume=resume, quiet=quiet, text=text)
        timings["fem"] = time.perf_counter() - s
        summary["fem"] = {**info, **_fem_summary(cfg, fem, info)} if comm.rank == 0 else info
    if cfg.run.particles:
        s = time.perf_counter()
        ens, info = _run_particles(cfg, run_dir, comm, resume=resume, quiet=quiet, text=text)
        timings["particles"] = time.perf_counter() - s
        if comm.rank == 0:
            summary["particles"] = {**info, **_particle_summary(cfg, ens, info)}
    if comm.rank == 0:
        if fem is not None and ens is not None:
            s = time.perf_counter()
            cmp = _compare(cfg, fem, ens)
            timings["compare"] = time.perf_counter() - s
            summary["comparison"] = _comparison_summary(cmp)
            logger.info(
                "W1(finite elements, particles) at t=%g: %.4g ± %.4g (%s)",
                cmp.t[-1],
                summary["comparison"]["w1_final_mean"],
                summary["comparison"]["w1_final_sd"],
                cmp.w1_method,
            )
        s = time.perf_counter()
        files = []
        if ens is not None and cfg.output.paraview and cfg.model.d <= 3:
            from attnflow.io import write_point_cloud_series

            for r in range(min(cfg.output.particle_runs, ens.n_runs)):
                name = "particles" if r == 0 else f"particles_run{r}"
                write_point_cloud_series(run_dir, ens.t, ens.x[r], name=name)
                files.append(f"{name}.pvd")
        if cfg.output.figures:
            fig = _figures(cfg, run_dir / "figures", fem, ens, cmp)
            if fig is not None:
                files.append(str(fig.relative_to(run_dir)))
        timings["output"] = time.perf_counter() - s
        if fem is not None and cfg.output.paraview:
            files += [f"fem/{p.name}" for p in sorted((run_dir / "fem").glob("density.*"))]
        timings["total"] = time.perf_counter() - t0
        summary["timings"] = timings
        summary["checkpoint"] = {
            "every": cfg.checkpoint.every,
            "seconds": sum(
                summary.get(k, {}).get("checkpoint_seconds", 0.0) for k in ("fem", "particles")
            ),
        }
        summary["files"] = files
        summary["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        summary["status"] = "complete"
        write_text_atomic(
            run_dir / RUN_FILES["summary"], json.dumps(_jsonable(summary), indent=2) + "\n"
        )
        if fem is not None:
            logger.info(
                "finite elements: mass drift %.2e, log E %.6g -> %.6g",
                summary["fem"]["mass_drift"],
                summary["fem"]["log_energy_initial"],
                summary["fem"]["log_energy_final"],
            )
        logger.info("wrote %s (%.1fs)", run_dir, timings["total"])
    return comm.bcast(summary if comm.rank == 0 else None, root=0)
