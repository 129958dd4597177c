"""Checkpoint files: where a solve stands, written atomically, enough to continue it bitwise.

A checkpoint is one ``.npz`` file (numpy only, no pickles) holding a
:class:`~attnflow.states.FieldState` (finite elements) or a
:class:`~attnflow.states.ParticleState` (particle runs), the solver states of the library, plus
the resolved run configuration as TOML text. Arrays are stored in an order that does not
depend on the MPI partition (finite element dofs by the mesh's input cell index, particle runs
by run index), so a run checkpointed on ``p`` ranks continues on ``q``.

Files are written by :func:`attnflow.io.write_npz_atomic`: a temporary file in the same
directory (``name.tmp``), flushed and ``fsync``-ed, then renamed over the target with
:func:`os.replace` (atomic on POSIX), and the directory is ``fsync``-ed. A reader therefore sees
either the previous checkpoint or the new one, never a partial file, even if the writer is
killed (``SIGKILL``) in between.

:class:`CheckpointWriter` names the files ``<kind>-<step:08d>.npz`` in a directory, keeps the
newest ``keep`` of each kind and is called collectively (rank 0 writes); with a
:class:`~attnflow.app.manifest.Manifest` it records every file there (pending before writing,
with its hash after). Problems raise :class:`~attnflow.states.CheckpointError`, naming the file.

:func:`select_checkpoint` picks the newest checkpoint of a kind that reads completely (and
matches the manifest): a truncated or corrupt newer one is reported and skipped, so a resume
continues from the previous valid one.
"""

from __future__ import annotations

import logging
import re
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from attnflow.io import write_npz_atomic
from attnflow.states import CheckpointError, FieldState, ParticleState

__all__ = [
    "FORMAT_VERSION",
    "CheckpointWriter",
    "latest_checkpoint",
    "list_checkpoints",
    "read_checkpoint",
    "select_checkpoint",
    "write_checkpoint",
]

logger = logging.getLogger(__name__)

#: Version of the checkpoint layout (bumped on incompatible changes).
FORMAT_VERSION = 1

_NAME = re.compile(r"^(?P<kind>[a-z]+)-(?P<step>\d{8,})\.npz$")


# -- files ----------------------------------------------------------------------------------
def _state_arrays(state: FieldState | ParticleState, config_text: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format_version": np.int64(FORMAT_VERSION),
        "kind": np.array(state.kind),
        "config": np.array(config_text),
        "t": np.float64(state.t),
        "step": np.int64(state.step),
        "segment": np.int64(state.segment),
        "dt": np.float64(state.dt),
        "t_final": np.float64(state.t_final),
        "save_times": np.asarray(state.save_times, dtype=np.float64),
        "wall_time": np.float64(state.wall_time),
    }
    if isinstance(state, FieldState):
        if state.dofs is None or state.saved_dofs is None:
            raise CheckpointError("a FieldState without dofs cannot be written (not rank 0?)")
        out.update(
            time_step=np.float64(state.time_step),
            dofs=state.dofs,
            saved_dofs=state.saved_dofs,
            t_saved=state.t_saved,
            mass=state.mass,
            energy=state.energy,
            min_density=state.min_density,
            weights=state.weights,
            mass0=np.float64(state.mass0),
        )
    else:
        if state.x is None or state.saved is None:
            raise CheckpointError("a ParticleState without tokens cannot be written (rank 0?)")
        out.update(
            segment_step=np.int64(state.segment_step),
            x=state.x,
            status=np.array(state.status),
            seed=np.int64(-1 if state.seed is None else state.seed),
            rng_states=np.array(state.rng_states if state.rng_states else [""]),
            n_runs=np.int64(len(state.saved)),
        )
        for r, s in enumerate(state.saved):
            out[f"saved_{r}"] = s
    return out


def write_checkpoint(
    path: str | Path, state: FieldState | ParticleState, config_text: str = ""
) -> Path:
    """Write ``state`` (and the run's configuration text) to ``path`` atomically."""
    return write_npz_atomic(path, **_state_arrays(state, config_text))


