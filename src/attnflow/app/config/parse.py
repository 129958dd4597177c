"""Parsing and validating a run configuration: :func:`load_config`, :func:`parse_config`.

Validation covers unknown sections and keys, types, ranges and choices, matrix shapes, the
consistency of model, mesh and initial density, a mesh file that is missing or malformed (read
by :func:`attnflow.meshdata.read_mesh`), and an initial density that is negative, not finite or
has zero mass (see :mod:`attnflow.app.config.density`). Every problem raises
:class:`~attnflow.app.config.values.ConfigError` with one line naming the dotted key and what is
allowed, e.g. ``model.beta: must be > 0, got -1``, before any work is done.

``--set section.key=value`` overrides are read by :func:`parse_override` and applied by
:func:`apply_override`.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnflow import meshdata, resources
from attnflow.app import build
from attnflow.app.config.density import check_density
from attnflow.app.config.limits import check_limits
from attnflow.app.config.schema import (
    ARRAYS,
    INITIAL_COMMON,
    INITIAL_KEYS,
    INITIAL_TYPES,
    KERNELS,
    MESH_TYPES,
    METHODS,
    SECTIONS,
    SOLVERS,
    CheckpointSection,
    CompareSection,
    Config,
    FemSection,
    InitialSection,
    MeshSection,
    ModelSection,
    OutputSection,
    ParticlesSection,
    RunSection,
    SweepSection,
    TimeSection,
)
from attnflow.app.config.terms import check_model_times, parse_model
from attnflow.app.config.tomlio import read_toml
from attnflow.app.config.values import (
    ConfigError,
    Table,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_matrix,
    check_str,
    check_vector,
    choices,
    show,
)

__all__ = ["apply_override", "load_config", "parse_config", "parse_override"]


def _read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(points, cells)`` of a mesh file; :class:`ConfigError` on ``mesh.path`` if unreadable."""
    try:
        return meshdata.read_mesh(path)
    except meshdata.MeshError as e:
        raise ConfigError("mesh.path", str(e)) from None


def _parse_run(raw, name: str) -> RunSection:
    t = Table(raw, "run", SECTIONS["run"])
    s = t.get("solvers", hint=f"a non-empty list of {choices(SOLVERS)}")
    if (
        not isinstance(s, list)
        or not s
        or not all(isinstance(x, str) and x in SOLVERS for x in s)
        or len(set(s)) != len(s)
    ):
        raise ConfigError(
            t.key("solvers"),
            f"must be a non-empty list of distinct values among {choices(SOLVERS)}, got {show(s)}",
        )
    solvers = tuple(x for x in SOLVERS if x in s)
    return RunSection(solvers, check_str(t.key("name"), t.get("name", name)))


def _parse_mesh(raw, model: ModelSection, base_dir: Path, fem: bool) -> MeshSection | None:
    if "mesh" not in raw:
        if fem:
            raise ConfigError(
                "mesh",
                f"required for the finite element solver ([mesh] with type = "
                f"{choices(MESH_TYPES)})",
            )
        return None
    t = Table(raw, "mesh", SECTIONS["mesh"])
    kind = check_choice(t.key("type"), t.get("type", hint=choices(MESH_TYPES)), MESH_TYPES)
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
        return MeshSection(kind, cells=check_int(t.key("cells"), t.get("cells"), 3))
    if kind == "sphere":
        return MeshSection(kind, level=check_int(t.key("level"), t.get("level"), 0, 7))
    if kind == "box":
        return MeshSection(
            kind,
            cells=check_int(t.key("cells"), t.get("cells"), 1),
            length=check_float(
                t.key("length"), t.get("length", hint="half side L of [-L, L]^d"), gt=0
            ),
        )
    path = Path(check_str(t.key("path"), t.get("path"))).expanduser()
    path = (path if path.is_absolute() else base_dir / path).resolve()
    points, cells = _read_mesh(path)
    gdim, tdim = points.shape[1], cells.shape[1] - 1
    if gdim != d:
        raise ConfigError(t.key("path"), f"{path} has {gdim}-D points, model.d is {d}")
    if (tdim < gdim) != (space == "sphere"):
        want = "a manifold mesh of the sphere" if space == "sphere" else "a volume mesh"
        raise ConfigError(t.key("path"), f"{path}: model.space = {show(space)} needs {want}")
    if space == "sphere" and np.max(np.abs(np.linalg.norm(points, axis=1) - 1)) > 1e-8:
        raise ConfigError(t.key("path"), f"{path}: the vertices must lie on the unit sphere")
    return MeshSection(kind, path=str(path))


