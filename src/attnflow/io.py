"""Files: atomic ``.npz`` writing (solutions, checkpoints) and particle clouds for ParaView.

``write_npz_atomic`` writes a temporary file in the same directory, flushes and ``fsync``-s it,
renames it over the target with :func:`os.replace` (atomic on POSIX) and ``fsync``-s the
directory: a reader sees the old file or the new one, never a partial one, even if the writer
is killed. ``read_npz`` reads such a file without pickles and names the file in its errors.
The finite element output (XDMF, VTX) lives in ``attnflow.fem``.

``write_point_cloud_series`` writes one VTK XML PolyData file (``.vtp``, binary-free ASCII, no
VTK dependency) per time and a ``.pvd`` collection that ParaView (and pyvista) open as a time
series; open it next to the finite element ``density.xdmf`` to see both solutions together.
Call it on one rank (the clouds are the same on every rank).

``write_vtu`` writes one VTK XML UnstructuredGrid (``.vtu``, ASCII, no VTK dependency) from
mesh arrays with cell and point arrays on the same grid, and :class:`VTUSeries` a time series of
them with its ``.pvd`` collection (rewritten atomically after every step): the finite element
solver's ``density.pvd``, whose ONE reader output carries the density (cell data) and the
velocity (point data), so ParaView's Glyph filter on the reader works directly.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "VTUSeries",
    "read_npz",
    "write_npz_atomic",
    "write_point_cloud_series",
    "write_text_atomic",
    "write_vtu",
]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_npz_atomic(path: str | Path, *, compressed: bool = False, **arrays: Any) -> Path:
    """Write ``arrays`` to ``path`` (``.npz``) atomically: ``path.tmp``, fsync, rename.

    ``compressed=True`` writes with :func:`numpy.savez_compressed` (deflate) instead of
    :func:`numpy.savez`. Returns the path. The temporary file is removed if writing fails.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: ``path.tmp``, fsync, rename.

    Returns the path. The temporary file is removed if writing fails.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file (no pickles), read eagerly.

    Raises ``ValueError`` naming the file when it is missing, truncated or not an ``.npz``.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def _vtp(points: np.ndarray, weights: np.ndarray) -> str:
    n = points.shape[0]
    xyz = " ".join(f"{v:.9g}" for v in points.ravel())
    conn = " ".join(map(str, range(n)))
    offs = " ".join(map(str, range(1, n + 1)))
    w = " ".join(f"{v:.9g}" for v in weights)
    return (
        '<?xml version="1.0"?>\n<VTKFile type="PolyData" version="0.1">\n<PolyData>\n'
        f'<Piece NumberOfPoints="{n}" NumberOfVerts="{n}">\n'
        f'<PointData Scalars="weight"><DataArray type="Float64" Name="weight" '
        f'format="ascii">{w}</DataArray></PointData>\n'
        f'<Points><DataArray type="Float64" NumberOfComponents="3" format="ascii">{xyz}'
        "</DataArray></Points>\n"
        f'<Verts><DataArray type="Int64" Name="connectivity" format="ascii">{conn}</DataArray>'
        f'<DataArray type="Int64" Name="offsets" format="ascii">{offs}</DataArray></Verts>\n'
        "</Piece>\n</PolyData>\n</VTKFile>\n"
    )


def write_point_cloud_series(
    directory: str | Path,
    times: np.ndarray,
    points: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    name: str = "particles",
) -> Path:
    """Write ``points`` (n_times, N, d) (d = 1, 2, 3; padded to 3-D) as ``name.pvd`` + ``.vtp``.

    ``weights`` (N,) or (n_times, N) is stored as the point array ``weight``. Returns the path
    of the ``.pvd`` file. Each file is written to a temporary name and renamed into place.
    """
    t = np.asarray(times, dtype=float).ravel()
    x = np.asarray(points, dtype=float)
    if x.ndim != 3 or x.shape[0] != t.size or not 1 <= x.shape[2] <= 3:
        raise ValueError(f"points must have shape (n_times={t.size}, N, d<=3), got {x.shape}")
    n = x.shape[1]
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float)
    w = np.broadcast_to(w, (t.size, n))
    out = Path(directory)
    (out / name).mkdir(parents=True, exist_ok=True)
    entries = []
    for k in range(t.size):
        pts = np.zeros((n, 3))
        pts[:, : x.shape[2]] = x[k]
        rel = f"{name}/{name}_{k:05d}.vtp"
        tmp = out / (rel + ".tmp")
        tmp.write_text(_vtp(pts, w[k]))
        tmp.replace(out / rel)
        entries.append(f'<DataSet timestep="{t[k]:.17g}" file="{rel}"/>')
    pvd = out / f"{name}.pvd"
    tmp = out / f"{name}.pvd.tmp"
    tmp.write_text(
        '<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n<Collection>\n'
        + "\n".join(entries)
        + "\n</Collection>\n</VTKFile>\n"
    )
    tmp.replace(pvd)
    return pvd


# VTK cell types of affine simplices by their number of vertices (line, triangle, tetrahedron).
_VTK_CELL_TYPE = {2: 3, 3: 5, 4: 10}


def _ascii(a: np.ndarray, fmt: str = "{:.9g}") -> str:
    if a.dtype.kind in "iu":
        return " ".join(map(str, a.ravel().tolist()))
    return " ".join(fmt.format(v) for v in a.ravel().tolist())


