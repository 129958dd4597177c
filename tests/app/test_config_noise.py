"""Configurations with noise: ``[model] noise = sigma`` (issue 13).

One-line validation naming ``model.noise``, the dynamics built as ``... + Diffusion(sigma)``,
the TOML round trip (a noiseless configuration is written as before), ``--set`` and ``[sweep]``
over the noise, the noisy particle ensemble's generator states through the app's checkpoint
files (a resumed run is bitwise the uninterrupted one), the linear growth rate of mode 1 of the
uniform state on S^1 from the finite element solver of a configuration against the theory
``I_1(beta) / (beta I_0(beta)) - sigma``, and ``examples/noise_circle.toml`` end to end (CLI,
checkpoints, resume bitwise).
"""

import json
import math
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI
from scipy.special import ive

import attnflow as af
from attnflow.app import build
from attnflow.app.checkpoint import CheckpointWriter, list_checkpoints, read_checkpoint
from attnflow.app.config import ConfigError, load_config, parse_config
from attnflow.app.summaries import order_parameter
from attnflow.app.sweep import sweep_points
from attnflow.solutions import EnsembleSolution, FieldSolution
from attnflow.states import CheckpointError

pytestmark = pytest.mark.usefixtures("one_numba_thread")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "noise_circle.toml"
SERIAL = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="serial (in-process CLI, tmp_path)")


def circle(**model):
    """A valid run on S^1 (both solvers) with the given ``[model]`` keys."""
    return {
        "run": {"solvers": ["fem", "particles"]},
        "model": {"d": 2, "beta": 4.0, **model},
        "mesh": {"type": "circle", "cells": 16},
        "initial": {"type": "perturbed_circle", "eps": 0.1, "mode": 1},
        "time": {"t_final": 1.0},
        "particles": {"n": 50, "dt": 0.1, "seed": 3},
    }


# -- validation --------------------------------------------------------------------------------
BAD = [
    ({"noise": -0.1}, "model.noise: must be >= 0, got -0.1"),
    ({"noise": "0.1"}, "model.noise: must be a number >= 0"),
    ({"noise": math.inf}, "model.noise: must be >= 0, got inf"),
    ({"noise": math.nan}, "model.noise: must be >= 0, got nan"),
    ({"noise": True}, "model.noise: must be a number >= 0"),
    ({"noise": [0.1]}, "model.noise: must be a number >= 0"),
    ({"sigma": 0.1}, "model.sigma: unknown key (allowed: d, beta, attention, space, Q, K, V,"),
]


@pytest.mark.parametrize("model, message", BAD, ids=[m for _, m in BAD])
def test_bad_noise_is_one_line_naming_the_key(model, message):
    with pytest.raises(ConfigError) as e:
        parse_config(circle(**model))
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_noise_builds_the_diffusion_term():
    m = build.build_model(parse_config(circle(noise=0.25)).model)
    hand = af.SelfAttention(2, beta=4.0) + af.Diffusion(0.25)
    assert m.noisy and m.diffusivity(0.0) == 0.25 == hand.diffusivity(0.0)
    assert [type(t).__name__ for t in m.terms()] == ["SelfAttention", "Diffusion"]
    x = af.UniformSphere(2).sample(9, np.random.default_rng(0))
    np.testing.assert_array_equal(m.velocity(x, x), hand.velocity(x, x))
    # Without noise (or noise = 0) the model is the head itself, as before.
    for raw in (circle(), circle(noise=0.0)):
        assert type(build.build_model(parse_config(raw).model)) is af.SelfAttention
    # The energy recorded is the head's: the noisy sum has the energy of its one drift term.
    head = build.build_model(parse_config(circle()).model)
    assert m.has_energy and m.log_energy(x) == head.log_energy(x)


