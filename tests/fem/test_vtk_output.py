"""``density.pvd``: one grid per time with the density (cell data) and the velocity (point data).

The file is read back with VTK's own XML reader (the PyPI ``vtk`` wheel, independent of our
writer) and checked against the solution: the cell densities are the solution's cell means,
the velocity at every vertex is the model's field of the saved density, the time steps are the
save times; the same on any number of ranks (everything is gathered to rank 0 in input order).
"""

from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import attnflow as af
from attnflow.fem import MeanFieldSolver, box_mesh, circle_mesh, sphere_mesh
from attnflow.io import write_vtu

vtk = pytest.importorskip("vtk")
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

CASES = {
    "sphere-dg0": (lambda c: sphere_mesh(2, c), af.SelfAttention(3, beta=4.0), 0),
    "circle-dg1": (lambda c: circle_mesh(32, c), af.SelfAttention(2, beta=9.0), 1),
    "box-dg0": (
        lambda c: box_mesh(2, 3.0, 8, c),
        af.SelfAttention(2, beta=1.0, K=-np.eye(2), sphere=False),
        0,
    ),
}
LAWS = {
    "sphere-dg0": af.VonMisesFisher([0.0, 0.6, 0.8], 2.0),
    "circle-dg1": af.PerturbedCircle(0.3, 3),
    "box-dg0": af.Gaussian([0.5, 0.0], [[0.5, 0.1], [0.1, 0.3]]),
}


def read_vtu(path: Path) -> dict:
    r = vtk.vtkXMLUnstructuredGridReader()
    r.SetFileName(str(path))
    r.Update()
    g = r.GetOutput()
    cd, pd = g.GetCellData(), g.GetPointData()
    return {
        "points": vtk_to_numpy(g.GetPoints().GetData()),
        "cells": g.GetNumberOfCells(),
        "cell": {
            cd.GetArrayName(i): vtk_to_numpy(cd.GetArray(i)) for i in range(cd.GetNumberOfArrays())
        },
        "point": {
            pd.GetArrayName(i): vtk_to_numpy(pd.GetArray(i)) for i in range(pd.GetNumberOfArrays())
        },
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_grid_carries_density_and_velocity(case, tmp_path_factory):
    comm = MPI.COMM_WORLD
    make_mesh, model, degree = CASES[case]
    out = Path(comm.bcast(str(tmp_path_factory.mktemp("vtu")) if comm.rank == 0 else None))
    solver = MeanFieldSolver(model, make_mesh(comm), LAWS[case], degree=degree)
    times = [0.0, 0.2, 0.4]
    sol = solver.solve(0.4, times, output_dir=out)
    n_cells = solver.n_cells_global
    checked = False
    if comm.rank == 0:
        import xml.etree.ElementTree as ET

        sets = ET.parse(out / "density.pvd").getroot().findall(".//DataSet")
        assert [float(s.get("timestep")) for s in sets] == pytest.approx(times)
        assert (out / "density.xdmf").is_file()  # kept
        g = read_vtu(out / sets[-1].get("file"))
        assert g["cells"] == n_cells
        assert {"density"} <= set(g["cell"]) and {"velocity", "speed"} <= set(g["point"])
        assert ("density_vertex" in g["point"]) == (degree == 1)
        assert g["point"]["velocity"].shape == (g["points"].shape[0], 3)
        # The cell densities are the solution's cell means (input cell order).
        k = sol.points_per_cell
        mean = sol.weights[-1].reshape(n_cells, k).sum(1) / sol.point_weights.reshape(
            n_cells, k
        ).sum(1)
        np.testing.assert_allclose(g["cell"]["density"], mean, rtol=1e-7, atol=1e-12)
        # The velocity at each vertex is the model's field of the saved density cloud.
        d = model.d
        x = g["points"][:, :d]
        src = sol.points  # the quadrature points on the faceted mesh, as the solver uses
        expect = model.evaluate(x, af.Cloud(src, np.maximum(sol.weights[-1], 0.0)))
        got = g["point"]["velocity"][:, :d]
        scale = np.abs(expect).max()
        np.testing.assert_allclose(got, expect, atol=1e-6 * scale)
        np.testing.assert_allclose(g["point"]["speed"], np.linalg.norm(got, axis=1), rtol=1e-7)
        checked = True
    assert comm.bcast(checked)


def test_write_vtu_round_trip(tmp_path):
    """Our writer against VTK's reader: points, triangles, tetrahedra, 2-D vectors padded."""
    rng = np.random.default_rng(0)
    p = rng.random((5, 2))
    c = np.array([[0, 1, 2], [1, 3, 4]])
    f = write_vtu(
        tmp_path / f"t{MPI.COMM_WORLD.rank}.vtu",
        p,
        c,
        cell_data={"a": np.array([1.5, 2.5])},
        point_data={"v": p[:, ::-1]},
    )
    g = read_vtu(f)
    np.testing.assert_allclose(g["points"][:, :2], p, rtol=1e-8)
    np.testing.assert_allclose(g["cell"]["a"], [1.5, 2.5])
    np.testing.assert_allclose(g["point"]["v"], np.c_[p[:, ::-1], np.zeros(5)], rtol=1e-8)
    with pytest.raises(ValueError, match="cells must index"):
        write_vtu(tmp_path / "bad.vtu", p, np.array([[0, 1, 9]]))
    with pytest.raises(ValueError, match="cell array 'a'"):
        write_vtu(tmp_path / "bad.vtu", p, c, cell_data={"a": np.ones(3)})
