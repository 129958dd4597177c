"""How many clusters? Predictions against the finite element density and the particles.

(One idea, one module: the three predictions, the two observed counts and the study that puts
them side by side share the same time rule, perturbations and counting criteria below.)

Tokens i.i.d. uniform on ``S^{d-1}`` (d = 2: the circle, d = 3: the sphere), SA with
Q = K = V = I. Three predictions of the number of clusters of the metastable phase:

* **the most unstable mode** of the uniform state (linear theory,
  :func:`attnflow.studies.metastability.most_unstable_mode`: degree ``l*``, rate
  ``lambda*``). A mode ``n`` of the circle has ``n`` maxima, so the prediction is ``n*``. On
  S^2 the degree-``l*`` part of an isotropic perturbation is a random spherical harmonic, whose
  expected number of local maxima is ``l*(l* + 1) / (2 sqrt 3) + O(1)`` (a quarter of the
  ``(2/sqrt 3) l(l+1)`` critical points of Cammarota–Marinucci–Wigman, by the Euler
  characteristic: maxima = minima = (saddles + 2) / 2): :func:`mode_prediction`;
* **the modes of the kernel density estimator** of the ``N`` initial tokens with the attention
  kernel ``e^{beta <x, y>}`` (Geshkovski–Rigollet–Sun), counted by Monte Carlo
  (:mod:`attnflow.studies.kde` on S^1; on S^2 the local maxima of the KDE at the vertices of an
  icosphere whose edges are at most a quarter of the bandwidth, :func:`sphere_kde_modes`);
* **sqrt(beta) fits** of the observed counts (``n* ~ sqrt(2 beta)``; the S^1 KDE count
  ``-> sqrt(3 beta/2)``; on S^2 both tend to ``beta / sqrt 3``, an area ``4 pi`` over
  clusters of area ``~ 1/beta``: ``count ~ c beta^{(d-1)/2}``).

**Observed counts, at the counting time** (the time rule of
:mod:`attnflow.studies.metastability`)

    t_count = time_factor * log(N) / lambda*,      time_factor = 1.5,

when the modes grown from fluctuations of size ``N^{-1/2}`` have collapsed into clusters and
long before the first merges (exponentially long in beta):

* particles: ``N`` i.i.d. uniform tokens (seeded runs), clusters by the gap criterion at
  ``gap = gap_factor / sqrt(beta)`` (:func:`gap_clusters`: single linkage, tokens closer than
  ``gap`` are in one cluster; on S^1 this is exactly
  :func:`attnflow.metrics.circle_gap_clusters`, validated in the metastability study);
* finite elements (DG0): the initial density is the uniform density plus the fluctuation of
  ``N`` uniform tokens projected onto the band of the linear theory
  (:func:`attnflow.studies.metastability.unstable_band`, rates at least half the largest):
  ``rho_0 / rho_u = 1 + sum_{l in band} (dim H_l / N) sum_j P_l(<x, x_j>)`` (addition
  theorem; on S^1 ``1 + (2/N) sum_{n in band} sum_j cos(n (theta - theta_j))``), so the same
  time rule applies; the modes outside the band have grown at most to ``N^{-1/4}`` when those
  inside reach one. Negative values (a fluctuation of a few ``(|band|/N)^{1/2}``) are clipped
  to 0 (:func:`band_perturbation`). Each FE run draws its own tokens (the error bars are over
  these perturbations). Clusters are counted as the local maxima of the cell densities
  (:func:`local_maxima`) above ``threshold`` times the uniform density (default 1: a cluster
  holds mass ``~ 1/K`` on a few cells, far above the mean, while the depleted regions between
  clusters stay far below it); the neighbours of a cell are the cells sharing a vertex with it
  (:func:`cell_adjacency`: two on the circle, twelve or so on an icosphere), computed with numpy
  from the cell-vertex arrays of :mod:`attnflow.meshdata` (the solution's ``cell_masses`` are in
  that input order).

:func:`cluster_count_study` runs all of it over a beta sweep (the betas are dealt over the ranks
of ``comm``; each rank runs its finite element problems on ``MPI.COMM_SELF``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from attnflow import metrics
from attnflow.laws import UniformSphere
from attnflow.meshdata import circle_arrays, sphere_arrays
from attnflow.model import SelfAttention
from attnflow.particles.ensemble import ensemble
from attnflow.solutions import Status
from attnflow.studies.convergence import fit_slope
from attnflow.studies.kde import expected_modes, kac_rice_circle
from attnflow.studies.metastability import most_unstable_mode, unstable_band
from attnflow.validation import check_betas, check_int, check_positive

__all__ = [
    "ClusterCounts",
    "band_perturbation",
    "cell_adjacency",
    "cluster_count_study",
    "default_fem_size",
    "fem_cluster_count",
    "gap_clusters",
    "local_maxima",
    "mode_prediction",
    "sphere_kde_modes",
    "sqrt_fit",
    "vertex_adjacency",
]

logger = logging.getLogger(__name__)


# -- predictions -------------------------------------------------------------------------------
def mode_prediction(beta: float, d: int) -> float:
    """Clusters predicted by the most unstable degree ``l*`` (:func:`most_unstable_mode`):
    ``l*`` on S^1 (d = 2), ``l*(l* + 1) / (2 sqrt 3)`` on S^2 (d = 3; module docstring)."""
    ls, _ = most_unstable_mode(beta, d=d)
    if d == 2:
        return float(ls)
    if d == 3:
        return ls * (ls + 1) / (2.0 * math.sqrt(3.0))
    raise ValueError(f"d must be 2 or 3, got {d!r}")


def sqrt_fit(betas: np.ndarray, counts: np.ndarray, d: int) -> float:
    """Least-squares ``c`` of ``counts ~ c beta^{(d-1)/2}`` (``(B,)`` arrays; NaNs ignored)."""
    x = np.asarray(betas, dtype=float) ** (0.5 * (d - 1))
    y = np.asarray(counts, dtype=float)
    ok = np.isfinite(y)
    return float((x[ok] @ y[ok]) / (x[ok] @ x[ok])) if ok.any() else math.nan


# -- meshes as graphs ----------------------------------------------------------------------------
def cell_adjacency(cells: np.ndarray, *, shared: int = 1) -> sparse.csr_matrix:
    """Cells sharing at least ``shared`` vertices (1: a vertex, 2: an edge), from the
    ``(m, k)`` cell-vertex array; returns the ``(m, m)`` boolean adjacency (no diagonal)."""
    c = np.asarray(cells, dtype=np.int64)
    if c.ndim != 2 or c.size == 0:
        raise ValueError(f"cells must have shape (m, k), got {c.shape}")
    m, k = c.shape
    inc = sparse.csr_matrix(
        (np.ones(c.size), (np.repeat(np.arange(m), k), c.ravel())), shape=(m, int(c.max()) + 1)
    )
    common = (inc @ inc.T).tocsr()
    common.setdiag(0)
    common.data = (common.data >= shared).astype(float)
    common.eliminate_zeros()
    return common.astype(bool).tocsr()


def vertex_adjacency(cells: np.ndarray) -> sparse.csr_matrix:
    """Vertices joined by a cell edge, from the ``(m, k)`` cell-vertex array; ``(n, n)``."""
    c = np.asarray(cells, dtype=np.int64)
    k = c.shape[1]
    a = np.concatenate([c[:, i] for i in range(k) for j in range(k) if i != j])
    b = np.concatenate([c[:, j] for i in range(k) for j in range(k) if i != j])
    n = int(c.max()) + 1
    return sparse.csr_matrix((np.ones(a.size, dtype=bool), (a, b)), shape=(n, n))


def local_maxima(
    values: np.ndarray, adjacency: sparse.csr_matrix, *, threshold: float = -np.inf
) -> np.ndarray:
    """Indices of the local maxima of ``values`` (n,) on a graph, above ``threshold``.

    Node ``i`` is a maximum when ``values[i] > threshold`` and, for every neighbour ``j``,
    ``values[i] > values[j]`` or (a tie) ``values[i] == values[j]`` and ``i < j``: a plateau
    counts once.
    """
    v = np.asarray(values, dtype=float).ravel()
    adj = sparse.csr_matrix(adjacency)
    if adj.shape != (v.size, v.size):
        raise ValueError(f"adjacency must be ({v.size}, {v.size}), got {adj.shape}")
    rows = np.repeat(np.arange(v.size), np.diff(adj.indptr))
    cols = adj.indices
    beaten = (v[cols] > v[rows]) | ((v[cols] == v[rows]) & (cols < rows))
    lost = np.zeros(v.size, dtype=bool)
    lost[rows[beaten]] = True
    return np.flatnonzero(~lost & (v > threshold))


def _mesh_arrays(d: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    return circle_arrays(size) if d == 2 else sphere_arrays(size)


def _cell_measures(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    x = points[cells]
    if cells.shape[1] == 2:
        return np.linalg.norm(x[:, 1] - x[:, 0], axis=1)
    return 0.5 * np.linalg.norm(np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]), axis=1)


def fem_cluster_count(cell_masses: np.ndarray, d: int, size: int, *, threshold: float = 1.0) -> int:
    """Clusters of a finite element density on ``circle_mesh(size)`` (d = 2) or
    ``sphere_mesh(size)`` (d = 3): local maxima of the cell densities (mass / measure) over
    the vertex-sharing cell adjacency, above ``threshold`` times the mean density.

    ``cell_masses`` : (n_cells,) in the mesh's input cell order (``FieldSolution.cell_masses``).
    """
    points, cells = _mesh_arrays(d, size)
    m = np.asarray(cell_masses, dtype=float)
    if m.shape != (cells.shape[0],):
        raise ValueError(f"cell_masses must have shape ({cells.shape[0]},), got {m.shape}")
    area = _cell_measures(points, cells)
    dens = m / area
    return int(
        local_maxima(dens, cell_adjacency(cells), threshold=threshold * m.sum() / area.sum()).size
    )


# -- particles -----------------------------------------------------------------------------------
def gap_clusters(points: np.ndarray, gap: float) -> int:
    """Clusters of points on a sphere by single linkage at geodesic distance ``gap``: the
    connected components of the graph joining points closer than ``gap`` (radians). On S^1
    this is :func:`attnflow.metrics.circle_gap_clusters` (``min_mass = 0``).

    points : (n, d) on (or radially projected to) the unit sphere.
    """
    x = np.asarray(points, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"points must have shape (n, d), got {x.shape}")
    gap = check_positive("gap", gap)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    chord = 2.0 * math.sin(min(gap, np.pi) / 2.0)
    pairs = cKDTree(x).query_pairs(chord, output_type="ndarray")
    n = x.shape[0]
    graph = sparse.coo_matrix((np.ones(pairs.shape[0]), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


# -- initial perturbations -----------------------------------------------------------------------
def band_perturbation(
    tokens: np.ndarray, band: tuple[int, int], points: np.ndarray, *, n_table: int = 20001
) -> np.ndarray:
    """``rho_0 / rho_uniform`` at ``points`` (P, d): 1 plus the fluctuation of the empirical
    measure of ``tokens`` (N, d) projected onto the degrees ``band = (l_lo, l_hi)``, clipped at 0.

    ``1 + sum_{l in band} (dim H_l / N) sum_j P_l(<x, x_j>)`` with the Gegenbauer polynomial
    ``P_l`` normalised to ``P_l(1) = 1`` (addition theorem; d = 2: ``2 cos(l theta)``,
    d = 3: ``(2l + 1)`` times the Legendre polynomial). The zonal sum is tabulated on
    ``n_table`` points of ``<x, y>`` in ``[-1, 1]`` and interpolated.
    """
    y = np.asarray(tokens, dtype=float)
    x = np.asarray(points, dtype=float)
    d = y.shape[1]
    lo, hi = (int(v) for v in band)
    s = np.linspace(-1.0, 1.0, n_table)
    if d == 2:
        th = np.arccos(s)
        table = sum(2.0 * np.cos(n * th) for n in range(lo, hi + 1))
    elif d == 3:
        p_prev, p = np.ones_like(s), s.copy()
        table = np.zeros_like(s)
        for n in range(1, hi + 1):
            if n >= lo:
                table += (2 * n + 1) * p
            p_prev, p = p, ((2 * n + 1) * s * p - n * p_prev) / (n + 1)
    else:
        raise ValueError(f"tokens must live on S^1 or S^2 (d = 2, 3), got d = {d}")
    out = np.empty(x.shape[0])
    for k in range(0, x.shape[0], 2048):
        dots = np.clip(x[k : k + 2048] @ y.T, -1.0, 1.0)
        out[k : k + 2048] = 1.0 + np.interp(dots, s, table).sum(axis=1) / y.shape[0]
    return np.maximum(out, 0.0)


# -- the KDE on S^2 ------------------------------------------------------------------------------
def sphere_kde_modes(tokens: np.ndarray, beta: float, *, max_level: int = 6) -> tuple[int, int]:
    """Local maxima of the KDE ``sum_j e^{beta(<x, x_j> - 1)}`` of ``tokens`` (N, 3) at the
    vertices of the coarsest icosphere whose edges are at most ``h/4`` (``h = beta^{-1/2}``;
    level at most ``max_level``), neighbours along the mesh edges; terms below ``e^{-40}`` of
    the kernel's peak are dropped. Returns ``(count, level)``."""
    beta = check_positive("beta", beta)
    h = 1.0 / math.sqrt(beta)
    level = 0
    while level < max_level and 1.1 / 2**level > h / 4:  # level-k edge ~ 1.1 / 2^k rad
        level += 1
    v, f = sphere_arrays(level)
    y = np.asarray(tokens, dtype=float)
    reach = math.sqrt(2.0 * min(40.0 / beta, 2.0))  # the chord where beta (1 - cos) = 40
    pairs = cKDTree(v).sparse_distance_matrix(cKDTree(y), reach, output_type="ndarray")
    vals = np.bincount(
        pairs["i"], weights=np.exp(-0.5 * beta * pairs["v"] ** 2), minlength=v.shape[0]
    )
    return int(local_maxima(vals, vertex_adjacency(f), threshold=0.0).size), level