def test_noise_with_a_perceptron_flow_and_controls():
    raw = circle(attention="none", noise=0.5)
    del raw["model"]["beta"]
    raw["controls"] = [{"start": 0.0, "w": [0.0, 1.0], "a": [1.0, 0.0], "b": 0.5}]
    m = build.build_model(parse_config(raw).model)
    assert m.noisy and m.diffusivity(0.3) == 0.5


def test_round_trip_and_noiseless_configs_unchanged():
    cfg = parse_config(circle(noise=0.125))
    text = cfg.to_toml()
    assert tomllib.loads(text)["model"]["noise"] == 0.125
    assert parse_config(tomllib.loads(text)) == cfg
    # A noiseless resolved configuration has no noise key: the problem of runs made before
    # the key existed is unchanged (their resumes and checkpoints still match).
    plain = parse_config(circle())
    assert "noise" not in plain.to_toml() and plain == parse_config(circle(noise=0.0))


def test_set_and_sweep_over_the_noise(tmp_path):
    cfg = load_config(EXAMPLE, [("model.noise", 0.3)], output=tmp_path / "o")
    assert cfg.model.noise == 0.3
    with pytest.raises(ConfigError, match=r"^model\.noise: must be >= 0, got -1"):
        load_config(EXAMPLE, [("model.noise", -1)])
    raw = tomllib.loads(EXAMPLE.read_text())
    raw["sweep"] = {"parameter": "model.noise", "values": [0.1, 0.2, 0.0]}
    raw["output"]["directory"] = str(tmp_path / "sw")
    base = parse_config(raw, allow_sweep=True, sweep_point=True)
    points = sweep_points(raw, base, tmp_path / "sw")
    assert [c.model.noise for _, c in points] == [0.1, 0.2, 0.0]
    assert Path(points[0][1].output.directory).name == "000_noise=0.1"
    raw["sweep"]["values"] = [0.1, -0.2]
    with pytest.raises(ConfigError) as e:
        parse_config(raw, allow_sweep=True, sweep_point=True)
    assert str(e.value) == "model.noise: must be >= 0, got -0.2 (sweep.values[1] = -0.2)"


# -- particles: seeds and generator states through the checkpoint files -------------------------
def test_noisy_ensemble_checkpoint_files_resume_bitwise(tmp_path):
    cfg = parse_config(circle(noise=0.3))
    model = build.build_model(cfg.model)
    law = build.initial_law(cfg.initial, 2, True)
    kw = dict(dt=0.1, seed=cfg.particles.seed, save_times=[0.0, 0.5, 1.0])
    full = af.ensemble(model, law, 30, 3, 1.0, **kw)
    writer = CheckpointWriter(tmp_path, "particles", config_text=cfg.to_toml(), keep=10)
    again = af.ensemble(model, law, 30, 3, 1.0, checkpoint_every=3, on_checkpoint=writer, **kw)
    np.testing.assert_array_equal(again.x, full.x)  # checkpointing changes nothing
    steps = [s for s, _ in list_checkpoints(tmp_path, "particles")]
    assert steps == [3, 6, 9]
    states = []
    for _, path in list_checkpoints(tmp_path, "particles"):
        state, text = read_checkpoint(path)
        assert text == cfg.to_toml() and state.seed == cfg.particles.seed
        assert len(state.rng_states) == 3 and all(state.rng_states)
        states.append(state)
        resumed = af.ensemble(model, law, 30, 3, 1.0, restart=state, **kw)
        np.testing.assert_array_equal(resumed.x, full.x)  # bitwise from every checkpoint
    # The generators advance between checkpoints (the noise is drawn from them).
    assert states[0].rng_states != states[1].rng_states
    # Without the generator states a noisy restart is refused, not run with fresh noise.
    states[0].rng_states = ()
    with pytest.raises(CheckpointError, match="generator state"):
        af.ensemble(model, law, 30, 3, 1.0, restart=states[0], **kw)
    # The seed matters: another seed, other Brownian paths from the same law.
    other = af.ensemble(model, law, 30, 3, 1.0, **{**kw, "seed": cfg.particles.seed + 1})
    assert not np.array_equal(other.x[:, -1], full.x[:, -1])


