"""``figures/summary.png`` reads on every geometry: the density as a field with a labelled colour
bar where colour carries the value, the particles in their own panel, every axis labelled.

Tiny runs of the example configurations (S^1, S^2, a 2-D box; finite elements and particles)
through the command line, then :func:`attnflow.app.figures.summary_plot` on their results: the
figure object is inspected (colour bars and their labels, axis labels, the panels), and the
drawn density is checked against the solution: it integrates to 1 (unit mass) over the angle
(S^1) and over the box, and the colour range of S^2 spans the cell means.
"""

from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from attnflow.app.cli import main
from attnflow.app.config import load_config
from attnflow.app.figures import summary_plot
from attnflow.app.style import check_figure
from attnflow.solutions import EnsembleSolution, FieldSolution

pytestmark = pytest.mark.usefixtures("one_numba_thread")

ROOT = Path(__file__).resolve().parents[2]
TINY = ["particles.n=150", "particles.runs=1", "checkpoint.every=0"]
CASES = {
    "circle": (
        "quick_circle.toml",
        ["mesh.cells=32", "time.t_final=0.5", "time.n_saves=2", "particles.dt=0.1"],
        0,
    ),
    "sphere": (
        "sphere_clustering.toml",
        [
            "mesh.level=1",
            "time.t_final=0.5",
            "time.save_times=[0.0, 0.5]",
            'run.solvers=["fem", "particles"]',
            "particles.dt=0.1",
        ],
        1,
    ),
    "box": (
        "gaussian_euclidean.toml",
        ["mesh.cells=8", "fem.degree=0", "time.t_final=0.3", "time.n_saves=2", "particles.dt=0.05"],
        1,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_summary_figure_is_a_labelled_field_beside_the_particles(case, tmp_path_factory):
    comm = MPI.COMM_WORLD
    example, sets, n_colorbars = CASES[case]
    base = Path(comm.bcast(str(tmp_path_factory.mktemp("fig")) if comm.rank == 0 else None))
    run = base / "run"
    args = ["run", str(ROOT / "examples" / example), "--output", str(run), "-q"]
    for s in [*TINY, *sets]:
        args += ["--set", s]
    assert main(args) == 0
    ok = False
    if comm.rank == 0:
        assert (run / "figures" / "summary.png").stat().st_size > 10_000
        cfg = load_config(run / "config.toml")
        fem = FieldSolution.load(run / "fem_solution.npz")
        ens = EnsembleSolution.load(run / "particles.npz")
        fig = summary_plot(cfg, fem, ens, None)
        check_figure(fig)  # every axes with data has x and y labels, colour bars a label
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert len(bars) == n_colorbars
        for bar in bars:
            assert "density" in (bar.get_ylabel() + bar.get_xlabel())
        titles = [ax.get_title() for ax in fig.axes]
        assert any(t.startswith("finite element density") for t in titles), titles
        assert any(t.startswith("particles (run 0, N = 150)") for t in titles), titles
        mass = fem.weights[-1].sum()
        if case == "circle":  # the curve of cell means integrates to 1 over the angle
            (ax,) = [a for a in fig.axes if a.get_title().startswith("finite element")]
            th, rho = ax.lines[0].get_data()
            assert ax.get_xlabel() == r"angle $\theta$" and "density" in ax.get_ylabel()
            # The cell means times the cell lengths (the chords of the 32-gon) are the cell
            # masses: they sum to the unit mass.
            h = 2 * np.pi / th.size
            chord = 2 * np.sin(h / 2)
            assert np.sum(rho) * chord == pytest.approx(1.0, rel=1e-9)
        elif case == "box":  # bin mass / bin area of unit total mass: sums to the kept mass
            quad = next(c for ax in fig.axes for c in ax.collections if c.get_array() is not None)
            img = np.asarray(quad.get_array())
            cell = (2 * cfg.mesh.length / 8) ** 2
            assert np.sum(img) * cell == pytest.approx(1.0, rel=1e-9)
            assert img.min() >= 0
        else:  # the colour range spans the smooth display of the cell means
            k = fem.points_per_cell
            means = fem.weights[-1].reshape(-1, k).sum(1) / fem.point_weights.reshape(-1, k).sum(1)
            means = means / mass
            lo, hi = bars[0].get_ylim()
            assert lo == 0.0 and means.min() <= hi <= means.max() * (1 + 1e-12)
        ok = True
    assert comm.bcast(ok)
