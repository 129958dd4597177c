"""The schema of a run configuration: its sections as plain frozen dataclasses.

A :class:`Config` is what :func:`attnflow.app.config.parse_config` returns: every default
filled in, paths absolute, save times explicit. The sections hold data only; the library
objects they describe (model, mesh, initial density and law, kernel, solver, method) are built
by :mod:`attnflow.app.build`. :meth:`Config.to_toml` writes the resolved configuration as TOML
that parses back to an equal configuration. The keys and their meaning are documented in
``docs/config.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnflow.app.config.tomlio import dumps_toml

__all__ = [
    "INITIAL_COMMON",
    "INITIAL_KEYS",
    "INITIAL_TYPES",
    "KERNELS",
    "MESH_TYPES",
    "METHODS",
    "SECTIONS",
    "SOLVERS",
    "CheckpointSection",
    "CompareSection",
    "Config",
    "FemSection",
    "InitialSection",
    "MeshSection",
    "ModelSection",
    "OutputSection",
    "ParticlesSection",
    "RunSection",
    "SweepSection",
    "TimeSection",
]

#: The solvers a run may use (``run.solvers``).
SOLVERS = ("fem", "particles")
#: ``mesh.type`` values.
MESH_TYPES = ("circle", "sphere", "box", "file")
#: ``initial.type`` values.
INITIAL_TYPES = (
    "uniform",
    "perturbed_circle",
    "circle_modes",
    "von_mises_fisher",
    "gaussian",
    "expression",
)
#: ``fem.kernel`` values.
KERNELS = ("dense", "sparse", "recomputed")
#: ``particles.method`` values.
METHODS = ("rk4", "euler")

#: Keys of each initial density type (besides ``type``, ``normalize``, ``half_width``, ``bound``).
INITIAL_KEYS: dict[str, tuple[str, ...]] = {
    "uniform": (),
    "perturbed_circle": ("eps", "mode", "phase"),
    "circle_modes": ("amplitudes", "modes", "phases"),
    "von_mises_fisher": ("mu", "kappa"),
    "gaussian": ("mean", "cov"),
    "expression": ("expression",),
}
#: Keys of every initial density type.
INITIAL_COMMON = ("type", "normalize", "half_width", "bound")
#: The keys of every section.
SECTIONS: dict[str, tuple[str, ...]] = {
    "run": ("solvers", "name"),
    "model": ("d", "beta", "attention", "space", "Q", "K", "V", "rescale_usa", "centered"),
    "mesh": ("type", "cells", "level", "length", "path"),
    "initial": INITIAL_COMMON + tuple(k for ks in INITIAL_KEYS.values() for k in ks),
    "time": ("t_final", "save_times", "n_saves", "save_every"),
    "fem": ("degree", "kernel", "tol", "cfl", "quadrature_degree", "energy"),
    "particles": ("n", "runs", "dt", "seed", "method"),
    "compare": ("l1", "clusters"),
    "output": ("directory", "paraview", "figures", "particle_runs"),
    "checkpoint": ("every", "keep"),
    "sweep": ("parameter", "values"),
}


@dataclass(frozen=True)
class RunSection:
    """``[run]``: which solvers, and the run's name."""

    solvers: tuple[str, ...]
    name: str = "run"

    @property
    def fem(self) -> bool:
        """The finite element solver runs."""
        return "fem" in self.solvers

    @property
    def particles(self) -> bool:
        """The particle solver runs."""
        return "particles" in self.solvers


@dataclass(frozen=True)
class ModelSection:
    """``[model]``: the attention dynamics (see :class:`attnflow.SelfAttention`)."""

    d: int
    beta: float = 1.0
    attention: str = "SA"
    space: str = "sphere"
    Q: tuple | None = None
    K: tuple | None = None
    V: tuple | None = None
    rescale_usa: bool = False
    centered: bool = False

    @property
    def sphere(self) -> bool:
        """The dynamics lives on the unit sphere (else in R^d)."""
        return self.space == "sphere"


@dataclass(frozen=True)
class MeshSection:
    """``[mesh]``: the finite element mesh."""

    type: str
    cells: int | None = None
    level: int | None = None
    length: float | None = None
    path: str | None = None

    @property
    def geometry(self) -> str:
        """Cost of the Wasserstein distance and histograms: circle, sphere or euclidean."""
        return {"circle": "circle", "sphere": "sphere"}.get(self.type, "euclidean")


@dataclass(frozen=True)
class InitialSection:
    """``[initial]``: the initial density (finite elements) and law (particles)."""

    type: str
    params: dict = field(default_factory=dict)
    normalize: bool = True
    half_width: float | None = None
    bound: float | None = None