# -- finite elements: the linear growth rate of mode 1 -----------------------------------------
def test_fem_mode_one_grows_at_the_noisy_rate_and_converges():
    """SA, Q = K = V = I on S^1: mode 1 of the uniform state grows at
    ``I_1(beta) / (beta I_0(beta)) - sigma`` (0.06588 at beta = 4, sigma = 0.15). The order
    parameter |int x rho| of the config's finite element run (eps = 0.05: linear regime) over
    t = 5, DG0 on 64 and 128 cells: the error of the rate is first order in h (measured 2.2%
    and 1.0%)."""
    theory = ive(1, 4.0) / (4.0 * ive(0, 4.0)) - 0.15
    errors = []
    for cells in (64, 128):
        sets = [("mesh.cells", cells), ("fem.degree", 0), ("time.t_final", 5.0)]
        sets += [("initial.eps", 0.05)]
        cfg = load_config(EXAMPLE, [*sets, ("time.save_every", 5.0)])
        sol = build.build_fem_solver(cfg, MPI.COMM_WORLD).solve(5.0, [0.0, 5.0])
        assert np.max(np.abs(sol.mass - 1.0)) < 1e-12
        r = [order_parameter(sol.points, w) for w in sol.weights]
        assert r[0] == pytest.approx(0.025, rel=2e-3)  # eps / 2
        errors.append(abs(math.log(r[1] / r[0]) / 5.0 / theory - 1.0))
        free = sol.free_energy
        assert free is not None and np.all(np.isfinite(free))
        entropy = sol.entropy
        e = np.exp(sol.energy)
        np.testing.assert_allclose(free, 0.15 * entropy - e, rtol=1e-12)
    assert errors[1] < 0.015 and errors[0] / errors[1] > 1.6, errors


# -- the example end to end --------------------------------------------------------------------
SMALL = [
    "mesh.cells=16",
    "fem.degree=0",
    "particles.n=64",
    "particles.runs=2",
    "particles.dt=0.25",
    "time.t_final=2.0",
    "time.save_every=1.0",
    "checkpoint.every=2",
    "checkpoint.keep=10",
]


@SERIAL
def test_noise_circle_example_runs_and_resumes_bitwise(tmp_path):
    from attnflow.app.cli import main

    run = tmp_path / "run"
    args = ["run", str(EXAMPLE), "-o", str(run), "-q"] + [a for s in SMALL for a in ("--set", s)]
    assert main(args) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "complete" and s["sigma"] == 0.15
    fem, par = s["fem"], s["particles"]
    assert fem["sigma"] == 0.15 and fem["mass_drift"] < 1e-12
    assert len(fem["free_energy"]) == 3 and all(math.isfinite(v) for v in fem["free_energy"])
    assert fem["free_energy_final"] == fem["free_energy"][-1]
    assert par["sigma"] == 0.15 and par["seed"] == 13 and par["status"] == ["success"] * 2
    assert 0 < fem["order_parameter_final"] < 1 and 0 < par["order_parameter_final_mean"] < 1
    noise = EnsembleSolution.load(run / "particles.npz").stats["noise"]
    assert noise is not None
    assert "noise = 0.15" in (run / "config.toml").read_text()
    assert (run / "figures" / "summary.png").is_file()
    # Resume from the newest checkpoints: both solvers end bitwise as the uninterrupted run.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for name in ("summary.json", "fem_solution.npz", "particles.npz"):
        (copy / name).unlink()
    oldest = {}
    for kind in ("fem", "particles"):  # keep the oldest checkpoint of each solver
        found = sorted((copy / "checkpoints").glob(f"{kind}-*.npz"))
        assert len(found) >= 2
        oldest[kind] = int(found[0].stem.split("-")[1])
        for p in found[1:]:
            p.unlink()
    assert main(["run", "--resume", str(copy), "-q"]) == 0
    r = json.loads((copy / "summary.json").read_text())
    assert r["status"] == "complete" and r["particles"]["resumed_from_step"] == 2
    assert r["fem"]["resumed_from_step"] == oldest["fem"] < r["fem"]["n_steps"]
    a, b = (EnsembleSolution.load(d / "particles.npz") for d in (run, copy))
    np.testing.assert_array_equal(a.x, b.x)
    fa, fb = (FieldSolution.load(d / "fem_solution.npz") for d in (run, copy))
    np.testing.assert_array_equal(fa.dofs, fb.dofs)
    np.testing.assert_array_equal(fa.free_energy, fb.free_energy)
    # Another seed gives other Brownian paths (the same initial law).
    other = tmp_path / "other"
    assert main([*args[:3], str(other), "-q", "--set", "particles.seed=14", *args[5:]]) == 0
    c = EnsembleSolution.load(other / "particles.npz")
    assert not np.array_equal(a.x[:, -1], c.x[:, -1])


