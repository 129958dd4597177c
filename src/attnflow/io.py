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
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_npz", "write_npz_atomic", "write_point_cloud_series", "write_text_atomic"]


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
