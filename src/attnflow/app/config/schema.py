"""Run configurations: a TOML file, validated strictly, resolved and written back.

A configuration describes one run of ``attnflow run``: the model, the mesh and the initial
density, the times, which solvers to run (finite elements, particles or both, then compared),
the output, checkpoints (and, for ``attnflow sweep``, the parameter to vary). The schema is
documented in ``docs/config.md``; :func:`load_config` reads a file, :func:`parse_config` a
table, and both raise :class:`ConfigError` with one line naming the dotted key and what is
allowed, e.g. ``model.beta: must be > 0, got -1``, before any work is done.

Validation covers unknown sections and keys, types, ranges and choices, matrix shapes, the
consistency of model, mesh and initial density, a mesh file that is missing or malformed, and
an initial density that is negative, not finite or has zero mass (evaluated at a fixed set of
probe points of the domain). :meth:`Config.to_toml` writes the resolved configuration (every
default filled in, paths absolute, save times explicit) as TOML that parses back to the same
configuration.

This module needs numpy (and scipy for the laws) only, not dolfinx.
"""

from __future__ import annotations

import ast
import copy
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnflow import laws
from attnflow.model import SelfAttention

__all__ = [
    "CheckpointSection",
    "CompareSection",
    "Config",
    "ConfigError",
    "FemSection",
    "InitialSection",
    "MeshSection",
    "ModelSection",
    "OutputSection",
    "ParticlesSection",
    "RunSection",
    "SweepSection",
    "TimeSection",
    "apply_override",
    "dumps_toml",
    "load_config",
    "parse_config",
    "parse_override",
    "read_mesh_arrays",
]

_REQUIRED = object()


