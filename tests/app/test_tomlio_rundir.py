"""attnflow.app.config.tomlio (the TOML writer) and attnflow.app.rundir (new run directories)."""

import math
import tomllib

import pytest
from mpi4py import MPI

from attnflow.app.config import ConfigError
from attnflow.app.config.tomlio import dumps_toml, read_toml
from attnflow.app.rundir import check_new_dir, summary_complete

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="serial (per-rank tmp_path)")


def test_toml_writer_round_trips_what_configs_hold(tmp_path):
    tables = {
        "model": {"d": 3, "beta": math.inf, "Q": [[1.0, 0.5], [0.0, 1e-300]], "name": 'a "b"\n'},
        "time": {"save_times": [0.0, 0.1, 1.0 / 3.0], "t_final": 1e300},
        "terms": [{"type": "perceptron", "b": [0.0]}, {"type": "attention", "beta": 2.0}],
        "run": {"solvers": ["fem", "particles"], "flag": True},
    }
    text = dumps_toml(tables, header="attnflow test")
    assert text.startswith("# attnflow test")  # the header becomes a comment
    back = tomllib.loads(text)
    assert back == tables  # floats exactly (repr), inf, escapes, arrays of tables
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert read_toml(path) == tables


def test_a_new_run_directory_must_be_new_or_empty(tmp_path):
    check_new_dir(tmp_path / "fresh", overwrite=False, key="output.directory")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "thesis.tex").write_text("t")
    with pytest.raises(ConfigError, match=r"output\.directory"):
        check_new_dir(tmp_path / "used", overwrite=False, key="output.directory")
    assert not summary_complete(tmp_path / "used")