def _parse_initial(
    raw, model: ModelSection, mesh: MeshSection | None, particles: bool
) -> InitialSection:
    t = Table(raw, "initial", SECTIONS["initial"])
    kind = check_choice(t.key("type"), t.get("type", hint=choices(INITIAL_TYPES)), INITIAL_TYPES)
    keys = INITIAL_KEYS[kind]
    t.only(INITIAL_COMMON + keys, f'by initial.type = "{kind}"')
    d, sphere = model.d, model.sphere
    if kind in ("perturbed_circle", "circle_modes") and not (sphere and d == 2):
        raise ConfigError(t.key("type"), f'"{kind}" needs model.space = "sphere" and d = 2')
    if kind == "von_mises_fisher" and not sphere:
        raise ConfigError(t.key("type"), '"von_mises_fisher" needs model.space = "sphere"')
    if kind == "gaussian" and sphere:
        raise ConfigError(t.key("type"), '"gaussian" needs model.space = "euclidean"')
    p: dict[str, Any] = {}
    if kind == "perturbed_circle":
        p["eps"] = check_float(t.key("eps"), t.get("eps"), ge=-1, le=1)
        p["mode"] = check_int(t.key("mode"), t.get("mode"), 1)
        p["phase"] = check_float(t.key("phase"), t.get("phase", 0.0))
    elif kind == "circle_modes":
        a = check_vector(t.key("amplitudes"), t.get("amplitudes"))
        modes = t.get("modes")
        if not isinstance(modes, list) or len(modes) != len(a):
            raise ConfigError(
                t.key("modes"), f"must be a list of {len(a)} integers >= 1 (one per amplitude)"
            )
        p["amplitudes"] = a
        p["modes"] = tuple(check_int(f"{t.key('modes')}[{i}]", m, 1) for i, m in enumerate(modes))
        p["phases"] = check_vector(t.key("phases"), t.get("phases", [0.0] * len(a)), len(a))
    elif kind == "von_mises_fisher":
        mu = np.array(check_vector(t.key("mu"), t.get("mu"), d))
        if not np.linalg.norm(mu) > 0:
            raise ConfigError(t.key("mu"), f"must be a non-zero vector of {d} numbers")
        p["mu"] = tuple(float(v) for v in mu / np.linalg.norm(mu))
        p["kappa"] = check_float(t.key("kappa"), t.get("kappa"), ge=0)
    elif kind == "gaussian":
        p["mean"] = check_vector(t.key("mean"), t.get("mean"), d)
        cov = check_matrix(t.key("cov"), t.get("cov"), d)
        c = np.array(cov)
        if not np.allclose(c, c.T) or np.linalg.eigvalsh(c).min() <= 0:
            raise ConfigError(t.key("cov"), "must be symmetric positive definite")
        p["cov"] = cov
    elif kind == "expression":
        p["expression"] = check_str(t.key("expression"), t.get("expression"))
    normalize = check_bool(t.key("normalize"), t.get("normalize", True))
    hw = t.get("half_width", None)
    half_width = None if hw is None else check_float(t.key("half_width"), hw, gt=0)
    if t.has("half_width") and sphere:
        raise ConfigError(t.key("half_width"), 'is for model.space = "euclidean" only')
    bd = t.get("bound", None)
    bound = None if bd is None else check_float(t.key("bound"), bd, gt=0)
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
        f = build.initial_density(ini, d)
        if kind != "expression":
            build.initial_law(ini, d, sphere)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError("initial", str(e)) from None
    mesh_points = None
    if mesh is not None and mesh.type == "file":
        points, cells = _read_mesh(mesh.path)
        mesh_points = np.concatenate([points, points[cells].mean(axis=1)])
    key = {"expression": "initial.expression", "circle_modes": "initial.amplitudes"}.get(
        kind, "initial"
    )
    probe_hw = half_width if not sphere else None
    check_density(key, f, d, sphere, probe_hw, mesh_points)
    return ini


def _check_saves(key: str, n: float) -> None:
    """At most one save time per time step: refuse more than the step limit before
    allocating the list."""
    try:
        top = resources.max_steps()
    except resources.ResourceError as e:
        raise ConfigError("ATTNFLOW_MAX_STEPS", str(e)) from None
    if not n <= top:
        raise ConfigError(
            key, f"gives {n:.3g} save times, more than the step limit {top:,} (ATTNFLOW_MAX_STEPS)"
        )


