"""A priori resource estimates: refuse a run that cannot fit in memory or cannot finish.

(One idea, one module: the a priori estimates and limits of a run from its sizes alone, and the
checks built on them; every solver and the application's validation use the same numbers.)

Every solver entry point (and the application's validation) estimates, from the sizes alone and
before allocating anything, the bytes its arrays will take at their peak on one rank, and the
number of time steps it will take, and compares them with a budget:

* memory: :func:`particle_memory` (:func:`attnflow.simulate`), :func:`ensemble_memory`
  (:func:`attnflow.ensemble`), :func:`fem_memory` (a whole finite element run from mesh sizes,
  see :func:`mesh_counts`) with :func:`kernel_memory` (the kernel storage of each choice:
  ``"dense"``, ``"sparse"`` with the a priori kept fraction :func:`sparse_kept_fraction`,
  ``"recomputed"``) and :func:`engine_memory` (the kernel-sum engine); checked by
  :func:`check_memory` against :func:`memory_budget` (by default :data:`MEMORY_FRACTION` of the
  available memory, shared by the ranks of a node; ``ATTNFLOW_MEMORY_BUDGET``);
* steps: :func:`check_steps` against :func:`max_steps` (default :data:`MAX_STEPS`;
  ``ATTNFLOW_MAX_STEPS``), so that ``dt = 1e-300`` or ``t_final = 1e300`` is refused at once.

A refusal is a :class:`ResourceError` (a ``ValueError``) whose message is one line naming the
item, the estimate and the limit in human units. The estimates are upper bounds of the arrays
the code allocates (counted from the code, checked against measured peaks by the tests); they
do not include the interpreter and the imported libraries (the other half of the memory under
the default budget). numpy only.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MAX_STEPS",
    "MEMORY_FRACTION",
    "QUADRATURE_POINTS",
    "MeshCounts",
    "ResourceError",
    "available_memory",
    "check_field_overflow",
    "check_memory",
    "check_particle_run",
    "check_steps",
    "engine_memory",
    "ensemble_memory",
    "fem_memory",
    "format_bytes",
    "kernel_memory",
    "max_steps",
    "memory_budget",
    "mesh_counts",
    "parse_bytes",
    "particle_memory",
    "quadrature_points",
    "sparse_kept_fraction",
]

#: Default maximal number of time steps of one solve (``ATTNFLOW_MAX_STEPS`` overrides it).
MAX_STEPS = 10**7

#: Default memory budget: this fraction of the available memory, shared by the ranks.
MEMORY_FRACTION = 0.5

#: Quadrature points per cell of the default (basix Gauss–Jacobi) scheme by topological
#: dimension (1 interval, 2 triangle, 3 tetrahedron) and quadrature degree 0..8, as
#: ``attnflow.fem.transport.cell_quadrature`` makes them. The finite element solver uses degree
#: ``max(quadrature_degree, 2 * degree)``: 4 by default for DG0 and DG1, i.e. 3, 6 and 14.
QUADRATURE_POINTS: dict[int, tuple[int, ...]] = {
    1: (1, 1, 2, 2, 3, 3, 4, 4, 5),
    2: (1, 1, 3, 6, 6, 7, 12, 15, 16),
    3: (1, 1, 4, 5, 14, 15, 24, 31, 45),
}

_F8 = 8  # bytes of a float64 / int64
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_BYTES = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtTpP]?)(i?[bB])?\s*$")


class ResourceError(ValueError):
    """A run whose memory or number of steps exceeds its limit (one-line message)."""


# -- units -----------------------------------------------------------------------------------
def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``format_bytes(3 * 2**30) == "3.0 GiB"``."""
    if not math.isfinite(n):
        return f"{n} B"
    v, k = float(n), 0
    while abs(v) >= 1024.0 and k < len(_UNITS) - 1:
        v, k = v / 1024.0, k + 1
    return f"{int(v)} B" if k == 0 else f"{v:.1f} {_UNITS[k]}"


def parse_bytes(text: object, name: str = "memory budget") -> int:
    """Bytes from an int or a string such as ``"8G"``, ``"512MiB"``, ``"1.5e9"``.

    The suffixes K, M, G, T, P (optionally followed by ``B`` or ``iB``) are powers of 1024.
    Raises :class:`ResourceError` naming ``name`` unless the result is a positive number.
    """
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value = float(text)
    elif isinstance(text, float):
        value = text
    else:
        m = _BYTES.match(str(text)) if isinstance(text, str) else None
        if m is None:
            raise ResourceError(
                f"{name} must be a number of bytes, optionally with K, M, G, T (powers of "
                f"1024), e.g. 8G; got {text!r}"
            )
        value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if not (math.isfinite(value) and value >= 1):
        raise ResourceError(f"{name} must be a positive number of bytes, got {text!r}")
    return int(value)


