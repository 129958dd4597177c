"""Solutions of every solver: one family (diffrax style: times, states, a status, stats).

* :class:`Solution`: one particle run (:func:`attnflow.simulate`);
* :class:`EnsembleSolution`: R particle runs at common save times (:func:`attnflow.ensemble`);
* :class:`FieldSolution`: a finite element density (:meth:`attnflow.fem.MeanFieldSolver.solve`).

All share ``t`` (the save times), ``status`` (a :class:`Status`: how the solve ended) and
``stats`` (a read-only mapping: ``steps``, ``rhs_evaluations``, ``wall_time`` and, per
solver, ``dt``, ``method``, ``kernel``, ``matrix_entries``, ``rows_recomputed``, ``ranks``,
...). Each gives its states as :class:`~attnflow.cloud.Cloud` measures (``cloud(k)``), and
each can be saved to and loaded from a ``.npz`` file with numpy alone (no pickles, no dolfinx):
``sol.save(path)``, ``load_solution(path)`` (or ``FieldSolution.load(path)``, ...).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from attnflow.cloud import Cloud
from attnflow.io import read_npz, write_npz_atomic

__all__ = [
    "EnsembleSolution",
    "FieldSolution",
    "Solution",
    "Status",
    "load_solution",
]

#: Version of the ``.npz`` layout of saved solutions.
SOLUTION_FORMAT = 1


class Status(enum.Enum):
    """How a solve ended."""

    SUCCESS = "success"
    NONFINITE = "non-finite state"
    #: The state stayed finite but a recorded quantity (an energy) overflowed to inf or NaN.
    OVERFLOW = "overflow"


def _stats(stats: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(stats or {}))


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


class _Saveable:
    """``save``/``load`` of a frozen dataclass of arrays, a status and stats as ``.npz``."""

    kind: ClassVar[str]
    _arrays: ClassVar[tuple[str, ...]]
    _optional: ClassVar[tuple[str, ...]] = ()

    def _extra(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | Path) -> Path:
        """Write the solution to ``path`` (``.npz``) atomically; numpy only. Returns the path."""
        out: dict[str, Any] = {
            "format": np.int64(SOLUTION_FORMAT),
            "kind": np.array(self.kind),
            "stats": np.array(json.dumps(_jsonable(dict(self.stats)), sort_keys=True)),
        }
        for name in self._arrays:
            out[name] = np.asarray(getattr(self, name))
        for name in self._optional:
            v = getattr(self, name)
            if v is not None:
                out[name] = np.asarray(v)
        out.update(self._extra())
        return write_npz_atomic(path, **out)

    @classmethod
    def load(cls, path: str | Path):
        """Read a solution written by :meth:`save` (raises ``ValueError`` naming the file)."""
        sol = load_solution(path)
        if not isinstance(sol, cls):
            raise ValueError(f"{path}: holds a {type(sol).__name__}, not a {cls.__name__}")
        return sol


@dataclass(frozen=True, eq=False)
class Solution(_Saveable):
    """A particle trajectory sampled at the save times.

    Attributes
    ----------
    t : (n_saved,) save times.
    x : (n_saved, N, d) token positions at the save times.
    weights : (N,) token weights (constant in time).
    status : :class:`Status` of the solve.
    stats : ``steps``, ``rhs_evaluations``, ``wall_time``, ``dt``, ``method``, ``ranks``.
    """

    t: np.ndarray
    x: np.ndarray
    weights: np.ndarray
    status: Status
    stats: Mapping[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "particles"
    _arrays: ClassVar[tuple[str, ...]] = ("t", "x", "weights")

    def __post_init__(self) -> None:
        object.__setattr__(self, "stats", _stats(self.stats))

    def _extra(self) -> dict[str, Any]:
        return {"status": np.array(self.status.value)}

    @property
    def n_steps(self) -> int:
        """Number of time steps taken (``stats["steps"]``)."""
        return int(self.stats.get("steps", 0))

    @property
    def final(self) -> np.ndarray:
        """(N, d) positions at the last save time."""
        return self.x[-1]

    def cloud(self, k: int = -1) -> Cloud:
        """The tokens at save ``k`` as a :class:`Cloud`."""
        return Cloud(self.x[k], self.weights)


@dataclass(frozen=True, eq=False)
class EnsembleSolution(_Saveable):
    """R particle runs at common save times.

    Attributes
    ----------
    t : (n_saved,) save times.
    x : (R, n_saved, N, d) token positions of every run.
    weights : (N,) token weights.
    run_status : (R,) :class:`Status` of every run.
    stats : ``steps``, ``rhs_evaluations`` (per run), ``wall_time``, ``dt``, ``method``,
        ``ranks``, ``seed``.

    ``status`` is :attr:`Status.SUCCESS` when every run succeeded, else the first failure.
    """

    t: np.ndarray
    x: np.ndarray
    weights: np.ndarray
    run_status: tuple[Status, ...]
    stats: Mapping[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "ensemble"
    _arrays: ClassVar[tuple[str, ...]] = ("t", "x", "weights")

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_status", tuple(Status(s) for s in self.run_status))
        object.__setattr__(self, "stats", _stats(self.stats))

    def _extra(self) -> dict[str, Any]:
        return {"run_status": np.array([s.value for s in self.run_status])}

    @property
    def status(self) -> Status:
        """:attr:`Status.SUCCESS` if every run succeeded, else the first run's failure."""
        for s in self.run_status:
            if s is not Status.SUCCESS:
                return s
        return Status.SUCCESS

    @property
    def n_runs(self) -> int:
        """Number of runs R."""
        return int(self.x.shape[0])

    @property
    def n_steps(self) -> int:
        """Number of time steps taken (``stats["steps"]``)."""
        return int(self.stats.get("steps", 0))

    def cloud(self, run: int, k: int = -1) -> Cloud:
        """The tokens of run ``run`` at save ``k`` as a :class:`Cloud`."""
        return Cloud(self.x[run, k], self.weights)

    def run(self, r: int) -> Solution:
        """Run ``r`` as a :class:`Solution`."""
        return Solution(self.t, self.x[r], self.weights, self.run_status[r], self.stats)


