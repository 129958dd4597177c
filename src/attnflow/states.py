"""Solver states: where a solve stands after a step, enough to continue it bitwise.

:func:`attnflow.simulate`, :func:`attnflow.ensemble` and
:meth:`attnflow.fem.MeanFieldSolver.solve` hand a :class:`ParticleState` or a
:class:`FieldState` to their ``on_checkpoint`` callback and continue from one given as
``restart``. Arrays are in an order that does not depend on the MPI partition (finite element
dofs by the mesh's input cell index, particle runs by run index), so a state made on ``p``
ranks continues on ``q``. Writing them to files is the application's business
(:mod:`attnflow.app.checkpoint`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CheckpointError", "FieldState", "ParticleState", "rng_from_json", "rng_states_json"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run it should continue."""


@dataclass
class FieldState:
    """The state of :meth:`attnflow.fem.MeanFieldSolver.solve` after a time step.

    Attributes
    ----------
    t : time reached; step : steps taken; time_step : the TS step size at that point.
    segment : index of the save time the solve is integrating towards (records of the save
        times before it are done).
    dt : the CFL step of the solver (a check: it depends on the mesh and model only).
    t_final, save_times : the solve's arguments (a resumed solve must use the same).
    dofs : (n_cells, n_dofs_per_cell) density dofs ordered by the mesh's input cell index
        (partition-independent). Only on rank 0 when produced by a parallel solve.
    saved_dofs : (n_recorded, n_cells, n_dofs_per_cell) the dofs at the recorded save times
        (to rewrite the ParaView files of a resumed run). Rank 0 only, like ``dofs``.
    t_saved, mass, energy, min_density : (n_recorded,) records of the save times done.
    weights : (n_recorded, n_points) the recorded densities as weighted point clouds.
    mass0 : the initial mass; wall_time : seconds spent in ``solve`` so far.
    """

    t: float
    step: int
    time_step: float
    segment: int
    dt: float
    t_final: float
    save_times: np.ndarray
    dofs: np.ndarray | None
    saved_dofs: np.ndarray | None
    t_saved: np.ndarray
    mass: np.ndarray
    energy: np.ndarray
    min_density: np.ndarray
    weights: np.ndarray
    mass0: float
    wall_time: float = 0.0

    kind = "fem"


@dataclass
class ParticleState:
    """The state of :func:`attnflow.simulate` / :func:`attnflow.ensemble` after a step.

    Attributes
    ----------
    t : time reached; step : steps taken in total.
    segment : index of the save time being integrated towards; segment_step : steps taken
        in that segment (the step size of a segment is fixed by its end points and ``dt``,
        so the time grid of a resumed run is the same as that of an uninterrupted one).
    dt : the maximal step; t_final, save_times : the arguments of the run.
    x : (R, N, d) current tokens of every run (R = 1 for :func:`simulate`).
    saved : R arrays (n_recorded_r, N, d): the tokens at the save times recorded so far.
    status : R status values (``Status.value``); a run that became non-finite has stopped.
    seed : the ensemble's seed (``None`` for :func:`simulate`).
    rng_states : R JSON strings: the state of each run's generator at the checkpoint
        (:func:`rng_states_json`; read back with :func:`rng_from_json`). A deterministic run
        draws nothing after its initial tokens (the state then documents the stream); a noisy
        run (a :class:`~attnflow.Diffusion` term) draws the normals of every step from it and
        resumes its stream from this state, so a restarted noisy run ends bitwise as an
        uninterrupted one. :func:`attnflow.simulate` stores its noise generator (the same on
        every rank), ``""`` for a deterministic run.
    wall_time : seconds spent so far.
    """

    t: float
    step: int
    segment: int
    segment_step: int
    dt: float
    t_final: float
    save_times: np.ndarray
    x: np.ndarray | None
    saved: list[np.ndarray] | None
    status: tuple[str, ...]
    seed: int | None = None
    rng_states: tuple[str, ...] = field(default=())
    wall_time: float = 0.0

    kind = "particles"


def rng_states_json(states: list[dict]) -> tuple[str, ...]:
    """Bit generator states as JSON strings (ints kept exact; the arrays of the MT19937 and
    Philox states as ``{"__ndarray__": [...], "dtype": ...}``)."""
    return tuple(json.dumps(s, sort_keys=True, default=_array_json) for s in states)


def _array_json(a: object) -> dict:
    if isinstance(a, np.ndarray):
        return {"__ndarray__": a.tolist(), "dtype": str(a.dtype)}
    if isinstance(a, np.integer):
        return int(a)  # type: ignore[return-value]
    raise TypeError(f"cannot write {type(a).__name__} in a generator state")


def _json_array(obj: dict) -> object:
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    return obj


def rng_from_json(text: str) -> np.random.Generator:
    """The generator whose bit generator state is the JSON ``text`` of :func:`rng_states_json`.

    Raises :class:`CheckpointError` when ``text`` is not such a state (of a numpy bit
    generator: PCG64, PCG64DXSM, MT19937, Philox or SFC64).
    """
    kinds = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
    try:
        state = json.loads(text, object_hook=_json_array)
        kind = state["bit_generator"]
        if kind not in kinds:
            raise ValueError(f"unknown bit generator {kind!r}")
        bits = getattr(np.random, kind)()
        bits.state = state
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(
            f"rng_states: not a numpy bit generator state ({type(e).__name__}: {e})".splitlines()[0]
        ) from None
    return np.random.Generator(bits)
