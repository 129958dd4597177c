"""The ``attnflow`` command line: ``run``, ``sweep``, ``mesh``, ``info``.

::

    attnflow run CONFIG.toml [--output DIR] [--set model.beta=4] [--checkpoint-every K]
    attnflow run --resume RUN_DIR
    attnflow sweep CONFIG.toml [--output DIR]      # a [sweep] over one parameter
    attnflow sweep --resume SWEEP_DIR
    attnflow mesh circle --cells 64 --output circle64.npz [--xdmf]
    attnflow info [--json]

Every command works the same under ``mpiexec -n K``. Configurations are validated on every
rank before anything is written; an invalid one prints one line (``ConfigError: key: what is
allowed``) on rank 0 and exits with status 2. Only rank 0 logs (unless ``--log-all-ranks``)
and shows a progress bar (unless ``--quiet``). An uncaught error on any rank is logged and
aborts all ranks (``MPI_Abort``) instead of leaving the others waiting; on rank 0 the error
and its traceback also go to the run's ``run.log``.

attnflow only deletes what it wrote: ``--overwrite`` removes the files listed in the
directory's manifest (:mod:`attnflow.app.manifest`) and refuses when anything else is there;
``--resume`` verifies the configuration, result files and checkpoints it reuses
(:mod:`attnflow.app.resume`).

The schema of the configuration files is documented in ``docs/config.md``; examples are in
``examples/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpi4py import MPI

from attnflow import __version__
from attnflow.app.config import (
    Config,
    ConfigError,
    dumps_toml,
    load_config,
    parse_config,
    parse_override,
    read_toml,
)
from attnflow.app.logs import configure_logging
from attnflow.app.manifest import MANIFEST_NAME, Manifest
from attnflow.app.preflight import check_initial_on_quadrature
from attnflow.app.resume import check_resume
from attnflow.app.rundir import check_new_dir, prepare_dir, run_one, summary_complete
from attnflow.app.sweep import csv_row, sweep_points, sweep_table, write_summary_csv
from attnflow.io import write_text_atomic
from attnflow.states import CheckpointError

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


# -- output helpers ----------------------------------------------------------------------------
def _say(comm, *lines: str, err: bool = False) -> None:
    """User-facing output, rank 0 only."""
    if comm.rank == 0:
        stream = sys.stderr if err else sys.stdout
        for line in lines:
            print(line, file=stream)
        stream.flush()


def _agree(comm, error: str | None) -> str | None:
    """The first error of any rank, on every rank (validation must agree before work)."""
    if comm.size == 1:
        return error
    errors = comm.allgather(error)
    return next((e for e in errors if e), None)


def _on_rank0(comm, check) -> None:
    """Run ``check()`` on rank 0 only (reads and hashes files); the other ranks agree with
    its verdict in :func:`_agree`."""
    if comm.rank == 0:
        check()


def _overrides(args) -> list[tuple[str, Any]]:
    out = [parse_override(s) for s in (args.set or [])]
    if getattr(args, "checkpoint_every", None) is not None:
        out.append(("checkpoint.every", args.checkpoint_every))
    return out


# -- run ---------------------------------------------------------------------------------------
def _validate_run(args, comm) -> tuple[Config, Path, bool]:
    overrides = _overrides(args)
    if args.resume is not None:
        if args.config is not None:
            raise ConfigError("--resume", "give either CONFIG or --resume RUN_DIR, not both")
        if args.output is not None or args.overwrite:
            raise ConfigError("--resume", "continues RUN_DIR in place: no --output/--overwrite")
        for k, _ in overrides:
            if not k.startswith("checkpoint."):
                raise ConfigError(k, "only checkpoint.* can change when resuming")
        run_dir = Path(args.resume).expanduser().absolute()
        path = run_dir / "config.toml"
        if run_dir.is_symlink() or not path.is_file() or path.is_symlink():
            raise ConfigError("--resume", f"{run_dir} is not a run directory (no config.toml)")
        cfg = load_config(path, overrides, output=run_dir, ranks=comm.size)
        if not summary_complete(run_dir):
            _on_rank0(comm, lambda: check_resume(run_dir, cfg))
            check_initial_on_quadrature(cfg)
        return cfg, run_dir, True
    if args.config is None:
        raise ConfigError("CONFIG", "give a configuration file (or --resume RUN_DIR)")
    cfg = load_config(args.config, overrides, output=args.output, ranks=comm.size)
    if cfg.output.directory is None:
        raise ConfigError("output.directory", "required (or pass --output DIR)")
    run_dir = Path(cfg.output.directory)
    check_new_dir(run_dir, overwrite=args.overwrite, key="output.directory", inspect=comm.rank == 0)
    check_initial_on_quadrature(cfg)
    return cfg, run_dir, False


def _cmd_run(args, comm) -> int:
    error = None
    try:
        cfg, run_dir, resume = _validate_run(args, comm)
    except ConfigError as e:
        error = str(e)
    error = _agree(comm, error)
    if error:
        _say(comm, f"ConfigError: {error}", err=True)
        return EXIT_USAGE
    if resume and summary_complete(run_dir):
        _say(comm, f"{run_dir}: already complete (summary.json); nothing to do")
        return EXIT_OK
    manifest = None
    if not resume:
        manifest = prepare_dir(comm, run_dir, overwrite=args.overwrite)
    try:
        summary = run_one(cfg, run_dir, comm, resume=resume, quiet=args.quiet, manifest=manifest)
    except CheckpointError as e:
        _say(comm, f"CheckpointError: {e}", err=True)
        return EXIT_USAGE
    status = summary["status"]
    if status != "complete":
        _say(comm, f"{run_dir}: {status}: {'; '.join(summary.get('problems', []))}", err=True)
        return EXIT_FAILURE
    if not args.quiet:
        _say(comm, f"{run_dir}: {status} ({summary['timings']['total']:.1f}s)")
    return EXIT_OK


# -- sweep -------------------------------------------------------------------------------------
def _sweep_raw(args, comm) -> tuple[dict, Path, bool]:
    """The sweep's raw table (mesh path absolute, output directory set) and directory."""
    if args.resume is not None:
        if args.config is not None or args.output is not None or args.overwrite or args.set:
            raise ConfigError("--resume", "continues SWEEP_DIR in place: no CONFIG/--output/--set")
        sweep_dir = Path(args.resume).expanduser().absolute()
        path = sweep_dir / "sweep.toml"
        if sweep_dir.is_symlink() or not path.is_file():
            raise ConfigError("--resume", f"{sweep_dir} is not a sweep directory (no sweep.toml)")
        raw = read_toml(path)
        if isinstance(raw.get("output"), dict):  # the directory may have been moved
            raw["output"]["directory"] = str(sweep_dir)
        return raw, sweep_dir, True
    if args.config is None:
        raise ConfigError("CONFIG", "give a configuration file (or --resume SWEEP_DIR)")
    raw, sweep_dir = sweep_table(args.config, _overrides(args), output=args.output)
    return raw, sweep_dir, False


