"""The XDMF output opens in Debian's real ParaView (pvpython) with the right content.

`.ci/run` installs ParaView (`paraview`, `python3-paraview`) when missing and sets
ATTNFLOW_REQUIRE_PARAVIEW=1, so in CI this test cannot silently skip.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import attnflow as af
from attnflow.fem import MeanFieldSolver, sphere_mesh

PVPYTHON = shutil.which("pvpython")
REQUIRED = os.environ.get("ATTNFLOW_REQUIRE_PARAVIEW") == "1"


@pytest.mark.skipif(PVPYTHON is None and not REQUIRED, reason="pvpython (ParaView) not installed")
def test_paraview_reads_the_xdmf_time_series(tmp_path_factory):
    assert PVPYTHON is not None, "ATTNFLOW_REQUIRE_PARAVIEW=1 but pvpython is missing"
    comm = MPI.COMM_WORLD
    out = Path(comm.bcast(str(tmp_path_factory.mktemp("pv")) if comm.rank == 0 else None))
    solver = MeanFieldSolver(
        af.SelfAttention(3, beta=4.0), sphere_mesh(2), af.VonMisesFisher([0.0, 0.0, 1.0], 2.0)
    )
    times = [0.0, 0.25, 0.5]
    sol = solver.solve(0.5, times, output_dir=out)
    rho_last = sol.weights[-1].reshape(320, -1).sum(1) / sol.point_weights.reshape(320, -1).sum(1)
    seen = None
    if comm.rank == 0:  # one ParaView process reads what all ranks wrote
        run = subprocess.run(
            [
                PVPYTHON,
                str(Path(__file__).with_name("paraview_check.py")),
                str(out / "density.xdmf"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = [ln for ln in run.stdout.splitlines() if ln.startswith("PARAVIEW ")]
        assert lines, run.stdout[-2000:] + run.stderr[-2000:]
        seen = json.loads(lines[-1][len("PARAVIEW ") :])
    seen = comm.bcast(seen)
    assert seen["cells"] == 320
    assert seen["times"] == pytest.approx(times)
    assert "density" in seen["cell_arrays"] and "velocity" in seen["point_arrays"]
    # ParaView reports the range in single precision.
    np.testing.assert_allclose(seen["range"], [rho_last.min(), rho_last.max()], rtol=1e-6)
