"""Every demo runs (small sizes) and none is missing from the list (Firedrake style).

Under ``mpiexec`` the Makefile runs the same list with ``mpiexec -n 2`` (see ``make test-mpi``):
starting MPI jobs from inside an MPI job is not portable, so here they run serially only.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mpi4py import MPI

DEMO_DIR = Path(__file__).resolve().parent.parent / "demos"
DEMOS = [
    "demo_circle_clustering.py",
    "demo_cluster_counts.py",
    "demo_depth_models.py",
    "demo_lost_in_the_middle.py",
    "demo_convergence.py",
    "demo_gaussian_euclidean.py",
    "demo_low_temperature.py",
    "demo_noise_phase_transition.py",
    "demo_normalizing_flow.py",
    "demo_perceptron_sphere.py",
    "demo_sphere_clustering.py",
    "demo_sphere_highres.py",
    "demo_value_spectrum.py",
]


def test_no_missing_demos():
    found = sorted(p.name for p in DEMO_DIR.glob("demo_*.py"))
    assert found == sorted(DEMOS), "add new demos to DEMOS in tests/test_demos.py"


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="run under mpiexec by `make test-mpi`")
@pytest.mark.parametrize("demo", DEMOS)
def test_demo_runs(demo, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    out = subprocess.run(
        [sys.executable, str(DEMO_DIR / demo), "--small", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert any(tmp_path.glob("*.png"))
