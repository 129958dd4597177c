"""Execute a validated :class:`~attnflow.app.config.Config` into a run directory.

(One idea: running one configuration's phases — finite elements, particles, their comparison,
the summary and figure — into its directory; the causal and noisy runs are the same phases
with other solvers and records.)

The run directory holds::

    config.toml            the resolved configuration
    summary.json           mass drift, energies, metrics, timings, versions, rank count
    run.log                the log of rank 0
    fem/density.pvd        finite element density (cell data) and velocity (point data) on ONE
                           grid per save time (fem/density/*.vtu; ParaView, pyvista)
    fem/density.xdmf/.h5   the same as two functions (Xdmf3ReaderT), density.bp (VTX, DG1)
    fem_solution.npz       the finite element solution (FieldSolution.save)
    particles/*.vtp, particles.pvd   particle runs as point-cloud series (ParaView)
    particles.npz          the particle ensemble (EnsembleSolution.save)
    view.py                ParaView script: density, velocity arrows, particles, time
                           (``pvpython view.py [--screenshot out.png]``; app/paraview.py)
    figures/summary.png    energies, W1, the final densities
    checkpoints/           fem-<step>.npz, particles-<step>.npz (see attnflow.app.checkpoint)

The solutions are the library's solution files: read them back with
:func:`attnflow.solutions.load_solution`. A phase (finite elements, then particles) whose
result file exists is done; otherwise it starts from its newest checkpoint when resuming, or
from the beginning. Every function here is collective over ``comm``; files are written by
rank 0, atomically, and recorded in the directory's manifest (:mod:`attnflow.app.manifest`:
pending before writing, with size and hash after), so that ``--overwrite`` removes exactly
them and a resume can verify what it reuses. The objects of a run are made by
:mod:`attnflow.app.build`, the figure by :mod:`attnflow.app.figures`.

A run whose solutions are not finite (a solver's status, or NaN/inf energies) is not
``complete``: its summary says ``"non-finite"`` and the command exits with status 1.

Noise (``model.noise = sigma``): both solvers run the noisy dynamics (the particles draw their
Brownian increments from the run's seed stream, ``particles.seed``); the summary records
``sigma`` and the finite element free energy. A causal model (``model.causal = true``) runs
the kinetic solver :class:`attnflow.fem.CausalSolver` (``fem_solution.npz`` then holds a
:class:`~attnflow.fem.causal.KineticSolution`; ``fem/density.xdmf`` one series per slice and,
on S^1, ``fem/kinetic.pvd`` the density on the cylinder (cos theta, sin theta, s)) and the
prompts :func:`attnflow.causal.prompt_ensemble` (``particles.runs`` prompts of ``particles.n``
tokens); neither writes checkpoints. Their comparison is the W1 distance per slice (S^1), and
on S^1 the retrieval correlation of the prompts (:func:`attnflow.causal.correlation_mc`, with
the closed form :func:`attnflow.causal.correlation_kernel` of the interaction form) is
recorded; the figure shows the (s, angle) densities (:mod:`attnflow.app.figures`).
"""

from __future__ import annotations

import datetime
import json
import logging
import platform
import time
import tomllib
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import attnflow
from attnflow.app import build, summaries
from attnflow.app.checkpoint import CheckpointWriter, read_checkpoint, select_checkpoint
from attnflow.app.config import Config
from attnflow.app.figures import causal_figure, summary_figure
from attnflow.app.logs import Progress
from attnflow.app.manifest import Manifest
from attnflow.app.paraview import VIEW_SCRIPT, write_view_script
from attnflow.app.resume import record_problem
from attnflow.io import write_point_cloud_series, write_text_atomic
from attnflow.particles import ensemble
from attnflow.solutions import EnsembleSolution, FieldSolution
from attnflow.states import CheckpointError

__all__ = ["RUN_FILES", "execute", "load_result", "versions"]

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


# -- checkpoints -------------------------------------------------------------------------------
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