def _validate_sweep(args, comm):
    raw, sweep_dir, resume = _sweep_raw(args, comm)
    base = parse_config(raw, allow_sweep=True, sweep_point=True, ranks=comm.size)
    if not resume:
        check_new_dir(
            sweep_dir, overwrite=args.overwrite, key="output.directory", inspect=comm.rank == 0
        )
    elif comm.rank == 0 and Manifest.load(sweep_dir) is None:
        raise ConfigError("--resume", f"{sweep_dir} has no {MANIFEST_NAME} (an older attnflow?)")
    points = sweep_points(raw, base, sweep_dir, ranks=comm.size)
    for i, (_, cfg) in enumerate(points):
        run_dir = Path(cfg.output.directory)
        try:
            check_initial_on_quadrature(cfg)
            if resume and (run_dir / "config.toml").is_file() and not summary_complete(run_dir):
                _on_rank0(comm, lambda d=run_dir, c=cfg: check_resume(d, c))
        except ConfigError as e:
            raise ConfigError(e.key, f"{e.message} (sweep point {i}: {run_dir.name})") from None
    return raw, base, sweep_dir, resume, points


def _cmd_sweep(args, comm) -> int:
    error = None
    try:
        raw, base, sweep_dir, resume, points = _validate_sweep(args, comm)
    except ConfigError as e:
        error = str(e)
    error = _agree(comm, error)
    if error:
        _say(comm, f"ConfigError: {error}", err=True)
        return EXIT_USAGE
    manifest = None
    if not resume:
        manifest = prepare_dir(comm, sweep_dir, overwrite=args.overwrite, kind="sweep")
        if manifest is not None:
            header = f"attnflow sweep over {base.sweep.parameter}: {len(points)} points"
            manifest.pending(sweep_dir / "sweep.toml")
            write_text_atomic(sweep_dir / "sweep.toml", dumps_toml(raw, header=header))
            manifest.record(sweep_dir / "sweep.toml")
        comm.Barrier()
    elif comm.rank == 0:
        manifest = Manifest.open(sweep_dir, "sweep")
    rows = []
    parameter = base.sweep.parameter
    for i, (value, cfg) in enumerate(points):
        run_dir = Path(cfg.output.directory)
        if summary_complete(run_dir):
            logger.info("point %d (%s = %r): complete", i, parameter, value)
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            logger.info("point %d/%d: %s = %r", i + 1, len(points), parameter, value)
            again = resume and (run_dir / "config.toml").is_file()
            point = None
            if manifest is not None:
                manifest.record_dir(run_dir)
                point = Manifest.open(run_dir)
            try:
                summary = run_one(
                    cfg, run_dir, comm, resume=again, quiet=args.quiet, manifest=point
                )
            except CheckpointError as e:
                _say(comm, f"CheckpointError: {e}", err=True)
                return EXIT_USAGE
        rows.append(csv_row(i, value, summary, run_dir))
        if manifest is not None:
            manifest.pending(sweep_dir / "summary.csv")
            write_summary_csv(sweep_dir / "summary.csv", parameter, rows)
            manifest.record(sweep_dir / "summary.csv")
    comm.Barrier()
    if not args.quiet:
        _say(comm, f"{sweep_dir}: {len(points)} points, table in summary.csv")
    return EXIT_OK


