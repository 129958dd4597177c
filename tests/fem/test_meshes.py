import numpy as np
import pytest
from mpi4py import MPI

from attnflow.fem import box_mesh, circle_mesh, icosphere, sphere_mesh


def n_cells(mesh):
    return mesh.topology.index_map(mesh.topology.dim).size_global


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_icosphere_counts_and_vertices_on_the_sphere(level):
    v, f = icosphere(level)
    assert f.shape == (20 * 4**level, 3)
    assert v.shape[0] == 10 * 4**level + 2  # Euler: V - E + F = 2
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-15)
    # Outward orientation: every triangle's normal points away from the origin.
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert np.all(np.sum(n * v[f[:, 0]], axis=1) > 0)


def test_committed_meshes_match_the_generator():
    from attnflow.fem.meshes import MESH_DIR

    for level in range(5):
        data = np.load(MESH_DIR / f"sphere_{level}.npz")
        v, f = icosphere(level)
        np.testing.assert_array_equal(data["cells"], f)
        np.testing.assert_allclose(data["points"], v, rtol=0, atol=0)


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


def test_sphere_area_converges_at_second_order():
    areas = []
    for level in (2, 3, 4):
        v, f = icosphere(level)
        a = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
        areas.append(abs(a.sum() - 4 * np.pi))
    rates = np.log2(np.array(areas[:-1]) / np.array(areas[1:]))
    assert np.all(np.abs(rates - 2) < 0.1)


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
