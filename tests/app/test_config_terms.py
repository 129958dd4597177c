"""Configurations of perceptron terms, further attention heads and piecewise-constant controls.

``[model] attention = "none"``, ``[model] output``, ``[[terms]]`` (perceptrons and attention
heads) and ``[[controls]]``: one-line validation naming the key, the TOML round trip, the
objects built (velocities equal to the objects built by hand), the switching times reaching
the solvers, the resource limits, and a run directory made from ``examples/``.
"""

import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import attnflow
from attnflow.app import build
from attnflow.app.cli import main
from attnflow.app.config import ConfigError, load_config, parse_config
from attnflow.app.config.limits import fem_step_estimate, mesh_size
from attnflow.app.summaries import non_finite

pytestmark = pytest.mark.usefixtures("one_numba_thread")

ROOT = Path(__file__).resolve().parents[2]
W2 = [[1.0, 0.0], [0.0, 2.0]]


def flow(**changes):
    """A valid pure perceptron flow in R^2 (box, Gaussian; both solvers) with ``[[terms]]``
    and ``[[controls]]``; ``changes``: ``section=value`` (``None`` deletes) or
    ``section__i__key=value`` (``i``: the index in an array of tables)."""
    raw = {
        "run": {"solvers": ["fem", "particles"]},
        "model": {"d": 2, "space": "euclidean", "attention": "none"},
        "terms": [
            {
                "type": "perceptron",
                "W": [[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]],
                "A": [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]],
                "b": [0.0, 0.5, -0.5],
            },
            {"type": "attention", "beta": 2.0, "K": -1.0},
        ],
        "controls": [
            {"start": 0.0, "w": [0.0, 1.0], "a": [1.0, 0.0], "b": 0.5},
            {"start": 1.0, "w": [1.0, 0.0], "a": [0.0, -1.0], "b": 0.0, "activation": "tanh"},
        ],
        "mesh": {"type": "box", "cells": 4, "length": 3.0},
        "initial": {"type": "gaussian", "mean": [0.0, 0.0], "cov": [[0.3, 0.0], [0.0, 0.3]]},
        "time": {"t_final": 2.0},
        "output": {"directory": "/tmp/never-written"},
    }
    for dotted, v in changes.items():
        parts = dotted.split("__")
        if len(parts) == 1:
            raw.pop(dotted, None) if v is None else raw.__setitem__(dotted, v)
        elif len(parts) == 2:
            table = raw[parts[0]]
            table.pop(parts[1], None) if v is None else table.__setitem__(parts[1], v)
        else:
            item = raw[parts[0]][int(parts[1])]
            item.pop(parts[2], None) if v is None else item.__setitem__(parts[2], v)
    return raw


# -- validation --------------------------------------------------------------------------------
BAD = [
    (
        {"terms__0__A": [[1.0, 0.0], [0.0, 1.0]]},
        "terms[0].A: must have shape (m, d) = (3, 2), got (2, 2)",
    ),
    ({"terms__0__W": [[1.0, 0.0]]}, "terms[0].W: must have shape (d, m) = (2, m), got (1, 2)"),
    ({"terms__0__W": [1.0, 2.0]}, "terms[0].W: must be an array (a list of equal rows) of shape"),
    ({"terms__0__b": [0.0]}, "terms[0].b: must have shape (m,) = (3,), got (1,)"),
    ({"terms__0__b": [0.0, "x", 1.0]}, "terms[0].b: must be a list of numbers of shape (m,)"),
    (
        {"terms__0__A": [[0.0, math.inf], [1.0, 0.0], [1.0, 1.0]]},
        "terms[0].A: must have finite entries",
    ),
    ({"terms__0__activation": "gelu"}, 'terms[0].activation: must be one of "relu", "tanh"'),
    ({"terms__0__type": "mlp"}, 'terms[0].type: must be one of "perceptron", "attention", got'),
    ({"terms__0__type": None}, "terms[0].type: required"),
    ({"terms__0__Wx": 1}, "terms[0].Wx: unknown key (allowed: type, W, A, b, activation, beta"),
    ({"terms__0__beta": 2.0}, 'terms[0].beta: not used by type = "perceptron" (allowed: type,'),
    ({"terms__1__W": W2}, 'terms[1].W: not used by type = "attention"'),
    ({"terms__1__beta": -1}, "terms[1].beta: must be > 0, got -1"),
    ({"terms__1__attention": "none"}, 'terms[1].attention: must be one of "SA", "USA", got "none"'),
    ({"terms__1__Q": [[1.0]]}, "terms[1].Q: must be"),
    ({"terms__1__rescale_usa": True}, 'terms[1].rescale_usa: applies to attention = "USA" only'),
    ({"terms__1__beta": math.inf}, "terms[1].beta: must be finite for the finite element solver"),
    ({"terms": {"type": "perceptron"}}, "terms: must be an array of tables ([[terms]]), got a"),
    ({"terms": [1]}, "terms: must be an array of tables ([[terms]]), got [1]"),
    ({"controls__0__start": 0.5}, "controls[0].start: must be 0 (the first control acts from t"),
    ({"controls__1__start": 0.0}, "controls[1].start: must be > controls[0].start = 0 (incre"),
    ({"controls__1__start": 2.0}, "controls[1].start: must be < time.t_final = 2 (it would never"),
    ({"controls__1__start": None}, "controls[1].start: required"),
    ({"controls__0__w": [1.0]}, "controls[0].w: must be a list of 2 numbers, got a list of len"),
    ({"controls__0__a": None}, "controls[0].a: required"),
    ({"controls__0__b": "x"}, "controls[0].b: must be a number"),
    ({"controls__1__activation": 1}, "controls[1].activation: must be one of"),
    ({"controls__0__W": W2}, "controls[0].W: unknown key (allowed: start, w, a, b, activation)"),
    ({"model__beta": 2.0}, 'model.beta: not used with model.attention = "none" (allowed: d, spa'),
    ({"model__attention": "MLP"}, 'model.attention: must be one of "SA", "USA", "none", got "MLP"'),
    ({"terms": None, "controls": None}, 'model.attention: "none" needs [[terms]] or [[controls]]'),
    (
        {"model__output": W2, "terms": [flow()["terms"][0]]},
        "model.output: needs an attention head ([model] or [[terms]])",
    ),
    ({"model__output": [[1.0]]}, "model.output: must be"),
    ({"layers": []}, "layers: unknown section (allowed: run, model,"),
]