def _data_arrays(arrays: dict[str, np.ndarray], n: int, where: str) -> str:
    out = []
    for name, a in arrays.items():
        a = np.asarray(a, dtype=float)
        if a.shape[0] != n or a.ndim > 2:
            raise ValueError(
                f"{where} array {name!r} must have shape ({n},) or ({n}, k), got {a.shape}"
            )
        if a.ndim == 2 and a.shape[1] in (1, 2):  # vectors are padded to 3-D for ParaView
            a = np.hstack([a, np.zeros((n, 3 - a.shape[1]))]) if a.shape[1] == 2 else a
        k = 1 if a.ndim == 1 else a.shape[1]
        out.append(
            f'<DataArray type="Float64" Name="{name}" NumberOfComponents="{k}" '
            f'format="ascii">{_ascii(a)}</DataArray>'
        )
    return "\n".join(out)


def write_vtu(
    path: str | Path,
    points: np.ndarray,
    cells: np.ndarray,
    *,
    cell_data: dict[str, np.ndarray] | None = None,
    point_data: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write an unstructured grid of affine simplices as a VTK XML ``.vtu`` file (atomically).

    Parameters
    ----------
    path : the file to write.
    points : (n, gdim) vertex coordinates, gdim <= 3 (padded to 3-D).
    cells : (m, k) vertex indices of the cells: segments (k = 2), triangles (3), tetrahedra (4).
    cell_data : name -> (m,) or (m, c) arrays, one row per cell.
    point_data : name -> (n,) or (n, c) arrays, one row per vertex (2-D vectors are padded
        to 3-D so that ParaView's Glyph filter orients by them).

    Returns
    -------
    The path written. ParaView (5.11 and later), pyvista and VTK read it.
    """
    x = np.asarray(points, dtype=float)
    c = np.asarray(cells, dtype=np.int64)
    if x.ndim != 2 or not 1 <= x.shape[1] <= 3:
        raise ValueError(f"points must have shape (n, gdim <= 3), got {x.shape}")
    if c.ndim != 2 or c.shape[1] not in _VTK_CELL_TYPE:
        raise ValueError(f"cells must have shape (m, 2|3|4), got {c.shape}")
    if c.size and (c.min() < 0 or c.max() >= x.shape[0]):
        raise ValueError(f"cells must index the {x.shape[0]} points")
    n, m, k = x.shape[0], c.shape[0], c.shape[1]
    xyz = np.zeros((n, 3))
    xyz[:, : x.shape[1]] = x
    text = (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="UnstructuredGrid" version="1.0" byte_order="LittleEndian" '
        'header_type="UInt64">\n<UnstructuredGrid>\n'
        f'<Piece NumberOfPoints="{n}" NumberOfCells="{m}">\n'
        f"<PointData>\n{_data_arrays(point_data or {}, n, 'point')}\n</PointData>\n"
        f"<CellData>\n{_data_arrays(cell_data or {}, m, 'cell')}\n</CellData>\n"
        '<Points><DataArray type="Float64" NumberOfComponents="3" format="ascii">'
        f"{_ascii(xyz)}</DataArray></Points>\n<Cells>\n"
        f'<DataArray type="Int64" Name="connectivity" format="ascii">{_ascii(c)}</DataArray>\n'
        '<DataArray type="Int64" Name="offsets" format="ascii">'
        f"{_ascii(np.arange(1, m + 1, dtype=np.int64) * k)}</DataArray>\n"
        '<DataArray type="UInt8" Name="types" format="ascii">'
        f"{_ascii(np.full(m, _VTK_CELL_TYPE[k], dtype=np.int64))}</DataArray>\n"
        "</Cells>\n</Piece>\n</UnstructuredGrid>\n</VTKFile>\n"
    )
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


class VTUSeries:
    """A time series of ``.vtu`` files and its ``name.pvd`` collection in ``directory``.

    :meth:`write` adds ``directory/name/name_<k>.vtu`` and rewrites ``name.pvd`` atomically, so
    the collection is readable after every step. Call it on one rank.

    Parameters
    ----------
    directory : the output directory (created if needed).
    name : the stem of the ``.pvd`` file and of the folder of ``.vtu`` files.
    """

    def __init__(self, directory: str | Path, name: str) -> None:
        self.directory = Path(directory)
        self.name = name
        self.pvd = self.directory / f"{name}.pvd"
        self._entries: list[str] = []
        (self.directory / name).mkdir(parents=True, exist_ok=True)

    def write(
        self,
        t: float,
        points: np.ndarray,
        cells: np.ndarray,
        *,
        cell_data: dict[str, np.ndarray] | None = None,
        point_data: dict[str, np.ndarray] | None = None,
    ) -> Path:
        """Write the grid at time ``t`` (arguments as :func:`write_vtu`); returns the .vtu."""
        rel = f"{self.name}/{self.name}_{len(self._entries):05d}.vtu"
        write_vtu(self.directory / rel, points, cells, cell_data=cell_data, point_data=point_data)
        self._entries.append(f'<DataSet timestep="{float(t):.17g}" part="0" file="{rel}"/>')
        write_text_atomic(
            self.pvd,
            '<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n<Collection>\n'
            + "\n".join(self._entries)
            + "\n</Collection>\n</VTKFile>\n",
        )
        return self.directory / rel
