"""Run configurations: strict one-line validation, resolution, TOML round trips, examples."""

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from attnflow.app.build import build_model, initial_law
from attnflow.app.config import (
    ConfigError,
    apply_override,
    compile_expression,
    dumps_toml,
    load_config,
    parse_config,
    parse_override,
)

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.toml"))


def base(**changes):
    """A valid finite element + particle configuration on S^1, with ``section.key`` changes
    (``None`` deletes the key)."""
    raw = {
        "run": {"solvers": ["fem", "particles"]},
        "model": {"d": 2, "beta": 9.0},
        "mesh": {"type": "circle", "cells": 16},
        "initial": {"type": "perturbed_circle", "eps": 0.3, "mode": 3},
        "time": {"t_final": 1.0},
        "output": {"directory": "/tmp/never-written"},
    }
    for dotted, v in changes.items():
        section, _, key = dotted.partition("__")
        if key == "":
            if v is None:
                raw.pop(section, None)
            else:
                raw[section] = v
        elif v is None:
            raw[section].pop(key, None)
        else:
            raw.setdefault(section, {})[key] = v
    return raw


def test_examples_are_listed():
    names = {p.name for p in EXAMPLES}
    assert {"circle_clustering.toml", "gaussian_euclidean.toml", "sweep_beta.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_validates_and_round_trips(path):
    cfg = load_config(path, allow_sweep=True)  # sweeps: every point is validated too
    again = parse_config(tomllib.loads(cfg.to_toml()), allow_sweep=True)
    assert again == cfg
    assert again.to_toml() == cfg.to_toml()
    assert cfg.output.directory is not None and Path(cfg.output.directory).is_absolute()


def test_defaults_are_resolved():
    cfg = parse_config(base())
    assert cfg.run.name == "run" and cfg.run.solvers == ("fem", "particles")
    assert cfg.model.attention == "SA" and cfg.model.space == "sphere" and cfg.model.Q is None
    assert cfg.time.save_times == (0.0, 1.0)
    assert cfg.fem.degree == 1 and cfg.fem.kernel == "dense" and cfg.fem.cfl == 0.9
    assert cfg.particles.n == 1000 and cfg.particles.method == "rk4"
    assert cfg.checkpoint.every == 0 and cfg.checkpoint.keep == 1
    text = cfg.to_toml()
    assert "[compare]" in text and 'Q = "identity"' in text


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        ({"t_final": 2.0, "n_saves": 5}, (0.0, 0.5, 1.0, 1.5, 2.0)),
        ({"t_final": 1.0, "save_every": 0.4}, (0.0, 0.4, 0.8, 1.0)),
        ({"t_final": 3.0, "save_every": 1.0}, (0.0, 1.0, 2.0, 3.0)),
        ({"t_final": 3.0, "save_times": [0.5, 3]}, (0.5, 3.0)),
    ],
)
def test_save_times(time, expected):
    assert parse_config(base(time__=time)).time.save_times == pytest.approx(expected, abs=1e-15)


