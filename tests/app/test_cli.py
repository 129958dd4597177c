"""The ``attnflow`` command line: validation, runs, sweeps, meshes, checkpoint and resume.

Serial tests call ``attnflow.app.cli.main`` in this process, or start ``python -m attnflow`` (the
SIGKILL test) and ``mpiexec -n 2`` (resuming on another rank count) as subprocesses; starting
MPI jobs from inside an MPI job is not portable, so those run serially only. Under
``make test-mpi`` the MPI-marked test runs the command in-process on all ranks.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from attnflow.app.cli import main
from attnflow.solutions import EnsembleSolution, FieldSolution

pytestmark = pytest.mark.usefixtures("one_numba_thread")

ROOT = Path(__file__).resolve().parents[2]
MPIEXEC = Path(sys.executable).parent / "mpiexec"
serial_only = pytest.mark.skipif(
    MPI.COMM_WORLD.size > 1, reason="serial (subprocesses, per-rank tmp_path)"
)
ENV = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MPLBACKEND="Agg")

CIRCLE = """
[run]
solvers = {solvers}

[model]
d = 2
beta = 9.0

[mesh]
type = "circle"
cells = {cells}

[initial]
type = "perturbed_circle"
eps = 0.3
mode = 3

[time]
t_final = {t_final}
n_saves = 5

[fem]
degree = {degree}

[particles]
n = 200
runs = 2
dt = 0.1
seed = 3

[output]
figures = {figures}

