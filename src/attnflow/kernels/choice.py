"""How the kernel sums of an attention term are computed: the kernel choices and ``"auto"``.

Four methods, one interface (every one returns the stabilised sums of
:class:`~attnflow.kernels.KernelSums`):

* :class:`RecomputedKernel` — the direct engine (:func:`~attnflow.kernels.kernel_sums`) at every
  evaluation: exact, memory O(n), cost O(n_targets · n_sources). The only choice for hardmax.
* :class:`DenseKernel` — finite elements only: the fixed map density → sums assembled once as a
  dense PETSc matrix (memory n_targets · (d + 1) · n_dofs · 8 bytes).
* :class:`SparseKernel` ``(tol)`` — finite elements only: the same matrix truncated at ``tol``
  (the choice at low temperature; memory ∝ the entries kept).
* :class:`SpectralKernel` ``(tol)`` — zonal kernels on S^1 and S^2 (``Q = qI``, ``K = kI``,
  ``|beta q k| <= SPECTRAL_MAX_KAPPA``): Fourier / spherical-harmonic expansion truncated from
  ``tol`` (:mod:`attnflow.kernels.spectral`), cost O(n_targets + n_sources + L^2 log L).

``"auto"`` (:class:`AutoKernel`, the default of the solvers) estimates, for the problem at
hand, the memory and the cost of every applicable method (:func:`kernel_estimates`) and takes
the cheapest whose memory fits the budget (:func:`attnflow.resources.memory_budget` unless
given). The cost of a method is its set-up plus ``evaluations`` evaluations (default 1000, i.e.
250 steps of SSPRK(4,3) or RK4); the constants are throughputs measured on the reference
machine (2 cores; README tables) and only rank the methods. An explicit choice that does not
fit the budget is refused before anything is allocated, with one line naming the option, the
estimate and the budget.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SPECTRAL_MAX_KAPPA",
    "AutoKernel",
    "DenseKernel",
    "KernelEstimate",
    "KernelPlan",
    "RecomputedKernel",
    "SparseKernel",
    "SpectralKernel",
    "as_kernel_choice",
    "kernel_estimates",
    "kernel_name",
    "plan_kernels",
    "spectral_available",
    "zonal_kappa",
]

logger = logging.getLogger(__name__)

#: Largest ``|beta q k|`` for which ``"auto"`` considers the spectral method (an explicit
#: ``SpectralKernel`` runs up to ``attnflow.kernels.spectral.MAX_KAPPA``). Beyond, the kernel is
#: local: the targets far from the mass fall below the expansion's trusted floor and are
#: recomputed exactly (benchmarks/fem_scale.py: at beta = 1000 spectral was 11-28x slower than
#: the sparse matrix), while the sparse matrix keeps few entries.
SPECTRAL_MAX_KAPPA = 300.0

# Throughputs and fixed costs per call of the reference machine (2 cores), used only to rank
# the methods: the fused engine with the gathers (README fem_step: 0.27 s/step at 5120 cells),
# the BLAS-tiled engine for d >= 4, PETSc's MatMult (dense or AIJ), the assembly, and the
# transforms of benchmarks/spectral.py (N = 10^6 on S^2: ~0.3 s for 4 transforms of 2 N points).
# The fixed costs per call were measured on small meshes (S^1, 400 cells: dense 1.2 ms,
# engine 5 ms, spectral 7.6 ms per evaluation).
_ENGINE_PAIRS_PER_S = 1.2e9
_ENGINE_PAIRS_PER_S_WIDE = 0.5e9
_ENGINE_CALL_S = 1.0e-3
_MATVEC_ENTRIES_PER_S = 1.5e9
_MATVEC_CALL_S = 2.0e-4
_ASSEMBLY_PAIRS_PER_S = 0.6e9
_SPARSE_ASSEMBLY_S_PER_ENTRY = 2.0e-7  # README low-temperature table: 57-1375 ns per kept entry
_SPECTRAL_POINT_S = 4.0e-8  # per point and scalar transform
_SPECTRAL_MODE_S = 2.0e-8  # per (l, m) mode and scalar transform
_SPECTRAL_CALL_S = 2.0e-3


def _check_tol(tol: float) -> float:
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    return float(tol)


@dataclass(frozen=True)
class DenseKernel:
    """Finite elements: assemble the kernel once as a dense parallel PETSc matrix."""


@dataclass(frozen=True)
class SparseKernel:
    """Finite elements: assemble the kernel once as a sparse PETSc matrix, truncated at
    ``tol`` times each row's largest entry (large beta)."""

    tol: float = 1e-12

    def __post_init__(self) -> None:
        _check_tol(self.tol)


