"""Reliability of the application (issue 11): no data loss, no hang, no silent wrong result.

One test (or a few) per item of the issue: ``--overwrite`` deletes only what attnflow wrote
(the manifest), hostile expressions are refused at once (also on two MPI ranks), a resume
verifies the problem, results and checkpoints it reuses and skips a truncated newest
checkpoint, sizes and steps that cannot run are refused before anything is written, degenerate
meshes and densities negative at the quadrature points only are refused, diagnostics (``--set``,
symbolic links, the crash in ``run.log``), USA overflow at validation and summaries that never
say ``complete`` with NaN. Runs are tiny and in-process (``main([...])``); only the MPI check
starts a subprocess.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mpi4py import MPI

from attnflow.app.cli import main
from attnflow.app.config import ConfigError, compile_expression, load_config, parse_override
from attnflow.app.manifest import MANIFEST_NAME, Manifest
from attnflow.solutions import FieldSolution, Status

pytestmark = [
    pytest.mark.usefixtures("one_numba_thread"),
    pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="serial (per-rank tmp_path)"),
]

ROOT = Path(__file__).resolve().parents[2]
MPIEXEC = Path(sys.executable).parent / "mpiexec"
ENV = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MPLBACKEND="Agg")

CONFIG = """
[run]
solvers = {solvers}

[model]
d = 2
beta = 9.0

[mesh]
type = "circle"
cells = 32

[initial]
type = "perturbed_circle"
eps = 0.3
mode = 3

[time]
t_final = 1.0
n_saves = 3

[fem]
degree = 0

[particles]
n = 100
runs = 2
dt = 0.1
seed = 3

[output]
figures = false

[checkpoint]
every = {every}
keep = 10
"""


def config(tmp_path: Path, name: str = "c.toml", solvers='["particles"]', every=0, extra=""):
    path = tmp_path / name
    path.write_text(CONFIG.format(solvers=solvers, every=every) + extra)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


# -- 1. --overwrite deletes only what attnflow wrote -----------------------------------------------
def test_overwrite_refuses_a_folder_with_the_users_files(tmp_path, capsys):
    """The issue's case: a project folder with a config.toml whose first line says attnflow."""
    project = tmp_path / "P"
    (project / "data").mkdir(parents=True)
    (project / "config.toml").write_text("# attnflow x\n")
    (project / "thesis.tex").write_text("t\n")
    before = tree(project)
    args = ["run", str(ROOT / "examples" / "quick_circle.toml"), "-o", str(project)]
    assert main([*args, "--overwrite", "-q"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("ConfigError: output.directory: ") and "will not delete" in line
    assert tree(project) == before and (project / "data").is_dir()


def test_overwrite_refuses_a_copied_resolved_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(config(tmp_path)), "-o", str(run), "-q"]) == 0
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(run / "config.toml", project / "config.toml")  # a real resolved config
    (project / "notes.md").write_text("mine\n")
    before = tree(project)
    assert main(["run", str(config(tmp_path)), "-o", str(project), "--overwrite", "-q"]) == 2
    assert "will not delete" in one_error_line(capsys)
    assert tree(project) == before