def test_matrices_scalars_and_identity():
    cfg = parse_config(
        base(
            model__space="euclidean",
            model__K=-1.0,
            model__V=[[1, 0], [0, 0.5]],
            mesh__=None,
            run__solvers=["particles"],
            initial__={"type": "gaussian", "mean": [0, 0], "cov": [[1, 0], [0, 1]]},
        )
    )
    m = build_model(cfg.model)
    np.testing.assert_array_equal(m.K, -np.eye(2))
    np.testing.assert_array_equal(m.V, np.diag([1.0, 0.5]))
    np.testing.assert_array_equal(m.Q, np.eye(2))


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"extra__": {"a": 1}}, "extra", "unknown section"),
        ({"model__betta": 1.0}, "model.betta", "unknown key (allowed: d, beta"),
        ({"model__beta": -1}, "model.beta", "must be > 0, got -1"),
        ({"model__beta": "hot"}, "model.beta", 'must be > 0, got "hot"'),
        ({"model__d": 2.0}, "model.d", "must be an integer"),
        ({"model__attention": "softmax"}, "model.attention", 'one of "SA", "USA"'),
        ({"model__Q": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}, "model.Q", "got a 3x3 array"),
        ({"model__V": [[1, 0], [0]]}, "model.V", "unequal length"),
        ({"model__rescale_usa": True}, "model.rescale_usa", 'attention = "USA" only'),
        ({"model__beta": math.inf}, "model.beta", "finite for the finite element solver"),
        ({"run__solvers": []}, "run.solvers", "non-empty list"),
        ({"run__": None}, "run.solvers", "required"),
        ({"mesh__": None}, "mesh", "required for the finite element solver"),
        ({"mesh__type": "torus"}, "mesh.type", '"circle", "sphere", "box", "file"'),
        ({"mesh__cells": 2}, "mesh.cells", "integer >= 3, got 2"),
        ({"mesh__level": 2}, "mesh.level", 'not used by mesh.type = "circle"'),
        ({"mesh__type": "sphere", "mesh__cells": None, "mesh__level": 1}, "mesh.type", "d = 3"),
        ({"mesh__type": "file", "mesh__cells": None, "mesh__path": "no.npz"}, "mesh.path", "no "),
        ({"initial__eps": 1.5}, "initial.eps", "<= 1"),
        ({"initial__kappa": 1.0}, "initial.kappa", 'not used by initial.type = "perturbed'),
        (
            {"initial__": {"type": "gaussian", "mean": [0, 0], "cov": [[1, 0], [0, 1]]}},
            "initial.type",
            "euclidean",
        ),
        ({"time__t_final": 0}, "time.t_final", "> 0"),
        ({"time__save_times": [0, 2]}, "time.save_times", "increasing and lie in [0, 1]"),
        ({"time__n_saves": 3, "time__save_every": 0.5}, "time.save_every", "only one"),
        ({"fem__degree": 2}, "fem.degree", "in [0, 1], got 2"),
        ({"fem__kernel": "fft"}, "fem.kernel", '"dense", "sparse", "recomputed"'),
        ({"fem__cfl": 1.5}, "fem.cfl", "<= 1"),
        ({"particles__n": 0}, "particles.n", ">= 1, got 0"),
        ({"particles__dt": "0.1"}, "particles.dt", "must be a number > 0"),
        ({"particles__method": "rk45"}, "particles.method", '"rk4", "euler"'),
        ({"output__paraview": "yes"}, "output.paraview", "true or false"),
        ({"checkpoint__every": -1}, "checkpoint.every", ">= 0"),
        ({"checkpoint__keep": 0}, "checkpoint.keep", ">= 1"),
        ({"sweep__": {"parameter": "model.beta", "values": [1]}}, "sweep", "attnflow sweep"),
    ],
)
def test_invalid_configs_name_the_key_in_one_line(changes, key, fragment):
    with pytest.raises(ConfigError) as e:
        parse_config(base(**changes))
    assert e.value.key == key, str(e.value)
    assert fragment in e.value.message, str(e.value)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("initial", "key", "fragment"),
    [
        ({"type": "expression", "expression": "cos(theta)"}, "initial.expression", ">= 0"),
        ({"type": "expression", "expression": "0 * x"}, "initial.expression", "zero mass"),
        ({"type": "expression", "expression": "1 / (x - x)"}, "initial.expression", "finite"),
        ({"type": "expression", "expression": "foo(x)"}, "initial.expression", "only calls"),
        ({"type": "expression", "expression": "x.real"}, "initial.expression", "Attribute"),
        ({"type": "expression", "expression": "1 +"}, "initial.expression", "invalid"),
        (
            {"type": "circle_modes", "amplitudes": [0.8, 0.8], "modes": [2, 3]},
            "initial.amplitudes",
            ">= 0",
        ),
        ({"type": "circle_modes", "amplitudes": [0.1], "modes": [2, 3]}, "initial.modes", "1 "),
        ({"type": "von_mises_fisher", "mu": [0, 0], "kappa": 1}, "initial.mu", "non-zero"),
        ({"type": "von_mises_fisher", "mu": [1, 0, 0], "kappa": 1}, "initial.mu", "2 numbers"),
    ],
)
def test_invalid_initial_densities(initial, key, fragment):
    with pytest.raises(ConfigError) as e:
        parse_config(base(initial__=initial))
    assert e.value.key == key and fragment in e.value.message, str(e.value)


def test_euclidean_initial_densities_need_a_domain_for_particles():
    raw = base(
        model__space="euclidean",
        mesh__=None,
        run__solvers=["particles"],
        initial__={"type": "expression", "expression": "exp(-r**2)"},
    )
    with pytest.raises(ConfigError, match=r"^initial\.half_width: required"):
        parse_config(raw)
    raw["initial"]["half_width"] = 3.0
    cfg = parse_config(raw)
    x = initial_law(cfg.initial, 2, False).sample(500, 1)
    assert x.shape == (500, 2) and np.all(np.abs(x) <= 3.0)