@dataclass(frozen=True)
class RecomputedKernel:
    """The direct engine at every evaluation (no stored matrix)."""


@dataclass(frozen=True)
class SpectralKernel:
    """Spectral sums of a zonal kernel on S^1 or S^2 to the relative ``tol`` (of the velocity
    against its bound; the default 1e-8 is far below any discretisation error, and a smaller
    tolerance sends more targets to exact recomputation, see :mod:`attnflow.kernels.spectral`)."""

    tol: float = 1e-8

    def __post_init__(self) -> None:
        _check_tol(self.tol)


@dataclass(frozen=True)
class AutoKernel:
    """Pick, per attention term, the cheapest method that fits the memory budget.

    Parameters
    ----------
    memory_budget : bytes per rank (default :func:`attnflow.resources.memory_budget`).
    tol : the tolerance of the sparse and spectral methods.
    evaluations : how many evaluations the set-up is amortised over.
    """

    memory_budget: int | None = None
    tol: float = 1e-8
    evaluations: int = 1000

    def __post_init__(self) -> None:
        _check_tol(self.tol)
        if self.memory_budget is not None and not (
            isinstance(self.memory_budget, (int, np.integer)) and self.memory_budget > 0
        ):
            raise ValueError(f"memory_budget must be an int > 0, got {self.memory_budget!r}")
        if not (isinstance(self.evaluations, (int, np.integer)) and self.evaluations >= 1):
            raise ValueError(f"evaluations must be an int >= 1, got {self.evaluations!r}")


KernelChoice = DenseKernel | SparseKernel | RecomputedKernel | SpectralKernel | AutoKernel
_CHOICES = (DenseKernel, SparseKernel, RecomputedKernel, SpectralKernel, AutoKernel)

_NAMES = {
    "auto": AutoKernel,
    "dense": DenseKernel,
    "sparse": SparseKernel,
    "recomputed": RecomputedKernel,
    "engine": RecomputedKernel,
    "spectral": SpectralKernel,
}


def as_kernel_choice(kernel: Any) -> KernelChoice:
    """A kernel choice object from an object or a name (``"auto"``, ``"dense"``,
    ``"sparse"``, ``"recomputed"``, ``"spectral"``); one-line ``ValueError`` otherwise."""
    if isinstance(kernel, _CHOICES):
        return kernel
    if isinstance(kernel, str) and kernel in _NAMES:
        return _NAMES[kernel]()
    raise ValueError(
        "kernel must be 'auto', 'dense', 'sparse', 'recomputed', 'spectral' or one of "
        f"DenseKernel(), SparseKernel(tol), RecomputedKernel(), SpectralKernel(tol), "
        f"AutoKernel(...), got {kernel!r}"
    )


def kernel_name(kernel: KernelChoice) -> str:
    """``"dense"``, ``"sparse"``, ``"recomputed"``, ``"spectral"`` or ``"auto"``."""
    return {
        DenseKernel: "dense",
        SparseKernel: "sparse",
        RecomputedKernel: "recomputed",
        SpectralKernel: "spectral",
        AutoKernel: "auto",
    }[type(kernel)]


@dataclass(frozen=True)
class KernelEstimate:
    """Memory (bytes per rank) and cost (seconds) of one method for one term."""

    method: str
    memory: int
    setup: float
    per_evaluation: float

    def total(self, evaluations: int) -> float:
        """Set-up plus ``evaluations`` evaluations."""
        return self.setup + evaluations * self.per_evaluation