@pytest.mark.parametrize("changes, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_each_problem_is_one_line_naming_the_key(changes, message):
    with pytest.raises(ConfigError) as e:
        parse_config(flow(**changes))
    text = str(e.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_overflowing_usa_head_in_terms_names_its_beta():
    raw = tomllib.loads((ROOT / "examples" / "two_heads.toml").read_text())
    raw["terms"][0]["beta"] = 800.0
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert e.value.key == "terms[0].beta" and "terms[0].rescale_usa = true" in e.value.message
    raw["terms"][0]["rescale_usa"] = True
    parse_config(raw)  # rescaled: accepted


SERIAL = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="serial (per-rank tmp_path)")


@SERIAL
def test_cli_refuses_a_bad_term_with_status_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    text = (ROOT / "examples" / "normalizing_flow.toml").read_text()
    bad.write_text(text.replace("b = 0.5\nactivation", "b = [0.5]\nactivation", 1))
    out = tmp_path / "out"
    assert main(["run", str(bad), "--output", str(out), "-q"]) == 2
    assert "controls[0].b: must be a number" in capsys.readouterr().err
    assert not out.exists()


# -- round trip and defaults -------------------------------------------------------------------
def test_round_trip_is_identical():
    raw = flow(model={"d": 2, "space": "euclidean", "beta": 3.0, "output": 0.5, "centered": True})
    cfg = parse_config(raw)
    text = cfg.to_toml()
    assert text.count("[[terms]]") == 2 and text.count("[[controls]]") == 2
    again = parse_config(tomllib.loads(text))
    assert again == cfg and again.to_toml() == text
    m = cfg.model
    assert m.output == ((0.5, 0.0), (0.0, 0.5)) and m.controls[0].activation == "relu"
    assert [p for p, _ in m.heads()] == ["model", "terms[1]"]


def test_attention_none_writes_no_head_keys():
    text = parse_config(flow()).to_toml()
    model = tomllib.loads(text)["model"]
    assert model == {"d": 2, "space": "euclidean", "attention": "none"}


def test_without_terms_the_model_is_the_single_head_as_before():
    raw = flow(model={"d": 2, "space": "euclidean", "beta": 2.0}, terms=None, controls=None)
    cfg = parse_config(raw)
    assert "[[terms]]" not in cfg.to_toml() and "[[controls]]" not in cfg.to_toml()
    assert type(build.build_model(cfg.model)) is attnflow.SelfAttention


# -- the objects built -------------------------------------------------------------------------
def test_build_model_matches_the_objects_built_by_hand():
    raw = flow(
        model={"d": 2, "space": "euclidean", "beta": 3.0, "output": [[1.0, 0.2], [0.0, 1.0]]}
    )
    model = build.build_model(parse_config(raw).model)
    t = raw["terms"]
    heads = [
        attnflow.SelfAttention(2, beta=3.0, sphere=False),
        attnflow.SelfAttention(2, beta=2.0, K=-np.eye(2), sphere=False),
    ]
    c = raw["controls"]
    hand = (
        attnflow.MultiHead(heads, output=np.array([[1.0, 0.2], [0.0, 1.0]]))
        + attnflow.Perceptron(t[0]["W"], t[0]["A"], t[0]["b"], "relu", False)
        + attnflow.Piecewise(
            [1.0],
            [
                attnflow.Perceptron.single(c[0]["w"], c[0]["a"], c[0]["b"]),
                attnflow.Perceptron.single(c[1]["w"], c[1]["a"], c[1]["b"], "tanh"),
            ],
        )
    )
    assert model.breakpoints == (1.0,) and not model.has_energy
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 2)), rng.normal(size=(11, 2))
    for time in (0.0, 0.5, 1.0, 1.7):
        got = model.velocity(x, y, t=time)
        np.testing.assert_allclose(got, hand.velocity(x, y, t=time), rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(model.velocity(x, y, t=0.2), model.velocity(x, y, t=0.9))
    assert not np.allclose(model.velocity(x, y, t=0.2), model.velocity(x, y, t=1.2))


def test_two_heads_example_builds_multihead_plus_perceptron_on_the_sphere():
    cfg = load_config(ROOT / "examples" / "two_heads.toml")
    model = build.build_model(cfg.model)
    heads = [
        attnflow.SelfAttention(2, beta=4.0),
        attnflow.SelfAttention(
            2, beta=2.0, V=np.array([[0.0, -1.0], [1.0, 0.0]]), normalized=False
        ),
    ]
    hand = attnflow.MultiHead(heads, output=np.diag([1.0, 0.5])) + attnflow.Perceptron(
        [[0.2], [0.0]], [[0.0, 1.0]], [0.0], "tanh", sphere=True
    )
    th = np.linspace(0, 2 * np.pi, 9)
    x = np.stack([np.cos(th), np.sin(th)], axis=1)
    np.testing.assert_allclose(model.velocity(x, x[::2]), hand.velocity(x, x[::2]), atol=1e-14)


def test_cfl_estimate_uses_the_speed_bound_of_the_sum():
    cfg = parse_config(flow())
    counts = mesh_size(cfg)
    speed = build.build_model(cfg.model).speed_bound(3.0 * math.sqrt(2))
    want = cfg.fem.cfl / (counts.tdim + 1) * counts.h / (2 * counts.tdim) / speed
    assert fem_step_estimate(cfg, counts) == pytest.approx(want)
    single = parse_config(flow(terms=None))
    assert fem_step_estimate(single, counts) > fem_step_estimate(cfg, counts)


def test_an_energy_not_computed_is_not_a_problem():
    class Solution:
        status = attnflow.Status.SUCCESS
        mass = np.ones(3)
        energy = np.full(3, np.nan)

    cfg = parse_config(flow())
    model = build.build_model(cfg.model)
    assert non_finite(cfg, model, Solution(), None, None) == []
    single = parse_config(flow(model={"d": 2, "space": "euclidean"}, terms=None, controls=None))
    problems = non_finite(single, build.build_model(single.model), Solution(), None, None)
    assert problems == ["finite elements: energy not finite"]


# -- the switching times reach the solvers -----------------------------------------------------
def test_switching_times_reach_the_particle_solver():
    cfg = parse_config(flow(terms=None, time={"t_final": 2.0}))
    model = build.build_model(cfg.model)
    law = build.initial_law(cfg.initial, 2, False)
    run = attnflow.ensemble(model, law, 20, 1, 2.0, dt=0.3, seed=0, save_times=[0.0, 2.0])
    assert run.stats["steps"] == 2 * math.ceil(1.0 / 0.3)  # 8; 7 without the switch at t = 1
    auto = attnflow.ensemble(model.pieces[0], law, 20, 1, 2.0, dt=0.3, seed=0, save_times=[2.0])
    assert auto.stats["steps"] == math.ceil(2.0 / 0.3)


# -- a run directory from the example ----------------------------------------------------------
@SERIAL
def test_normalizing_flow_example_runs_end_to_end(tmp_path):
    run = tmp_path / "nf"
    small = [
        "mesh.cells=6",
        "particles.n=100",
        "particles.runs=1",
        "particles.dt=0.4",
        "fem.degree=0",
        "output.paraview=false",
    ]
    args = ["run", str(ROOT / "examples" / "normalizing_flow.toml"), "-o", str(run), "-q"]
    assert main(args + [a for s in small for a in ("--set", s)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete"
    fem, par = summary["fem"], summary["particles"]
    assert fem["log_energy_final"] is None and "log_energy_final" not in par
    assert par["n_steps"] == 3 * math.ceil(1.0 / 0.4)  # switches at t = 1, 2: 9 steps, not 8
    assert fem["n_steps"] == 3 * math.ceil(1.0 / fem["dt"] - 1e-9)
    assert 0.9 < fem["mass_final"] <= 1.0 + 1e-12
    cfg = load_config(run / "config.toml")
    assert len(cfg.model.controls) == 3 and cfg.model.attention == "none"
    assert cfg == parse_config(tomllib.loads(cfg.to_toml()))