def test_gaussian_covariance_must_be_spd():
    raw = base(
        model__space="euclidean",
        mesh__={"type": "box", "cells": 4, "length": 2.0},
        initial__={"type": "gaussian", "mean": [0, 0], "cov": [[1, 2], [2, 1]]},
    )
    with pytest.raises(ConfigError, match=r"^initial\.cov: must be symmetric positive definite"):
        parse_config(raw)


def test_mesh_files_are_checked(tmp_path):
    good = tmp_path / "ring.npz"
    th = np.linspace(0, 2 * np.pi, 9)[:-1]
    pts = np.stack([np.cos(th), np.sin(th)], 1)
    cells = np.stack([np.arange(8), (np.arange(8) + 1) % 8], 1)
    np.savez(good, points=pts, cells=cells)
    mesh = {"type": "file", "path": "ring.npz"}
    cfg = parse_config(base(mesh__=mesh), base_dir=tmp_path)
    assert cfg.mesh.path == str(good.resolve())
    np.savez(tmp_path / "bad.npz", points=pts)
    with pytest.raises(ConfigError, match=r"^mesh\.path: .*'points' and 'cells'"):
        parse_config(base(mesh__={"type": "file", "path": "bad.npz"}), base_dir=tmp_path)
    np.savez(tmp_path / "flat.npz", points=2 * pts, cells=cells)
    with pytest.raises(ConfigError, match="unit sphere"):
        parse_config(base(mesh__={"type": "file", "path": "flat.npz"}), base_dir=tmp_path)


def test_expressions_see_coordinates_and_angles():
    f = compile_expression("k", "1 + 0.5 * cos(2 * theta) + 0 * x * y + r - 1", 2)
    th = np.array([0.0, np.pi / 2])
    v = f(np.stack([np.cos(th), np.sin(th)], 1))
    np.testing.assert_allclose(v, [1.5, 0.5])
    g = compile_expression("k", "where(z > 0, 2.0, 1.0) + 0 * phi", 3)
    np.testing.assert_array_equal(g(np.array([[0, 0, 1.0], [0, 0, -1.0]])), [2.0, 1.0])
    assert compile_expression("k", "3", 2)(np.zeros((4, 2))).tolist() == [3.0] * 4
    for bad in ("__import__('os')", "(lambda: 1)()", "[1, 2]", "'a'", "X.T"):
        with pytest.raises(ConfigError):
            compile_expression("k", bad, 2)


def test_overrides_and_sweep_points(tmp_path):
    assert parse_override("model.beta=4") == ("model.beta", 4)
    assert parse_override("initial.type=uniform") == ("initial.type", "uniform")
    assert parse_override("model.Q=[[1, 0], [0, 2]]") == ("model.Q", [[1, 0], [0, 2]])
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_override("beta")
    raw = base(sweep__={"parameter": "model.beta", "values": [1.0, 4.0]})
    cfg = parse_config(raw, allow_sweep=True, sweep_point=True)
    assert cfg.sweep.values == (1.0, 4.0)
    point = apply_override(raw, "model.beta", 4.0)
    assert point["model"]["beta"] == 4.0 and raw["model"]["beta"] == 9.0
    raw["sweep"]["values"] = [1.0, -2.0]
    with pytest.raises(ConfigError) as e:
        parse_config(raw, allow_sweep=True, sweep_point=True)
    assert e.value.key == "model.beta" and "sweep.values[1] = -2.0" in e.value.message
    raw["sweep"] = {"parameter": "model.temperature", "values": [1.0]}
    with pytest.raises(ConfigError, match=r"^sweep\.parameter"):
        parse_config(raw, allow_sweep=True)


def test_load_config_reports_bad_toml_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.toml")
    p = tmp_path / "broken.toml"
    p.write_text("[model\nd = 2\n")
    with pytest.raises(ConfigError, match=r"^broken\.toml: invalid TOML"):
        load_config(p)


def test_dumps_toml_round_trips_exactly():
    table = {
        "a": {
            "x": 0.1 + 0.2,
            "tiny": 1e-300,
            "big": 1e16,
            "inf": math.inf,
            "neg": -3,
            "flag": False,
            "s": 'quote " back \\ newline \n tab \t',
            "m": [[1.0, -2.5], [3e-12, 4.0]],
            "empty": [],
        },
        "b": {"nested": {"k": 1}},
    }
    back = tomllib.loads(dumps_toml(table, header="two\nlines"))
    assert back == table