class ConfigError(ValueError):
    """An invalid configuration: ``key`` is the dotted key, ``message`` what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = " ".join(str(message).split())  # one line
        super().__init__(f"{key}: {self.message}" if key else self.message)


# -- value checks ------------------------------------------------------------------------------
def _show(v: Any) -> str:
    """A value as it would be written in TOML (short)."""
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        s = "[" + ", ".join(_show(x) for x in v[:6]) + (", ..." if len(v) > 6 else "") + "]"
        return s if len(s) < 80 else s[:76] + "...]"
    return repr(v)


def _choices(options: Iterable[str]) -> str:
    return ", ".join(_show(o) for o in options)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(key: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    rng = (
        f" in [{lo}, {hi}]"
        if lo is not None and hi is not None
        else (f" >= {lo}" if lo is not None else "")
    )
    if not _is_int(v):
        raise ConfigError(key, f"must be an integer{rng}, got {_show(v)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(key, f"must be an integer{rng}, got {v}")
    return int(v)


def _float(
    key: str,
    v: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    allow_inf: bool = False,
) -> float:
    parts = []
    if gt is not None:
        parts.append(f"> {gt:g}")
    if ge is not None:
        parts.append(f">= {ge:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    if lt is not None:
        parts.append(f"< {lt:g}")
    want = " and ".join(parts) if parts else "a finite number"
    if not _is_number(v):
        raise ConfigError(key, f"must be a number {want}".replace("number a finite ", ""))
    x = float(v)
    bad = (
        math.isnan(x)
        or (math.isinf(x) and not allow_inf)
        or (gt is not None and not x > gt)
        or (ge is not None and not x >= ge)
        or (le is not None and not x <= le)
        or (lt is not None and not x < lt)
    )
    if bad:
        raise ConfigError(key, f"must be {want}, got {_show(v)}")
    return x


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(key, f"must be true or false, got {_show(v)}")
    return v


def _choice(key: str, v: Any, options: Sequence[str]) -> str:
    if not isinstance(v, str) or v not in options:
        raise ConfigError(key, f"must be one of {_choices(options)}, got {_show(v)}")
    return v


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(key, f"must be a non-empty string, got {_show(v)}")
    return v


def _vector(key: str, v: Any, n: int | None = None, *, what: str = "numbers") -> tuple:
    size = f"{n} " if n is not None else ""
    if (
        not isinstance(v, list)
        or not all(_is_number(x) for x in v)
        or (n is not None and len(v) != n)
        or not v
    ):
        got = f"a list of length {len(v)}" if isinstance(v, list) else _show(v)
        raise ConfigError(key, f"must be a list of {size}{what}, got {got}")
    a = tuple(float(x) for x in v)
    if not all(math.isfinite(x) for x in a):
        raise ConfigError(key, f"must hold finite {what}, got {_show(v)}")
    return a


def _matrix(key: str, v: Any, d: int, *, allow_identity: bool = False) -> tuple | None:
    want = (
        f'"identity", a number (times the identity) or a {d}x{d} array of numbers'
        if allow_identity
        else f"a {d}x{d} array of numbers"
    )
    if allow_identity:
        if isinstance(v, str):
            if v != "identity":
                raise ConfigError(key, f"must be {want}, got {_show(v)}")
            return None
        if _is_number(v):
            x = float(v)
            if not math.isfinite(x):
                raise ConfigError(key, f"must be finite, got {_show(v)}")
            return tuple(tuple(x if i == j else 0.0 for j in range(d)) for i in range(d))
    rows_ok = isinstance(v, list) and all(
        isinstance(r, list) and all(_is_number(x) for x in r) for r in v
    )
    if not rows_ok:
        raise ConfigError(key, f"must be {want}, got {_show(v)}")
    shape = (len(v), *({len(r) for r in v} if v else {0}))
    if len(shape) != 2 or shape != (d, d):
        got = f"{shape[0]}x{shape[1]}" if len(shape) == 2 else f"{len(v)} rows of unequal length"
        raise ConfigError(key, f"must be {want}, got a {got} array")
    m = tuple(tuple(float(x) for x in r) for r in v)
    if not all(math.isfinite(x) for r in m for x in r):
        raise ConfigError(key, "must have finite entries")
    return m


class _Table:
    """One section of the raw TOML: unknown keys are rejected up front."""

    def __init__(self, raw: Mapping[str, Any], name: str, allowed: Sequence[str]) -> None:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(name, f"must be a table ([{name}]), got {_show(value)}")
        for k in value:
            if k not in allowed:
                raise ConfigError(f"{name}.{k}", f"unknown key (allowed: {', '.join(allowed)})")
        self.raw, self.name, self.allowed = value, name, allowed

    def key(self, k: str) -> str:
        return f"{self.name}.{k}"

    def has(self, k: str) -> bool:
        return k in self.raw

    def get(self, k: str, default: Any = _REQUIRED, hint: str = "") -> Any:
        if k in self.raw:
            return self.raw[k]
        if default is _REQUIRED:
            raise ConfigError(self.key(k), "required" + (f" ({hint})" if hint else ""))
        return default

    def only(self, keys: Sequence[str], why: str) -> None:
        for k in self.raw:
            if k not in keys:
                raise ConfigError(self.key(k), f"not used {why} (allowed: {', '.join(keys)})")


# -- sections ----------------------------------------------------------------------------------
SOLVERS = ("fem", "particles")
MESH_TYPES = ("circle", "sphere", "box", "file")
INITIAL_TYPES = (
    "uniform",
    "perturbed_circle",
    "circle_modes",
    "von_mises_fisher",
    "gaussian",
    "expression",
)
KERNELS = ("dense", "sparse", "recomputed")
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
_INITIAL_COMMON = ("type", "normalize", "half_width", "bound")


@dataclass(frozen=True)
class RunSection:
    """``[run]``: which solvers, and the run's name."""

    solvers: tuple[str, ...]
    name: str = "run"

    @property
    def fem(self) -> bool:
        return "fem" in self.solvers

    @property
    def particles(self) -> bool:
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
        return self.space == "sphere"

    def build(self) -> SelfAttention:
        """The :class:`~attnflow.SelfAttention` model."""
        return SelfAttention(
            self.d,
            beta=self.beta,
            Q=None if self.Q is None else np.array(self.Q),
            K=None if self.K is None else np.array(self.K),
            V=None if self.V is None else np.array(self.V),
            normalized=self.attention == "SA",
            sphere=self.sphere,
            rescale_usa=self.rescale_usa,
            centered=self.centered,
        )


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

    def density(self, d: int) -> Callable[[np.ndarray], np.ndarray]:
        """The (not necessarily normalised) density, ``(n, d) -> (n,)``."""
        p, t = self.params, self.type
        if t == "expression":
            return _compile_expression("initial.expression", p["expression"], d)
        if t == "circle_modes":
            a, n, ph = (np.array(p[k]) for k in ("amplitudes", "modes", "phases"))

            def circle_modes(x: np.ndarray) -> np.ndarray:
                th = np.arctan2(x[:, 1], x[:, 0])
                return (1 + np.cos(np.outer(th, n) + ph) @ a) / (2 * np.pi)

            return circle_modes
        if t == "uniform" and self.half_width is not None:
            return lambda x: np.ones(np.asarray(x).shape[0])
        return self._law(d).pdf

    def _law(self, d: int) -> laws.Law:
        p, t = self.params, self.type
        if t == "uniform":
            return laws.UniformSphere(d)
        if t == "perturbed_circle":
            return laws.PerturbedCircle(p["eps"], p["mode"], p["phase"])
        if t == "von_mises_fisher":
            return laws.VonMisesFisher(p["mu"], p["kappa"])
        if t == "gaussian":
            return laws.Gaussian(p["mean"], p["cov"])
        raise AssertionError(t)  # pragma: no cover

    def law(self, d: int, sphere: bool) -> laws.Law:
        """The law the particles are drawn from."""
        t = self.type
        if t in ("expression", "circle_modes") or (t == "uniform" and not sphere):
            domain: laws.Box | int = (
                d if sphere else laws.Box([-self.half_width] * d, [self.half_width] * d)
            )
            bound = self.bound
            if t == "circle_modes":
                bound = (1 + float(np.abs(self.params["amplitudes"]).sum())) / (2 * np.pi)
            if t == "uniform":
                bound = 1.0
            return laws.DensityLaw(self.density(d), domain, bound=bound)
        return self._law(d)


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
        return Config(**{**self.__dict__, "sweep": None})