# -- the study -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterCounts:
    """Cluster counts on ``S^{d-1}`` against beta: observed (particles, finite elements) and
    predicted (most unstable mode, KDE modes, sqrt(beta) fits).

    Attributes
    ----------
    d : 2 (S^1) or 3 (S^2).
    betas : (B,) inverse temperatures.
    n_tokens : tokens per particle run (and of the KDE and of the FE perturbations).
    t_count : (B,) counting time ``time_factor log(N) / lambda*``.
    gap : (B,) gap of the particle criterion (radians).
    l_star : (B,) most unstable degree; growth_rate : (B,) its rate ``lambda*``.
    band : (B, 2) degrees ``[l_lo, l_hi]`` growing at least half as fast (the FE perturbation).
    mode_prediction : (B,) clusters predicted by ``l*`` (:func:`mode_prediction`).
    particle_counts : (B, R) clusters of every particle run; particle_mean, particle_sem : (B,).
    fem_counts : (B, P) clusters of every FE run (P = 0: none); fem_mean, fem_sem : (B,).
    fem_size : (B,) cells of the circle mesh (d = 2) or level of the icosphere (d = 3).
    fem_min_density : (B, P) smallest initial density ratio before clipping at 0.
    kde_mean, kde_sem : (B,) KDE modes of N uniform tokens (Monte Carlo).
    kde_kac_rice : (B,) Gaussian Kac–Rice count of the S^1 KDE (NaN on S^2).
    exponents : fitted log-log slopes of the counts on beta over ``betas >= fit_from``, by
        name (``particles``, ``fem``, ``kde``, ``mode``).
    sqrt_constants : the constants ``c`` of ``count ~ c beta^{(d-1)/2}`` over the same betas.
    fit_from : smallest beta of the fits.
    """

    d: int
    betas: np.ndarray
    n_tokens: int
    t_count: np.ndarray
    gap: np.ndarray
    l_star: np.ndarray
    growth_rate: np.ndarray
    band: np.ndarray
    mode_prediction: np.ndarray
    particle_counts: np.ndarray
    particle_mean: np.ndarray
    particle_sem: np.ndarray
    fem_counts: np.ndarray
    fem_mean: np.ndarray
    fem_sem: np.ndarray
    fem_size: np.ndarray
    fem_min_density: np.ndarray
    kde_mean: np.ndarray
    kde_sem: np.ndarray
    kde_kac_rice: np.ndarray
    exponents: dict[str, float]
    sqrt_constants: dict[str, float]
    fit_from: float