[checkpoint]
every = {every}
keep = {keep}
"""


def circle_config(path: Path, **kw) -> Path:
    values = dict(
        solvers='["fem", "particles"]',
        cells=64,
        t_final=2.0,
        degree=0,
        figures="false",
        every=0,
        keep=1,
    )
    values.update(kw)
    path.write_text(CIRCLE.format(**values))
    return path


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def fem_result(run_dir: Path) -> FieldSolution:
    return FieldSolution.load(run_dir / "fem_solution.npz")


def particle_result(run_dir: Path) -> np.ndarray:
    return EnsembleSolution.load(run_dir / "particles.npz").x


# -- validation ---------------------------------------------------------------------------------
BAD = {
    "unknown key": ("[model]\nbetta = 1.0", "model.betta", "unknown key"),
    "wrong type": ('[particles]\nn = "many"', "particles.n", "must be an integer >= 1"),
    "out of range": ("[model]\nbeta = -1", "model.beta", "must be > 0, got -1"),
    "matrix shape": ("[model]\nQ = [[1.0, 0.0, 0.0]]", "model.Q", "2x2 array"),
    "negative density": (
        '[initial]\ntype = "expression"\nexpression = "cos(theta)"',
        "initial.expression",
        "must be >= 0",
    ),
    "zero mass": (
        '[initial]\ntype = "expression"\nexpression = "0 * x"',
        "initial.expression",
        "zero mass",
    ),
    "missing mesh file": ('[mesh]\ntype = "file"\npath = "nowhere.npz"', "mesh.path", "no such"),
    "bad choice": ('[fem]\nkernel = "fast"', "fem.kernel", "must be one of"),
}


def _merge(text: str, extra: str) -> str:
    """Replace whole sections of ``text`` by those of ``extra``."""
    import tomllib

    from attnflow.app.config import dumps_toml

    raw = tomllib.loads(text)
    for section, table in tomllib.loads(extra.replace("\\n", "\n")).items():
        raw[section] = {**raw.get(section, {}), **table}
        if section == "mesh":
            raw[section] = table
        if section == "initial":
            raw[section] = table
    return dumps_toml(raw)


@serial_only
@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_configs_exit_2_with_one_line_and_write_nothing(case, tmp_path, capsys):
    extra, key, fragment = BAD[case]
    cfg = tmp_path / "bad.toml"
    cfg.write_text(_merge(circle_config(tmp_path / "good.toml").read_text(), extra))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--output", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"ConfigError: {key}: ") and fragment in err[0], err[0]
    assert not out.exists()


@serial_only
def test_usage_errors_exit_2(tmp_path, capsys):
    cfg = circle_config(tmp_path / "c.toml")
    assert main(["run", str(cfg), "-q"]) == 2  # no output directory anywhere
    assert "ConfigError: output.directory: required" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious.txt").write_text("keep me")
    assert main(["run", str(cfg), "--output", str(tmp_path / "full"), "--overwrite", "-q"]) == 2
    assert "will not delete" in capsys.readouterr().err
    (tmp_path / "full" / "config.toml").write_text("[mine]\n")  # not written by attnflow
    assert main(["run", str(cfg), "--output", str(tmp_path / "full"), "--overwrite", "-q"]) == 2
    assert (tmp_path / "full" / "precious.txt").exists()
    assert main(["run", "--resume", str(tmp_path / "nothing"), "-q"]) == 2
    assert main(["run", str(cfg), "--set", "model.beta=-2", "--output", str(tmp_path / "o")]) == 2
    assert "model.beta: must be > 0, got -2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [[], ["run"], ["sweep"], ["mesh"], ["info"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert ("usage: attnflow" in out) == (MPI.COMM_WORLD.rank == 0)  # rank 0 prints


def test_info(capsys):
    assert main(["info", "--json"]) == 0
    if MPI.COMM_WORLD.rank == 0:
        info = json.loads(capsys.readouterr().out)
        assert info["mpi_size"] == MPI.COMM_WORLD.size
        assert info["dolfinx"].startswith("0.") and info["petsc"].count(".") == 2
        assert info["attnflow"]


# -- runs ---------------------------------------------------------------------------------------
@serial_only
def test_mesh_file_and_fem_only_run(tmp_path, capsys):
    mesh = tmp_path / "ring.npz"
    assert main(["mesh", "circle", "--cells", "48", "--output", str(mesh), "--xdmf"]) == 0
    assert "48 cells" in capsys.readouterr().out
    with np.load(mesh) as z:
        assert z["points"].shape == (48, 2) and z["cells"].shape == (48, 2)
    assert (tmp_path / "ring.xdmf").exists()
    assert main(["mesh", "sphere", "--level", "9", "--output", str(tmp_path / "s.npz")]) == 2
    text = circle_config(tmp_path / "x.toml", solvers='["fem"]').read_text()
    cfg = tmp_path / "fem.toml"
    cfg.write_text(text.replace('type = "circle"\ncells = 64', 'type = "file"\npath = "ring.npz"'))
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--output", str(run), "-q"]) == 0
    s = summary(run)
    assert s["status"] == "complete" and s["ranks"] == 1 and s["solvers"] == ["fem"]
    assert s["fem"]["mass_drift"] < 1e-13 and s["fem"]["min_density"] >= 0
    assert s["fem"]["n_cells"] == 48 and len(s["fem"]["clusters"]) == 5
    assert s["versions"]["dolfinx"] and s["timings"]["total"] > 0
    assert {"config.toml", "summary.json", "run.log", "fem_solution.npz"} <= {
        p.name for p in run.iterdir()
    }
    assert (run / "fem" / "density.xdmf").exists() and (run / "fem" / "density.h5").exists()
    assert 'path = "' + str(mesh) + '"' in (run / "config.toml").read_text()
    assert "particles" not in s and not (run / "particles.npz").exists()


@serial_only
def test_particles_only_run_with_a_figure(tmp_path):
    cfg = circle_config(tmp_path / "p.toml", solvers='["particles"]', figures="true")
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--output", str(run), "-q"]) == 0
    s = summary(run)
    assert s["solvers"] == ["particles"] and "fem" not in s and "comparison" not in s
    p = s["particles"]
    assert p["status"] == ["success", "success"] and p["n_steps"] == 20
    assert p["sphere_error"] < 1e-12 and p["log_energy_final"] > p["log_energy_initial"]
    assert (run / "particles.pvd").exists() and len(list((run / "particles").glob("*.vtp"))) == 5
    assert (run / "figures" / "summary.png").stat().st_size > 1000
    assert not (run / "fem").exists()


@serial_only
def test_both_solvers_compared_then_resume_is_a_no_op(tmp_path, capsys):
    cfg = circle_config(tmp_path / "b.toml")
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--output", str(run), "-q"]) == 0
    s = summary(run)
    assert s["fem"]["mass_drift"] < 1e-13
    c = s["comparison"]
    assert c["w1_method"] == "circle" and len(c["w1_mean"]) == 5
    assert 0 < c["w1_final_mean"] < 0.5 and all(v >= 0 for v in c["l1_mean"])
    # The resolved configuration reproduces the run.
    assert main(["run", str(run / "config.toml"), "--output", str(tmp_path / "again"), "-q"]) == 0
    np.testing.assert_array_equal(fem_result(run).dofs, fem_result(tmp_path / "again").dofs)
    np.testing.assert_array_equal(particle_result(run), particle_result(tmp_path / "again"))
    capsys.readouterr()
    assert main(["run", "--resume", str(run)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["run", str(cfg), "--output", str(run), "-q"]) == 2  # exists: no overwrite
    assert main(["run", str(cfg), "--output", str(run), "-q", "--overwrite"]) == 0


@serial_only
def test_sweep_over_beta(tmp_path):
    cfg = circle_config(tmp_path / "s.toml", solvers='["particles"]', t_final=1.0)
    with cfg.open("a") as f:
        f.write('\n[sweep]\nparameter = "model.beta"\nvalues = [1.0, 25.0]\n')
    out = tmp_path / "sweep"
    assert main(["sweep", str(cfg), "--output", str(out), "-q"]) == 0
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == ["000_beta=1", "001_beta=25"]
    for d, beta in zip(dirs, (1.0, 25.0), strict=True):
        assert summary(out / d)["status"] == "complete"
        assert f"beta = {beta!r}" in (out / d / "config.toml").read_text()
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("point,model.beta,status") and len(rows) == 3
    assert rows[1].split(",")[:3] == ["0", "1.0", "complete"]
    assert (out / "sweep.toml").exists()
    assert main(["sweep", "--resume", str(out), "-q"]) == 0  # all points done: nothing rerun
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("[1.0, 25.0]", "[1.0, -25.0]"))
    assert main(["sweep", str(bad), "--output", str(tmp_path / "bad"), "-q"]) == 2
    assert not (tmp_path / "bad").exists()


@serial_only
def test_every_example_config_validates_and_a_tiny_one_runs(tmp_path):
    from attnflow.app.config import load_config

    for path in sorted((ROOT / "examples").glob("*.toml")):
        load_config(path, allow_sweep=True)
    run = tmp_path / "quick"
    args = ["run", str(ROOT / "examples" / "quick_circle.toml"), "--output", str(run), "-q"]
    assert main(args) == 0
    assert summary(run)["status"] == "complete"


# -- checkpoint and resume ---------------------------------------------------------------------
KILL = dict(cells=512, degree=1, t_final=4.0, every=40, keep=1000)


@serial_only
def test_sigkill_mid_run_then_resume_is_bitwise(tmp_path):
    """Kill ``attnflow run`` with SIGKILL after its first checkpoint, resume, compare with an
    uninterrupted run: the final density and the particles are bitwise equal."""
    cfg = circle_config(tmp_path / "k.toml", **KILL)
    ref, run = tmp_path / "ref", tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnflow", "run", str(cfg), "--output", str(run), "-q"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((run / "checkpoints").glob("fem-*.npz")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert not (run / "summary.json").exists() and not (run / "fem_solution.npz").exists()
    first = sorted((run / "checkpoints").glob("fem-*.npz"))
    assert main(["run", "--resume", str(run), "-q"]) == 0
    assert main(["run", str(cfg), "--output", str(ref), "-q"]) == 0
    a, b = fem_result(run), fem_result(ref)
    assert first and np.array_equal(a.dofs, b.dofs)  # bitwise
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.energy, b.energy)
    assert a.stats["steps"] == b.stats["steps"]
    np.testing.assert_array_equal(particle_result(run), particle_result(ref))
    s = summary(run)
    assert s["status"] == "complete" and s["resumed"] and s["fem"]["resumed_from_step"] >= 40
    # The resumed run rewrote the complete ParaView series (5 saves: density + velocity).
    assert (run / "fem" / "density.xdmf").read_text().count('<Time Value="') == 10


@serial_only
@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to the interpreter")
def test_resume_on_two_ranks_matches_serial(tmp_path):
    """A serial run's early checkpoints, continued under ``mpiexec -n 2``: the final density
    equals the serial one to 1e-12 (the particles bitwise)."""
    cfg = circle_config(tmp_path / "m.toml", degree=1, t_final=1.0, every=10, keep=1000)
    ref = tmp_path / "ref"
    assert main(["run", str(cfg), "--output", str(ref), "-q"]) == 0
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    for name in ("summary.json", "fem_solution.npz", "particles.npz"):
        (run / name).unlink()
    first = {}
    for kind in ("fem", "particles"):
        found = sorted((run / "checkpoints").glob(f"{kind}-*.npz"))
        first[kind] = int(found[0].stem.split("-")[1])
        for p in found[1:]:
            p.unlink()  # keep the first only
    out = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, "-m", "attnflow", "run", "--resume", str(run)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    s = summary(run)
    assert s["ranks"] == 2 and s["fem"]["resumed_from_step"] == first["fem"] < 20
    assert s["particles"]["resumed_from_step"] == first["particles"] == 10
    a, b = fem_result(run), fem_result(ref)
    np.testing.assert_allclose(a.dofs, b.dofs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-12, atol=1e-16)
    # Particles: identical in isolation, but after the rest of the suite ran in this process
    # the serial reference has differed from the 2-rank run by one ulp (seen once in CI): the
    # issue asks for 1e-12 across rank counts, bitwise on the same count (tested above).
    np.testing.assert_allclose(particle_result(run), particle_result(ref), rtol=1e-12, atol=1e-15)


@serial_only
@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to the interpreter")
def test_one_failing_rank_aborts_all(tmp_path):
    """Rank 1 raises while rank 0 goes on into collective work: the job ends (MPI_Abort)
    with a non-zero status instead of hanging."""
    cfg = circle_config(tmp_path / "f.toml", solvers='["particles"]')
    script = tmp_path / "fail.py"
    script.write_text(
        "import sys\n"
        "from mpi4py import MPI\n"
        "import attnflow.app.runner as r\n"
        "real = r.execute\n"
        "def execute(*a, **k):\n"
        "    if MPI.COMM_WORLD.rank == 1:\n"
        "        raise RuntimeError('injected failure')\n"
        "    return real(*a, **k)\n"
        "r.execute = execute\n"
        "from attnflow.app.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    start = time.monotonic()
    out = subprocess.run(  # (the relative output directory is made in cwd=tmp_path)
        [str(MPIEXEC), "-n", "2", sys.executable, str(script), "run", str(cfg), "-q", "-o", "out"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "failed on rank 1" in out.stderr and "injected failure" in out.stderr
    assert time.monotonic() - start < 100


@pytest.mark.mpi
def test_run_and_resume_in_process_on_all_ranks(tmp_path_factory):
    """``attnflow run`` on every rank of COMM_WORLD, then resumed from an early checkpoint
    on the same ranks: bitwise equal."""
    comm = MPI.COMM_WORLD
    base = Path(comm.bcast(str(tmp_path_factory.mktemp("cli")) if comm.rank == 0 else None))
    cfg = base / "c.toml"
    if comm.rank == 0:
        circle_config(cfg, degree=1, t_final=1.0, every=10, keep=1000)
    comm.Barrier()
    ref, run = base / "ref", base / "run"
    # Validation agrees on every rank: status 2 everywhere, nothing written.
    bad = ["run", str(cfg), "--output", str(ref), "-q", "--set", "fem.degree=3"]
    assert main(bad) == 2
    assert not ref.exists()
    assert main(["run", str(cfg), "--output", str(ref), "-q"]) == 0
    if comm.rank == 0:
        shutil.copytree(ref, run)
        for name in ("summary.json", "fem_solution.npz", "particles.npz"):
            (run / name).unlink()
        for kind in ("fem", "particles"):
            for p in sorted((run / "checkpoints").glob(f"{kind}-*.npz"))[1:]:
                p.unlink()
    comm.Barrier()
    assert main(["run", "--resume", str(run), "-q"]) == 0
    if comm.rank == 0:
        assert summary(run)["ranks"] == comm.size == summary(ref)["ranks"]
        np.testing.assert_array_equal(fem_result(run).dofs, fem_result(ref).dofs)
        np.testing.assert_array_equal(particle_result(run), particle_result(ref))