def _fields(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


# -- TOML writing ------------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        x = float(v)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return repr(x)
    if isinstance(v, str):
        out = []
        for ch in v:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _toml_key(k: str) -> str:
    ok = k and all(c.isalnum() or c in "_-" for c in k)
    return k if ok else _toml_value(k)


def dumps_toml(tables: Mapping[str, Any], header: str = "") -> str:
    """Write a mapping of tables (and top-level scalars) as TOML.

    Values: bools, ints, floats (``repr``, so they read back bitwise; ``inf``/``nan``),
    strings, and (nested) lists of these; one level of tables, plus nested tables as dotted
    headers. Enough for configurations; not a general TOML writer.
    """
    lines = [f"# {line}" for line in header.splitlines()] if header else []

    def emit(prefix: str, table: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
        subs = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        if prefix and (scalars or not subs):
            if lines:
                lines.append("")
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in subs.items():
            emit(f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k), v)

    emit("", tables)
    return "\n".join(lines) + "\n"


# -- expressions -------------------------------------------------------------------------------
_FUNCTIONS: dict[str, Callable] = {
    name: getattr(np, name)
    for name in (
        "sin",
        "cos",
        "tan",
        "arcsin",
        "arccos",
        "arctan",
        "arctan2",
        "sinh",
        "cosh",
        "tanh",
        "exp",
        "log",
        "sqrt",
        "abs",
        "minimum",
        "maximum",
        "where",
        "heaviside",
    )
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Subscript,
    ast.Slice,
    ast.Tuple,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.Mod,
    ast.USub,
    ast.UAdd,
    ast.BitAnd,
    ast.BitOr,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
)


def _variables(d: int) -> tuple[str, ...]:
    names = ["X", "r", *["x", "y", "z"][: min(d, 3)]]
    if d >= 2:
        names.append("theta")
    if d == 3:
        names.append("phi")
    return tuple(names)


def _compile_expression(key: str, text: str, d: int) -> Callable[[np.ndarray], np.ndarray]:
    """A density ``(n, d) -> (n,)`` from a numpy expression in a restricted language.

    Variables: ``X`` (the (n, d) points), ``x``, ``y``, ``z`` (coordinates), ``r = |X|``,
    ``theta = atan2(y, x)``, ``phi = arccos(z / r)`` (d = 3); constants ``pi``, ``e``; the
    numpy functions in ``_FUNCTIONS``; arithmetic, comparisons, ``&``, ``|``, indexing.
    """
    variables = _variables(d)
    allowed = set(variables) | set(_FUNCTIONS) | set(_CONSTANTS)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ConfigError(key, f"invalid expression {_show(text)}: {e.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise ConfigError(
                key, f"invalid expression {_show(text)}: {type(node).__name__} is not allowed"
            )
        if isinstance(node, ast.Name) and node.id not in allowed:
            raise ConfigError(
                key,
                f"invalid expression {_show(text)}: unknown name {node.id!r} (variables: "
                f"{', '.join(variables)}; constants: pi, e; functions: "
                f"{', '.join(_FUNCTIONS)})",
            )
        if isinstance(node, ast.Call) and (
            not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords
        ):
            raise ConfigError(key, f"invalid expression {_show(text)}: only calls of functions")
        if isinstance(node, ast.Constant) and not _is_number(node.value):
            raise ConfigError(key, f"invalid expression {_show(text)}: only numeric constants")
    code = compile(tree, "<initial.expression>", "eval")

    def density(points: np.ndarray) -> np.ndarray:
        X = np.asarray(points, dtype=float)
        ns: dict[str, Any] = {**_FUNCTIONS, **_CONSTANTS, "X": X}
        ns["r"] = np.linalg.norm(X, axis=1)
        for i, name in enumerate(["x", "y", "z"][: min(d, 3)]):
            ns[name] = X[:, i]
        if d >= 2:
            ns["theta"] = np.arctan2(X[:, 1], X[:, 0])
        if d == 3:
            with np.errstate(invalid="ignore", divide="ignore"):
                ns["phi"] = np.arccos(np.clip(X[:, 2] / ns["r"], -1.0, 1.0))
        with np.errstate(all="ignore"):
            v = eval(code, {"__builtins__": {}}, ns)  # the AST is whitelisted above
        return np.broadcast_to(np.asarray(v, dtype=float), (X.shape[0],)).copy()

    return density


# -- probes ------------------------------------------------------------------------------------
def _probe_points(d: int, sphere: bool, half_width: float | None, mesh_points) -> np.ndarray:
    if sphere:
        if d == 2:
            th = 2 * np.pi * (np.arange(4096) + 0.5) / 4096
            pts = np.stack([np.cos(th), np.sin(th)], axis=1)
        elif d == 3:  # Fibonacci lattice
            n = 8192
            k = np.arange(n) + 0.5
            z = 1 - 2 * k / n
            ph = np.pi * (1 + 5**0.5) * k
            s = np.sqrt(1 - z * z)
            pts = np.stack([s * np.cos(ph), s * np.sin(ph), z], axis=1)
        else:
            g = np.random.default_rng(0).standard_normal((8192, d))
            pts = g / np.linalg.norm(g, axis=1, keepdims=True)
    else:
        pts = np.zeros((0, d))
        if half_width is not None:
            per = {1: 4001, 2: 201, 3: 41}.get(d, max(2, round(20000 ** (1 / d))))
            axis = np.linspace(-half_width, half_width, per)
            grids = np.meshgrid(*([axis] * d), indexing="ij")
            pts = np.stack([g.ravel() for g in grids], axis=1)
    if mesh_points is not None:
        mp = np.asarray(mesh_points, dtype=float)
        if sphere:
            mp = mp / np.linalg.norm(mp, axis=1, keepdims=True)
        pts = np.concatenate([pts, mp])
    return pts


def _check_density(
    key: str, f: Callable, d: int, sphere: bool, half_width: float | None, mesh_points
) -> None:
    pts = _probe_points(d, sphere, half_width, mesh_points)
    if pts.shape[0] == 0:
        return
    try:
        v = np.asarray(f(pts), dtype=float).reshape(-1)
    except ConfigError:
        raise
    except Exception as e:  # an expression that fails on arrays, a law that rejects them
        raise ConfigError(key, f"cannot be evaluated: {type(e).__name__}: {e}") from None
    if v.shape != (pts.shape[0],):
        raise ConfigError(key, f"must give one value per point, got shape {v.shape}")
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(key, f"must be finite, got {v[i]} at x = {np.round(pts[i], 4).tolist()}")
    if v.min() < 0:
        i = int(np.argmin(v))
        raise ConfigError(
            key, f"must be >= 0, got {v[i]:.4g} at x = {np.round(pts[i], 4).tolist()}"
        )
    if not v.max() > 0:
        raise ConfigError(
            key, f"has zero mass: the density is 0 at all {pts.shape[0]} probe points"
        )


# -- mesh files --------------------------------------------------------------------------------
def read_mesh_arrays(path: str | Path, key: str = "mesh.path") -> tuple[np.ndarray, np.ndarray]:
    """``(points, cells)`` of a mesh file (``.npz`` with arrays ``points``, ``cells``).

    Raises :class:`ConfigError` naming ``key`` if the file is missing or malformed.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(key, f"no such mesh file: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "points" not in z.files or "cells" not in z.files:
                raise ConfigError(key, f"{p} must be an .npz file with arrays 'points' and 'cells'")
            points, cells = np.asarray(z["points"]), np.asarray(z["cells"])
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(key, f"cannot read {p} as .npz: {e}") from None
    if points.ndim != 2 or not 1 <= points.shape[1] <= 3 or points.shape[0] == 0:
        raise ConfigError(key, f"{p}: 'points' must have shape (n, 1..3), got {points.shape}")
    if not np.issubdtype(points.dtype, np.floating) or not np.all(np.isfinite(points)):
        raise ConfigError(key, f"{p}: 'points' must be finite floats")
    if cells.ndim != 2 or not 2 <= cells.shape[1] <= 4 or cells.shape[0] == 0:
        raise ConfigError(key, f"{p}: 'cells' must have shape (m, 2..4), got {cells.shape}")
    if not np.issubdtype(cells.dtype, np.integer):
        raise ConfigError(key, f"{p}: 'cells' must hold integers")
    if cells.min() < 0 or cells.max() >= points.shape[0]:
        raise ConfigError(key, f"{p}: 'cells' must index the points (0..{points.shape[0] - 1})")
    if cells.shape[1] - 1 > points.shape[1]:
        raise ConfigError(
            key, f"{p}: cells of dimension {cells.shape[1] - 1} need more coordinates"
        )
    return points.astype(np.float64), cells.astype(np.int64)


# -- parsing -----------------------------------------------------------------------------------
SECTIONS: dict[str, tuple[str, ...]] = {
    "run": ("solvers", "name"),
    "model": ("d", "beta", "attention", "space", "Q", "K", "V", "rescale_usa", "centered"),
    "mesh": ("type", "cells", "level", "length", "path"),
    "initial": _INITIAL_COMMON + tuple(k for ks in INITIAL_KEYS.values() for k in ks),
    "time": ("t_final", "save_times", "n_saves", "save_every"),
    "fem": ("degree", "kernel", "tol", "cfl", "quadrature_degree", "energy"),
    "particles": ("n", "runs", "dt", "seed", "method"),
    "compare": ("l1", "clusters"),
    "output": ("directory", "paraview", "figures", "particle_runs"),
    "checkpoint": ("every", "keep"),
    "sweep": ("parameter", "values"),
}


def _parse_run(raw, name: str) -> RunSection:
    t = _Table(raw, "run", SECTIONS["run"])
    s = t.get("solvers", hint=f"a non-empty list of {_choices(SOLVERS)}")
    if (
        not isinstance(s, list)
        or not s
        or not all(isinstance(x, str) and x in SOLVERS for x in s)
        or len(set(s)) != len(s)
    ):
        raise ConfigError(
            t.key("solvers"),
            f"must be a non-empty list of distinct values among {_choices(SOLVERS)}, "
            f"got {_show(s)}",
        )
    solvers = tuple(x for x in SOLVERS if x in s)
    return RunSection(solvers, _str(t.key("name"), t.get("name", name)))


def _parse_model(raw) -> ModelSection:
    t = _Table(raw, "model", SECTIONS["model"])
    space = _choice(t.key("space"), t.get("space", "sphere"), ("sphere", "euclidean"))
    d = _int(t.key("d"), t.get("d", hint="the dimension of the ambient space"), 1, 64)
    if space == "sphere" and d < 2:
        raise ConfigError(t.key("d"), f"must be >= 2 on the sphere (S^(d-1)), got {d}")
    beta_raw = t.get("beta", 1.0)
    if not _is_number(beta_raw) or math.isnan(float(beta_raw)) or not float(beta_raw) > 0:
        raise ConfigError(t.key("beta"), f"must be > 0, got {_show(beta_raw)}")
    beta = float(beta_raw)
    attention = _choice(t.key("attention"), t.get("attention", "SA"), ("SA", "USA"))
    if math.isinf(beta) and attention == "USA":
        raise ConfigError(t.key("beta"), 'must be finite for attention = "USA" (hardmax is SA)')
    mats = {k: _matrix(t.key(k), t.get(k, "identity"), d, allow_identity=True) for k in "QKV"}
    rescale = _bool(t.key("rescale_usa"), t.get("rescale_usa", False))
    if rescale and attention != "USA":
        raise ConfigError(t.key("rescale_usa"), 'applies to attention = "USA" only')
    centered = _bool(t.key("centered"), t.get("centered", False))
    m = ModelSection(d, beta, attention, space, mats["Q"], mats["K"], mats["V"], rescale, centered)
    try:
        m.build()
    except (TypeError, ValueError) as e:  # anything the model itself rejects
        raise ConfigError("model", str(e)) from None
    return m


def _parse_mesh(raw, model: ModelSection, base_dir: Path, fem: bool) -> MeshSection | None:
    if "mesh" not in raw:
        if fem:
            raise ConfigError(
                "mesh",
                f"required for the finite element solver ([mesh] with type = "
                f"{_choices(MESH_TYPES)})",
            )
        return None
    t = _Table(raw, "mesh", SECTIONS["mesh"])
    kind = _choice(t.key("type"), t.get("type", hint=_choices(MESH_TYPES)), MESH_TYPES)
    keys = {"circle": ("cells",), "sphere": ("level",), "box": ("cells", "length")}.get(
        kind, ("path",)
    )
    t.only(("type", *keys), f'by mesh.type = "{kind}"')
    d, space = model.d, model.space
    need = {
        "circle": ("sphere", 2, 'model.space = "sphere" and model.d = 2 (S^1)'),
        "sphere": ("sphere", 3, 'model.space = "sphere" and model.d = 3 (S^2)'),
    }
    if kind in need and (space, d) != need[kind][:2]:
        raise ConfigError(t.key("type"), f'"{kind}" needs {need[kind][2]}')
    if kind == "box" and (space != "euclidean" or d > 3):
        raise ConfigError(t.key("type"), '"box" needs model.space = "euclidean" and d <= 3')
    if kind == "circle":
        return MeshSection(kind, cells=_int(t.key("cells"), t.get("cells"), 3))
    if kind == "sphere":
        return MeshSection(kind, level=_int(t.key("level"), t.get("level"), 0, 7))
    if kind == "box":
        return MeshSection(
            kind,
            cells=_int(t.key("cells"), t.get("cells"), 1),
            length=_float(t.key("length"), t.get("length", hint="half side L of [-L, L]^d"), gt=0),
        )
    path = Path(_str(t.key("path"), t.get("path"))).expanduser()
    path = (path if path.is_absolute() else base_dir / path).resolve()
    points, cells = read_mesh_arrays(path, t.key("path"))
    gdim, tdim = points.shape[1], cells.shape[1] - 1
    if gdim != d:
        raise ConfigError(t.key("path"), f"{path} has {gdim}-D points, model.d is {d}")
    if (tdim < gdim) != (space == "sphere"):
        want = "a manifold mesh of the sphere" if space == "sphere" else "a volume mesh"
        raise ConfigError(t.key("path"), f"{path}: model.space = {_show(space)} needs {want}")
    if space == "sphere" and np.max(np.abs(np.linalg.norm(points, axis=1) - 1)) > 1e-8:
        raise ConfigError(t.key("path"), f"{path}: the vertices must lie on the unit sphere")
    return MeshSection(kind, path=str(path))


def _parse_initial(
    raw, model: ModelSection, mesh: MeshSection | None, particles: bool
) -> InitialSection:
    t = _Table(raw, "initial", SECTIONS["initial"])
    kind = _choice(t.key("type"), t.get("type", hint=_choices(INITIAL_TYPES)), INITIAL_TYPES)
    keys = INITIAL_KEYS[kind]
    t.only(_INITIAL_COMMON + keys, f'by initial.type = "{kind}"')
    d, sphere = model.d, model.sphere
    if kind in ("perturbed_circle", "circle_modes") and not (sphere and d == 2):
        raise ConfigError(t.key("type"), f'"{kind}" needs model.space = "sphere" and d = 2')
    if kind == "von_mises_fisher" and not sphere:
        raise ConfigError(t.key("type"), '"von_mises_fisher" needs model.space = "sphere"')
    if kind == "gaussian" and sphere:
        raise ConfigError(t.key("type"), '"gaussian" needs model.space = "euclidean"')
    p: dict[str, Any] = {}
    if kind == "perturbed_circle":
        p["eps"] = _float(t.key("eps"), t.get("eps"), ge=-1, le=1)
        p["mode"] = _int(t.key("mode"), t.get("mode"), 1)
        p["phase"] = _float(t.key("phase"), t.get("phase", 0.0))
    elif kind == "circle_modes":
        a = _vector(t.key("amplitudes"), t.get("amplitudes"))
        modes = t.get("modes")
        if not isinstance(modes, list) or len(modes) != len(a):
            raise ConfigError(
                t.key("modes"), f"must be a list of {len(a)} integers >= 1 (one per amplitude)"
            )
        p["amplitudes"] = a
        p["modes"] = tuple(_int(f"{t.key('modes')}[{i}]", m, 1) for i, m in enumerate(modes))
        p["phases"] = _vector(t.key("phases"), t.get("phases", [0.0] * len(a)), len(a))
    elif kind == "von_mises_fisher":
        mu = np.array(_vector(t.key("mu"), t.get("mu"), d))
        if not np.linalg.norm(mu) > 0:
            raise ConfigError(t.key("mu"), f"must be a non-zero vector of {d} numbers")
        p["mu"] = tuple(float(v) for v in mu / np.linalg.norm(mu))
        p["kappa"] = _float(t.key("kappa"), t.get("kappa"), ge=0)
    elif kind == "gaussian":
        p["mean"] = _vector(t.key("mean"), t.get("mean"), d)
        cov = _matrix(t.key("cov"), t.get("cov"), d)
        c = np.array(cov)
        if not np.allclose(c, c.T) or np.linalg.eigvalsh(c).min() <= 0:
            raise ConfigError(t.key("cov"), "must be symmetric positive definite")
        p["cov"] = cov
    elif kind == "expression":
        p["expression"] = _str(t.key("expression"), t.get("expression"))
    normalize = _bool(t.key("normalize"), t.get("normalize", True))
    hw = t.get("half_width", None)
    half_width = None if hw is None else _float(t.key("half_width"), hw, gt=0)
    if t.has("half_width") and sphere:
        raise ConfigError(t.key("half_width"), 'is for model.space = "euclidean" only')
    bd = t.get("bound", None)
    bound = None if bd is None else _float(t.key("bound"), bd, gt=0)
    if bound is not None and kind != "expression":
        raise ConfigError(t.key("bound"), 'is for initial.type = "expression" only')
    if not sphere and half_width is None and mesh is not None and mesh.type == "box":
        half_width = mesh.length
    if not sphere and kind in ("uniform", "expression") and half_width is None and particles:
        raise ConfigError(
            t.key("half_width"),
            f'required for initial.type = "{kind}" in R^d with particles (they are drawn '
            "in [-half_width, half_width]^d)",
        )
    if not sphere and kind == "uniform" and half_width is None:
        raise ConfigError(t.key("half_width"), 'required for initial.type = "uniform" in R^d')
    ini = InitialSection(kind, p, normalize, half_width, bound)
    try:
        f = ini.density(d)
        if kind != "expression":
            ini.law(d, sphere)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError("initial", str(e)) from None
    mesh_points = None
    if mesh is not None and mesh.type == "file":
        points, cells = read_mesh_arrays(mesh.path)
        mesh_points = np.concatenate([points, points[cells].mean(axis=1)])
    key = {"expression": "initial.expression", "circle_modes": "initial.amplitudes"}.get(
        kind, "initial"
    )
    probe_hw = half_width if not sphere else None
    _check_density(key, f, d, sphere, probe_hw, mesh_points)
    return ini


def _parse_time(raw) -> TimeSection:
    t = _Table(raw, "time", SECTIONS["time"])
    t_final = _float(t.key("t_final"), t.get("t_final", hint="the final time, > 0"), gt=0)
    given = [k for k in ("save_times", "n_saves", "save_every") if t.has(k)]
    if len(given) > 1:
        raise ConfigError(
            t.key(given[1]), f"give only one of save_times, n_saves, save_every (also {given[0]})"
        )
    if t.has("save_times"):
        ts = _vector(t.key("save_times"), t.get("save_times"))
        a = np.array(ts)
        if np.any(np.diff(a) <= 0) or a[0] < 0 or a[-1] > t_final:
            raise ConfigError(
                t.key("save_times"), f"must be increasing and lie in [0, {t_final:g}] (t_final)"
            )
    elif t.has("save_every"):
        every = _float(t.key("save_every"), t.get("save_every"), gt=0, le=t_final)
        k = math.floor(t_final / every + 1e-9)
        a = every * np.arange(k + 1)
        a = a[a < t_final * (1 - 1e-12)]
        ts = (*map(float, a), t_final)
    else:
        n = _int(t.key("n_saves"), t.get("n_saves", 2), 2)
        ts = tuple(float(x) for x in np.linspace(0.0, t_final, n))
    return TimeSection(t_final, tuple(ts))


def _parse_simple(raw, name: str, cls, checks: dict[str, Callable[[str, Any], Any]]):
    t = _Table(raw, name, SECTIONS[name])
    defaults = cls()
    values = {k: check(t.key(k), t.get(k, getattr(defaults, k))) for k, check in checks.items()}
    return cls(**values)


def parse_config(
    raw: Mapping[str, Any],
    *,
    base_dir: str | Path = ".",
    name: str = "run",
    output: str | Path | None = None,
    allow_sweep: bool = False,
    sweep_point: bool = False,
) -> Config:
    """Validate a raw configuration table (as parsed from TOML) into a :class:`Config`.

    Parameters
    ----------
    raw : the TOML tables.
    base_dir : the directory relative mesh paths are resolved against (the config file's).
    name : default run name (``run.name``).
    output : overrides ``output.directory`` (relative to the working directory).
    allow_sweep : accept a ``[sweep]`` section (``attnflow sweep``).
    sweep_point : validate every point of the sweep too (with ``allow_sweep``).

    Raises
    ------
    ConfigError : the first problem found, naming its dotted key.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError("", "the configuration must be a table")
    for k, v in raw.items():
        if k not in SECTIONS:
            raise ConfigError(k, f"unknown section (allowed: {', '.join(SECTIONS)})")
        if not isinstance(v, dict):
            raise ConfigError(k, f"must be a table ([{k}]), got {_show(v)}")
    if "sweep" in raw and not allow_sweep:
        raise ConfigError("sweep", "this is a sweep configuration: run it with `attnflow sweep`")
    base = Path(base_dir)
    run = _parse_run(raw, name)
    model = _parse_model(raw)
    if run.fem and math.isinf(model.beta):
        raise ConfigError(
            "model.beta",
            "must be finite for the finite element solver (inf, hardmax, is for "
            'particles: run.solvers = ["particles"])',
        )
    mesh = _parse_mesh(raw, model, base, run.fem)
    initial = _parse_initial(raw, model, mesh, run.particles)
    time = _parse_time(raw)
    fem = _parse_simple(
        raw,
        "fem",
        FemSection,
        {
            "degree": lambda k, v: _int(k, v, 0, 1),
            "kernel": lambda k, v: _choice(k, v, KERNELS),
            "tol": lambda k, v: _float(k, v, gt=0, lt=1),
            "cfl": lambda k, v: _float(k, v, gt=0, le=1),
            "quadrature_degree": lambda k, v: _int(k, v, 1, 20),
            "energy": _bool,
        },
    )
    particles = _parse_simple(
        raw,
        "particles",
        ParticlesSection,
        {
            "n": lambda k, v: _int(k, v, 1),
            "runs": lambda k, v: _int(k, v, 1),
            "dt": lambda k, v: _float(k, v, gt=0),
            "seed": lambda k, v: _int(k, v, 0, 2**63 - 1),
            "method": lambda k, v: _choice(k, v, METHODS),
        },
    )
    compare = _parse_simple(raw, "compare", CompareSection, {"l1": _bool, "clusters": _bool})
    t = _Table(raw, "output", SECTIONS["output"])
    directory = output if output is not None else t.get("directory", None)
    if directory is not None:
        directory = str(Path(_str(t.key("directory"), str(directory))).expanduser().absolute())
    out = OutputSection(
        directory,
        _bool(t.key("paraview"), t.get("paraview", True)),
        _bool(t.key("figures"), t.get("figures", True)),
        _int(t.key("particle_runs"), t.get("particle_runs", 1), 0),
    )
    ck = _parse_simple(
        raw,
        "checkpoint",
        CheckpointSection,
        {"every": lambda k, v: _int(k, v, 0), "keep": lambda k, v: _int(k, v, 1)},
    )
    sweep = None
    if "sweep" in raw:
        sweep = _parse_sweep(raw)
    cfg = Config(run, model, mesh, initial, time, fem, particles, compare, out, ck, sweep)
    if sweep is not None and sweep_point:
        for i, v in enumerate(sweep.values):
            point = apply_override(raw, sweep.parameter, v)
            point.pop("sweep")
            try:
                parse_config(point, base_dir=base, name=name, output=output)
            except ConfigError as e:
                raise ConfigError(e.key, f"{e.message} (sweep.values[{i}] = {_show(v)})") from None
    return cfg


def _parse_sweep(raw) -> SweepSection:
    t = _Table(raw, "sweep", SECTIONS["sweep"])
    param = _str(t.key("parameter"), t.get("parameter", hint='a dotted key, e.g. "model.beta"'))
    section, _, key = param.partition(".")
    if section not in SECTIONS or section == "sweep" or key not in SECTIONS[section]:
        raise ConfigError(
            t.key("parameter"), f'must be a dotted key such as "model.beta", got {_show(param)}'
        )
    values = t.get("values", hint="a non-empty list")
    if not isinstance(values, list) or not values:
        raise ConfigError(t.key("values"), f"must be a non-empty list, got {_show(values)}")
    return SweepSection(param, tuple(values))


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.beta=4"`` -> ``("model.beta", 4)``: the value is read as TOML (a bare word
    that is not TOML is taken as a string)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise ConfigError("--set", f"must look like section.key=value, got {_show(text)}")
    try:
        v = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        v = value.strip()
    return key, v


def apply_override(raw: Mapping[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``raw`` with ``section.key`` set to ``value``."""
    out = copy.deepcopy(dict(raw))
    section, _, key = dotted.partition(".")
    if section not in SECTIONS or key not in SECTIONS[section]:
        raise ConfigError(dotted, "unknown key")
    table = out.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(section, f"must be a table ([{section}]), got {_show(table)}")
    table[key] = value
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; :class:`ConfigError` (one line) if missing or not valid TOML."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError("", f"no such configuration file: {p}") from None
    except OSError as e:
        raise ConfigError("", f"cannot read {p}: {e.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{p.name}: invalid TOML: {e}") from None


def load_config(
    path: str | Path,
    overrides: Sequence[tuple[str, Any]] = (),
    *,
    output: str | Path | None = None,
    allow_sweep: bool = False,
) -> Config:
    """Read, override (``(dotted key, value)`` pairs) and validate a configuration file."""
    p = Path(path)
    raw = read_toml(p)
    for k, v in overrides:
        raw = apply_override(raw, k, v)
    return parse_config(
        raw,
        base_dir=p.resolve().parent,
        name=p.stem,
        output=output,
        allow_sweep=allow_sweep,
        sweep_point=allow_sweep,
    )
