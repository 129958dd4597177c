"""Configurations of causal attention: ``[model] causal = true``, ``alibi``, ``form``, and
``[fem] slices`` (issue 14).

One-line validation naming the key for every combination the causal solvers cannot run, the
models built (equal to the library objects made by hand), the TOML round trip (a non-causal
configuration is written as before), the routes of a run (the prompts of ``particles.npz`` are
bitwise :func:`attnflow.causal.prompt_ensemble` with the config's seed and law; the retrieval
correlation of the summary is :func:`attnflow.causal.correlation_mc` of them and the closed
form :func:`attnflow.causal.correlation_kernel`), the kinetic finite element result (mass of
every slice to round-off, the uniform state kept), a resume that reruns an unfinished phase
bitwise, and ``examples/lost_in_the_middle.toml`` end to end.
"""

import json
import math
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import attnflow as af
from attnflow import causal
from attnflow.app import build
from attnflow.app.config import ConfigError, load_config, parse_config
from attnflow.app.summaries import slice_rows
from attnflow.solutions import EnsembleSolution

pytestmark = pytest.mark.usefixtures("one_numba_thread")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "lost_in_the_middle.toml"
SERIAL = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="serial (in-process CLI, tmp_path)")


def raw(solvers=("fem", "particles"), fem=None, **model):
    """A valid causal run on S^1 with the given ``[model]`` keys (``None`` deletes one)."""
    m = {"d": 2, "beta": 1.0, "causal": True, "alibi": 2.0, **model}
    out = {
        "run": {"solvers": list(solvers)},
        "model": {k: v for k, v in m.items() if v is not None},
        "mesh": {"type": "circle", "cells": 16},
        "initial": {"type": "uniform"},
        "time": {"t_final": 1.0},
        "fem": {"degree": 0, "slices": 4, **(fem or {})},
        "particles": {"n": 8, "runs": 10, "dt": 0.1},
    }
    if "fem" not in solvers:
        del out["mesh"], out["fem"]
    return out


def with_(table, **changes):
    for k, v in changes.items():
        table.pop(k, None) if v is None else table.__setitem__(k, v)
    return table


# -- validation --------------------------------------------------------------------------------
BAD = [
    (raw(causal=None), "model.alibi: needs model.causal = true (causal attention)"),
    (raw(causal=False, alibi=None, form="softmax"), "model.form: needs model.causal = true"),
    (raw(causal="yes"), 'model.causal: must be true or false, got "yes"'),
    (raw(alibi=-1.0), "model.alibi: must be >= 0, got -1.0"),
    (raw(alibi=math.inf), "model.alibi: must be >= 0, got inf"),
    (raw(form="decoder"), 'model.form: must be one of "softmax", "interaction", got "decoder"'),
    (raw(noise=0.1), "model.noise: must be 0 with model.causal = true (the causal solvers have"),
    (raw(attention="USA"), 'model.attention: must be "SA" with model.causal = true and form ='),
    (raw(attention="none"), 'model.causal: needs an attention head, not attention = "none"'),
    (raw(beta=math.inf), "model.beta: must be finite with model.causal = true"),
    (raw(output=2.0), "model.output: not allowed with model.causal = true (a causal model is"),
    (raw(form="interaction", Q=2.0), 'model.Q: not used with model.form = "interaction"'),
    (raw(form="interaction", attention="SA"), "model.attention: not used with model.form ="),
    (
        raw(form="interaction", space="euclidean"),
        'model.space: must be "sphere" with model.form = "interaction"',
    ),
    (raw(form="interaction", beta=800.0), "model.beta: beta=800: the field beta e^beta of Causa"),
    (raw(fem={"slices": 0}), "fem.slices: must be an integer in [1, 4096], got 0"),
    (raw(fem={"slices": 2.0}), "fem.slices: must be an integer in [1, 4096], got 2.0"),
    (
        with_(raw(), model={"d": 2, "beta": 1.0}),
        "fem.slices: is for causal models (model.causal = true): the slices in s",
    ),
    (
        with_(raw(), checkpoint={"every": 10}),
        "checkpoint.every: must be 0 with model.causal = true: the causal solvers write no",
    ),
    (
        with_(
            raw(space="euclidean"),
            mesh={"type": "box", "cells": 4, "length": 2.0},
            initial={"type": "gaussian", "mean": [0.0, 0.0], "cov": [[1.0, 0.0], [0.0, 1.0]]},
        ),
        'model.space: must be "sphere" for causal finite elements (the kinetic solver works',
    ),
    (
        with_(raw(), terms=[{"type": "attention", "beta": 2.0}]),
        "terms: not allowed with model.causal = true",
    ),
    (
        with_(raw(), controls=[{"start": 0.0, "w": [0.0, 1.0], "a": [1.0, 0.0]}]),
        "controls: not allowed with model.causal = true",
    ),
]


