"""Mesh data: the point and cell arrays of the meshes, and mesh files (numpy only).

* :func:`icosphere` generates the sphere S^2 in R^3 as the icosahedron refined ``level`` times
  (each triangle split in four, new vertices projected onto the sphere): ``20 * 4**level``
  triangles, outward oriented.
* :func:`sphere_arrays` gives the same arrays, read from a file when one exists: levels
  ``<= MAX_COMMITTED_LEVEL`` ship with the package (``attnflow/data/meshes/sphere_<level>.npz``,
  made by the repository's ``meshes/generate.py``), so an installed wheel finds them; larger
  levels are generated once and cached under ``$XDG_CACHE_HOME/attnflow/meshes`` (written
  atomically). The arrays are bit-identical whichever way they are obtained.
* :func:`circle_arrays` gives the circle S^1 in R^2 as ``n`` segments.
* Mesh files are ``.npz`` archives with arrays ``points`` (n, gdim) and ``cells`` (m, k):
  segments (k = 2), triangles (k = 3) or tetrahedra (k = 4), affine; a manifold mesh when the
  cells' dimension is below the points'. :func:`read_mesh` is the one reader (it raises
  :class:`MeshError` with a one-line message naming the file), :func:`write_mesh` the writer.

The finite element meshes built from these arrays (dolfinx) are in :mod:`attnflow.fem.meshes`;
this module imports neither dolfinx nor MPI, so the particle solver and the metrics use it too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from attnflow.io import write_npz_atomic

__all__ = [
    "MAX_COMMITTED_LEVEL",
    "MESH_DIR",
    "MeshError",
    "cache_dir",
    "check_mesh",
    "circle_arrays",
    "icosphere",
    "read_mesh",
    "sphere_arrays",
    "write_mesh",
]

#: The sphere meshes shipped with the package (package data, levels 0..MAX_COMMITTED_LEVEL).
MESH_DIR = Path(__file__).resolve().parent / "data" / "meshes"

#: Vertices closer than this times the mesh's extent are duplicates; cells whose measure is
#: below this times (their longest edge)^dim are degenerate.
DEGENERATE_RTOL = 1e-12

#: Vertices of a manifold (sphere) mesh must have ``| |p| - 1 | <=`` this.
SPHERE_TOL = 1e-6

#: The largest icosphere level shipped in :data:`MESH_DIR`; larger ones go to :func:`cache_dir`.
MAX_COMMITTED_LEVEL = 4


class MeshError(ValueError):
    """A mesh file that is missing or malformed, or mesh arrays that cannot be written.

    The message is one line and names the file.
    """


def cache_dir() -> Path:
    """The cache of generated meshes: ``$XDG_CACHE_HOME/attnflow/meshes``.

    Returns
    -------
    Path
        The directory (``~/.cache/attnflow/meshes`` when ``XDG_CACHE_HOME`` is unset or
        empty); it may not exist yet.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attnflow" / "meshes"


def _check_level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
        raise ValueError(f"level must be an int >= 0, got {level!r}")
    return int(level)


def icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    """The icosahedron refined ``level`` times, with its vertices on the unit sphere.

    Parameters
    ----------
    level : int
        Number of refinements (>= 0); each splits every triangle in four.

    Returns
    -------
    points : ndarray of float64, shape (10 * 4**level + 2, 3)
        Vertices, of norm 1.
    cells : ndarray of int64, shape (20 * 4**level, 3)
        Triangles (vertex indices), oriented with the outward normal.
    """
    level = _check_level(level)
    t = (1.0 + 5.0**0.5) / 2.0
    v = np.array(
        [
            [-1, t, 0],
            [1, t, 0],
            [-1, -t, 0],
            [1, -t, 0],
            [0, -1, t],
            [0, 1, t],
            [0, -1, -t],
            [0, 1, -t],
            [t, 0, -1],
            [t, 0, 1],
            [-t, 0, -1],
            [-t, 0, 1],
        ],
        dtype=float,
    )
    f = np.array(
        [
            [0, 11, 5],
            [0, 5, 1],
            [0, 1, 7],
            [0, 7, 10],
            [0, 10, 11],
            [1, 5, 9],
            [5, 11, 4],
            [11, 10, 2],
            [10, 7, 6],
            [7, 1, 8],
            [3, 9, 4],
            [3, 4, 2],
            [3, 2, 6],
            [3, 6, 8],
            [3, 8, 9],
            [4, 9, 5],
            [2, 4, 11],
            [6, 2, 10],
            [8, 6, 7],
            [9, 8, 1],
        ],
        dtype=np.int64,
    )
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for _ in range(level):
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        uniq, inv = np.unique(edges, axis=0, return_inverse=True)
        mid = v[uniq[:, 0]] + v[uniq[:, 1]]
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        m = inv.reshape(3, -1).T + v.shape[0]  # midpoints of edges 01, 12, 20
        v = np.concatenate([v, mid])
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        f = np.concatenate(
            [
                np.stack([a, m[:, 0], m[:, 2]], 1),
                np.stack([b, m[:, 1], m[:, 0]], 1),
                np.stack([c, m[:, 2], m[:, 1]], 1),
                np.stack([m[:, 0], m[:, 1], m[:, 2]], 1),
            ]
        )
    return v, f


def sphere_arrays(level: int) -> tuple[np.ndarray, np.ndarray]:
    """The arrays of :func:`icosphere`, from the shipped files, the cache or generated.

    Levels ``<= MAX_COMMITTED_LEVEL`` are read from :data:`MESH_DIR` when the file is there;
    otherwise the cache (:func:`cache_dir`) is read, and on a miss (or an unreadable cache
    file) the mesh is generated and written to the cache atomically (a per-process temporary
    file renamed into place, so concurrent processes never see a partial file). A cache that
    cannot be written is skipped.

    Parameters
    ----------
    level : int
        Number of refinements of the icosahedron (>= 0).

    Returns
    -------
    points : ndarray of float64, shape (10 * 4**level + 2, 3)
        Vertices on the unit sphere, bit-identical to ``icosphere(level)[0]``.
    cells : ndarray of int64, shape (20 * 4**level, 3)
        Triangles, identical to ``icosphere(level)[1]``.
    """
    level = _check_level(level)
    name = f"sphere_{level}.npz"
    shipped = MESH_DIR / name
    if level <= MAX_COMMITTED_LEVEL and shipped.is_file():
        return read_mesh(shipped)
    cache = cache_dir()
    cached = cache / name
    if cached.is_file():
        try:
            return read_mesh(cached)
        except MeshError:
            pass  # a damaged cache entry: generate and replace it
    points, cells = icosphere(level)
    tmp = cache / f".{name}.{os.getpid()}.part"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        write_mesh(tmp, points, cells)
        os.replace(tmp, cached)
    except OSError:  # a read-only or missing cache: use the arrays without caching them
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return points, cells


def circle_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The unit circle S^1 in R^2 as ``n`` straight segments (vertices on the circle).

    Parameters
    ----------
    n : int
        Number of segments (>= 3).

    Returns
    -------
    points : ndarray of float64, shape (n, 2)
        ``(cos θ_i, sin θ_i)`` with ``θ_i = 2π i / n``.
    cells : ndarray of int64, shape (n, 2)
        Segments ``(i, i + 1 mod n)``, counter-clockwise.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3:
        raise ValueError(f"n must be an int >= 3 (segments of the circle), got {n!r}")
    n = int(n)
    th = 2 * np.pi * np.arange(n) / n
    points = np.stack([np.cos(th), np.sin(th)], axis=1)
    cells = np.stack([np.arange(n), (np.arange(n) + 1) % n], axis=1).astype(np.int64)
    return points, cells