def _checkpointing(
    cfg: Config, run_dir: Path, kind: str, comm, *, resume: bool, text: str, manifest
):
    """The state to resume ``kind`` ("fem" or "particles") from (None for a fresh start) and
    the checkpoint writer (None without checkpoints). The newest checkpoint that is complete
    and as written (rank 0 checks: :func:`select_checkpoint`) is used; a newer corrupt one is
    named in a warning."""
    ck_dir = run_dir / RUN_FILES["checkpoints"]
    restart = None
    if resume:
        path = None
        if comm.rank == 0:
            path, bad = select_checkpoint(
                ck_dir,
                kind,
                None if manifest is None else partial(manifest.verify, pending_ok=True),
            )
            for p, why in bad:
                logger.warning("%s: skipping checkpoint %s: %s", kind, p.name, why)
            if path is None and bad:
                raise CheckpointError(
                    f"no valid {kind} checkpoint: " + ", ".join(p.name for p, _ in bad)
                )
        path = comm.bcast(path, root=0)
        if path is not None:
            restart, ck_text = read_checkpoint(path)
            _check_checkpoint_config(path, ck_text, cfg)
            logger.info("%s: resuming from %s (t=%.6g)", kind, path.name, restart.t)
    writer = None
    if cfg.checkpoint.every:
        writer = CheckpointWriter(
            ck_dir, kind, config_text=text, keep=cfg.checkpoint.keep, comm=comm, manifest=manifest
        )
    return restart, writer


def _writer_info(restart, writer) -> dict[str, Any]:
    return {
        "reused": False,
        "resumed_from_step": None if restart is None else restart.step,
        "checkpoints_written": 0 if writer is None else writer.count,
        "checkpoint_seconds": 0.0 if writer is None else writer.seconds,
    }


# -- phases ------------------------------------------------------------------------------------
def _run_fem(
    cfg: Config,
    run_dir: Path,
    comm,
    *,
    resume: bool,
    quiet: bool,
    text: str,
    manifest,
    solver=None,
):
    result = run_dir / RUN_FILES["fem"]
    if resume and result.exists():
        logger.info("finite elements: done before (%s)", result.name)
        return load_result(result), {"reused": True}
    start = time.perf_counter()
    if solver is None:
        solver = build.build_fem_solver(cfg, comm)
    setup = time.perf_counter() - start
    if cfg.model.causal:
        return _run_kinetic(cfg, run_dir, comm, solver, setup, quiet=quiet, manifest=manifest)
    restart, writer = _checkpointing(
        cfg, run_dir, "fem", comm, resume=resume, text=text, manifest=manifest
    )
    if manifest is not None and cfg.output.paraview:
        manifest.pending(run_dir / "fem", tree=True)  # the solver writes fem/ itself
    n_cells = solver.n_cells_global
    logger.info(
        "finite elements: %d cells, DG%d, %s kernel, dt=%.4g, set-up %.2fs",
        n_cells,
        cfg.fem.degree,
        cfg.fem.kernel,
        solver.dt,
        setup,
    )
    with Progress(cfg.time.t_final, "fem", enabled=comm.rank == 0 and not quiet) as bar:
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
    if manifest is not None:
        if cfg.output.paraview:
            manifest.record(run_dir / "fem")
        manifest.pending(result)
        sol.save(result)
        manifest.record(result)
    info = {
        **_writer_info(restart, writer),
        "setup_seconds": setup,
        "n_cells": n_cells,
        "n_dofs": solver.n_cells_global * solver.cloud.cell_dofs.shape[1],
    }
    return sol, info


def load_result(path: Path) -> Any:
    """The finite element result of a run directory: a :class:`FieldSolution`, or the
    :class:`~attnflow.fem.causal.KineticSolution` of a causal run."""
    with np.load(path, allow_pickle=False) as z:
        kind = str(z["kind"]) if "kind" in z.files else ""
    if kind == "kinetic":
        from attnflow.fem.causal import KineticSolution

        return KineticSolution.load(path)
    return FieldSolution.load(path)


def _run_kinetic(cfg: Config, run_dir: Path, comm, solver, setup: float, *, quiet: bool, manifest):
    """The causal finite element phase: :meth:`attnflow.fem.CausalSolver.solve` (no
    checkpoints: an unfinished phase is rerun by a resume)."""
    result = run_dir / RUN_FILES["fem"]
    if manifest is not None and cfg.output.paraview:
        manifest.pending(run_dir / "fem", tree=True)
    logger.info(
        "kinetic finite elements: %d slices x %d cells, DG%d, %s form, lambda=%g, dt=%.4g, "
        "set-up %.2fs",
        solver.n_slices,
        solver.order.n_cells_global,
        cfg.fem.degree,
        solver.form,
        solver.lam,
        solver.dt,
        setup,
    )
    with Progress(cfg.time.t_final, "fem", enabled=comm.rank == 0 and not quiet) as bar:
        sol = solver.solve(
            cfg.time.t_final,
            cfg.time.save_times,
            output_dir=run_dir / "fem" if cfg.output.paraview else None,
            progress=bar.update,
        )
    if manifest is not None:
        if cfg.output.paraview:
            manifest.record(run_dir / "fem")
        manifest.pending(result)
        sol.save(result)
        manifest.record(result)
    info = {
        **_writer_info(None, None),
        "setup_seconds": setup,
        "n_cells": solver.order.n_cells_global,
        "n_dofs": solver.order.n_cells_global * solver.cloud.cell_dofs.shape[1],
    }
    return sol, info