# -- limits ----------------------------------------------------------------------------------
def _cgroup_free() -> float:
    """Free memory under a cgroup v2 limit (``inf`` without one)."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return math.inf
        return float(limit) - float((base / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return math.inf


def available_memory() -> int:
    """Bytes available to this process now: ``MemAvailable`` of ``/proc/meminfo`` (fallback
    ``os.sysconf`` available pages), and at most what a cgroup v2 memory limit leaves."""
    avail = math.nan
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = float(line.split()[1]) * 1024.0
                break
    except (OSError, ValueError, IndexError):
        pass
    if not math.isfinite(avail):
        try:
            avail = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            avail = float(8 << 30)  # unknown: assume a small machine
    return int(max(0.0, min(avail, _cgroup_free())))


def memory_budget(budget: int | str | None = None, *, ranks: int = 1) -> int:
    """The memory budget of one rank, in bytes.

    Parameters
    ----------
    budget : int or str, optional
        An explicit budget (bytes, or a string such as ``"8G"``: see :func:`parse_bytes`).
    ranks : int
        Ranks sharing the node's memory (the default budget is divided by it).

    Returns
    -------
    int
        ``budget`` if given; else the environment variable ``ATTNFLOW_MEMORY_BUDGET`` (same
        syntax, per rank); else ``MEMORY_FRACTION`` (0.5) of :func:`available_memory` divided
        by ``ranks`` (the other half is left to the interpreter, the libraries and the system).
    """
    if budget is not None:
        return parse_bytes(budget, "memory budget")
    env = os.environ.get("ATTNFLOW_MEMORY_BUDGET", "").strip()
    if env:
        return parse_bytes(env, "ATTNFLOW_MEMORY_BUDGET")
    return max(1, int(MEMORY_FRACTION * available_memory() / max(1, int(ranks))))


def max_steps() -> int:
    """The maximal number of time steps of a solve: ``ATTNFLOW_MAX_STEPS`` or
    :data:`MAX_STEPS` (10^7)."""
    env = os.environ.get("ATTNFLOW_MAX_STEPS", "").strip()
    if not env:
        return MAX_STEPS
    try:
        value = float(env)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise ResourceError(f"ATTNFLOW_MAX_STEPS must be an int >= 1, got {env!r}")
    return int(value)


def check_memory(what: str, estimate: float, budget: int | str | None = None) -> int:
    """Refuse ``estimate`` bytes over the budget (:func:`memory_budget` of ``budget``).

    Returns the estimate (an int) when it fits; raises :class:`ResourceError` with one line
    naming ``what``, the estimate and the budget otherwise.
    """
    limit = memory_budget(budget)
    if not (estimate <= limit):  # also catches NaN
        raise ResourceError(
            f"{what} needs about {format_bytes(estimate)} of memory, more than the budget of "
            f"{format_bytes(limit)} per rank (fewer points, runs, saves or cells, more ranks, or "
            "set ATTNFLOW_MEMORY_BUDGET)"
        )
    return int(estimate)


def check_steps(
    t_final: float, dt: float, what: str = "the solve", limit: int | None = None
) -> int:
    """Refuse a solve of ``ceil(t_final / dt)`` steps beyond :func:`max_steps` (or ``limit``).

    Returns the number of steps; raises :class:`ResourceError` in one line otherwise (also when
    the ratio overflows, e.g. ``t_final = 1e300``, ``dt = 1e-300``).
    """
    top = max_steps() if limit is None else int(limit)
    t, h = float(t_final), float(dt)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        ratio = np.float64(t) / np.float64(h) if h > 0 else np.float64(np.inf)
    if not (ratio <= top):
        shown = f"{float(ratio):.3g}" if np.isfinite(ratio) else "more than 1e308"
        raise ResourceError(
            f"{what} needs {shown} time steps (t_final={t:.6g} / dt={h:.3g}), more than the "
            f"maximum of {top:,} (a larger dt or a shorter t_final, or set ATTNFLOW_MAX_STEPS)"
        )
    return math.ceil(float(ratio))


# -- estimates: particles --------------------------------------------------------------------
def engine_memory(n_targets: int, n_sources: int, d: int, m: int | None = None) -> int:
    """Bytes of one call of the kernel-sum engine with its inputs: O((n_t + n_s)(d + m)).

    The model's targets ``beta Q x`` and sources ``(K y, V y)``, the engine's contiguous copies
    and log-weights, and the sums ``(shift, den, num)``; ``m`` the value dimension (default d).
    """
    m = d if m is None else m
    return _F8 * (int(n_targets) * (2 * d + m + 4) + int(n_sources) * (2 * d + 2 * m + 3))


def particle_memory(
    n_particles: int, d: int, n_save: int, *, stages: int = 4, ranks: int = 1
) -> int:
    """Peak bytes of :func:`attnflow.simulate` on one rank.

    The saved states ``n_save x N x d`` twice (the list of saves and the stacked
    ``Solution.x``; every rank holds all tokens), the state and the Runge–Kutta stages
    (``stages`` slopes plus the stage input and the update temporaries), the field evaluation
    (scores, sources, sums, the projection) and the engine. ``ranks`` only adds the gathered
    positions (each rank evaluates ``N / ranks`` targets against all ``N`` sources).
    """
    n, d, s = int(n_particles), int(d), int(n_save)
    nd = n * d
    work = (int(stages) + 10) * nd + (nd if ranks > 1 else 0)
    return _F8 * (2 * s * nd + work + 2 * n) + engine_memory(n, n, d)


def ensemble_memory(
    n_particles: int, d: int, n_save: int, n_runs: int, *, stages: int = 4, ranks: int = 1
) -> int:
    """Peak bytes of :func:`attnflow.ensemble` on one rank.

    The saves of the rank's runs (``ceil(R / ranks)`` runs of ``n_save x N x d``) as lists and
    stacked, then all ``R`` runs gathered on every rank and stacked into
    ``EnsembleSolution.x`` (with ``ranks > 1`` the gathered, pickled copies add two more),
    plus the current state of the rank's runs and one step of one run (:func:`particle_memory`
    without saves).
    """
    n, d, s, r = int(n_particles), int(d), int(n_save), int(n_runs)
    mine = -(-r // max(1, int(ranks)))
    one = s * n * d
    saves = 2 * mine * one + (r * one if ranks == 1 else mine * one + 3 * r * one)
    return _F8 * (saves + mine * n * d) + particle_memory(n, d, 0, stages=stages)


# -- estimates: finite elements --------------------------------------------------------------
def quadrature_points(tdim: int, degree: int = 0, quadrature_degree: int = 4) -> int:
    """Quadrature points per cell used by the finite element solver (:data:`QUADRATURE_POINTS`
    at degree ``max(quadrature_degree, 2 * degree)``)."""
    q = max(int(quadrature_degree), 2 * int(degree))
    table = QUADRATURE_POINTS.get(int(tdim))
    if table is None:
        raise ValueError(f"tdim must be 1, 2 or 3, got {tdim!r}")
    if q >= len(table):  # beyond the table: the number of points grows like q^tdim / tdim!
        return max(table[-1], math.ceil((q / 2 + 1) ** tdim))
    return table[q]


@dataclass(frozen=True)
class MeshCounts:
    """Sizes of a mesh: cells, vertices, geometric and topological dimension, and a bound ``h``
    of its cell diameters."""

    n_cells: int
    n_vertices: int
    gdim: int
    tdim: int
    h: float


def mesh_counts(
    kind: str,
    *,
    cells: int | None = None,
    level: int | None = None,
    dim: int = 2,
    length: float = 1.0,
) -> MeshCounts:
    """The sizes of ``circle_mesh(cells)``, ``sphere_mesh(level)`` or ``box_mesh(dim, length,
    cells)`` (:func:`attnflow.fem.meshes.mesh_arrays` arguments), without building them."""
    if kind == "circle":
        n = int(cells or 0)
        return MeshCounts(n, n, 2, 1, 2.0 * math.pi / max(n, 1))
    if kind == "sphere":
        lv = int(level or 0)
        # icosahedron edge 1.05, halved by each refinement; projection stretches edges <= 1.3x
        return MeshCounts(20 * 4**lv, 10 * 4**lv + 2, 3, 2, 1.4 / 2**lv)
    if kind == "box":
        n, d = int(cells or 0), int(dim)
        n_cells = {1: n, 2: 2 * n * n, 3: 6 * n**3}.get(d)
        if n_cells is None:
            raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
        return MeshCounts(n_cells, (n + 1) ** d, d, d, 2.0 * length / max(n, 1) * math.sqrt(d))
    raise ValueError(f'kind must be "circle", "sphere" or "box", got {kind!r}')


def _cap_fraction(angle: float, d: int) -> float:
    """Fraction of the area of S^{d-1} within ``angle`` of a point."""
    if angle >= math.pi:
        return 1.0
    if d == 2:
        return angle / math.pi
    if d == 3:
        return (1.0 - math.cos(angle)) / 2.0
    phi = np.linspace(0.0, math.pi, 20001)
    dens = np.sin(phi) ** (d - 2)
    cum = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2.0)])
    return float(np.interp(angle, phi, cum) / cum[-1])


def sparse_kept_fraction(term: Any, tol: float, h: float = 0.0) -> float:
    """A priori bound of the fraction of kernel-matrix entries a ``SparseKernel(tol)`` keeps.

    For a zonal kernel on the sphere (``Q = qI``, ``K = kI``, ``kappa = beta q k > 0``: the
    term's ``zonal()`` or ``peaked_at_target``) the kept sources lie within the angle
    ``arccos(1 - log(1/tol) / kappa)`` of the node; a cell is kept when any of its points is,
    so the cap is widened by the cell diameter ``h``, and the bound is that cap's fraction of
    the sphere's area. Otherwise (R^d, general Q and K) the bound is 1.
    """
    kappa = None
    zonal = term.zonal() if hasattr(term, "zonal") else None
    if zonal is not None:
        kappa = float(zonal[0])
    elif getattr(term, "peaked_at_target", False) and hasattr(term, "beta"):
        kappa = float(term.beta * term.Q[0, 0] * term.K[0, 0])
    if kappa is None or not (kappa > 0) or not math.isfinite(kappa):
        return 1.0
    c = 1.0 - math.log(1.0 / float(tol)) / kappa
    angle = math.acos(max(-1.0, min(1.0, c))) + 2.0 * float(h)
    return min(1.0, _cap_fraction(angle, int(term.d)))


def kernel_memory(
    kernel: str,
    *,
    n_targets: int,
    n_groups: int,
    n_q: int,
    gdim: int,
    kept_fraction: float = 1.0,
    n_terms: int = 1,
) -> int:
    """Peak bytes of the kernel operators of ``n_terms`` attention terms on one rank.

    Parameters
    ----------
    kernel : ``"dense"``, ``"sparse"``, ``"recomputed"`` (or ``"spectral"``, counted as
        recomputed: O(n)).
    n_targets : velocity nodes owned by the rank (matrix rows / (gdim + 1)).
    n_groups : global density dofs (matrix columns): cells times dofs per cell.
    n_q : quadrature points per cell.
    kept_fraction : sparse only: :func:`sparse_kept_fraction`.

    Every term gathers its sources on every rank (each dof's group of ``n_q`` points with their
    weights, keys and values: ``n_groups n_q (3 gdim + 1)`` floats). Dense: the engine's
    ``(n_t, gdim + 1, n_groups)`` array and the PETSc dense matrix coexist during assembly, so
    the peak is ``n_terms + 1`` matrices of ``n_t (gdim + 1) n_groups`` floats. Sparse, per
    kept (node, group) pair: the engine's values and group index, its candidate list, the CSR
    columns (int64) and values and their PETSc (int32 + float64) copy, i.e.
    ``24 + 36 (gdim + 1)`` bytes at the peak, ``12 (gdim + 1)`` after it. Recomputed: the
    engine on all quadrature points at every stage.
    """
    n_t, n_g, m = int(n_targets), int(n_groups), int(gdim) + 1
    sources = _F8 * (n_g * n_q * (3 * gdim + 1) + n_g) + _F8 * n_t * (2 * gdim + 2)
    if kernel == "dense":
        matrix = float(_F8) * n_t * m * n_g
        return int(n_terms * sources + (n_terms + 1) * matrix)
    if kernel == "sparse":
        kept = float(kept_fraction) * n_t * n_g
        peak = kept * (24 + 36 * m)
        final = kept * 12 * m
        return int(n_terms * sources + (n_terms - 1) * final + peak)
    if kernel in ("recomputed", "spectral"):
        return int(n_terms * sources) + engine_memory(n_t, n_g * n_q, gdim) + _F8 * 2 * n_g * n_q
    raise ValueError(f"kernel must be 'dense', 'sparse' or 'recomputed', got {kernel!r}")


def fem_memory(
    counts: MeshCounts,
    *,
    degree: int = 0,
    n_save: int = 2,
    kernel: str = "dense",
    kept_fraction: float = 1.0,
    n_terms: int = 1,
    ranks: int = 1,
    quadrature_degree: int = 4,
    checkpoints: bool = False,
) -> int:
    """Peak bytes of a finite element run on one rank (:class:`attnflow.fem.MeanFieldSolver`).

    The mesh and its connectivity (about 1 KiB per cell and vertex, measured for dolfinx
    meshes), the quadrature cloud, the cell mass matrices and their inverses, the DG and P1
    functions and the time stepper's vectors (owned share), the kernel operators
    (:func:`kernel_memory`), and the saved densities: ``n_save`` clouds of ``n_cells n_q``
    weights on every rank (as a list and stacked), plus the saved dofs with ``checkpoints``.
    """
    n_l = 1 if degree == 0 else counts.tdim + 1
    n_q = quadrature_points(counts.tdim, degree, quadrature_degree)
    r = max(1, int(ranks))
    cells_local = -(-counts.n_cells // r)
    nodes_local = -(-counts.n_vertices // r)
    n_groups = counts.n_cells * n_l
    n_points = counts.n_cells * n_q
    mesh = 1024 * (cells_local + nodes_local)
    per_cell = n_q * (counts.gdim + 1) * 3 + 3 * n_l * n_l + 20 * n_l + 4 * counts.gdim**2
    setup = _F8 * cells_local * per_cell + _F8 * nodes_local * counts.gdim * 6
    kern = kernel_memory(
        kernel,
        n_targets=nodes_local,
        n_groups=n_groups,
        n_q=n_q,
        gdim=counts.gdim,
        kept_fraction=kept_fraction,
        n_terms=n_terms,
    )
    saves = _F8 * (2 * int(n_save) * n_points + n_points * (counts.gdim + 2))
    if checkpoints:
        saves += _F8 * 2 * int(n_save) * n_groups
    return int(mesh + setup + kern + saves)


# -- the checks of the solvers' entry points -------------------------------------------------
def check_field_overflow(
    model: Any,
    radius: float | None = None,
    mass: float = 1.0,
    *,
    points: Any = (),
    comm: Any = None,
) -> None:
    """Call ``check_finite_field(radius, mass)`` of every term of ``model`` that has one
    (:meth:`attnflow.SelfAttention.check_finite_field`: a USA field that must overflow float64
    is refused in one line naming ``beta``).

    ``radius`` defaults to 1 on the sphere, else to the largest norm of the arrays ``points``
    (the largest over the ranks of ``comm``: every rank then decides alike).
    """
    if radius is None:
        if model.sphere:
            radius = 1.0
        else:
            norms = [float(np.max(np.linalg.norm(p, axis=1))) for p in points if np.size(p)]
            radius = max(norms, default=0.0)
            if comm is not None:
                radius = max(comm.allgather(radius))
    for term in model.terms(None):
        check = getattr(term, "check_finite_field", None)
        if check is not None:
            check(max(float(radius), 1e-300), float(mass))


def check_particle_run(
    model: Any,
    n_particles: int,
    n_save: int,
    t_final: float,
    dt: float,
    *,
    x0: np.ndarray | None = None,
    mass: float = 1.0,
    stages: int = 4,
    n_runs: int | None = None,
    comm: Any = None,
    what: str = "simulate",
) -> None:
    """The a priori checks of a particle run, before it allocates anything: the number of steps
    (:func:`check_steps`), the memory (:func:`particle_memory`, or :func:`ensemble_memory` with
    ``n_runs``) and, when the tokens ``x0`` are given or live on the sphere, the field's
    overflow (:func:`check_field_overflow`; an ensemble in R^d checks it after sampling).
    With ``comm`` the budget is rank 0's, so every rank decides alike.
    """
    n, d = int(n_particles), int(model.d)
    ranks = 1 if comm is None else int(comm.size)
    check_steps(t_final, dt, what)
    if n_runs is None:
        need = particle_memory(n, d, n_save, stages=stages, ranks=ranks)
        item = f"{what}: {n} tokens in d={d} with {n_save} saves"
    else:
        need = ensemble_memory(n, d, n_save, n_runs, stages=stages, ranks=ranks)
        item = f"{what}: {n_runs} runs of {n} tokens in d={d} with {n_save} saves"
    budget = memory_budget(ranks=ranks)
    if comm is not None:
        budget = comm.bcast(budget, root=0)
    check_memory(item, need, budget)
    if model.sphere or x0 is not None:
        check_field_overflow(model, None, mass, points=() if x0 is None else (x0,))
