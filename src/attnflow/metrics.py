"""Quantities computed identically for both solvers: every measure is a weighted point cloud.

A particle system is ``(x, 1/N)``; a finite element density is its quadrature cloud
(``FieldSolution.points``, ``FieldSolution.weights[k]``). Distances (POT):

* on S^1 (points of shape ``(n, 2)`` on the circle, ``geometry="circle"``): exact circular
  optimal transport (``ot.wasserstein_circle``, Hundrieser/Delon level-median formula for
  p = 1, binary search for p > 1), in radians;
* on S^2 / S^{d-1} and in R^d: exact EMD (``ot.emd2``) with the geodesic (great-circle) or
  Euclidean cost when ``n_a * n_b <= EXACT_MAX_PAIRS``; beyond, the sliced distance
  (``ot.sliced_wasserstein_sphere`` / ``ot.sliced_wasserstein_distance``, 200 seeded
  projections), which is a lower bound of W_p. The result says which was used.

Weights are normalised to probability measures before any comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "EXACT_MAX_PAIRS",
    "Distance",
    "RelativeEntropy",
    "circle_clusters",
    "circle_gap_clusters",
    "circle_histogram",
    "l1_distance",
    "moments",
    "relative_entropy",
    "sphere_clusters",
    "sphere_histogram",
    "wasserstein",
]

#: Largest cost matrix (n_a * n_b entries) handed to the exact EMD solver.
EXACT_MAX_PAIRS = 4_000_000


@dataclass(frozen=True)
class Distance:
    """A Wasserstein distance and how it was computed (``"circle"``, ``"emd"``, ``"sliced"``)."""

    value: float
    method: str

    def __float__(self) -> float:
        return self.value


def _normalised(points, weights) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(points, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"points must have shape (n, d) with n >= 1, got {x.shape}")
    w = np.full(x.shape[0], 1.0) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (x.shape[0],) or np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError("weights must be finite, >= 0, one per point, with a positive sum")
    return x, w / w.sum()


def _dyadic(w: np.ndarray) -> np.ndarray:
    """Probability weights rounded to multiples of 2^-52 summing to exactly 1.

    All partial sums are then exact, whatever the summation order; the rounding moves at most
    2^-52 of mass per point.
    """
    scale = 2.0**52
    units = np.floor(w * scale)
    rest = int(scale - units.sum())
    # Hand the missing units to (or, if w summed to 1 + 2e-16, take the extra from) the
    # largest weights.
    units[np.argsort(-w, kind="stable")[: abs(rest)]] += np.sign(rest)
    return units / scale


def wasserstein(
    x: np.ndarray,
    a: np.ndarray | None,
    y: np.ndarray,
    b: np.ndarray | None,
    *,
    p: int = 1,
    geometry: str = "euclidean",
    seed: int = 0,
) -> Distance:
    """W_p between ``sum a_i delta_{x_i}`` and ``sum b_j delta_{y_j}`` (weights normalised).

    Parameters
    ----------
    x : (n_a, d), a : (n_a,) or None (uniform); y : (n_b, d), b : (n_b,) or None.
    p : 1 or 2.
    geometry : ``"circle"`` (S^1, radians), ``"sphere"`` (geodesic cost; points are projected
        radially onto the sphere first, so a faceted-mesh cloud is compared on S^{d-1}) or
        ``"euclidean"``.
    seed : seed of the projections when the sliced distance is used.
    """
    import ot

    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    if geometry not in ("circle", "sphere", "euclidean"):
        raise ValueError(f"geometry must be 'circle', 'sphere' or 'euclidean', got {geometry!r}")
    x, a = _normalised(x, a)
    y, b = _normalised(y, b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]}, {y.shape[1]}")
    if geometry in ("circle", "sphere"):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
    if geometry == "circle":
        if x.shape[1] != 2:
            raise ValueError("geometry='circle' needs points in R^2")
        u, v = ot.utils.get_coordinate_circle(x), ot.utils.get_coordinate_circle(y)
        # POT's circle solvers compare the two CDFs at the end of the circle: totals that
        # differ by one rounding error (1 + 2e-16 vs 1) make them return nonsense (seen: 1.01
        # on a unit circle). Dyadic weights have exact partial sums in any order.
        a, b = _dyadic(a), _dyadic(b)
        val = float(np.squeeze(ot.wasserstein_circle(u, v, a, b, p=p, eps=1e-12)))
        if not 0.0 <= val <= 0.5**p + 1e-9:  # W_p^p on a circle of length 1 is <= 1/2^p
            raise RuntimeError(f"ot.wasserstein_circle returned {val} (outside [0, 2^-p])")
        val = 2 * np.pi * (val if p == 1 else np.sqrt(val))
        return Distance(val, "circle")
    if x.shape[0] * y.shape[0] <= EXACT_MAX_PAIRS:
        if geometry == "sphere":
            cost = np.arccos(np.clip(x @ y.T, -1.0, 1.0))
        else:
            cost = np.sqrt(np.maximum(ot.dist(x, y, metric="sqeuclidean"), 0.0))
        val = float(ot.emd2(a, b, cost**p, numItermax=10_000_000))
        return Distance(val ** (1.0 / p), "emd")
    if geometry == "sphere":
        val = float(ot.sliced_wasserstein_sphere(x, y, a, b, n_projections=200, p=p, seed=seed))
    else:
        val = float(ot.sliced_wasserstein_distance(x, y, a, b, n_projections=200, p=p, seed=seed))
    return Distance(val, "sliced")


def moments(points: np.ndarray, weights: np.ndarray | None = None):
    """Mean ``(d,)`` and covariance ``(d, d)`` of a weighted cloud (weights normalised)."""
    x, w = _normalised(points, weights)
    mean = w @ x
    c = x - mean
    return mean, (c.T * w) @ c


def circle_histogram(points: np.ndarray, weights: np.ndarray | None, n: int) -> np.ndarray:
    """Deposit a cloud on S^1 onto the ``n`` cells of ``circle_mesh(n)`` (input order).

    Cell ``k`` spans the angles ``[2 pi k/n, 2 pi (k+1)/n)`` (points are mapped to the circle
    radially); returns the ``(n,)`` cell masses of the normalised measure: a DG0 histogram.
    """
    x, w = _normalised(points, weights)
    th = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
    k = np.minimum((th * n / (2 * np.pi)).astype(np.int64), n - 1)
    return np.bincount(k, weights=w, minlength=n)


def l1_distance(mass_a: np.ndarray, mass_b: np.ndarray) -> float:
    """L1 distance ``sum_c |a_c - b_c|`` of two cell-mass vectors, each normalised to 1."""
    a, b = np.asarray(mass_a, float), np.asarray(mass_b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"mass_a and mass_b must be 1-D of the same shape, got {a.shape}, {b.shape}"
        )
    return float(np.abs(a / a.sum() - b / b.sum()).sum())


def circle_clusters(
    points: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    bins: int = 180,
    empty: float = 0.01,
    min_mass: float = 0.01,
) -> int:
    """Number of clusters of a weighted point cloud on ``S^1`` (one criterion for both solvers).

    The normalised measure is deposited on ``bins`` equal arcs (:func:`circle_histogram`); an
    arc is occupied when it holds at least ``empty`` times the mass of the uniform density
    (``empty / bins``); a cluster is a maximal run of occupied arcs (cyclically) holding at
    least ``min_mass``. Particles leave empty arcs at 0; a finite element density between
    clusters decays below the threshold. Invariant under relabelling; a rotation moves arc
    boundaries, which splits no run. Particle clouds need many more tokens than ``bins``
    (empty arcs from sampling noise would split clusters).

    points : (n, 2) points on (or radially projected to) the unit circle; weights : (n,).
    """
    x, w = _normalised(points, weights)
    if x.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {x.shape}")
    h = circle_histogram(x, w, bins)
    occ = h >= empty / bins
    if occ.all():
        return 1
    # Start right after an empty arc so that runs do not wrap around the end.
    start = int(np.flatnonzero(~occ)[0]) + 1
    occ, h = np.roll(occ, -start), np.roll(h, -start)
    count, run = 0, 0.0
    for o, m in zip(occ, h, strict=True):
        if o:
            run += m
        elif run > 0:
            count += run >= min_mass
            run = 0.0
    count += run >= min_mass
    return int(count)


def circle_gap_clusters(
    points: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    gap: float,
    min_mass: float = 0.0,
) -> int:
    """Number of clusters of a weighted point cloud on ``S^1`` by the gap criterion.

    The angles of the points of positive weight are sorted; every cyclic gap between
    consecutive angles wider than ``gap`` (radians) separates two clusters, so ``k >= 1`` wide
    gaps make ``k`` clusters (the arcs between them) and no wide gap makes one. Arcs holding
    less than ``min_mass`` of the normalised measure are then not counted (``min_mass = 0``
    counts every arc, a single token included). The count depends only on the multiset of
    angle differences, so it is invariant under relabelling and under rotation (up to a gap
    equal to ``gap`` to round-off); it needs no binning, so it resolves clusters closer than any
    histogram cell and does not need many tokens per cluster (unlike :func:`circle_clusters`).

    For the attention dynamics at inverse temperature ``beta`` the natural choice is
    ``gap ~ 1/sqrt(beta)``, the width of the kernel ``e^{beta (cos theta - 1)}``: tokens
    closer than that attract at a rate of order one and merge in a time of order one, while
    clusters farther apart interact only through ``e^{-beta theta^2/2}`` (see
    :mod:`attnflow.studies.metastability`).

    Parameters
    ----------
    points : (n, 2) points on (or radially projected to) the unit circle.
    weights : (n,) non-negative weights (default uniform); zero-weight points are ignored.
    gap : the separating gap, in radians, in ``(0, 2 pi)``.
    min_mass : smallest mass of a counted cluster, in ``[0, 1]``.
    """
    x, w = _normalised(points, weights)
    if x.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {x.shape}")
    gap = float(gap)
    if not 0.0 < gap < 2.0 * np.pi:
        raise ValueError(f"gap must be in (0, 2 pi) radians, got {gap!r}")
    min_mass = float(min_mass)
    if not 0.0 <= min_mass <= 1.0:
        raise ValueError(f"min_mass must be in [0, 1], got {min_mass!r}")
    keep = w > 0
    th = np.arctan2(x[keep, 1], x[keep, 0])
    order = np.argsort(th, kind="stable")
    th, m = th[order], w[keep][order]
    # Gap i lies between th[i] and th[i + 1] (cyclically: the last one wraps around).
    gaps = np.diff(th, append=th[0] + 2.0 * np.pi)
    wide = np.flatnonzero(gaps > gap)
    if wide.size <= 1:
        return int(m.sum() >= min_mass)
    # Arc j runs from just after wide gap j - 1 to wide gap j (inclusive), cyclically.
    csum = np.concatenate([[0.0], np.cumsum(m)])
    masses = np.diff(csum[wide + 1], append=csum[wide[0] + 1] + csum[-1])
    return int(np.sum(masses >= min_mass))


def _icosphere_cells(level: int) -> tuple[np.ndarray, np.ndarray]:
    from attnflow.meshdata import sphere_arrays  # the arrays of sphere_mesh(level), numpy only

    return sphere_arrays(level)


def sphere_histogram(points: np.ndarray, weights: np.ndarray | None, level: int) -> np.ndarray:
    """Deposit a cloud on S^2 onto the cells of ``sphere_mesh(level)`` (generator order).

    A point belongs to the triangle whose cone from the origin contains it (the radial
    projection of the faceted mesh), so a finite element quadrature cloud and its own cells
    agree exactly. Returns the ``(20 * 4**level,)`` cell masses of the normalised measure.
    """
    from scipy.spatial import cKDTree

    x, w = _normalised(points, weights)
    if x.shape[1] != 3:
        raise ValueError(f"points must have shape (n, 3), got {x.shape}")
    v, f = _icosphere_cells(level)
    tri = v[f]  # (n_cells, 3 vertices, 3)
    inv = np.linalg.inv(np.transpose(tri, (0, 2, 1)))  # columns = vertices
    centroids = tri.mean(axis=1)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    _, cand = cKDTree(centroids).query(x / np.linalg.norm(x, axis=1, keepdims=True), k=6)
    cell = cand[:, 0].copy()
    found = np.zeros(x.shape[0], dtype=bool)
    for j in range(cand.shape[1]):
        c = cand[:, j]
        lam = np.einsum("nij,nj->ni", inv[c], x)
        inside = ~found & np.all(lam >= -1e-12, axis=1)
        cell[inside] = c[inside]
        found |= inside
    return np.bincount(cell, weights=w, minlength=f.shape[0])


def sphere_clusters(
    points: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    level: int = 3,
    empty: float = 0.01,
    min_mass: float = 0.01,
) -> int:
    """Number of clusters on S^2 with the criterion of :func:`circle_clusters`.

    The measure is deposited on the cells of ``sphere_mesh(level)``; a cell is occupied when it
    holds at least ``empty`` times the uniform cell mass; clusters are the connected
    components (cells sharing an edge) of occupied cells holding at least ``min_mass``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h = sphere_histogram(points, weights, level)
    _, f = _icosphere_cells(level)
    n = f.shape[0]
    occ = np.flatnonzero(h >= empty / n)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(n), 3)
    _, inv = np.unique(edges, axis=0, return_inverse=True)
    pairs = np.full((inv.max() + 1, 2), -1)
    first = np.zeros(inv.max() + 1, dtype=bool)
    for e, c in zip(inv.ravel(), owner, strict=True):
        pairs[e, int(first[e])] = c
        first[e] = True
    keep = np.isin(pairs[:, 0], occ) & np.isin(pairs[:, 1], occ)
    a, b = pairs[keep, 0], pairs[keep, 1]
    graph = coo_matrix((np.ones(a.size), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    masses = np.bincount(labels[occ], weights=h[occ])
    return int(np.sum(masses >= min_mass))


@dataclass(frozen=True)
class RelativeEntropy:
    """A relative entropy on the mesh and the masses it was computed from.

    value : the quadrature of the integrand over the mesh (see :func:`relative_entropy`).
    direction : ``"forward"`` (``KL(rho | target)``) or ``"reverse"`` (``KL(target | rho)``).
    lumped : ``value`` plus the term of one extra "cell" holding the mass outside the mesh,
        ``m_out log(m_out / p_out)`` (forward) or ``p_out log(p_out / m_out)`` (reverse), with
        ``0 log 0 = 0``: the relative entropy of the two laws seen on the mesh cells plus the
        outside, a lower bound of the full-space one (data processing) that does not ignore
        lost mass. ``inf`` when one side has mass outside and the other none.
    mass : ``int_mesh rho``; mass_outside : ``total_mass - mass`` (clipped at 0).
    target_mass : ``int_mesh target``; target_outside : ``1 - target_mass`` (clipped at 0).
    outflow : the mass that left through the boundary (``FieldSolution.outflow[k]``), NaN for a
        cloud given as arrays.
    """

    value: float
    direction: str
    lumped: float
    mass: float
    mass_outside: float
    target_mass: float
    target_outside: float
    outflow: float

    def __float__(self) -> float:
        return self.value


def _xlogy_ratio(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p log(p / q)`` elementwise with ``0 log(0 / q) = 0`` and ``p log(p / 0) = inf``."""
    out = np.zeros_like(p)
    pos = p > 0
    with np.errstate(divide="ignore"):
        out[pos] = p[pos] * (np.log(p[pos]) - np.log(q[pos]))
    return out


def relative_entropy(
    rho,
    target,
    k: int = -1,
    *,
    direction: str = "forward",
    normalize: bool = False,
    total_mass: float = 1.0,
) -> RelativeEntropy:
    """Relative entropy (Kullback–Leibler divergence) of a finite element density and a target
    density, by the quadrature of the mesh.

    Parameters
    ----------
    rho : a :class:`~attnflow.solutions.FieldSolution` (its density at save ``k``), or its
        cloud as a tuple ``(points (n, d), point_weights (n,), weights (n,))``: quadrature
        points ``y_q``, weights ``omega_q = |J| w_q`` and ``omega_q rho(y_q)`` (the density is
        ``weights / point_weights`` at the points; negative round-off is clipped to 0).
    target : a callable mapping ``(n, d)`` points to ``(n,)`` density values ``>= 0`` (e.g. a
        law's ``pdf``), or a :class:`~attnflow.laws.Law`.
    k : the save index when ``rho`` is a ``FieldSolution``.
    direction : ``"forward"``: ``KL(rho | p) = int rho log(rho / p)`` (the error of a
        transported density measured against the target; ``inf`` if ``rho > 0`` where
        ``p = 0``); ``"reverse"``: ``KL(p | rho) = int p log(p / rho)`` (``inf`` where
        ``p > 0`` and ``rho = 0``, e.g. a density with empty cells).
    normalize : divide both densities by their mass on the mesh first (the relative entropy
        of the two laws conditioned on the mesh, which is ``>= 0``).
    total_mass : the mass of ``rho`` on the whole space (default 1: a probability density),
        for ``mass_outside``.

    Returns
    -------
    :class:`RelativeEntropy`. ``value = sum_q omega_q f(rho(y_q), p(y_q))`` with
    ``f = rho log(rho/p)`` (forward) or ``p log(p/rho)`` (reverse): the mesh integral, exact
    for the quadrature rule (exact whenever the integrand is a polynomial of the rule's degree
    on every cell, e.g. ``log(rho/p)`` of degree ``<= 3`` times a DG1 ``rho`` with the default
    degree-4 rule). The mass outside the mesh is reported (``mass_outside``,
    ``target_outside``, ``lumped``), never silently renormalised.
    """
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    outflow = np.nan
    if isinstance(rho, tuple):
        if len(rho) != 3:
            raise ValueError("rho must be a FieldSolution or (points, point_weights, weights)")
        points, omega, w = (np.asarray(a, dtype=float) for a in rho)
    elif hasattr(rho, "point_weights") and hasattr(rho, "weights"):
        points, omega = np.asarray(rho.points, float), np.asarray(rho.point_weights, float)
        w = np.asarray(rho.weights[k], float)
        outflow = float(np.asarray(rho.outflow)[k])
    else:
        raise TypeError(
            f"rho must be a FieldSolution or (points, point_weights, weights), got {type(rho)}"
        )
    if points.ndim != 2 or omega.shape != (points.shape[0],) or w.shape != omega.shape:
        raise ValueError(
            "rho must hold points (n, d), point_weights (n,) and weights (n,), got shapes "
            f"{points.shape}, {omega.shape}, {w.shape}"
        )
    if np.any(omega <= 0) or not (np.all(np.isfinite(omega)) and np.all(np.isfinite(w))):
        raise ValueError("rho's point_weights must be > 0 and its weights finite")
    f = target.pdf if hasattr(target, "pdf") else target
    if not callable(f):
        raise TypeError("target must be a callable (n, d) -> (n,) or a Law")
    p = np.asarray(f(points), dtype=float).reshape(-1)
    if p.shape != omega.shape or not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("target must return one finite value >= 0 per point")
    r = np.maximum(w, 0.0) / omega
    mass, target_mass = float(omega @ r), float(omega @ p)
    if normalize:
        if not (mass > 0 and target_mass > 0):
            raise ValueError("normalize needs positive masses of rho and target on the mesh")
        r, p = r / mass, p / target_mass
    m_out = max(float(total_mass) - mass, 0.0) if not normalize else 0.0
    p_out = max(1.0 - target_mass, 0.0) if not normalize else 0.0
    if direction == "forward":
        value = float(omega @ _xlogy_ratio(r, p))
        extra = _xlogy_ratio(np.array([m_out]), np.array([p_out]))[0]
    else:
        value = float(omega @ _xlogy_ratio(p, r))
        extra = _xlogy_ratio(np.array([p_out]), np.array([m_out]))[0]
    return RelativeEntropy(
        value=value,
        direction=direction,
        lumped=value + float(extra),
        mass=mass,
        mass_outside=m_out,
        target_mass=target_mass,
        target_outside=p_out,
        outflow=outflow,
    )