def _run_prompts(cfg: Config, run_dir: Path, comm, *, resume: bool, manifest):
    """The causal particle phase: ``particles.runs`` iid prompts of ``particles.n`` tokens
    (:func:`attnflow.causal.prompt_ensemble`; no checkpoints, no progress bar)."""
    from attnflow.causal import prompt_ensemble

    result = run_dir / RUN_FILES["particles"]
    if resume and result.exists():
        logger.info("particles: done before (%s)", result.name)
        return EnsembleSolution.load(result), {"reused": True}
    p = cfg.particles
    logger.info(
        "causal particles: %d prompt(s) of %d tokens, dt=%g, %s, on %d rank(s)",
        p.runs,
        p.n,
        p.dt,
        p.method,
        comm.size,
    )
    ens = prompt_ensemble(
        build.build_model(cfg.model),
        p.n,
        p.runs,
        cfg.time.t_final,
        dt=p.dt,
        seed=p.seed,
        law=build.initial_law(cfg.initial, cfg.model.d, cfg.model.sphere),
        save_times=cfg.time.save_times,
        method=build.particle_method(cfg),
        comm=comm,
    )
    if manifest is not None:
        manifest.pending(result)
        ens.save(result)
        manifest.record(result)
    return ens, _writer_info(None, None)


def _run_particles(
    cfg: Config, run_dir: Path, comm, *, resume: bool, quiet: bool, text: str, manifest
):
    if cfg.model.causal:
        return _run_prompts(cfg, run_dir, comm, resume=resume, manifest=manifest)
    result = run_dir / RUN_FILES["particles"]
    if resume and result.exists():
        logger.info("particles: done before (%s)", result.name)
        return EnsembleSolution.load(result), {"reused": True}
    p = cfg.particles
    restart, writer = _checkpointing(
        cfg, run_dir, "particles", comm, resume=resume, text=text, manifest=manifest
    )
    logger.info(
        "particles: %d run(s) of %d tokens, dt=%g, %s%s, on %d rank(s)",
        p.runs,
        p.n,
        p.dt,
        p.method,
        f", noise sigma={cfg.model.noise:g} (seed {p.seed})" if cfg.model.noise else "",
        comm.size,
    )
    with Progress(cfg.time.t_final, "particles", enabled=comm.rank == 0 and not quiet) as bar:
        ens = ensemble(
            build.build_model(cfg.model),
            build.initial_law(cfg.initial, cfg.model.d, cfg.model.sphere),
            p.n,
            p.runs,
            cfg.time.t_final,
            dt=p.dt,
            seed=p.seed,
            save_times=cfg.time.save_times,
            method=build.particle_method(cfg),
            comm=comm,
            checkpoint_every=cfg.checkpoint.every,
            on_checkpoint=writer,
            restart=restart,
            progress=bar.update,
        )
    if manifest is not None:
        manifest.pending(result)
        ens.save(result)
        manifest.record(result)
    return ens, _writer_info(restart, writer)


def _compare(cfg: Config, model, fem: FieldSolution, ens: EnsembleSolution):
    from attnflow.compare import compare

    return compare(
        fem,
        ens,
        model,
        geometry=build.geometry(cfg),
        histogram=build.histogram_fn(cfg) if cfg.compare.l1 else None,
        clusters=build.clusters_fn(cfg) if cfg.compare.clusters else None,
    )


