"""Run and sweep directories on disk: create or empty them safely, and run one configuration.

:func:`check_new_dir` accepts a new output directory that is absent or empty, or — with
``--overwrite`` — holds only what attnflow wrote (its manifest, :mod:`attnflow.app.manifest`;
a symbolic link, a directory without a manifest, a file it does not list or whose content
changed are refused in one line). :func:`prepare_dir` removes exactly those files and starts a
new manifest. :func:`run_one` writes the resolved configuration and ``run.log`` (recorded in
the manifest) and executes the run; a failure is also logged, with its traceback, to
``run.log``. :func:`summary_complete` tells a finished run directory.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from attnflow.app.config import Config, ConfigError
from attnflow.app.logs import add_log_file
from attnflow.app.manifest import MANIFEST_NAME, Manifest, ManifestError
from attnflow.io import write_text_atomic

__all__ = ["check_new_dir", "prepare_dir", "run_one", "summary_complete"]

logger = logging.getLogger(__name__)


def check_new_dir(path: Path, *, overwrite: bool, key: str, inspect: bool = True) -> None:
    """A new run or sweep directory: absent or empty, or (``overwrite``) holding only what
    attnflow wrote (``inspect``: hash the files; rank 0 only, the others agree with it)."""
    if path.is_symlink():
        raise ConfigError(
            key,
            f"{path} is a symbolic link: give the directory itself (attnflow neither writes "
            "through nor deletes links)",
        )
    if path.exists() and not path.is_dir():
        raise ConfigError(key, f"{path} exists and is not a directory")
    if not path.exists():
        ancestor = next(p for p in path.parents if p.exists() or p.is_symlink())
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise ConfigError(key, f"cannot create {path}: {ancestor} is not a writable directory")
        return
    try:
        empty = not any(path.iterdir())
    except OSError as e:
        raise ConfigError(key, f"cannot list {path}: {e.strerror}") from None
    if empty:
        return
    if not overwrite:
        raise ConfigError(
            key,
            f"{path} exists and is not empty (continue it with --resume {path}, or replace "
            "it with --overwrite)",
        )
    if not inspect:
        return
    try:
        manifest = Manifest.load(path)
    except ManifestError as e:
        raise ConfigError(key, f"{e}: --overwrite will not delete anything there") from None
    if manifest is None:
        raise ConfigError(
            key,
            f"{path} is not an attnflow run directory (no {MANIFEST_NAME}): --overwrite will "
            "not delete it",
        )
    foreign = manifest.foreign()
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ConfigError(
            key,
            f"{path}: {foreign[0]}{more}: --overwrite will not delete it (attnflow only "
            "deletes what it wrote; move it away or choose another directory)",
        )


def prepare_dir(comm, path: Path, *, overwrite: bool, kind: str = "run") -> Manifest | None:
    """Empty (``overwrite``: remove what attnflow wrote) or create the directory and start
    its manifest; collective. Returns the manifest on rank 0."""
    manifest = None
    if comm.rank == 0:
        old = Manifest.load(path) if overwrite and path.is_dir() else None
        if old is not None:
            old.remove_owned()
        path.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(path, kind)
        manifest.save()
    comm.Barrier()
    return manifest


def summary_complete(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def run_one(
    cfg: Config, run_dir: Path, comm, *, resume: bool, quiet: bool, manifest: Manifest | None
) -> dict:
    """Write the resolved config (if new or changed) and execute; collective. A failure is
    also written, with its traceback, to ``run.log``."""
    from attnflow.app import runner  # (numba, the solvers: only when running)

    text = cfg.to_toml()
    handler = None
    if comm.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if manifest is None:
            manifest = Manifest.open(run_dir)
        path = run_dir / "config.toml"
        if not path.is_file() or path.read_text() != text:
            manifest.pending(path)
            write_text_atomic(path, text)
            manifest.record(path)
        manifest.pending(run_dir / "run.log")
        handler = add_log_file(run_dir / "run.log")
    comm.Barrier()
    try:
        if resume:
            logger.info("resuming %s on %d rank(s)", run_dir, comm.size)
        else:
            logger.info("run %s into %s on %d rank(s)", cfg.run.name, run_dir, comm.size)
        return runner.execute(cfg, run_dir, comm, resume=resume, quiet=quiet, manifest=manifest)
    except BaseException as e:
        if handler is not None:  # the console gets it from main()
            what = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            record = logging.getLogger("attnflow").makeRecord(
                __name__,
                logging.CRITICAL,
                __file__,
                0,
                "attnflow %s on rank 0: %s: %s",
                (what, type(e).__name__, e),
                sys.exc_info(),
            )
            handler.handle(record)
        raise
    finally:
        if handler is not None:
            logging.getLogger("attnflow").removeHandler(handler)
            handler.close()
            assert manifest is not None
            manifest.record(run_dir / "run.log", append=True)
