"""Finite element meshes (dolfinx): sizes, ghosting, input checks, mesh files. The arrays
themselves (icosphere, shipped and cached meshes, the file reader) are tested in
tests/test_meshdata.py."""

import numpy as np
import pytest
from mpi4py import MPI

from attnflow import meshdata
from attnflow.fem import box_mesh, circle_mesh, icosphere, sphere_mesh
from attnflow.fem.meshes import load_mesh, mesh_arrays, mesh_from_arrays


def n_cells(mesh):
    return mesh.topology.index_map(mesh.topology.dim).size_global


def test_meshes_are_ghosted_and_have_the_right_size():
    comm = MPI.COMM_WORLD
    for mesh, cells in [
        (circle_mesh(40), 40),
        (sphere_mesh(2), 320),
        (box_mesh(1, 2.0, 8), 8),
        (box_mesh(2, 1.0, 4), 32),
        (box_mesh(3, 1.0, 2), 48),
    ]:
        assert n_cells(mesh) == cells
        if comm.size > 1:  # shared-facet ghosting: some ghost cells on every rank
            tdim = mesh.topology.dim
            assert comm.allreduce(mesh.topology.index_map(tdim).num_ghosts, op=MPI.MIN) > 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: circle_mesh(2), "n must be an int >= 3"),
        (lambda: sphere_mesh(8), r"level must be an int in \[0, 7\]"),
        (lambda: sphere_mesh(-1), "level must be"),
        (lambda: box_mesh(4, 1.0, 2), "d must be 1, 2 or 3"),
        (lambda: box_mesh(2, -1.0, 2), "L must be"),
        (lambda: box_mesh(2, 1.0, 0), "n must be an int >= 1"),
    ],
)
def test_bad_mesh_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_icosphere_is_the_meshdata_one():
    assert icosphere is meshdata.icosphere


def _input_order(mesh):
    """Vertex coordinates of the owned cells, indexed by input cell (gathered on all ranks)."""
    tdim = mesh.topology.dim
    n = mesh.topology.index_map(tdim).size_local
    x = mesh.geometry.x[mesh.geometry.dofmaps[0][:n]]
    idx = np.asarray(mesh.topology.original_cell_index[:n])
    comm = mesh.comm
    xs, ids = comm.allgather(x), comm.allgather(idx)
    out = np.empty((sum(len(i) for i in ids), *x.shape[1:]))
    for xi, ii in zip(xs, ids, strict=True):
        out[ii] = xi
    return out


@pytest.mark.parametrize(
    ("kind", "kwargs", "shape"),
    [
        ("circle", {"cells": 24}, ((24, 2), (24, 2))),
        ("sphere", {"level": 2}, ((162, 3), (320, 3))),
        ("box", {"cells": 3, "dim": 2, "length": 2.0}, ((16, 2), (18, 3))),
        ("box", {"cells": 2, "dim": 3}, ((27, 3), (48, 4))),
    ],
)
def test_mesh_file_round_trip(tmp_path_factory, kind, kwargs, shape):
    comm = MPI.COMM_WORLD
    path = None
    if comm.rank == 0:
        points, cells = mesh_arrays(kind, **kwargs)
        assert (points.shape, cells.shape) == shape
        assert points.dtype == np.float64 and cells.dtype == np.int64
        path = meshdata.write_mesh(tmp_path_factory.mktemp("mesh") / "m.npz", points, cells)
    path = comm.bcast(path, root=0)
    points, cells = meshdata.read_mesh(path)
    mesh = load_mesh(path, comm)
    assert mesh.geometry.dim == points.shape[1]
    assert mesh.topology.dim == cells.shape[1] - 1
    assert mesh.topology.index_map(mesh.topology.dim).size_global == cells.shape[0]
    # The file's cell order is the mesh's input order, whatever the partition.
    gdim = points.shape[1]
    np.testing.assert_allclose(_input_order(mesh)[..., :gdim], points[cells], rtol=0, atol=1e-15)
    if kind == "sphere":
        ref = sphere_mesh(2, comm)
        np.testing.assert_array_equal(_input_order(mesh), _input_order(ref))
        direct = mesh_from_arrays(*meshdata.sphere_arrays(2), comm)
        np.testing.assert_array_equal(_input_order(direct), _input_order(ref))


def test_load_mesh_raises_the_reader_error_on_every_rank(tmp_path_factory):
    comm = MPI.COMM_WORLD
    path = comm.bcast(str(tmp_path_factory.mktemp("none") / "nowhere.npz"), root=0)
    with pytest.raises(meshdata.MeshError, match=r"no such mesh file: .*nowhere\.npz"):
        load_mesh(path, comm)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "torus"}, "kind must be"),
        ({"kind": "circle", "cells": 2}, "cells must be an int >= 3"),
        ({"kind": "sphere", "level": 8}, r"level must be an int in \[0, 7\]"),
        ({"kind": "sphere"}, "level must be"),
        ({"kind": "box", "cells": 0}, "cells must be an int >= 1"),
    ],
)
def test_bad_mesh_arrays_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mesh_arrays(**kwargs)
