"""Rank-aware logging and a progress bar for the command line.

:func:`configure_logging` sets up the ``attnflow`` logger: rank 0 logs at the chosen level,
the other ranks only warnings and errors (unless ``all_ranks``, then every record is prefixed
with its rank). Records go through ``tqdm.write`` so that they do not break a progress bar.
:class:`Progress` is a tqdm bar over the simulated time with an ETA, shown on rank 0 only and
hidden with ``quiet``; its ``update(t, step)`` fits the solvers' ``progress`` callbacks.

The library itself only logs (``logging.getLogger(__name__)``); nothing here is imported by
the solvers.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["Progress", "add_log_file", "configure_logging"]

_HANDLER_FLAG = "_attnflow_cli_handler"


class _TqdmHandler(logging.StreamHandler):
    """A stderr handler that writes through ``tqdm.write`` (bars stay intact)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover (tqdm missing or closed stream)
            super().emit(record)


def configure_logging(
    rank: int = 0,
    *,
    level: int | str = logging.INFO,
    all_ranks: bool = False,
    quiet: bool = False,
    size: int = 1,
) -> logging.Logger:
    """Configure the ``attnflow`` logger for a command-line run on MPI rank ``rank``.

    Rank 0 logs at ``level`` (``WARNING`` with ``quiet``); other ranks log warnings and errors
    only, unless ``all_ranks``. With more than one rank the records carry ``[rank r]``.
    Calling it again replaces the handler it installed.
    """
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(f"unknown log level {level!r}")
    if quiet:
        level = max(level, logging.WARNING)
    if rank != 0 and not all_ranks:
        level = max(level, logging.WARNING)
    log = logging.getLogger("attnflow")
    for h in list(log.handlers):
        if getattr(h, _HANDLER_FLAG, False):
            log.removeHandler(h)
            h.close()
    handler = _TqdmHandler()
    prefix = f"[rank {rank}] " if size > 1 else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s", "%H:%M:%S")
    )
    handler.setLevel(level)
    setattr(handler, _HANDLER_FLAG, True)
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return log


def add_log_file(path: str | Path, level: int = logging.INFO) -> logging.Handler:
    """Also log to ``path`` (call on rank 0 only); returns the handler (to remove it later)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    setattr(handler, _HANDLER_FLAG, True)
    log = logging.getLogger("attnflow")
    log.addHandler(handler)
    log.setLevel(min(log.getEffectiveLevel(), level))  # the console handler keeps its level
    return handler


class Progress:
    """A progress bar over the simulated time ``[t0, total]`` with an ETA (rank 0 only).

    Use as a context manager; ``update(t, step)`` is the solvers' ``progress`` callback.
    """

    def __init__(self, total: float, desc: str, *, enabled: bool = True, **kwargs: Any) -> None:
        self.total = float(total)
        self._t = 0.0
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover (tqdm is a dependency)
                return
            self._bar = tqdm(
                total=self.total,
                desc=desc,
                unit="t",
                file=sys.stderr,
                mininterval=0.5,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| t={n:.4g}/{total:.4g} "
                "[{elapsed}<{remaining}{postfix}]",
                **kwargs,
            )

    def update(self, t: float, step: int) -> None:
        if self._bar is None:
            return
        t = min(float(t), self.total)
        if t > self._t:
            self._bar.update(t - self._t)
            self._t = t
        self._bar.set_postfix_str(f"step {step}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