def test_overwrite_removes_exactly_the_manifest_and_refuses_foreign_or_edited_files(
    tmp_path, capsys
):
    cfg = config(tmp_path, solvers='["fem", "particles"]', every=4)
    run = tmp_path / "run"
    assert main(["run", str(cfg), "-o", str(run), "-q"]) == 0
    manifest = Manifest.load(run)
    assert manifest is not None and not manifest.foreign()
    listed = set(manifest.files)
    assert {"config.toml", "summary.json", "run.log", "fem_solution.npz", "particles.npz"} <= listed
    assert any(f.startswith("fem/density.") for f in listed)  # written by the solver itself
    assert any(f.startswith("checkpoints/") for f in listed)
    on_disk = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    assert on_disk == listed | {MANIFEST_NAME}
    # A file attnflow did not write: refused, nothing deleted.
    (run / "fem" / "mine.txt").write_text("keep\n")
    assert main(["run", str(cfg), "-o", str(run), "--overwrite", "-q"]) == 2
    assert "fem/mine.txt was not written by attnflow" in one_error_line(capsys)
    (run / "fem" / "mine.txt").unlink()
    # A file attnflow wrote but the user edited: the user's now.
    summary = (run / "summary.json").read_text()
    (run / "summary.json").write_text(summary.replace('"complete"', '"checked by me"'))
    assert main(["run", str(cfg), "-o", str(run), "--overwrite", "-q"]) == 2
    assert "summary.json changed since attnflow wrote it" in one_error_line(capsys)
    (run / "summary.json").write_text(summary)
    # Everything attnflow's (a file it wrote may be missing): replaced, the old files gone.
    sorted((run / "checkpoints").glob("fem-*.npz"))[0].unlink()
    again = ["run", str(cfg), "-o", str(run), "--overwrite", "-q"]
    assert main([*again, "--set", "checkpoint.every=0"]) == 0
    assert not (run / "checkpoints").exists()  # removed, and not written again
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    assert not Manifest.load(run).foreign()


def test_overwrite_onto_a_symbolic_link_is_one_line(tmp_path, capsys):
    target = tmp_path / "target"
    target.mkdir()
    (target / "x").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert main(["run", str(config(tmp_path)), "-o", str(link), "--overwrite", "-q"]) == 2
    assert "symbolic link" in one_error_line(capsys)
    assert (target / "x").exists()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert main(["run", str(config(tmp_path)), "-o", str(dangling), "-q"]) == 2
    assert "symbolic link" in one_error_line(capsys)