def _check_arrays(p: Path, points: np.ndarray, cells: np.ndarray) -> None:
    if points.ndim != 2 or not 1 <= points.shape[1] <= 3 or points.shape[0] == 0:
        raise MeshError(f"{p}: 'points' must have shape (n, 1..3), got {points.shape}")
    if not np.issubdtype(points.dtype, np.floating) or not np.all(np.isfinite(points)):
        raise MeshError(f"{p}: 'points' must be finite floats")
    if cells.ndim != 2 or not 2 <= cells.shape[1] <= 4 or cells.shape[0] == 0:
        raise MeshError(f"{p}: 'cells' must have shape (m, 2..4), got {cells.shape}")
    if not np.issubdtype(cells.dtype, np.integer):
        raise MeshError(f"{p}: 'cells' must hold integers")
    if cells.min() < 0 or cells.max() >= points.shape[0]:
        raise MeshError(f"{p}: 'cells' must index the points (0..{points.shape[0] - 1})")
    if cells.shape[1] - 1 > points.shape[1]:
        raise MeshError(f"{p}: cells of dimension {cells.shape[1] - 1} need more coordinates")


def _cell_measures(x: np.ndarray) -> np.ndarray:
    """Measures of simplices ``x`` (m, k, gdim): lengths, areas or volumes."""
    k, gdim = x.shape[1], x.shape[2]
    e = x[:, 1:] - x[:, :1]  # (m, k - 1, gdim) edge vectors from the first vertex
    if k == 2:
        return np.linalg.norm(e[:, 0], axis=1)
    if k == 3 and gdim == 2:
        return 0.5 * np.abs(e[:, 0, 0] * e[:, 1, 1] - e[:, 0, 1] * e[:, 1, 0])
    if k == 3:
        return 0.5 * np.linalg.norm(np.cross(e[:, 0], e[:, 1]), axis=1)
    return np.abs(np.einsum("mi,mi->m", e[:, 0], np.cross(e[:, 1], e[:, 2]))) / 6.0