def _parse_time(raw) -> TimeSection:
    t = Table(raw, "time", SECTIONS["time"])
    t_final = check_float(t.key("t_final"), t.get("t_final", hint="the final time, > 0"), gt=0)
    given = [k for k in ("save_times", "n_saves", "save_every") if t.has(k)]
    if len(given) > 1:
        raise ConfigError(
            t.key(given[1]), f"give only one of save_times, n_saves, save_every (also {given[0]})"
        )
    if t.has("save_times"):
        ts = check_vector(t.key("save_times"), t.get("save_times"))
        a = np.array(ts)
        if np.any(np.diff(a) <= 0) or a[0] < 0 or a[-1] > t_final:
            raise ConfigError(
                t.key("save_times"), f"must be increasing and lie in [0, {t_final:g}] (t_final)"
            )
    elif t.has("save_every"):
        every = check_float(t.key("save_every"), t.get("save_every"), gt=0, le=t_final)
        _check_saves(t.key("save_every"), t_final / every)
        k = math.floor(t_final / every + 1e-9)
        a = every * np.arange(k + 1)
        a = a[a < t_final * (1 - 1e-12)]
        ts = (*map(float, a), t_final)
    else:
        n = check_int(t.key("n_saves"), t.get("n_saves", 2), 2)
        _check_saves(t.key("n_saves"), n)
        ts = tuple(float(x) for x in np.linspace(0.0, t_final, n))
    return TimeSection(t_final, tuple(ts))


def _parse_simple(raw, name: str, cls, checks: dict[str, Callable[[str, Any], Any]]):
    t = Table(raw, name, SECTIONS[name])
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
    ranks: int = 1,
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
    ranks : the MPI ranks the run will use (the memory estimates are per rank).

    Raises
    ------
    ConfigError : the first problem found, naming its dotted key.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError("", "the configuration must be a table")
    for k, v in raw.items():
        if k not in SECTIONS and k not in ARRAYS:
            allowed = ", ".join([*SECTIONS, *(f"[[{a}]]" for a in ARRAYS)])
            raise ConfigError(k, f"unknown section (allowed: {allowed})")
        if k not in ARRAYS and not isinstance(v, dict):
            raise ConfigError(k, f"must be a table ([{k}]), got {show(v)}")
    if "sweep" in raw and not allow_sweep:
        raise ConfigError("sweep", "this is a sweep configuration: run it with `attnflow sweep`")
    base = Path(base_dir)
    run = _parse_run(raw, name)
    model = parse_model(raw)
    if run.fem:
        check_model_times(model, math.inf, fem=True)
    mesh = _parse_mesh(raw, model, base, run.fem)
    initial = _parse_initial(raw, model, mesh, run.particles)
    time = _parse_time(raw)
    check_model_times(model, time.t_final, fem=False)
    fem = _parse_simple(
        raw,
        "fem",
        FemSection,
        {
            "degree": lambda k, v: check_int(k, v, 0, 1),
            "kernel": lambda k, v: check_choice(k, v, KERNELS),
            "tol": lambda k, v: check_float(k, v, gt=0, lt=1),
            "cfl": lambda k, v: check_float(k, v, gt=0, le=1),
            "quadrature_degree": lambda k, v: check_int(k, v, 1, 20),
            "energy": check_bool,
            "slices": lambda k, v: check_int(k, v, 1, 4096),
        },
    )
    particles = _parse_simple(
        raw,
        "particles",
        ParticlesSection,
        {
            "n": lambda k, v: check_int(k, v, 1),
            "runs": lambda k, v: check_int(k, v, 1),
            "dt": lambda k, v: check_float(k, v, gt=0),
            "seed": lambda k, v: check_int(k, v, 0, 2**63 - 1),
            "method": lambda k, v: check_choice(k, v, METHODS),
        },
    )
    compare = _parse_simple(
        raw, "compare", CompareSection, {"l1": check_bool, "clusters": check_bool}
    )
    t = Table(raw, "output", SECTIONS["output"])
    directory = output if output is not None else t.get("directory", None)
    if directory is not None:
        directory = str(Path(check_str(t.key("directory"), str(directory))).expanduser().absolute())
    out = OutputSection(
        directory,
        check_bool(t.key("paraview"), t.get("paraview", True)),
        check_bool(t.key("figures"), t.get("figures", True)),
        check_int(t.key("particle_runs"), t.get("particle_runs", 1), 0),
    )
    ck = _parse_simple(
        raw,
        "checkpoint",
        CheckpointSection,
        {"every": lambda k, v: check_int(k, v, 0), "keep": lambda k, v: check_int(k, v, 1)},
    )
    _check_causal_run(raw, model, run, ck)
    sweep = None
    if "sweep" in raw:
        sweep = _parse_sweep(raw)
    cfg = Config(run, model, mesh, initial, time, fem, particles, compare, out, ck, sweep)
    arrays = _read_mesh(mesh.path) if mesh is not None and mesh.type == "file" else None
    check_limits(cfg, ranks, arrays)
    if sweep is not None and sweep_point:
        for i, v in enumerate(sweep.values):
            point = apply_override(raw, sweep.parameter, v)
            point.pop("sweep")
            try:
                parse_config(point, base_dir=base, name=name, output=output, ranks=ranks)
            except ConfigError as e:
                raise ConfigError(e.key, f"{e.message} (sweep.values[{i}] = {show(v)})") from None
    return cfg