# -- mesh --------------------------------------------------------------------------------------
def _cmd_mesh(args, comm) -> int:
    error = None
    out = Path(args.output).expanduser().absolute()
    try:
        if args.kind == "circle" and (args.cells is None or args.cells < 3):
            raise ConfigError("--cells", f"must be an integer >= 3 for a circle, got {args.cells}")
        if args.kind == "sphere" and (args.level is None or not 0 <= args.level <= 7):
            raise ConfigError("--level", f"must be an integer in [0, 7], got {args.level}")
        if args.kind == "box":
            if args.cells is None or args.cells < 1:
                raise ConfigError("--cells", f"must be an integer >= 1 for a box, got {args.cells}")
            if args.dim not in (1, 2, 3):
                raise ConfigError("--dim", f"must be 1, 2 or 3, got {args.dim}")
            if not args.length > 0:
                raise ConfigError("--length", f"must be > 0, got {args.length}")
        if out.suffix != ".npz":
            raise ConfigError("--output", f"must end in .npz, got {out.name}")
        if not out.parent.is_dir():
            raise ConfigError("--output", f"no such directory: {out.parent}")
    except ConfigError as e:
        error = str(e)
    error = _agree(comm, error)
    if error:
        _say(comm, f"ConfigError: {error}", err=True)
        return EXIT_USAGE
    from attnflow.fem.meshes import load_mesh, mesh_arrays
    from attnflow.meshdata import write_mesh

    shape = None
    if comm.rank == 0:
        points, cells = mesh_arrays(
            args.kind, cells=args.cells, level=args.level, dim=args.dim, length=args.length
        )
        write_mesh(out, points, cells)
        shape = (points.shape, cells.shape)
    shape = comm.bcast(shape, root=0)
    lines = [f"wrote {out}: {shape[0][0]} points in R^{shape[0][1]}, {shape[1][0]} cells"]
    if args.xdmf:
        import dolfinx.io

        mesh = load_mesh(out, comm)
        xdmf = out.with_suffix(".xdmf")
        with dolfinx.io.XDMFFile(comm, str(xdmf), "w") as f:
            f.write_mesh(mesh)
        lines.append(f"wrote {xdmf} (ParaView)")
    if not args.quiet:
        _say(comm, *lines)
    return EXIT_OK