def kernel_estimates(
    term: Any,
    *,
    n_targets: int,
    n_sources: int,
    solver: str,
    tol: float = 1e-10,
    n_dofs: int | None = None,
    n_assembly_sources: int | None = None,
    ranks: int = 1,
) -> dict[str, KernelEstimate]:
    """Memory and cost of every method applicable to ``term`` (a KernelTerm).

    The memory is that of :mod:`attnflow.resources` (``engine_memory``, ``kernel_memory``,
    ``sparse_kept_fraction``: checked there against measured peaks); the costs use the
    throughputs above.

    Parameters
    ----------
    n_targets, n_sources : global numbers of target and source points (finite elements: the
        velocity nodes and the quadrature points).
    solver : ``"particles"`` or ``"fem"`` (only finite elements can assemble matrices).
    n_dofs : finite elements: the global number of density dofs (matrix columns).
    n_assembly_sources : finite elements: the source points the assembly visits (one group
        of quadrature points per cell and local dof; default ``n_sources``).
    ranks : MPI ranks sharing the memory (the memory is per rank). The costs are those of
        one rank doing all the work, so that the ranking, hence the method, is the same on any
        number of ranks (serial == parallel) unless the memory budget decides.
    """
    from attnflow.resources import engine_memory, kernel_memory, sparse_kept_fraction

    d = int(term.d)
    pairs = float(n_targets) * float(n_sources)
    rate = _ENGINE_PAIRS_PER_S_WIDE if d >= 4 else _ENGINE_PAIRS_PER_S
    n_t_local = max(1, -(-int(n_targets) // max(1, ranks)))
    engine_cost = _ENGINE_CALL_S + pairs / rate
    out: dict[str, KernelEstimate] = {
        "recomputed": KernelEstimate(
            "recomputed", engine_memory(n_t_local, int(n_sources), d), 0.0, engine_cost
        )
    }
    hardmax = bool(getattr(term, "hardmax", False))
    if solver == "fem" and not hardmax:
        cols = int(n_dofs if n_dofs is not None else n_sources)
        assembly = int(n_assembly_sources or n_sources)
        sizes = dict(n_targets=n_t_local, n_groups=cols, n_q=max(1, assembly // cols), gdim=d)
        out["recomputed"] = KernelEstimate(
            "recomputed", kernel_memory("recomputed", **sizes), 0.0, engine_cost
        )
        entries = float(n_targets) * (d + 1) * cols
        assembly_cost = float(n_targets) * assembly / _ASSEMBLY_PAIRS_PER_S
        out["dense"] = KernelEstimate(
            "dense",
            kernel_memory("dense", **sizes),
            assembly_cost,
            _MATVEC_CALL_S + entries / _MATVEC_ENTRIES_PER_S,
        )
        frac = sparse_kept_fraction(term, tol)
        out["sparse"] = KernelEstimate(
            "sparse",
            kernel_memory("sparse", kept_fraction=frac, **sizes),
            assembly_cost * max(frac, 0.01)
            + frac * float(n_targets) * cols * _SPARSE_ASSEMBLY_S_PER_ENTRY,
            _MATVEC_CALL_S + frac * entries / _MATVEC_ENTRIES_PER_S,
        )
    kappa = zonal_kappa(term)
    if kappa is not None and spectral_available(d):
        from attnflow.kernels.spectral import MAX_KAPPA, spectral_plan

        if abs(kappa) > MAX_KAPPA:
            return out

        L = spectral_plan(kappa, d, tol).degree
        modes = (2 * L + 1) if d == 2 else (L + 1) ** 2
        transforms = d + 1  # the denominator and d numerator components
        points = int(n_targets) + int(n_sources)
        per = _SPECTRAL_CALL_S + transforms * (
            points * _SPECTRAL_POINT_S + modes * math.log2(modes + 2) * _SPECTRAL_MODE_S
        )
        mem = int(8 * transforms * (n_t_local + int(n_sources) / max(1, ranks) + 4 * modes))
        out["spectral"] = KernelEstimate("spectral", mem, 0.0, per)
    return out


def spectral_available(d: int) -> bool:
    """Whether the spectral method can run here: its module and its transform library
    (``finufft`` on S^1, ``ducc0`` on S^2) are installed."""
    from importlib.util import find_spec

    lib = "finufft" if d == 2 else "ducc0"
    try:
        return find_spec("attnflow.kernels.spectral") is not None and find_spec(lib) is not None
    except (ImportError, ValueError):  # pragma: no cover
        return False


def zonal_kappa(term: Any) -> float | None:
    """``kappa`` when ``term`` (a KernelTerm) has the zonal kernel ``e^{kappa <x, y>}`` on S^1
    or S^2 (see ``KernelTerm.zonal``), else ``None``."""
    zonal = term.zonal() if hasattr(term, "zonal") else None
    return None if zonal is None else float(zonal[0])


@dataclass(frozen=True)
class KernelPlan:
    """The method chosen for each kernel term of a dynamics, with the estimates behind it."""

    choices: dict[int, Any] = field(default_factory=dict)
    records: tuple[dict[str, Any], ...] = ()

    def for_term(self, term: Any) -> Any:
        """The concrete choice for ``term`` (RecomputedKernel if the term was not planned)."""
        return self.choices.get(id(term), RecomputedKernel())

    def describe(self) -> list[dict[str, Any]]:
        """One record per term: chosen method, its estimate, the budget (for ``stats``)."""
        return [dict(r) for r in self.records]


def plan_kernels(
    dynamics: Any,
    kernel: Any,
    *,
    n_targets: int,
    n_sources: int,
    solver: str,
    n_dofs: int | None = None,
    n_assembly_sources: int | None = None,
    ranks: int = 1,
    budget: int | None = None,
) -> KernelPlan:
    """Resolve ``kernel`` (a choice, a name or ``"auto"``) for every kernel term of
    ``dynamics``; refuse (one line, ``ValueError``) an explicit choice that does not apply or
    whose memory exceeds the budget. Nothing is allocated here.

    ``budget`` (bytes per rank): the memory budget; default the ``AutoKernel``'s, else
    :func:`attnflow.resources.memory_budget`. Under MPI pass the same value on every rank (e.g.
    rank 0's, broadcast), so that every rank makes the same choice.
    """
    from attnflow.dynamics import KernelTerm
    from attnflow.resources import format_bytes, memory_budget

    choice = as_kernel_choice(kernel)
    if isinstance(choice, AutoKernel) and choice.memory_budget is not None:
        budget = int(choice.memory_budget)
    elif budget is None:
        budget = memory_budget(ranks=ranks)
    choices: dict[int, Any] = {}
    records: list[dict[str, Any]] = []
    for term in dynamics.terms(None):
        if not isinstance(term, KernelTerm) or id(term) in choices:
            continue
        tol = getattr(choice, "tol", 1e-10)
        est = kernel_estimates(
            term,
            n_targets=n_targets,
            n_sources=n_sources,
            solver=solver,
            tol=tol,
            n_dofs=n_dofs,
            ranks=ranks,
        )
        if isinstance(choice, AutoKernel):
            kappa = zonal_kappa(term)
            if "spectral" in est and kappa is not None and abs(kappa) > SPECTRAL_MAX_KAPPA:
                del est["spectral"]
            fits = {k: e for k, e in est.items() if e.memory <= budget}
            if not fits:
                need = min(est.values(), key=lambda e: e.memory)
                raise ValueError(
                    f"kernel: no method fits the memory budget {format_bytes(budget)} per rank "
                    f"(smallest: {need.method}, {format_bytes(need.memory)})"
                )
            best = min(fits.values(), key=lambda e: e.total(choice.evaluations))
            concrete = {
                "dense": DenseKernel(),
                "sparse": SparseKernel(min(choice.tol, 1e-12)),
                "recomputed": RecomputedKernel(),
                "spectral": SpectralKernel(choice.tol),
            }[best.method]
        else:
            name = "recomputed" if isinstance(choice, RecomputedKernel) else kernel_name(choice)
            if name not in est:
                why = {
                    "dense": "assembled matrices are for the finite element solver",
                    "sparse": "assembled matrices are for the finite element solver",
                    "spectral": "it needs a zonal kernel (Q = qI, K = kI) on S^1 or S^2 with "
                    "|beta q k| <= 1e4",
                }.get(name, "it does not apply to this term")
                if getattr(term, "hardmax", False) and name != "recomputed":
                    why = "hardmax (beta = inf) needs the direct engine"
                raise ValueError(f"kernel: {name!r} cannot be used here: {why}")
            best = est[name]
            if best.memory > budget:
                raise ValueError(
                    f"kernel: {name!r} needs about {format_bytes(best.memory)} per rank, over "
                    f"the memory budget {format_bytes(budget)} (use kernel='auto', a "
                    "sparse or recomputed kernel, more ranks, or raise ATTNFLOW_MEMORY_BUDGET)"
                )
            concrete = choice
        choices[id(term)] = concrete
        record = {
            "method": kernel_name(concrete),
            "requested": kernel_name(choice),
            "memory": best.memory,
            "setup_estimate": best.setup,
            "evaluation_estimate": best.per_evaluation,
            "budget": int(budget),
        }
        records.append(record)
        logger.debug(
            "kernel for %s: %s (estimated %s, %.3g s set-up, %.3g s per evaluation; budget %s)",
            type(term).__name__,
            record["method"],
            format_bytes(best.memory),
            best.setup,
            best.per_evaluation,
            format_bytes(budget),
        )
    return KernelPlan(choices, tuple(records))
