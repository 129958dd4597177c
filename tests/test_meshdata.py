"""Mesh data (numpy only): icosphere, shipped and cached sphere arrays, circle arrays, the mesh
file reader and writer, no dolfinx on import, and the meshes found from an installed wheel."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import attnflow
from attnflow import meshdata
from attnflow.meshdata import (
    MAX_COMMITTED_LEVEL,
    MESH_DIR,
    MeshError,
    circle_arrays,
    icosphere,
    read_mesh,
    sphere_arrays,
    write_mesh,
)

ROOT = Path(__file__).resolve().parents[1]


def _same(a, b):
    """Bit-identical arrays: same dtype, shape and bytes."""
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty mesh cache of this test only."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "attnflow" / "meshes"


# -- icosphere and the sphere arrays ------------------------------------------------------------
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_icosphere_counts_and_vertices_on_the_sphere(level):
    v, f = icosphere(level)
    assert v.dtype == np.float64 and f.dtype == np.int64
    assert f.shape == (20 * 4**level, 3)
    assert v.shape == (10 * 4**level + 2, 3)  # Euler: V - E + F = 2
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-15)
    # Outward orientation: every triangle's normal points away from the origin.
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert np.all(np.sum(n * v[f[:, 0]], axis=1) > 0)


def test_sphere_area_converges_at_second_order():
    areas = []
    for level in (2, 3, 4):
        v, f = icosphere(level)
        a = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
        areas.append(abs(a.sum() - 4 * np.pi))
    rates = np.log2(np.array(areas[:-1]) / np.array(areas[1:]))
    assert np.all(np.abs(rates - 2) < 0.1)


@pytest.mark.parametrize("level", [-1, 1.0, True, "2"])
def test_bad_level(level):
    for f in (icosphere, sphere_arrays):
        with pytest.raises(ValueError, match="level must be an int >= 0"):
            f(level)


def test_shipped_meshes_are_the_generator_output(cache):
    assert MESH_DIR.parent.parent == Path(attnflow.__file__).resolve().parent
    for level in range(MAX_COMMITTED_LEVEL + 1):
        path = MESH_DIR / f"sphere_{level}.npz"
        with np.load(path) as z:
            assert sorted(z.files) == ["cells", "points"]
            shipped = z["points"], z["cells"]
        generated = icosphere(level)
        for a, b, c in zip(shipped, generated, sphere_arrays(level), strict=True):
            _same(a, b)
            _same(c, b)
    assert not cache.exists()  # read from the package: nothing generated nor cached


def test_larger_levels_are_generated_once_then_read_from_the_cache(cache, monkeypatch):
    level = MAX_COMMITTED_LEVEL + 1
    first = sphere_arrays(level)
    assert sorted(p.name for p in cache.iterdir()) == [f"sphere_{level}.npz"]  # no temporaries

    def fail(level):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(meshdata, "icosphere", fail)
    second = sphere_arrays(level)
    generated = icosphere(level)  # the module's own name is patched, not ours
    for a, b, c in zip(first, second, generated, strict=True):
        _same(a, c)
        _same(b, c)


def test_without_shipped_files_the_cache_gives_the_same_arrays(cache, monkeypatch, tmp_path):
    monkeypatch.setattr(meshdata, "MESH_DIR", tmp_path / "missing")
    for _ in range(2):  # generated and cached, then read from the cache
        for a, b in zip(sphere_arrays(2), icosphere(2), strict=True):
            _same(a, b)
    assert (cache / "sphere_2.npz").is_file()


def test_a_damaged_cache_file_is_replaced(cache):
    level = MAX_COMMITTED_LEVEL + 1
    cache.mkdir(parents=True)
    (cache / f"sphere_{level}.npz").write_bytes(b"truncated")
    for a, b in zip(sphere_arrays(level), icosphere(level), strict=True):
        _same(a, b)
    for a, b in zip(read_mesh(cache / f"sphere_{level}.npz"), icosphere(level), strict=True):
        _same(a, b)


def test_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    for a, b in zip(sphere_arrays(MAX_COMMITTED_LEVEL + 1), icosphere(5), strict=True):
        _same(a, b)


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert meshdata.cache_dir() == tmp_path / "attnflow" / "meshes"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert meshdata.cache_dir() == Path.home() / ".cache" / "attnflow" / "meshes"


def test_circle_arrays():
    points, cells = circle_arrays(12)
    assert points.shape == (12, 2) and points.dtype == np.float64
    assert cells.shape == (12, 2) and cells.dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, rtol=1e-15)
    np.testing.assert_array_equal(cells[:, 1], np.roll(cells[:, 0], -1))
    a, b = points[cells[:, 0]], points[cells[:, 1]]
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    assert np.all(cross > 0)  # counter-clockwise
    for n in (2, 3.0, True):
        with pytest.raises(ValueError, match="n must be an int >= 3"):
            circle_arrays(n)


# -- mesh files ---------------------------------------------------------------------------------
def test_write_then_read_round_trip(tmp_path):
    points, cells = icosphere(1)
    path = write_mesh(tmp_path / "s.npz", points.astype(np.float32), cells.astype(np.int32))
    assert path == tmp_path / "s.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]  # no temporary left
    with zipfile.ZipFile(path) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    p, c = read_mesh(str(path))
    assert p.dtype == np.float64 and c.dtype == np.int64
    np.testing.assert_array_equal(p, points.astype(np.float32))
    np.testing.assert_array_equal(c, cells)
    # Volume meshes and 1-D points too.
    write_mesh(tmp_path / "line.npz", np.array([[0.0], [0.5], [1.0]]), [[0, 1], [1, 2]])
    assert read_mesh(tmp_path / "line.npz")[1].shape == (2, 2)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


P2 = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
TRI = np.array([[0, 1, 2]])
BAD_FILES = {
    "missing arrays": (dict(points=P2), "must be an .npz file with arrays 'points' and 'cells'"),
    "points shape": (dict(points=np.zeros((3, 4)), cells=TRI), r"'points' must have shape \(n"),
    "no points": (dict(points=np.zeros((0, 2)), cells=TRI), r"'points' must have shape"),
    "points not finite": (dict(points=P2 * np.nan, cells=TRI), "'points' must be finite floats"),
    "points ints": (dict(points=np.zeros((3, 2), int), cells=TRI), "must be finite floats"),
    "cells shape": (dict(points=P2, cells=np.zeros((1, 5), int)), r"'cells' must have shape \(m"),
    "cells 1-d": (dict(points=P2, cells=np.arange(3)), r"'cells' must have shape"),
    "cells floats": (dict(points=P2, cells=TRI * 1.0), "'cells' must hold integers"),
    "index too large": (dict(points=P2, cells=TRI + 1), r"must index the points \(0\.\.2\)"),
    "negative index": (dict(points=P2, cells=TRI - 1), r"must index the points \(0\.\.2\)"),
    "dimension": (dict(points=P2, cells=np.array([[0, 1, 2, 0]])), "dimension 3 need more"),
}


def _one_line_naming(err, path):
    msg = str(err)
    assert "\n" not in msg and str(path) in msg
    assert not msg.startswith("mesh.path")  # the application adds its key
    return msg


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_read_mesh_errors_are_one_line_naming_the_file(tmp_path, case):
    arrays, match = BAD_FILES[case]
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(MeshError, match=match) as err:
        read_mesh(path)
    assert isinstance(err.value, ValueError)
    assert _one_line_naming(err.value, path).startswith(f"{path}")
    # The writer refuses the same arrays (nothing is written).
    if "missing" not in case:
        with pytest.raises(MeshError, match=match):
            write_mesh(tmp_path / "out.npz", **arrays)
        assert not (tmp_path / "out.npz").exists()


def test_read_mesh_missing_or_unreadable_file(tmp_path):
    with pytest.raises(MeshError, match="no such mesh file: ") as err:
        read_mesh(tmp_path / "nowhere.npz")
    _one_line_naming(err.value, tmp_path / "nowhere.npz")
    with pytest.raises(MeshError, match="no such mesh file"):
        read_mesh(tmp_path)  # a directory
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip\n\nsecond line")
    with pytest.raises(MeshError, match=r"cannot read .* as \.npz: ") as err:
        read_mesh(junk)
    _one_line_naming(err.value, junk)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, points=np.array([object()]), cells=TRI)
    with pytest.raises(MeshError, match=r"cannot read .* as \.npz: ") as err:
        read_mesh(pickled)
    _one_line_naming(err.value, pickled)


# -- numpy only, and the installed wheel ------------------------------------------------------
def _clean_env(**extra):
    """The environment of a child interpreter: no MPI launcher variables, no PYTHONPATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_")) and k != "PYTHONPATH"
    }
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def test_import_loads_no_dolfinx_petsc_or_mpi(tmp_path):
    code = (
        "import sys, attnflow.meshdata\n"
        "bad = ('dolfinx', 'petsc4py', 'ufl', 'basix', 'ffcx', 'mpi4py.MPI')\n"
        "print([m for m in sys.modules if m.startswith(bad)])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout


WHEEL_SCRIPT = textwrap.dedent(
    """
    import importlib.metadata, json, os, subprocess, sys
    import numpy as np
    import attnflow
    from attnflow import meshdata
    points, cells = meshdata.sphere_arrays(3)
    ref = meshdata.icosphere(3)
    from attnflow.fem import sphere_mesh
    mesh = sphere_mesh(3)
    # A tiny particle run and the version (package, metadata, command) of the installed wheel.
    sol = attnflow.simulate(
        attnflow.SelfAttention(2, beta=4.0), attnflow.UniformSphere(2).sample(64, rng=0), 1.0,
        dt=0.1,
    )
    script = os.path.join(os.path.dirname(sys.executable), "attnflow")  # the console script
    cli = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    cli = cli.stdout.strip()
    print(json.dumps({
        "file": attnflow.__file__,
        "mesh_dir": str(meshdata.MESH_DIR),
        "same": bool(points.tobytes() == ref[0].tobytes() and cells.tobytes() == ref[1].tobytes()),
        "cells": int(mesh.topology.index_map(2).size_global),
        "status": sol.status.name,
        "on_sphere": float(np.abs(np.linalg.norm(sol.final, axis=1) - 1).max()),
        "version": [attnflow.__version__, importlib.metadata.version("attnflow"), cli],
    }))
    """
)


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="builds and runs a child interpreter")
def test_an_installed_wheel_finds_the_meshes(tmp_path):
    # Build from a copy of the sources: the build writes build/ and *.egg-info next to them.
    src = tmp_path / "source"
    shutil.copytree(
        ROOT / "src",
        src / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    env = _clean_env(XDG_CACHE_HOME=str(tmp_path / "xdg"))
    run = dict(env=env, capture_output=True, text=True, timeout=300)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    out = subprocess.run([*build, "--no-index", "-q", "-w", dist, src], cwd=tmp_path, **run)
    assert out.returncode == 0, out.stderr
    (wheel,) = dist.glob("attnflow-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {f"attnflow/data/meshes/sphere_{k}.npz" for k in range(5)} <= names
        assert "attnflow/meshdata.py" in names
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, **run)
        python = venv / "bin" / "python"
        site = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            **run,
        ).stdout.strip()
    # pip installs the wheel (files, metadata, the `attnflow` console script) into the venv.
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    out = subprocess.run([*pip, "--no-index", "-q", str(wheel)], cwd=tmp_path, **run)
    assert out.returncode == 0, out.stderr
    # The dependencies (numpy, dolfinx, ...) from this interpreter's site-packages, appended to
    # sys.path as a plain directory: its .pth files (the editable install) are not processed.
    Path(site, "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # The MPICH wheel's libmpi lives in <prefix>/lib of this venv, where mpi4py looks for it.
    lib = Path(sys.prefix, "lib")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    out = subprocess.run([python, "-c", WHEEL_SCRIPT], cwd=cwd, **run)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    installed = Path(info["file"]).resolve()
    assert installed.is_relative_to(Path(site).resolve())
    assert not installed.is_relative_to(ROOT / "src")
    assert Path(info["mesh_dir"]).resolve().is_relative_to(Path(site).resolve())
    assert info["same"] and info["cells"] == 20 * 4**3
    assert info["status"] == "SUCCESS" and info["on_sphere"] < 1e-12
    v = attnflow.__version__
    assert info["version"] == [v, v, f"attnflow {v}"]
    assert not (tmp_path / "xdg").exists()  # the shipped file was read: nothing generated