# -- info --------------------------------------------------------------------------------------
def _cmd_info(args, comm) -> int:
    from attnflow.app.runner import versions

    v = versions(comm)
    if args.json:
        _say(comm, json.dumps(v, indent=2))
    else:
        width = max(map(len, v))
        _say(comm, *(f"{k:<{width}}  {'-' if x is None else x}" for k, x in v.items()))
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Usage, help and errors are printed by rank 0 only (every rank exits the same way)."""

    def _print_message(self, message: str, file=None) -> None:
        if MPI.COMM_WORLD.rank == 0:
            super()._print_message(message, file)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``attnflow`` (subcommands run, sweep, mesh, info)."""
    common = _Parser(add_help=False)
    g = common.add_argument_group("logging")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    g.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level of rank 0 (default INFO)",
    )
    g.add_argument(
        "--log-all-ranks",
        action="store_true",
        help="every MPI rank logs at --log-level (default: only rank 0; others warnings only)",
    )
    parser = _Parser(
        prog="attnflow",
        description="Mean-field dynamics of self-attention: finite elements and particles.",
        epilog="Configuration schema: docs/config.md; examples: examples/*.toml. "
        "Every command runs the same under mpiexec -n K.",
    )
    parser.add_argument("--version", action="version", version=f"attnflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def run_like(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("config", nargs="?", metavar="CONFIG", help="a TOML configuration")
        p.add_argument(
            "--resume",
            metavar="DIR",
            help=f"continue the {what} directory DIR from its newest checkpoints",
        )
        p.add_argument("-o", "--output", metavar="DIR", help="overrides output.directory")
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a configuration key (value in TOML syntax), e.g. --set model.beta=4",
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help=f"replace an existing {what} directory (only one made by attnflow)",
        )

    p = sub.add_parser(
        "run",
        parents=[common],
        help="run the finite element and/or particle solver from a configuration",
        description="Run the finite element solver, the particle solver, or both with a "
        "comparison, from one TOML configuration, into a run directory (resolved config, "
        "summary.json, ParaView files, figures, checkpoints).",
    )
    run_like(p, "run")
    p.add_argument(
        "--checkpoint-every", type=int, metavar="K", help="overrides checkpoint.every (steps)"
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "sweep",
        parents=[common],
        help="run a configuration for every value of a parameter ([sweep] table)",
        description="Run one configuration per value of [sweep] parameter (a dotted key such as "
        "model.beta), one run directory per point, and a summary table summary.csv.",
    )
    run_like(p, "sweep")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "mesh",
        parents=[common],
        help='generate a mesh file (.npz) for [mesh] type = "file"',
        description="Generate a mesh (circle S^1, icosphere S^2, box [-L, L]^dim) as an .npz "
        "file with arrays points and cells, optionally also as XDMF for ParaView.",
    )
    p.add_argument("kind", choices=["circle", "sphere", "box"])
    p.add_argument("--cells", type=int, help="circle: segments; box: cells per direction")
    p.add_argument("--level", type=int, help="sphere: icosahedron refinements (0-7)")
    p.add_argument("--dim", type=int, default=2, help="box: dimension (default 2)")
    p.add_argument("--length", type=float, default=1.0, help="box: half side L (default 1)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.npz", help="the mesh file")
    p.add_argument("--xdmf", action="store_true", help="also write FILE.xdmf (ParaView)")
    p.set_defaults(func=_cmd_mesh)

    p = sub.add_parser(
        "info",
        parents=[common],
        help="versions of attnflow, dolfinx, PETSc, MPI and the MPI size",
        description="Print the versions of attnflow and its stack and the number of MPI ranks.",
    )
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``attnflow``; returns the exit status (0, 1 on failure, 2 on bad input)."""
    args = build_parser().parse_args(argv)
    comm = MPI.COMM_WORLD
    log = logging.getLogger("attnflow")
    saved = (log.level, log.propagate, list(log.handlers))
    configure_logging(
        comm.rank,
        level=args.log_level,
        all_ranks=args.log_all_ranks,
        quiet=args.quiet,
        size=comm.size,
    )
    try:
        return int(args.func(args, comm))
    except KeyboardInterrupt:
        logger.error("interrupted (rank %d)", comm.rank)
        if comm.size > 1:
            comm.Abort(130)
        return 130
    except Exception as e:
        logger.critical(
            "attnflow %s failed on rank %d: %s: %s",
            args.command,
            comm.rank,
            type(e).__name__,
            e,
            exc_info=True,
        )
        if comm.size > 1:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            comm.Abort(EXIT_FAILURE)  # one failing rank ends all (none is left waiting)
        return EXIT_FAILURE
    finally:
        for h in list(log.handlers):
            if h not in saved[2]:
                log.removeHandler(h)
                h.close()
        log.setLevel(saved[0])
        log.propagate = saved[1]