def _mean_sem(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if c.shape[1] == 0:
        return np.full(c.shape[0], np.nan), np.full(c.shape[0], np.nan)
    sem = c.std(axis=1, ddof=1) / math.sqrt(c.shape[1]) if c.shape[1] > 1 else 0.0 * c[:, 0]
    return c.mean(axis=1), sem


def default_fem_size(beta: float, d: int) -> int:
    """Default FE mesh: on S^1 (d = 2) the cells of the circle mesh, the power of two
    ``>= max(256, 24 sqrt(beta))`` (at least ``24 / (2 pi) ~ 4`` cells per bandwidth
    ``beta^{-1/2}``); on S^2 (d = 3) the icosphere level, 3 up to beta = 16 and 4 beyond
    (1280 / 5120 cells, at least ~6 cells between clusters at beta = 100)."""
    if d == 2:
        return max(256, 2 ** math.ceil(math.log2(24.0 * math.sqrt(beta))))
    return 3 if beta <= 16 else 4


def _fem_runs(
    beta: float,
    d: int,
    size: int,
    band: tuple[int, int],
    n_tokens: int,
    t: float,
    seeds: list[np.random.SeedSequence],
    threshold: float,
    output_dir: Any,
) -> tuple[list[int], list[float]]:
    """Counts and initial minimum density ratios of the FE runs of one beta (COMM_SELF)."""
    from mpi4py import MPI

    from attnflow.fem import MeanFieldSolver, circle_mesh, sphere_mesh

    mesh = (circle_mesh if d == 2 else sphere_mesh)(size, MPI.COMM_SELF)
    counts, mins = [], []
    for k, ss in enumerate(seeds):
        tokens = UniformSphere(d).sample(n_tokens, np.random.default_rng(ss))
        low: list[float] = []

        def rho0(x: np.ndarray, tokens: np.ndarray = tokens, low: list[float] = low) -> np.ndarray:
            raw = band_perturbation(tokens, band, x)
            low.append(float(raw.min()))
            return raw

        sol = MeanFieldSolver(SelfAttention(d, beta=beta), mesh, rho0).solve(
            t, [0.0, t], output_dir=output_dir if k == 0 else None, energy=False
        )
        if sol.status is not Status.SUCCESS:
            raise FloatingPointError(f"a finite element run failed at beta={beta:g}: {sol.status}")
        counts.append(fem_cluster_count(sol.cell_masses(-1), d, size, threshold=threshold))
        mins.append(min(low))
    return counts, mins


def cluster_count_study(
    betas: Sequence[float],
    *,
    d: int = 2,
    n_tokens: int = 4096,
    n_runs: int = 4,
    n_fem_runs: int = 2,
    n_kde_runs: int = 16,
    seed: int = 0,
    time_factor: float = 1.5,
    gap_factor: float = 1.0,
    threshold: float = 1.0,
    fem_sizes: Sequence[int] | None = None,
    dt: float = 0.1,
    fit_from: float = 10.0,
    fem_output: Any = None,
    comm: Any = None,
) -> ClusterCounts:
    """Count the clusters of uniform tokens on ``S^{d-1}`` at ``t_count`` and the predictions.

    Parameters
    ----------
    betas : (B,) inverse temperatures (finite, > 0).
    d : 2 (S^1) or 3 (S^2).
    n_tokens : tokens ``N`` of every particle run, of the KDE and of the FE perturbations.
    n_runs : particle runs per beta (seeded: run ``r`` from ``SeedSequence(seed).spawn``, the
        same initial clouds at every beta, :func:`attnflow.ensemble`), RK4 step ``dt``.
    n_fem_runs : finite element runs per beta (0: none), DG0, each from its own perturbation
        (:func:`band_perturbation` of tokens drawn from ``SeedSequence(seed + 1)``).
    n_kde_runs : Monte Carlo runs of the KDE count per beta (seed ``seed + 2``).
    time_factor : ``t_count = time_factor log(N) / lambda*``.
    gap_factor : particle gap ``gap_factor / sqrt(beta)``.
    threshold : FE maxima above ``threshold`` times the mean density.
    fem_sizes : (B,) cells of the circle mesh (d = 2) or icosphere levels (d = 3); default
        :func:`default_fem_size`.
    fit_from : the exponents and constants are fitted over ``betas >= fit_from``.
    fem_output : a directory: the first FE run of the largest beta writes its ParaView files
        there (``MeanFieldSolver.solve(output_dir=)``).
    comm : an ``mpi4py`` communicator: the betas are dealt over its ranks (each computed whole
        on one rank, FE on ``MPI.COMM_SELF``); every rank returns the same study.

    Returns
    -------
    :class:`ClusterCounts`.
    """
    b = check_betas(betas)
    if d not in (2, 3):
        raise ValueError(f"d must be 2 (S^1) or 3 (S^2), got {d!r}")
    n_tokens = check_int("n_tokens", n_tokens, 2)
    n_runs = check_int("n_runs", n_runs, 1)
    n_fem_runs = check_int("n_fem_runs", n_fem_runs, 0)
    n_kde_runs = check_int("n_kde_runs", n_kde_runs, 1)
    time_factor = check_positive("time_factor", time_factor)
    gap_factor = check_positive("gap_factor", gap_factor)
    sizes = (
        [default_fem_size(x, d) for x in b]
        if fem_sizes is None
        else [check_int("fem_sizes", s, 0) for s in fem_sizes]
    )
    if len(sizes) != b.size:
        raise ValueError(f"fem_sizes must hold one size per beta ({b.size}), got {len(sizes)}")
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    fem_seeds = np.random.SeedSequence(seed + 1).spawn(n_fem_runs)
    top = int(np.argmax(b))
    mine: dict[int, tuple] = {}
    for k in range(rank, b.size, size):
        beta = float(b[k])
        ls, lam = most_unstable_mode(beta, d=d)
        band = unstable_band(beta, d=d)
        t = time_factor * math.log(n_tokens) / lam
        gap = gap_factor / math.sqrt(beta)
        ens = ensemble(
            SelfAttention(d, beta),
            UniformSphere(d),
            n_tokens,
            n_runs,
            t,
            dt=dt,
            seed=seed,
            save_times=[0.0, t],
        )
        if ens.status is not Status.SUCCESS:
            raise FloatingPointError(f"a particle run failed at beta={beta:g}: {ens.status}")
        if d == 2:
            pc = [metrics.circle_gap_clusters(x[-1], gap=gap) for x in ens.x]
        else:
            pc = [gap_clusters(x[-1], gap) for x in ens.x]
        fc, fmin = _fem_runs(
            beta,
            d,
            sizes[k],
            band,
            n_tokens,
            t,
            fem_seeds,
            threshold,
            fem_output if k == top else None,
        )
        if d == 2:
            kde = expected_modes(beta, n_tokens, domain="circle", n_runs=n_kde_runs, seed=seed + 2)
            km, ks = kde.mean, kde.sem
            kr = float(kac_rice_circle(beta))
        else:
            kc = [
                sphere_kde_modes(
                    UniformSphere(3).sample(n_tokens, np.random.default_rng(ss)), beta
                )[0]
                for ss in np.random.SeedSequence(seed + 2).spawn(n_kde_runs)
            ]
            km = float(np.mean(kc))
            ks = float(np.std(kc, ddof=1) / math.sqrt(len(kc))) if len(kc) > 1 else 0.0
            kr = math.nan
        logger.info(
            "S^%d beta=%g: l*=%d, t=%.3g; particles %.1f, FE %s, KDE %.1f, mode %.1f",
            d - 1,
            beta,
            ls,
            t,
            float(np.mean(pc)),
            fc,
            km,
            mode_prediction(beta, d),
        )
        mine[k] = (ls, lam, band, t, gap, pc, fc, fmin, km, ks, kr)
    if comm is not None:
        mine = {k: v for part in comm.allgather(mine) for k, v in part.items()}
    rows = [mine[k] for k in range(b.size)]
    pc_a = np.asarray([r[5] for r in rows], dtype=np.int64)
    fc_a = np.asarray([r[6] for r in rows], dtype=np.int64).reshape(b.size, n_fem_runs)
    pm, ps = _mean_sem(pc_a)
    fm, fs = _mean_sem(fc_a)
    mode = np.array([mode_prediction(x, d) for x in b])
    km = np.array([r[8] for r in rows])
    fit = b >= fit_from
    series = {"particles": pm, "fem": fm, "kde": km, "mode": mode}
    exps, consts = {}, {}
    for name, y in series.items():
        ok = fit & np.isfinite(y) & (y > 0)
        exps[name] = fit_slope(b[ok], y[ok]) if np.unique(b[ok]).size > 1 else math.nan
        consts[name] = sqrt_fit(b[fit], y[fit], d)
    return ClusterCounts(
        d=d,
        betas=b,
        n_tokens=n_tokens,
        t_count=np.array([r[3] for r in rows]),
        gap=np.array([r[4] for r in rows]),
        l_star=np.array([r[0] for r in rows], dtype=np.int64),
        growth_rate=np.array([r[1] for r in rows]),
        band=np.array([r[2] for r in rows], dtype=np.int64),
        mode_prediction=mode,
        particle_counts=pc_a,
        particle_mean=pm,
        particle_sem=ps,
        fem_counts=fc_a,
        fem_mean=fm,
        fem_sem=fs,
        fem_size=np.asarray(sizes, dtype=np.int64),
        fem_min_density=np.asarray([r[7] for r in rows], dtype=float).reshape(b.size, n_fem_runs),
        kde_mean=km,
        kde_sem=np.array([r[9] for r in rows]),
        kde_kac_rice=np.array([r[10] for r in rows]),
        exponents=exps,
        sqrt_constants=consts,
        fit_from=float(fit_from),
    )
