"""The ParaView files of a run directory open in Debian's real ParaView (pvpython under xvfb).

A tiny ``attnflow run`` on S^2 (finite elements and particles) writes ``fem/density.pvd``,
``particles.pvd`` and ``view.py``; then

* a pvpython script lists what ParaView's PVD reader gives: ONE dataset whose cell data holds
  ``density`` and whose point data holds ``velocity`` (so *Glyph* on the reader works);
* ``xvfb-run -a pvpython view.py --screenshot x.png`` renders the density, the velocity arrows
  and the particles: the screenshot is not blank (many distinct colours, a good part of the
  image is not background, and the arrows' and the colour map's colours are there).

`.ci/run` installs ``paraview`` and ``xvfb`` when missing and sets ATTNFLOW_REQUIRE_PARAVIEW=1,
so in CI these tests cannot silently skip. Serial (subprocesses).
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from mpi4py import MPI

from attnflow.app.cli import main

PVPYTHON = shutil.which("pvpython")
XVFB = shutil.which("xvfb-run")
REQUIRED = os.environ.get("ATTNFLOW_REQUIRE_PARAVIEW") == "1"
MISSING = ", ".join(n for n, p in (("pvpython", PVPYTHON), ("xvfb-run", XVFB)) if p is None)

pytestmark = [
    pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="serial (pvpython subprocesses)"),
    pytest.mark.skipif(
        bool(MISSING) and not REQUIRED,
        reason=f"{MISSING} not installed (apt-get install paraview xvfb; CI installs them)",
    ),
]

CONFIG = """
[run]
solvers = ["fem", "particles"]
name = "pv"

[model]
d = 3
beta = 9.0

[mesh]
type = "sphere"
level = 2

[initial]
type = "expression"
expression = "1 + 0.5 * cos(3 * x + 1) * cos(2 * y)"

[time]
t_final = 1.0
save_times = [0.0, 0.5, 1.0]

[particles]
n = 200
runs = 1
dt = 0.1
seed = 1
"""

ARRAYS = r"""
import json, sys
from paraview import servermanager
from paraview.simple import PVDReader

reader = PVDReader(FileName=sys.argv[1])
reader.UpdatePipelineInformation()
times = [float(t) for t in reader.TimestepValues]
reader.UpdatePipeline(times[-1])
data = servermanager.Fetch(reader)
cd, pd = data.GetCellData(), data.GetPointData()
print("PARAVIEW " + json.dumps({
    "class": data.GetClassName(),
    "times": times,
    "cells": data.GetNumberOfCells(),
    "cell_arrays": [cd.GetArrayName(i) for i in range(cd.GetNumberOfArrays())],
    "point_arrays": [pd.GetArrayName(i) for i in range(pd.GetNumberOfArrays())],
}))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    assert not MISSING, f"ATTNFLOW_REQUIRE_PARAVIEW=1 but {MISSING} is missing"
    base = tmp_path_factory.mktemp("pvrun")
    cfg = base / "pv.toml"
    cfg.write_text(CONFIG)
    assert main(["run", str(cfg), "--output", str(base / "run"), "-q"]) == 0
    return base / "run"


def test_run_directory_lists_the_paraview_files(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in ("view.py", "particles.pvd", "fem/density.pvd", "fem/density.xdmf"):
        assert (run_dir / name).is_file(), name
        assert name in summary["files"], name


def test_one_reader_output_carries_density_and_velocity(run_dir, tmp_path):
    script = tmp_path / "arrays.py"
    script.write_text(ARRAYS)
    run = subprocess.run(
        [PVPYTHON, str(script), str(run_dir / "fem" / "density.pvd")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("PARAVIEW ")]
    assert lines, run.stdout[-2000:] + run.stderr[-2000:]
    seen = json.loads(lines[-1][len("PARAVIEW ") :])
    assert seen["class"] == "vtkUnstructuredGrid"  # one dataset, not a multiblock
    assert seen["times"] == pytest.approx([0.0, 0.5, 1.0])
    assert seen["cells"] == 320
    assert "density" in seen["cell_arrays"] and "velocity" in seen["point_arrays"]


def test_view_script_screenshot_is_not_blank(run_dir, tmp_path):
    shot = tmp_path / "x.png"
    run = subprocess.run(
        [XVFB, "-a", PVPYTHON, str(run_dir / "view.py"), "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "shown density, velocity, particles" in run.stdout
    import matplotlib.image

    img = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(np.uint8)
    assert img.shape[:2] == (900, 1200)
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 100  # shading of the map, arrows, discs, text
    background = np.all(img == 255, axis=-1)
    assert 0.1 < 1 - background.mean() < 0.9
    # The arrows' vermillion (213, 94, 0) is drawn, shaded: red high, blue low.
    r, g, b = (img[..., k].astype(int) for k in range(3))
    assert np.sum((r > 120) & (r - b > 90) & (g < r - 40)) > 200
    # The colour map: viridis' dark purple to green/yellow are present.
    assert np.sum((b > r + 30) & (b > 60)) > 1000
