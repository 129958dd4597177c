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
    "ARRAYS",
    "ATTENTIONS",
    "CAUSAL_FORMS",
    "CONTROL_KEYS",
    "HEAD_KEYS",
    "INITIAL_COMMON",
    "INITIAL_KEYS",
    "INITIAL_TYPES",
    "INTERACTION_KEYS",
    "KERNELS",
    "MESH_TYPES",
    "METHODS",
    "SECTIONS",
    "SOLVERS",
    "TERM_KEYS",
    "AttentionTerm",
    "CheckpointSection",
    "CompareSection",
    "Config",
    "Control",
    "FemSection",
    "InitialSection",
    "MeshSection",
    "ModelSection",
    "OutputSection",
    "ParticlesSection",
    "PerceptronTerm",
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
#: ``model.form`` values of a causal model (``model.causal = true``): causal softmax attention
#: (:class:`attnflow.SelfAttention` with ``causal=True``) or the interaction form of the
#: lost-in-the-middle model (:class:`attnflow.causal.CausalInteraction`).
CAUSAL_FORMS = ("softmax", "interaction")
#: The keys of ``[model]`` with ``form = "interaction"``.
INTERACTION_KEYS = ("d", "space", "beta", "causal", "alibi", "form", "rescale_usa")

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
#: ``model.attention`` values (``"none"``: no attention head from ``[model]``).
ATTENTIONS = ("SA", "USA", "none")
#: The keys of an attention head (``[model]`` and ``[[terms]]`` of type ``"attention"``).
HEAD_KEYS = ("beta", "attention", "Q", "K", "V", "rescale_usa", "centered")
#: The keys of each ``[[terms]]`` type (besides ``type``).
TERM_KEYS: dict[str, tuple[str, ...]] = {
    "perceptron": ("W", "A", "b", "activation"),
    "attention": HEAD_KEYS,
}
#: The keys of a ``[[controls]]`` table.
CONTROL_KEYS = ("start", "w", "a", "b", "activation")
#: The arrays of tables (``[[terms]]``, ``[[controls]]``) and their keys.
ARRAYS: dict[str, tuple[str, ...]] = {
    "terms": ("type", *dict.fromkeys(k for ks in TERM_KEYS.values() for k in ks)),
    "controls": CONTROL_KEYS,
}
#: The keys of every section.
SECTIONS: dict[str, tuple[str, ...]] = {
    "run": ("solvers", "name"),
    "model": (
        "d",
        "beta",
        "attention",
        "space",
        "Q",
        "K",
        "V",
        "rescale_usa",
        "centered",
        "output",
        "noise",
        "causal",
        "alibi",
        "form",
    ),
    "mesh": ("type", "cells", "level", "length", "path"),
    "initial": INITIAL_COMMON + tuple(k for ks in INITIAL_KEYS.values() for k in ks),
    "time": ("t_final", "save_times", "n_saves", "save_every"),
    "fem": ("degree", "kernel", "tol", "cfl", "quadrature_degree", "energy", "slices"),
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
class AttentionTerm:
    """``[[terms]]`` of ``type = "attention"``: a further head (see :class:`attnflow.MultiHead`)."""

    beta: float = 1.0
    attention: str = "SA"
    Q: tuple | None = None
    K: tuple | None = None
    V: tuple | None = None
    rescale_usa: bool = False
    centered: bool = False


@dataclass(frozen=True)
class PerceptronTerm:
    """``[[terms]]`` of ``type = "perceptron"``: ``sum_k W[:, k] s(A[k] . x + b[k])``
    (see :class:`attnflow.Perceptron`); ``W`` (d, m), ``A`` (m, d), ``b`` (m,) as tuples."""

    W: tuple
    A: tuple
    b: tuple
    activation: str = "relu"


@dataclass(frozen=True)
class Control:
    """``[[controls]]``: the width-one field ``w s(a . x + b)`` acting from time ``start`` to
    the next control's (piecewise-constant controls, :class:`attnflow.Piecewise`)."""

    start: float
    w: tuple
    a: tuple
    b: float
    activation: str = "relu"


@dataclass(frozen=True)
class ModelSection:
    """``[model]`` with ``[[terms]]`` and ``[[controls]]``: the dynamics.

    The attention head of ``[model]`` (:class:`attnflow.SelfAttention`; none with
    ``attention = "none"``), the further ``terms`` (attention heads and perceptrons, in the
    order given), the piecewise-constant ``controls``, the heads' ``output`` matrix and the
    ``noise`` (the diffusion coefficient sigma >= 0 of an :class:`attnflow.Diffusion` term).
    A ``causal`` model is one head and nothing else: causal softmax attention with the ALiBi
    slope ``alibi`` (``form = "softmax"``) or the interaction form of the lost-in-the-middle
    model (``form = "interaction"``, :class:`attnflow.causal.CausalInteraction`; ``attention``
    is then ``"USA"``: the kernel is not normalised, and ``rescale_usa`` is its ``rescale``).
    Built by :func:`attnflow.app.build.build_model`.
    """

    d: int
    beta: float = 1.0
    attention: str = "SA"
    space: str = "sphere"
    Q: tuple | None = None
    K: tuple | None = None
    V: tuple | None = None
    rescale_usa: bool = False
    centered: bool = False
    output: tuple | None = None
    terms: tuple[AttentionTerm | PerceptronTerm, ...] = ()
    controls: tuple[Control, ...] = ()
    noise: float = 0.0
    causal: bool = False
    alibi: float = 0.0
    form: str = "softmax"

    @property
    def interaction(self) -> bool:
        """The causal interaction form (:class:`attnflow.causal.CausalInteraction`)."""
        return self.causal and self.form == "interaction"

    @property
    def sphere(self) -> bool:
        """The dynamics lives on the unit sphere (else in R^d)."""
        return self.space == "sphere"

    def heads(self) -> tuple[tuple[str, AttentionTerm | ModelSection], ...]:
        """The attention heads with the prefix of their keys: ``("model", self)`` unless
        ``attention = "none"``, then ``("terms[i]", term)`` for the attention terms."""
        out: list[tuple[str, AttentionTerm | ModelSection]] = []
        if self.attention != "none":
            out.append(("model", self))
        out += [
            (f"terms[{i}]", t) for i, t in enumerate(self.terms) if isinstance(t, AttentionTerm)
        ]
        return tuple(out)


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
    slices: int = 32


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
    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as nested tables (every default filled in), with the
        arrays of tables ``terms`` and ``controls`` as lists of tables."""
        m = self.model
        mat = _matrix

        model: dict[str, Any] = {"d": m.d, "space": m.space, "attention": m.attention}
        if m.interaction:
            model = {"d": m.d, "space": m.space, "beta": m.beta, "rescale_usa": m.rescale_usa}
        elif m.attention != "none":
            model.update(_head(m))
        if m.output is not None:
            model["output"] = mat(m.output)
        # The keys added with noise and causal attention are written when they are used, so
        # that the problem of a run made before them (resume, checkpoints) is unchanged.
        if m.noise:
            model["noise"] = m.noise
        if m.causal:
            model.update(causal=True, alibi=m.alibi, form=m.form)
        out: dict[str, Any] = {
            "run": {"solvers": list(self.run.solvers), "name": self.run.name},
            "model": model,
        }
        if m.terms:
            out["terms"] = [
                {"type": "attention", **_head(t)}
                if isinstance(t, AttentionTerm)
                else {"type": "perceptron", **_plain(_fields(t))}
                for t in m.terms
            ]
        if m.controls:
            out["controls"] = [_plain(_fields(c)) for c in m.controls]
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
            if not m.causal:  # the slices of the kinetic solver only
                del out["fem"]["slices"]
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


def _matrix(a: tuple | None) -> Any:
    return "identity" if a is None else [list(r) for r in a]


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Tuples (vectors, matrices) as lists."""
    return {
        k: [list(r) if isinstance(r, tuple) else r for r in v] if isinstance(v, tuple) else v
        for k, v in d.items()
    }


def _head(h: AttentionTerm | ModelSection) -> dict[str, Any]:
    """The keys of an attention head (``[model]`` or an attention term)."""
    out = {"beta": h.beta, "attention": h.attention}
    out.update({k: _matrix(getattr(h, k)) for k in "QKV"})
    out.update(rescale_usa=h.rescale_usa, centered=h.centered)
    return out