# -- the run -----------------------------------------------------------------------------------
def execute(
    cfg: Config,
    run_dir: str | Path,
    comm,
    *,
    resume: bool = False,
    quiet: bool = False,
    manifest: Manifest | None = None,
    fem_solver: Any = None,
) -> dict[str, Any]:
    """Run ``cfg`` into ``run_dir`` (created if needed; the CLI writes ``config.toml`` there
    first); collective.

    ``manifest`` is the run directory's manifest on rank 0 (opened or created here when not
    given); ``fem_solver`` a finite element solver already built for ``cfg`` (optional:
    built here otherwise).

    Returns the summary (on every rank; written to ``summary.json`` by rank 0).
    """
    run_dir = Path(run_dir).absolute()
    if comm.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if manifest is None:
            manifest = Manifest.open(run_dir)
        record_problem(manifest, cfg)
    else:
        manifest = None
    comm.Barrier()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    text = cfg.to_toml()
    timings: dict[str, float] = {}
    fem = ens = cmp = energy = None
    causal = cfg.model.causal
    model = build.build_model(cfg.model)  # its energy E (a noisy sum has its head's)
    summary: dict[str, Any] = {
        "status": "running",
        "name": cfg.run.name,
        "solvers": list(cfg.run.solvers),
        "sigma": cfg.model.noise,
        "ranks": comm.size,
        "resumed": bool(resume),
        "config": RUN_FILES["config"],
        "versions": versions(comm),
        "started": started,
    }
    if cfg.run.fem:
        s = time.perf_counter()
        fem, info = _run_fem(
            cfg,
            run_dir,
            comm,
            resume=resume,
            quiet=quiet,
            text=text,
            manifest=manifest,
            solver=fem_solver,
        )
        timings["fem"] = time.perf_counter() - s
        if comm.rank == 0:
            what = summaries.kinetic_summary if causal else summaries.fem_summary
            summary["fem"] = {**info, **what(cfg, fem, info)}
        else:
            summary["fem"] = info
    if cfg.run.particles:
        s = time.perf_counter()
        ens, info = _run_particles(
            cfg, run_dir, comm, resume=resume, quiet=quiet, text=text, manifest=manifest
        )
        timings["particles"] = time.perf_counter() - s
        if comm.rank == 0:
            energy = summaries.particle_log_energy(model, ens)
            summary["particles"] = {**info, **summaries.particle_summary(cfg, ens, energy)}
    if comm.rank == 0:
        if causal:
            s = time.perf_counter()
            summary.update(summaries.causal_summary(cfg, fem, ens))
            timings["compare"] = time.perf_counter() - s
        elif fem is not None and ens is not None:
            s = time.perf_counter()
            cmp = _compare(cfg, model, fem, ens)
            timings["compare"] = time.perf_counter() - s
            summary["comparison"] = summaries.comparison_summary(cmp)
            logger.info(
                "W1(finite elements, particles) at t=%g: %.4g ± %.4g (%s)",
                cmp.t[-1],
                summary["comparison"]["w1_final_mean"],
                summary["comparison"]["w1_final_sd"],
                cmp.w1_method,
            )
        s = time.perf_counter()
        files = []
        assert manifest is not None
        if ens is not None and cfg.output.paraview and cfg.model.d <= 3:
            for r in range(min(cfg.output.particle_runs, ens.n_runs)):
                name = "particles" if r == 0 else f"particles_run{r}"
                manifest.pending(run_dir / f"{name}.pvd")
                manifest.pending(run_dir / name, tree=True)
                write_point_cloud_series(run_dir, ens.t, ens.x[r], name=name)
                manifest.record(run_dir / f"{name}.pvd", run_dir / name)
                files.append(f"{name}.pvd")
        if cfg.output.paraview and cfg.model.d <= 3 and not causal:
            geom = build.geometry(cfg)
            manifest.pending(run_dir / VIEW_SCRIPT)
            write_view_script(
                run_dir, name=cfg.run.name, geometry="box" if geom == "euclidean" else geom
            )
            manifest.record(run_dir / VIEW_SCRIPT)
            files.append(VIEW_SCRIPT)
        if cfg.output.figures:
            manifest.pending(run_dir / "figures", tree=True)
            if causal:
                fig = causal_figure(cfg, run_dir / "figures", fem, ens, summary)
            else:
                fig = summary_figure(
                    cfg, run_dir / "figures", fem, ens, cmp, particle_log_energy=energy
                )
            manifest.record(run_dir / "figures")
            if fig is not None:
                files.append(str(fig.relative_to(run_dir)))
        timings["output"] = time.perf_counter() - s
        if fem is not None and cfg.output.paraview:
            names = ("density.*", "kinetic.pvd") if causal else ("density.*",)
            files += [f"fem/{p.name}" for n in names for p in sorted((run_dir / "fem").glob(n))]
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
        problems = summaries.non_finite(cfg, model, fem, ens, energy)
        summary["status"] = "non-finite" if problems else "complete"
        if problems:
            summary["problems"] = problems
            logger.error("%s: the result is not finite: %s", run_dir, "; ".join(problems))
        manifest.pending(run_dir / RUN_FILES["summary"])
        write_text_atomic(
            run_dir / RUN_FILES["summary"], json.dumps(summaries.jsonable(summary), indent=2) + "\n"
        )
        manifest.record(run_dir / RUN_FILES["summary"])
        if fem is not None and not causal:
            logger.info(
                "finite elements: mass drift %.2e, log E %.6g -> %.6g",
                summary["fem"]["mass_drift"],
                summary["fem"]["log_energy_initial"],
                summary["fem"]["log_energy_final"],
            )
        logger.info("wrote %s (%.1fs)", run_dir, timings["total"])
    return comm.bcast(summary if comm.rank == 0 else None, root=0)