@pytest.mark.parametrize("config, message", BAD, ids=[m.split(" ")[0] + m[-12:] for _, m in BAD])
def test_each_problem_is_one_line_naming_the_key(config, message):
    with pytest.raises(ConfigError) as e:
        parse_config(config)
    text = str(e.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_interaction_with_rescale_takes_a_large_beta():
    cfg = parse_config(raw(form="interaction", beta=800.0, rescale_usa=True))
    assert build.build_model(cfg.model) == causal.CausalInteraction(2, 800.0, 2.0, rescale=True)


# -- the models built and the round trip -------------------------------------------------------
def test_models_built_are_the_library_objects():
    cfg = parse_config(raw(Q=[[1.0, 0.5], [0.0, 1.0]], centered=True))
    m = build.build_model(cfg.model)
    hand = af.SelfAttention(
        2, beta=1.0, Q=np.array([[1.0, 0.5], [0.0, 1.0]]), centered=True, causal=True, alibi=2.0
    )
    x = af.UniformSphere(2).sample(12, np.random.default_rng(1))[None]
    assert m.causal and m.alibi == 2.0
    np.testing.assert_array_equal(causal.causal_velocity(m, x), causal.causal_velocity(hand, x))
    inter = build.build_model(parse_config(raw(form="interaction")).model)
    assert inter == causal.CausalInteraction(2, 1.0, 2.0)
    default = parse_config(raw(alibi=None)).model
    assert default.alibi == 0.0 and default.form == "softmax"


@pytest.mark.parametrize("form", ["softmax", "interaction"])
def test_round_trip(form):
    cfg = parse_config(raw(form=form))
    text = cfg.to_toml()
    tables = tomllib.loads(text)
    assert tables["fem"]["slices"] == 4 and tables["model"]["causal"] is True
    assert ("attention" in tables["model"]) == (form == "softmax")
    assert parse_config(tables) == cfg
    # Without causal attention nothing new is written (problems of older runs unchanged).
    plain = parse_config(with_(raw(), model={"d": 2, "beta": 1.0}, fem={"degree": 0}))
    text = plain.to_toml()
    assert "causal" not in text and "slices" not in text and "alibi" not in text


def test_softmax_in_r_d_runs_with_particles_only(tmp_path):
    cfg = raw(solvers=("particles",), space="euclidean")
    cfg["initial"] = {"type": "gaussian", "mean": [0.0, 0.0], "cov": [[1.0, 0.0], [0.0, 1.0]]}
    c = parse_config(cfg)
    m = build.build_model(c.model)
    assert m.causal and not m.sphere


# -- runs --------------------------------------------------------------------------------------
SMALL = ["particles.runs=200", "particles.n=16", "fem.slices=4", "mesh.cells=16"]


def sets(*items):
    return [a for s in items for a in ("--set", s)]


@SERIAL
def test_lost_in_the_middle_example_end_to_end(tmp_path):
    from attnflow.app.cli import main
    from attnflow.fem.causal import KineticSolution

    run = tmp_path / "run"
    assert main(["run", str(EXAMPLE), "-o", str(run), "-q", *sets(*SMALL)]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "complete"
    assert s["causal"] == {"form": "interaction", "alibi": 2.0, "beta": 1.0, "d": 2}
    cfg = load_config(run / "config.toml")
    # The particles are the prompt ensemble of the config's law and seed, bitwise.
    ens = EnsembleSolution.load(run / "particles.npz")
    hand = causal.prompt_ensemble(
        causal.CausalInteraction(2, 1.0, 2.0),
        16,
        200,
        cfg.time.t_final,
        dt=0.05,
        seed=7,
        law=af.UniformSphere(2),
        save_times=cfg.time.save_times,
    )
    np.testing.assert_array_equal(ens.x, hand.x)
    assert s["particles"]["prompts"] == 200 and s["particles"]["status_counts"] == {"success": 200}
    # Token 1 attends to nothing: fixed (to round-off: the retraction renormalises it).
    np.testing.assert_allclose(ens.x[:, :, 0], ens.x[:, :1, 0].repeat(3, 1), atol=1e-15)
    # The retrieval correlation: the estimator and the closed form of the library.
    ret = s["retrieval"]
    est = causal.correlation_mc(ens, 1)
    np.testing.assert_allclose(ret["mc"], est.value[-1], rtol=1e-12)
    cf = causal.correlation_kernel(1, 1.0, 2.0, 1.68, est.s[:-1])
    np.testing.assert_allclose(ret["closed_form"][:-1], cf, rtol=1e-12)
    assert ret["closed_form"][-1] is None  # the last token is an atom of the limit
    # The kinetic density: every slice keeps its mass; the uniform state is stationary.
    fem = KineticSolution.load(run / "fem_solution.npz")
    assert fem.n_slices == 4 and fem.stats["form"] == "interaction"
    assert np.max(np.abs(fem.mass - 1.0)) < 1e-12 and s["fem"]["mass_drift"] < 1e-12
    dens = fem.weights / fem.point_weights  # 1 / |mesh| (the polygon's length) at all times
    np.testing.assert_allclose(dens, 1 / fem.point_weights.sum(), rtol=1e-12)
    # W1 per slice against the tokens at the slice's position: rows 0, 4, 8, 12 of 16.
    cmp = s["comparison"]
    assert cmp["token_rows"] == [0, 4, 8, 12] == list(slice_rows(16, 4))
    assert all(0 < w < 0.5 for w in cmp["w1_slices_final"])
    assert {"fem/density.xdmf", "fem/kinetic.pvd", "figures/summary.png"} <= set(s["files"])
    assert (run / "fem" / "kinetic.pvd").is_file()
    # A resume reruns an unfinished phase (no checkpoints) and reuses the kinetic result.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for name in ("summary.json", "particles.npz"):
        (copy / name).unlink()
    assert main(["run", "--resume", str(copy), "-q"]) == 0
    r = json.loads((copy / "summary.json").read_text())
    assert r["status"] == "complete" and r["fem"]["reused"] is True
    np.testing.assert_array_equal(EnsembleSolution.load(copy / "particles.npz").x, ens.x)
    # The kinetic result is verified before it is reused.
    with open(copy / "fem_solution.npz", "ab") as f:
        f.write(b"\0")
    (copy / "summary.json").unlink()
    assert main(["run", "--resume", str(copy), "-q"]) == 2


@SERIAL
def test_softmax_form_runs_and_slices_move(tmp_path):
    """Causal softmax attention from a perturbed law: slice 0 attends to itself only, so its
    density moves like the non-causal SA flow of one measure; every slice keeps its mass."""
    from attnflow.app.cli import main
    from attnflow.fem.causal import KineticSolution

    run = tmp_path / "sm"
    extra = [
        "model.form=softmax",
        "model.beta=4.0",
        "initial.type=perturbed_circle",
        "initial.eps=0.3",
        "initial.mode=2",
        "particles.runs=20",
        "output.figures=false",
        "output.paraview=false",
    ]
    assert main(["run", str(EXAMPLE), "-o", str(run), "-q", *sets(*SMALL, *extra)]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "complete" and s["causal"]["form"] == "softmax"
    assert "closed_form" not in s["retrieval"]  # no closed form for this model and law
    fem = KineticSolution.load(run / "fem_solution.npz")
    assert np.max(np.abs(fem.mass - 1.0)) < 1e-12
    move = np.abs(fem.weights[-1] - fem.weights[0]).sum(axis=1)
    assert np.all(move > 1e-3)  # every slice (slice 0 too: it attends to itself) moves
    ens = EnsembleSolution.load(run / "particles.npz")
    assert ens.stats["model"] == "softmax" and ens.x.shape == (20, 3, 16, 2)


@pytest.mark.mpi
def test_causal_run_on_all_ranks_equals_serial(tmp_path_factory):
    """``attnflow run`` of a causal config on every rank of COMM_WORLD: the prompts (dealt to
    the ranks) are bitwise the serial prompt ensemble, the kinetic density (cells over the
    ranks) equals a serial CausalSolver (COMM_SELF) to round-off."""
    from attnflow.app.cli import main
    from attnflow.fem.causal import KineticSolution

    comm = MPI.COMM_WORLD
    base = Path(comm.bcast(str(tmp_path_factory.mktemp("causal")) if comm.rank == 0 else None))
    run = base / "run"
    extra = ["output.figures=false", "initial.type=perturbed_circle", "initial.eps=0.3"]
    extra += ["initial.mode=2", "particles.runs=30"]
    assert main(["run", str(EXAMPLE), "-o", str(run), "-q", *sets(*SMALL, *extra)]) == 0
    comm.Barrier()
    cfg = load_config(run / "config.toml")
    ens = EnsembleSolution.load(run / "particles.npz")
    hand = causal.prompt_ensemble(
        build.build_model(cfg.model),
        16,
        30,
        cfg.time.t_final,
        dt=0.05,
        seed=7,
        law=build.initial_law(cfg.initial, 2, True),
        save_times=cfg.time.save_times,
    )
    np.testing.assert_array_equal(ens.x, hand.x)
    fem = KineticSolution.load(run / "fem_solution.npz")
    serial = build.build_fem_solver(cfg, MPI.COMM_SELF).solve(cfg.time.t_final, cfg.time.save_times)
    np.testing.assert_allclose(fem.weights, serial.weights, rtol=1e-12, atol=1e-14)
    assert json.loads((run / "summary.json").read_text())["ranks"] == comm.size