# -- 2. expressions under a cost bound -------------------------------------------------------------
HOSTILE = [
    "1 + 0 * (9**9**9)",
    "1 + 0 * x**(9**9**9)",
    "1 + 0 * (10**400)",
    "1 + 0 * (1e308 * 10)",
    "1 + X[:, 9**9**9]",
    "1 + " + "sin(" * 250 + "x" + ")" * 250,
    "1 + " + "-" * 300 + "x",
    "+".join(["x"] * 3000),
    "1 + 0 * 1" + "0" * 5000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_expressions_are_refused_at_once(text):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        compile_expression("initial.expression", text, 2)(np.ones((10, 2)))
    assert time.perf_counter() - start < 1.0
    assert str(e.value).startswith("initial.expression: ") and "\n" not in str(e.value)


def test_cheap_expressions_still_work():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    f = compile_expression("k", "1 + 0.5 * cos(3 * theta) + X[:, 0]**2 + 2**0.5 - 2**-1", 2)
    np.testing.assert_allclose(
        f(x), [1.5 + 1 + 2**0.5 - 0.5, 1 + 0.5 * np.cos(1.5 * np.pi) + 2**0.5 - 0.5]
    )
    assert compile_expression("k", "abs(x)**(9**9)", 2)(x).tolist() == [1.0, 0.0]  # numpy: bounded


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to the interpreter")
def test_hostile_expression_is_refused_on_every_rank(tmp_path):
    cfg = config(tmp_path, extra="")
    text = cfg.read_text().replace(
        'type = "perturbed_circle"\neps = 0.3\nmode = 3',
        'type = "expression"\nexpression = "1 + 0 * (x + 9**9**9)"',
    )
    cfg.write_text(text)
    out = subprocess.run(
        [
            str(MPIEXEC),
            "-n",
            "2",
            sys.executable,
            "-m",
            "attnflow",
            "run",
            str(cfg),
            "-q",
            "-o",
            "o",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ConfigError: initial.expression: "), lines
    assert not (tmp_path / "o").exists()


# -- 3. and 4. resume verification, truncated checkpoints ------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run with both solvers and several checkpoints of each (module-wide)."""
    base = tmp_path_factory.mktemp("finished")
    cfg = config(base, solvers='["fem", "particles"]', every=3)
    run = base / "run"
    assert main(["run", str(cfg), "-o", str(run), "-q"]) == 0
    return run


def copy_run(src: Path, dst: Path, *remove: str) -> Path:
    shutil.copytree(src, dst)
    for pattern in remove:
        for p in dst.glob(pattern):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dst


def test_resume_refuses_a_changed_problem_naming_the_key(finished_run, tmp_path, capsys):
    """The issue's case: particle outputs and checkpoints removed, beta changed in config.toml."""
    run = copy_run(
        finished_run,
        tmp_path / "run",
        "particles",
        "particles.pvd",
        "particles.npz",
        "checkpoints/particles-*",
        "summary.json",
    )
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace("beta = 9.0", "beta = 4.0"))
    assert main(["run", "--resume", str(run), "-q"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("ConfigError: model.beta: is 4.0 ") and "started with 9.0" in line
    assert not (run / "particles.npz").exists() and not (run / "summary.json").exists()
    # Changing checkpoint.* is allowed; the reused finite element result is verified.
    (run / "config.toml").write_text(text)
    with open(run / "fem_solution.npz", "ab") as f:
        f.write(b"\0")
    assert main(["run", "--resume", str(run), "-q"]) == 2
    assert "fem_solution.npz changed since attnflow wrote it" in one_error_line(capsys)


def test_truncated_newest_checkpoint_is_skipped_and_the_resume_is_bitwise(
    finished_run, tmp_path, capsys
):
    run = copy_run(
        finished_run, tmp_path / "run", "summary.json", "fem_solution.npz", "particles.npz"
    )
    newest = sorted((run / "checkpoints").glob("fem-*.npz"))
    assert len(newest) >= 2
    data = newest[-1].read_bytes()
    newest[-1].write_bytes(data[: len(data) // 3])  # truncated
    assert main(["run", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"skipping checkpoint {newest[-1].name}" in err and "truncated" in err
    assert f"skipping checkpoint {newest[-1].name}" in (run / "run.log").read_text()
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "complete"
    assert s["fem"]["resumed_from_step"] == int(newest[-2].stem.split("-")[1])
    a = FieldSolution.load(run / "fem_solution.npz")
    b = FieldSolution.load(finished_run / "fem_solution.npz")
    assert np.array_equal(a.dofs, b.dofs) and np.array_equal(a.weights, b.weights)  # bitwise


def test_no_valid_checkpoint_is_exit_2_naming_the_files(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run", "summary.json", "fem_solution.npz")
    found = sorted((run / "checkpoints").glob("fem-*.npz"))
    for p in found:
        p.write_bytes(p.read_bytes()[:100])
    assert main(["run", "--resume", str(run), "-q"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("ConfigError: --resume: no valid fem checkpoint")
    assert all(p.name in line for p in found)
    # Without the manifest's hashes (a pending entry), the archive itself is checked.
    manifest = Manifest.load(run)
    for p in found:
        manifest.pending(p)
    assert main(["run", "--resume", str(run), "-q"]) == 2
    assert "BadZipFile" in one_error_line(capsys)


def test_a_directory_without_manifest_is_not_resumed(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run", "summary.json", MANIFEST_NAME)
    assert main(["run", "--resume", str(run), "-q"]) == 2
    assert "cannot be verified" in one_error_line(capsys)


# -- 5. resources ----------------------------------------------------------------------------------
LIMITS = {
    "particles.n=10000000000000": "particles.n",
    "particles.runs=100000000000": "particles.runs",
    "mesh.cells=100000000000": "mesh.cells",
    "time.n_saves=10000000000": "time.n_saves",
    "particles.dt=1e-300": "particles.dt",
    "time.t_final=1e300": "time.t_final",
}


@pytest.mark.parametrize("setting", sorted(LIMITS))
def test_sizes_and_steps_that_cannot_run_are_refused_before_anything(setting, tmp_path, capsys):
    cfg = config(tmp_path, solvers='["fem", "particles"]')
    out = tmp_path / "out"
    assert main(["run", str(cfg), "-o", str(out), "-q", "--set", setting]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"ConfigError: {LIMITS[setting]}: "), line
    assert "memory" in line or "steps" in line or "save times" in line
    assert not out.exists()


def test_box_cells_save_every_and_the_budget(tmp_path, capsys, monkeypatch):
    box = tmp_path / "box.toml"
    box.write_text(
        '[run]\nsolvers = ["fem"]\n[model]\nd = 3\nspace = "euclidean"\n'
        '[mesh]\ntype = "box"\ncells = 100000\nlength = 2.0\n'
        '[initial]\ntype = "gaussian"\nmean = [0.0, 0.0, 0.0]\n'
        "cov = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]\n[time]\nt_final = 1.0\n"
    )
    assert main(["run", str(box), "-o", str(tmp_path / "b"), "-q"]) == 2
    assert one_error_line(capsys).startswith("ConfigError: mesh.cells: ")
    cfg = config(tmp_path)
    text = cfg.read_text().replace("n_saves = 3", "save_every = 1e-12")
    cfg.write_text(text)
    assert main(["run", str(cfg), "-o", str(tmp_path / "s"), "-q"]) == 2
    assert one_error_line(capsys).startswith("ConfigError: time.save_every: ")
    monkeypatch.setenv("ATTNFLOW_MEMORY_BUDGET", "1K")  # documented in docs/config.md
    assert main(["run", str(config(tmp_path)), "-o", str(tmp_path / "m"), "-q"]) == 2
    assert "budget of 1.0 KiB" in one_error_line(capsys)
    assert not any((tmp_path / n).exists() for n in "bsm")


# -- 6. degenerate inputs --------------------------------------------------------------------------
def test_mesh_with_coincident_vertices_is_refused_before_the_run_directory(tmp_path, capsys):
    from attnflow.meshdata import circle_arrays

    points, cells = circle_arrays(16)
    points[5] = points[4]  # a zero-length segment
    np.savez(tmp_path / "bad.npz", points=points, cells=cells)
    cfg = config(tmp_path, solvers='["fem"]')
    cfg.write_text(
        cfg.read_text().replace('type = "circle"\ncells = 32', 'type = "file"\npath = "bad.npz"')
    )
    assert main(["run", str(cfg), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert one_error_line(capsys).startswith("ConfigError: mesh.path: ")
    assert not (tmp_path / "o").exists()


def test_density_negative_only_between_probe_points_is_refused_before_writing(tmp_path, capsys):
    """Non-negative at the 4096 probe points, vertices and cell midpoints; negative in a
    window of 1e-7 around one quadrature point of the solver (Gauss, off the midpoint)."""
    from attnflow.app.preflight import quadrature_points

    cfg_path = config(tmp_path, solvers='["fem"]')
    q = quadrature_points(load_config(cfg_path))
    theta = np.arctan2(q[:, 1], q[:, 0])
    t0 = float(theta[0]) if abs(theta[0] - theta[1]) > 1e-3 else float(theta[2])
    probes = 2 * np.pi * (np.arange(4096) + 0.5) / 4096
    probes = np.where(probes > np.pi, probes - 2 * np.pi, probes)
    assert np.min(np.abs(probes - t0)) > 1e-5
    expr = f"1 - 2 * (abs(theta - ({t0!r})) < 1e-7)"
    text = cfg_path.read_text().replace(
        'type = "perturbed_circle"\neps = 0.3\nmode = 3',
        f'type = "expression"\nexpression = "{expr}"',
    )
    cfg_path.write_text(text)
    load_config(cfg_path)  # the probe points alone do not see it
    assert main(["run", str(cfg_path), "-o", str(tmp_path / "o"), "-q"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("ConfigError: initial.expression: must be >= 0"), line
    assert not (tmp_path / "o").exists()


# -- 7. diagnostics --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["4 # comment", "4\n", "4, 5", "x#y", ""])
def test_set_parses_exactly_one_toml_value(value, tmp_path, capsys):
    with pytest.raises(ConfigError):
        parse_override(f"model.beta={value}")
    out = tmp_path / "o"
    assert (
        main(["run", str(config(tmp_path)), "-o", str(out), "-q", "--set", f"model.beta={value}"])
        == 2
    )
    assert one_error_line(capsys).startswith("ConfigError: --set: model.beta=VALUE")
    assert not out.exists()
    assert parse_override('run.name="a # b"') == ("run.name", "a # b")
    assert parse_override("initial.type=uniform") == ("initial.type", "uniform")


def test_a_crash_goes_to_run_log_with_its_traceback(tmp_path, monkeypatch, capsys):
    import attnflow.app.runner as runner

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(runner, "execute", boom)
    run = tmp_path / "run"
    assert main(["run", str(config(tmp_path)), "-o", str(run), "-q"]) == 1
    assert "injected failure" in capsys.readouterr().err
    log = (run / "run.log").read_text()
    assert "RuntimeError: injected failure" in log and "Traceback" in log
    assert not Manifest.load(run).foreign()  # run.log recorded (an append-only log)


# -- 8. USA overflow and non-finite summaries ------------------------------------------------------
def test_usa_beta_that_must_overflow_is_refused_at_validation(tmp_path, capsys):
    cfg = config(tmp_path, solvers='["fem", "particles"]')
    args = ["run", str(cfg), "-o", str(tmp_path / "o"), "-q", "--set", 'model.attention="USA"']
    assert main([*args, "--set", "model.beta=800"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("ConfigError: model.beta: ") and "model.rescale_usa = true" in line
    assert "e^{8.0e+02}" in line  # no 40-digit exponent
    assert not (tmp_path / "o").exists()


def test_a_summary_is_never_complete_with_nan_energies():
    from attnflow.app.summaries import non_finite

    cfg = load_config(ROOT / "examples" / "quick_circle.toml")
    model = SimpleNamespace(has_energy=True)
    ok = SimpleNamespace(status=Status.SUCCESS, mass=np.ones(3), energy=np.ones(3))
    assert non_finite(cfg, model, ok, None, None) == []
    nan = SimpleNamespace(
        status=Status.SUCCESS, mass=np.ones(3), energy=np.array([1.0, np.nan, 2.0])
    )
    assert non_finite(cfg, model, nan, None, None) == ["finite elements: energy not finite"]
    ens = SimpleNamespace(run_status=(Status.SUCCESS, Status.OVERFLOW))
    assert non_finite(cfg, model, None, ens, np.ones((2, 3))) == ["particles: runs [1] overflow"]
    ens_ok = SimpleNamespace(run_status=(Status.SUCCESS,))
    assert non_finite(cfg, model, None, ens_ok, np.array([[np.inf]])) == [
        "particles: energy not finite"
    ]


def test_sweep_overwrite_goes_through_the_points_manifests(tmp_path, capsys):
    cfg = config(tmp_path, extra='\n[sweep]\nparameter = "model.beta"\nvalues = [1.0, 4.0]\n')
    out = tmp_path / "sweep"
    assert main(["sweep", str(cfg), "-o", str(out), "-q"]) == 0
    top = Manifest.load(out)
    assert {"sweep.toml", "summary.csv"} <= set(top.files) and "000_beta=1" in top.dirs
    assert not top.foreign()
    point = out / "001_beta=4" / "summary.json"
    text = point.read_text()
    point.write_text(text + " ")
    assert main(["sweep", str(cfg), "-o", str(out), "--overwrite", "-q"]) == 2
    assert "001_beta=4/summary.json changed since attnflow wrote it" in one_error_line(capsys)
    point.write_text(text)
    assert main(["sweep", str(cfg), "-o", str(out), "--overwrite", "-q"]) == 0
    assert json.loads(point.read_text())["status"] == "complete"
