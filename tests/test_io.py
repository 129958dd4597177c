import numpy as np
import pytest
from mpi4py import MPI

from attnflow.io import write_point_cloud_series


def test_point_cloud_series_reads_back_with_pyvista(tmp_path_factory, rng):
    pv = pytest.importorskip("pyvista")
    comm = MPI.COMM_WORLD
    out = comm.bcast(str(tmp_path_factory.mktemp("pc")) if comm.rank == 0 else None)
    x = rng.standard_normal((3, 50, 2))
    if comm.rank == 0:
        pvd = write_point_cloud_series(out, [0.0, 0.5, 1.0], x, np.arange(50.0))
        reader = pv.get_reader(str(pvd))
        assert reader.time_values == [0.0, 0.5, 1.0]
        reader.set_active_time_value(0.5)
        mesh = reader.read()[0]
        np.testing.assert_allclose(mesh.points[:, :2], x[1], rtol=1e-8)
        np.testing.assert_allclose(mesh.point_data["weight"], np.arange(50.0))
        assert mesh.n_cells == 50


def test_point_cloud_series_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="points must have shape"):
        write_point_cloud_series(tmp_path, [0.0], np.zeros((2, 5, 2)))
    assert list(tmp_path.iterdir()) == []