def read_checkpoint(path: str | Path) -> tuple[FieldState | ParticleState, str]:
    """Read a checkpoint: ``(state, config_text)``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        return _state(path, data)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {e}".splitlines()[0]
        ) from None


def _state(path: Path, data: dict[str, Any]) -> tuple[FieldState | ParticleState, str]:
    version = int(data.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, this attnflow reads {FORMAT_VERSION}"
        )
    kind = str(data["kind"])
    common = dict(
        t=float(data["t"]),
        step=int(data["step"]),
        segment=int(data["segment"]),
        dt=float(data["dt"]),
        t_final=float(data["t_final"]),
        save_times=data["save_times"],
        wall_time=float(data["wall_time"]),
    )
    if kind == "fem":
        state: FieldState | ParticleState = FieldState(
            time_step=float(data["time_step"]),
            dofs=data["dofs"],
            saved_dofs=data["saved_dofs"],
            t_saved=data["t_saved"],
            mass=data["mass"],
            energy=data["energy"],
            min_density=data["min_density"],
            weights=data["weights"],
            mass0=float(data["mass0"]),
            **common,
        )
    elif kind == "particles":
        seed = int(data["seed"])
        rng = tuple(str(s) for s in data["rng_states"])
        state = ParticleState(
            segment_step=int(data["segment_step"]),
            x=data["x"],
            saved=[data[f"saved_{r}"] for r in range(int(data["n_runs"]))],
            status=tuple(str(s) for s in data["status"]),
            seed=None if seed < 0 else seed,
            rng_states=() if rng == ("",) else rng,
            **common,
        )
    else:
        raise CheckpointError(f"checkpoint {path} has unknown kind {kind!r}")
    return state, str(data["config"])


def list_checkpoints(directory: str | Path, kind: str) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoints of ``kind`` in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and m["kind"] == kind:
            found.append((int(m["step"]), p))
    return sorted(found)


def select_checkpoint(
    directory: str | Path,
    kind: str,
    verify: Callable[[Path], str | None] | None = None,
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint of ``kind`` that reads completely and passes ``verify`` (a
    callable returning ``None`` or the reason a file is not to be used, e.g.
    :meth:`attnflow.app.manifest.Manifest.verify`), and ``(path, reason)`` of every newer one
    skipped. ``(None, [...])`` when none is valid (``(None, [])``: there is none)."""
    bad: list[tuple[Path, str]] = []
    for _, path in reversed(list_checkpoints(directory, kind)):
        reason = verify(path) if verify is not None else None
        if reason is None:
            try:
                read_checkpoint(path)
            except CheckpointError as e:
                reason = str(e)
        if reason is None:
            return path, bad
        bad.append((path, reason))
    return None, bad


def latest_checkpoint(directory: str | Path, kind: str) -> Path | None:
    """The newest checkpoint of ``kind`` in ``directory`` (``None`` if there is none)."""
    found = list_checkpoints(directory, kind)
    return found[-1][1] if found else None


class CheckpointWriter:
    """Collective checkpoint callback: ``writer(state)`` on every rank, rank 0 writes.

    Parameters
    ----------
    directory : where the files go (created on the first write).
    kind : ``"fem"`` or ``"particles"`` (the file name prefix).
    config_text : the resolved configuration stored in every checkpoint.
    keep : how many of the newest checkpoints of this kind to keep (>= 1).
    comm : an mpi4py communicator (``None``: serial).
    manifest : the run directory's :class:`~attnflow.app.manifest.Manifest` (rank 0), which
        records the files written and removed.

    ``seconds`` accumulates the time spent writing (the checkpoint overhead), ``count`` the
    number of files written.
    """

    def __init__(
        self,
        directory: str | Path,
        kind: str,
        *,
        config_text: str = "",
        keep: int = 1,
        comm: Any = None,
        manifest: Any = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep!r}")
        self.directory = Path(directory)
        self.kind = kind
        self.config_text = config_text
        self.keep = int(keep)
        self.comm = comm
        self.manifest = manifest
        self.seconds = 0.0
        self.count = 0

    def __call__(self, state: FieldState | ParticleState) -> None:
        """Write ``state`` (rank 0) and drop the checkpoints beyond the newest ``keep``."""
        start = time.perf_counter()
        rank = self.comm.rank if self.comm is not None else 0
        if rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{self.kind}-{state.step:08d}.npz"
            if self.manifest is not None:
                self.manifest.pending(path)
            write_checkpoint(path, state, self.config_text)
            old = [p for _, p in list_checkpoints(self.directory, self.kind)[: -self.keep]]
            for p in old:
                p.unlink(missing_ok=True)
            if self.manifest is not None:
                self.manifest.record(path)
                self.manifest.forget(*old)
            logger.debug("checkpoint %s (t=%.6g)", path.name, state.t)
        self.count += 1
        self.seconds += time.perf_counter() - start