def _check_causal_run(raw, model: ModelSection, run: RunSection, ck: CheckpointSection) -> None:
    """What a causal model needs of the rest: ``fem.slices`` only for it; the kinetic finite
    element solver on the sphere; no checkpoints (the causal solvers have none)."""
    fem = raw.get("fem", {})
    if not model.causal:
        if "slices" in fem:
            raise ConfigError(
                "fem.slices", "is for causal models (model.causal = true): the slices in s"
            )
        return
    if run.fem and not model.sphere:
        raise ConfigError(
            "model.space",
            'must be "sphere" for causal finite elements (the kinetic solver works on S^1, '
            'S^2); causal softmax attention in R^d runs with run.solvers = ["particles"]',
        )
    if ck.every:
        raise ConfigError(
            "checkpoint.every",
            "must be 0 with model.causal = true: the causal solvers write no checkpoints (a "
            "resume reruns an unfinished phase)",
        )


def _parse_sweep(raw) -> SweepSection:
    t = Table(raw, "sweep", SECTIONS["sweep"])
    param = check_str(
        t.key("parameter"), t.get("parameter", hint='a dotted key, e.g. "model.beta"')
    )
    section, _, key = param.partition(".")
    if section not in SECTIONS or section == "sweep" or key not in SECTIONS[section]:
        raise ConfigError(
            t.key("parameter"), f'must be a dotted key such as "model.beta", got {show(param)}'
        )
    values = t.get("values", hint="a non-empty list")
    if not isinstance(values, list) or not values:
        raise ConfigError(t.key("values"), f"must be a non-empty list, got {show(values)}")
    return SweepSection(param, tuple(values))


_BARE = re.compile(r"^[A-Za-z0-9_./:+~@-][A-Za-z0-9_./:+~@ -]*$")


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.beta=4"`` -> ``("model.beta", 4)``: the value is exactly one TOML value on one
    line (a trailing comment, a newline or a second value is an error); a bare word that is not
    TOML (letters, digits, ``_ . / : + - ~ @`` and inner spaces) is taken as a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise ConfigError("--set", f"must look like section.key=value, got {show(text)}")
    want = f"{key}=VALUE: VALUE must be exactly one TOML value on one line"
    got = json.dumps(value)  # shows a newline as \n
    if any(c in value for c in "\n\r") or not value.strip():
        raise ConfigError("--set", f"{want}, got {got}")
    raw = value.strip()
    try:  # brackets make a trailing comment swallow "]": an error, as is a second value
        items = tomllib.loads(f"v = [{raw}]")["v"]
    except tomllib.TOMLDecodeError:
        items = None
    if items is not None and len(items) == 1 and not raw.endswith(","):
        return key, items[0]
    if items is None and _BARE.match(raw):
        return key, raw
    raise ConfigError("--set", f"{want} (no comment, no second value), got {got}; quote strings")


def apply_override(raw: Mapping[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``raw`` with ``section.key`` set to ``value``."""
    out = copy.deepcopy(dict(raw))
    section, _, key = dotted.partition(".")
    if section not in SECTIONS or key not in SECTIONS[section]:
        raise ConfigError(dotted, "unknown key")
    table = out.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(section, f"must be a table ([{section}]), got {show(table)}")
    table[key] = value
    return out


def load_config(
    path: str | Path,
    overrides: Sequence[tuple[str, Any]] = (),
    *,
    output: str | Path | None = None,
    allow_sweep: bool = False,
    ranks: int = 1,
) -> Config:
    """Read, override (``(dotted key, value)`` pairs) and validate a configuration file
    (``ranks``: the MPI ranks the run will use)."""
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
        ranks=ranks,
    )