@dataclass(frozen=True, eq=False)
class FieldSolution(_Saveable):
    """Finite element solution at the save times (identical on every rank).

    Attributes
    ----------
    t : (n_saved,) save times.
    mass : (n_saved,) total mass ``int rho``.
    outflow : (n_saved,) mass that has left the domain (boxes; 0 on spheres).
    energy : (n_saved,) ``log E`` of the density (see ``SelfAttention.log_energy``), over the
        quadrature cloud (NaN when ``solve(..., energy=False)`` or the dynamics has none).
    min_density : (n_saved,) minimum of ``rho`` over the quadrature points.
    points : (n_points, d) quadrature points of all cells (input cell order, the same on any
        number of ranks).
    point_weights : (n_points,) quadrature weights ``|J| w_q`` (``weights / point_weights`` is
        the density at the points).
    weights : (n_saved, n_points) weights ``|J| w_q rho(y_q)``: each saved density as a
        weighted point cloud (:meth:`cloud`), compared with particles like any other cloud.
    points_per_cell : quadrature points per cell (``points`` is cell-major).
    dofs : (n_cells, n_dofs_per_cell) density dofs at the last save time, by input cell index
        (partition-independent; ``None`` for solutions built elsewhere).
    free_energy : (n_saved,) the free energy ``F = sigma int rho log rho - E(rho)`` (``sigma``
        the diffusion coefficient at the save time, ``E = exp(energy)`` the interaction
        energy; NaN where ``energy`` is NaN). For USA with ``Q = K = V = I`` the noisy flow is
        the Wasserstein gradient flow of ``F``, which then never increases. ``None`` for
        solutions built elsewhere (and files written before it existed).
    entropy : (n_saved,) ``int rho log rho`` (``0 log 0 = 0``), by the quadrature of the
        points (exact for DG0). ``None`` as ``free_energy``.
    status : :class:`Status` of the solve.
    stats : ``steps``, ``rhs_evaluations``, ``wall_time``, ``dt`` (the CFL step), ``degree``,
        ``kernel``, ``matrix_entries``, ``rows_recomputed``, ``ranks``.
    """

    t: np.ndarray
    mass: np.ndarray
    outflow: np.ndarray
    energy: np.ndarray
    min_density: np.ndarray
    points: np.ndarray
    point_weights: np.ndarray
    weights: np.ndarray
    points_per_cell: int = 1
    dofs: np.ndarray | None = None
    status: Status = Status.SUCCESS
    stats: Mapping[str, Any] = field(default_factory=dict)
    free_energy: np.ndarray | None = None
    entropy: np.ndarray | None = None

    kind: ClassVar[str] = "fem"
    _arrays: ClassVar[tuple[str, ...]] = (
        "t",
        "mass",
        "outflow",
        "energy",
        "min_density",
        "points",
        "point_weights",
        "weights",
        "points_per_cell",
    )
    _optional: ClassVar[tuple[str, ...]] = ("dofs", "free_energy", "entropy")

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "stats", _stats(self.stats))

    def _extra(self) -> dict[str, Any]:
        return {"status": np.array(self.status.value)}

    @property
    def dt(self) -> float:
        """The CFL time step (``stats["dt"]``)."""
        return float(self.stats.get("dt", np.nan))

    @property
    def n_steps(self) -> int:
        """Number of time steps taken (``stats["steps"]``)."""
        return int(self.stats.get("steps", 0))

    @property
    def wall_time(self) -> float:
        """Seconds spent in ``solve`` (``stats["wall_time"]``)."""
        return float(self.stats.get("wall_time", 0.0))

    def cloud(self, k: int = -1) -> Cloud:
        """The density at save ``k`` as a :class:`Cloud` of quadrature points.

        Negative weights (round-off of a limited DG1 density) are clipped to 0.
        """
        return Cloud(self.points, np.maximum(self.weights[k], 0.0))

    def cell_masses(self, k: int = -1) -> np.ndarray:
        """(n_cells,) mass of every cell at save ``k``, in the mesh's input cell order (for
        ``circle_mesh``/``sphere_mesh`` the order of the generator, as in the histograms of
        :mod:`attnflow.metrics`)."""
        return self.weights[k].reshape(-1, self.points_per_cell).sum(axis=1)