@dataclass(frozen=True)
class TimeSection:
    """``[time]``: final time and save times (resolved to an explicit list)."""

    t_final: float
    save_times: tuple[float, ...]


@dataclass(frozen=True)
class FemSection:
    """``[fem]``: the finite element discretisation (see :class:`MeanFieldSolver`)."""

    degree: int = 1
    kernel: str = "dense"
    tol: float = 1e-12
    cfl: float = 0.9
    quadrature_degree: int = 4
    energy: bool = True


@dataclass(frozen=True)
class ParticlesSection:
    """``[particles]``: the Monte Carlo ensemble (see :func:`attnflow.ensemble`)."""

    n: int = 1000
    runs: int = 1
    dt: float = 0.1
    seed: int = 0
    method: str = "rk4"


@dataclass(frozen=True)
class CompareSection:
    """``[compare]``: metrics between the two solvers (runs with both)."""

    l1: bool = True
    clusters: bool = True


@dataclass(frozen=True)
class OutputSection:
    """``[output]``: where and what to write."""

    directory: str | None = None
    paraview: bool = True
    figures: bool = True
    particle_runs: int = 1


@dataclass(frozen=True)
class CheckpointSection:
    """``[checkpoint]``: a checkpoint every ``every`` steps (0: none), the newest ``keep``."""

    every: int = 0
    keep: int = 1


@dataclass(frozen=True)
class SweepSection:
    """``[sweep]``: run the configuration once per value of ``parameter`` (a dotted key)."""

    parameter: str
    values: tuple


@dataclass(frozen=True)
class Config:
    """A validated, resolved run configuration (see ``docs/config.md``)."""

    run: RunSection
    model: ModelSection
    mesh: MeshSection | None
    initial: InitialSection
    time: TimeSection
    fem: FemSection
    particles: ParticlesSection
    compare: CompareSection
    output: OutputSection
    checkpoint: CheckpointSection
    sweep: SweepSection | None = None

    # -- writing -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved configuration as nested tables (every default filled in)."""
        m = self.model

        def mat(a):
            return "identity" if a is None else [list(r) for r in a]

        out: dict[str, dict[str, Any]] = {
            "run": {"solvers": list(self.run.solvers), "name": self.run.name},
            "model": {
                "d": m.d,
                "beta": m.beta,
                "attention": m.attention,
                "space": m.space,
                "Q": mat(m.Q),
                "K": mat(m.K),
                "V": mat(m.V),
                "rescale_usa": m.rescale_usa,
                "centered": m.centered,
            },
        }
        if self.mesh is not None:
            ms = self.mesh
            keys = {"circle": ("cells",), "sphere": ("level",), "box": ("cells", "length")}
            out["mesh"] = {"type": ms.type}
            for k in keys.get(ms.type, ("path",)):
                out["mesh"][k] = getattr(ms, k)
        ini = self.initial
        init: dict[str, Any] = {"type": ini.type}
        for k in INITIAL_KEYS[ini.type]:
            v = ini.params[k]
            init[k] = (
                [list(r) for r in v] if k == "cov" else (list(v) if isinstance(v, tuple) else v)
            )
        init["normalize"] = ini.normalize
        if ini.half_width is not None:
            init["half_width"] = ini.half_width
        if ini.bound is not None:
            init["bound"] = ini.bound
        out["initial"] = init
        out["time"] = {"t_final": self.time.t_final, "save_times": list(self.time.save_times)}
        if self.run.fem:
            out["fem"] = _fields(self.fem)
        if self.run.particles:
            out["particles"] = _fields(self.particles)
        if self.run.fem and self.run.particles:
            out["compare"] = _fields(self.compare)
        o = _fields(self.output)
        if o["directory"] is None:
            del o["directory"]
        out["output"] = o
        out["checkpoint"] = _fields(self.checkpoint)
        if self.sweep is not None:
            out["sweep"] = {"parameter": self.sweep.parameter, "values": list(self.sweep.values)}
        return out

    def to_toml(self) -> str:
        """The resolved configuration as TOML (parses back to an equal configuration)."""
        return dumps_toml(self.to_dict(), header="attnflow run configuration (resolved)")

    def with_output(self, directory: str | Path) -> Config:
        """A copy writing to ``directory`` (made absolute)."""
        out = OutputSection(
            str(Path(directory).expanduser().absolute()),
            self.output.paraview,
            self.output.figures,
            self.output.particle_runs,
        )
        return Config(**{**self.__dict__, "output": out})

    def without_sweep(self) -> Config:
        """A copy without the ``[sweep]`` section."""
        return Config(**{**self.__dict__, "sweep": None})


def _fields(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