@pytest.mark.mpi
def test_noisy_run_on_all_ranks_equals_serial(tmp_path_factory):
    """``attnflow run`` of the noisy example on every rank of COMM_WORLD: the particle runs
    (dealt to the ranks, each with its own generator) are bitwise the serial ensemble, the
    finite element density (cells over the ranks) equals a serial solve to round-off."""
    from attnflow.app.cli import main

    comm = MPI.COMM_WORLD
    base = Path(comm.bcast(str(tmp_path_factory.mktemp("noise")) if comm.rank == 0 else None))
    run = base / "run"
    small = [*SMALL, "output.figures=false", "particles.runs=3"]
    assert (
        main(["run", str(EXAMPLE), "-o", str(run), "-q", *[a for s in small for a in ("--set", s)]])
        == 0
    )
    comm.Barrier()
    cfg = load_config(run / "config.toml")
    ens = EnsembleSolution.load(run / "particles.npz")
    hand = af.ensemble(
        build.build_model(cfg.model),
        build.initial_law(cfg.initial, 2, True),
        64,
        3,
        cfg.time.t_final,
        dt=0.25,
        seed=13,
        save_times=cfg.time.save_times,
    )
    np.testing.assert_array_equal(ens.x, hand.x)
    fem = FieldSolution.load(run / "fem_solution.npz")
    serial = build.build_fem_solver(cfg, MPI.COMM_SELF).solve(cfg.time.t_final, cfg.time.save_times)
    np.testing.assert_allclose(fem.weights, serial.weights, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fem.free_energy, serial.free_energy, rtol=1e-12)


@SERIAL
def test_sweep_over_the_noise_writes_the_order_parameters(tmp_path):
    """``attnflow sweep`` over model.noise (the phase-transition study), particles only: one
    point per sigma, the final order parameter of every point in summary.csv."""
    from attnflow.app.cli import main

    cfg = tmp_path / "s.toml"
    text = EXAMPLE.read_text().replace('solvers = ["fem", "particles"]', 'solvers = ["particles"]')
    cfg.write_text(text + '\n[sweep]\nparameter = "model.noise"\nvalues = [0.05, 0.5]\n')
    out = tmp_path / "sweep"
    small = ["particles.n=64", "particles.runs=1", "time.t_final=1.0", "time.save_every=1.0"]
    small += ["checkpoint.every=0", "output.figures=false", "output.paraview=false"]
    assert (
        main(["sweep", str(cfg), "-o", str(out), "-q", *[a for s in small for a in ("--set", s)]])
        == 0
    )
    rows = (out / "summary.csv").read_text().splitlines()
    head = rows[0].split(",")
    assert head[:3] == ["point", "model.noise", "status"] and len(rows) == 3
    col = head.index("particles_order_parameter_final_mean")
    for row, sigma in zip(rows[1:], (0.05, 0.5), strict=True):
        cells = row.split(",")
        assert float(cells[1]) == sigma and cells[2] == "complete"
        assert 0 < float(cells[col]) < 1