_KINDS: dict[str, type] = {c.kind: c for c in (Solution, EnsembleSolution, FieldSolution)}


def load_solution(path: str | Path) -> Solution | EnsembleSolution | FieldSolution:
    """Read any solution written by ``save`` (numpy only).

    Raises ``ValueError`` naming the file when it is not a readable attnflow solution.
    """
    data = read_npz(path)
    try:
        fmt = int(data["format"])
        kind = str(data["kind"])
        stats = json.loads(str(data["stats"]))
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{path}: not an attnflow solution file") from None
    if fmt != SOLUTION_FORMAT or kind not in _KINDS:
        raise ValueError(
            f"{path}: solution format {fmt}/{kind!r}, this attnflow reads "
            f"{SOLUTION_FORMAT}/{sorted(_KINDS)}"
        )
    cls = _KINDS[kind]
    try:
        args = {name: data[name] for name in cls._arrays}
        for name in cls._optional:
            args[name] = data.get(name)
        if cls is EnsembleSolution:
            args["run_status"] = tuple(Status(str(s)) for s in data["run_status"])
        else:
            args["status"] = Status(str(data["status"]))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: incomplete {kind} solution ({e})") from None
    if cls is FieldSolution:
        args["points_per_cell"] = int(args["points_per_cell"])
    return cls(stats=stats, **args)