def check_mesh(
    points: np.ndarray, cells: np.ndarray, path: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Geometric checks of a simplex mesh (arrays already of the right shapes and types).

    * no duplicate vertices: two vertices used by the cells closer than ``DEGENERATE_RTOL``
      (1e-12) times the mesh's extent;
    * no degenerate cells: a zero-length segment, a zero-area triangle or a zero-volume
      tetrahedron (measure below ``DEGENERATE_RTOL`` times its longest edge to the power of
      its dimension, or a vertex repeated in a cell);
    * manifold meshes (cells of a lower dimension than the points: the circle S^1 in R^2, the
      sphere S^2 in R^3): every vertex on the unit sphere (to ``SPHERE_TOL``, 1e-6) and every
      cell oriented the same way, i.e. ``det[p0, p1] > 0`` for every segment (counter-clockwise)
      or for none, ``det[p0, p1, p2] > 0`` for every triangle (outward normal) or for none.

    Parameters
    ----------
    points : ndarray of float, shape (n, gdim)
    cells : ndarray of int, shape (m, k)
    path : the file the arrays come from (named in the message).

    Returns
    -------
    The arrays, unchanged.

    Raises
    ------
    MeshError
        One line naming the file (or "mesh") and the first offending cell or vertex.
    """
    where = str(path) if path is not None else "mesh"
    pts = np.asarray(points, dtype=np.float64)
    cl = np.asarray(cells, dtype=np.int64)
    used = np.flatnonzero(np.bincount(cl.ravel(), minlength=pts.shape[0]))
    up = pts[used]
    extent = float(np.max(up.max(axis=0) - up.min(axis=0))) if up.size else 0.0
    if extent > 0 and used.size > 1:
        from scipy.spatial import cKDTree

        pairs = cKDTree(up).query_pairs(DEGENERATE_RTOL * extent, output_type="ndarray")
        if len(pairs):
            i, j = used[pairs[0, 0]], used[pairs[0, 1]]
            raise MeshError(
                f"{where}: vertices {min(i, j)} and {max(i, j)} coincide ({len(pairs)} duplicate "
                "pair(s) of vertices); merge them"
            )
    x = pts[cl]  # (m, k, gdim)
    k, gdim = cl.shape[1], pts.shape[1]
    tdim = k - 1
    edges = np.stack(
        [np.linalg.norm(x[:, a] - x[:, b], axis=1) for a in range(k) for b in range(a + 1, k)],
        axis=1,
    )
    measure = _cell_measures(x)
    small = (
        measure <= DEGENERATE_RTOL * np.maximum(edges.max(axis=1), DEGENERATE_RTOL * extent) ** tdim
    )
    if np.any(small):
        c = int(np.flatnonzero(small)[0])
        kind = {1: "zero-length segment", 2: "zero-area triangle", 3: "zero-volume tetrahedron"}
        raise MeshError(
            f"{where}: cell {c} {cl[c].tolist()} is a {kind[tdim]} ({int(small.sum())} "
            "degenerate cell(s)); remove them"
        )
    if tdim < gdim:
        err = np.abs(np.linalg.norm(up, axis=1) - 1.0)
        if err.max() > SPHERE_TOL:
            v = int(used[np.argmax(err)])
            raise MeshError(
                f"{where}: a manifold mesh must have its vertices on the unit sphere, vertex {v} "
                f"has | |p| - 1 | = {err.max():.2e} (> {SPHERE_TOL:g})"
            )
        if tdim == gdim - 1:
            # det[p0, ..] (m,): the orientation of each cell seen from the centre
            if gdim == 2:
                det = x[:, 0, 0] * x[:, 1, 1] - x[:, 0, 1] * x[:, 1, 0]
            else:
                det = np.einsum("mi,mi->m", x[:, 0], np.cross(x[:, 1], x[:, 2]))
            inward = det < 0
            if np.any(inward) and not np.all(inward):
                c = int(np.flatnonzero(inward if inward.sum() <= x.shape[0] / 2 else ~inward)[0])
                raise MeshError(
                    f"{where}: cells are not consistently oriented: {int(inward.sum())} of "
                    f"{x.shape[0]} have det[p0, ..] < 0 (inward), the others > 0 (outward), e.g. "
                    f"cell {c} {cl[c].tolist()}; orient them all the same way"
                )
    return points, cells


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a mesh file (``.npz`` with arrays ``points`` and ``cells``) and check it.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    points : ndarray of float64, shape (n, gdim)
        Vertex coordinates, ``1 <= gdim <= 3``, finite.
    cells : ndarray of int64, shape (m, k)
        Vertex indices of the cells, ``2 <= k <= 4``, ``k - 1 <= gdim``, in ``0..n-1``.

    Raises
    ------
    MeshError
        The file is missing, not an ``.npz``, lacks an array, the arrays have a bad shape,
        type or index range, or the mesh is degenerate (:func:`check_mesh`: duplicate
        vertices, zero-measure cells, a sphere mesh off the sphere or inconsistently oriented);
        the message is one line and names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise MeshError(f"no such mesh file: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "points" not in z.files or "cells" not in z.files:
                raise MeshError(f"{p} must be an .npz file with arrays 'points' and 'cells'")
            points, cells = np.asarray(z["points"]), np.asarray(z["cells"])
    except MeshError:
        raise
    except Exception as e:
        reason = " ".join(str(e).splitlines())
        raise MeshError(f"cannot read {p} as .npz: {reason}") from None
    _check_arrays(p, points, cells)
    return check_mesh(points.astype(np.float64), cells.astype(np.int64), p)


def write_mesh(path: str | Path, points: np.ndarray, cells: np.ndarray) -> Path:
    """Write a mesh file that :func:`read_mesh` reads back, atomically and compressed.

    Parameters
    ----------
    path : str or Path
        The file (written as ``path.tmp``, fsync-ed, renamed; see
        :func:`attnflow.io.write_npz_atomic`).
    points : array_like of float, shape (n, gdim)
        Vertex coordinates (``1 <= gdim <= 3``), stored as float64.
    cells : array_like of int, shape (m, k)
        Vertex indices of the cells (``2 <= k <= 4``), stored as int64.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    MeshError
        The arrays break a check of :func:`read_mesh` (nothing is written).
    """
    p = Path(path)
    points, cells = np.asarray(points), np.asarray(cells)
    _check_arrays(p, points, cells)
    check_mesh(points, cells, p)
    return write_npz_atomic(
        p, compressed=True, points=points.astype(np.float64), cells=cells.astype(np.int64)
    )
