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
    "circle_arrays",
    "icosphere",
    "read_mesh",
    "sphere_arrays",
    "write_mesh",
]

#: The sphere meshes shipped with the package (package data, levels 0..MAX_COMMITTED_LEVEL).
MESH_DIR = Path(__file__).resolve().parent / "data" / "meshes"

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
        The file is missing, not an ``.npz``, lacks an array, or the arrays have a bad shape,
        type or index range; the message is one line and names the file.
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
    return points.astype(np.float64), cells.astype(np.int64)


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
    return write_npz_atomic(
        p, compressed=True, points=points.astype(np.float64), cells=cells.astype(np.int64)
    )
