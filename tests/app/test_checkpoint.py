"""Checkpoints: atomic files, and particle runs resumed from any of them end bitwise equal."""

import json

import numpy as np
import pytest

import attnflow as af
from attnflow.app.checkpoint import (
    CheckpointWriter,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from attnflow.io import write_npz_atomic
from attnflow.states import CheckpointError, ParticleState

pytestmark = pytest.mark.usefixtures("one_numba_thread")

MODEL = af.SelfAttention(2, beta=9.0)
LAW = af.PerturbedCircle(0.3, 3)
TIMES = np.linspace(0.0, 1.0, 4)


def test_atomic_write_leaves_no_temporary_and_ignores_stale_ones(tmp_path):
    path = write_npz_atomic(tmp_path / "a.npz", x=np.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]
    np.testing.assert_array_equal(np.load(path)["x"], np.arange(3.0))
    # A writer killed mid-way leaves only "<name>.tmp": never taken for a checkpoint.
    (tmp_path / "fem-00000009.npz.tmp").write_bytes(b"partial")
    write_npz_atomic(tmp_path / "fem-00000004.npz", x=np.zeros(1))
    assert latest_checkpoint(tmp_path, "fem").name == "fem-00000004.npz"
    assert latest_checkpoint(tmp_path, "particles") is None


def test_writer_keeps_the_newest(tmp_path):
    states = []
    af.ensemble(
        MODEL,
        LAW,
        20,
        2,
        1.0,
        dt=0.1,
        seed=1,
        save_times=TIMES,
        checkpoint_every=2,
        on_checkpoint=states.append,
    )
    writer = CheckpointWriter(tmp_path, "particles", config_text="[run]\n", keep=2)
    for s in states:
        writer(s)
    assert writer.count == len(states) == 6 and writer.seconds > 0
    kept = list_checkpoints(tmp_path, "particles")
    assert [step for step, _ in kept] == [10, 12]
    state, text = read_checkpoint(kept[-1][1])
    assert text == "[run]\n" and isinstance(state, ParticleState)
    np.testing.assert_array_equal(state.x, states[-1].x)
    assert state.seed == 1 and len(state.rng_states) == 2
    assert json.loads(state.rng_states[0])["bit_generator"] == "PCG64"


def test_ensemble_resumes_bitwise_from_every_checkpoint(tmp_path):
    ref = af.ensemble(MODEL, LAW, 50, 3, 1.0, dt=0.07, seed=4, save_times=TIMES)
    states = []
    again = af.ensemble(
        MODEL,
        LAW,
        50,
        3,
        1.0,
        dt=0.07,
        seed=4,
        save_times=TIMES,
        checkpoint_every=3,
        on_checkpoint=states.append,
    )
    np.testing.assert_array_equal(again.x, ref.x)  # checkpointing changes nothing
    assert len(states) == 5
    for k, s in enumerate(states):
        write_checkpoint(tmp_path / f"p{k}.npz", s)
        s2, _ = read_checkpoint(tmp_path / f"p{k}.npz")
        out = af.ensemble(MODEL, LAW, 50, 3, 1.0, dt=0.07, seed=4, save_times=TIMES, restart=s2)
        np.testing.assert_array_equal(out.x, ref.x)
        assert out.status == ref.status
    with pytest.raises(CheckpointError, match="seed"):
        af.ensemble(MODEL, LAW, 50, 3, 1.0, dt=0.07, seed=5, save_times=TIMES, restart=states[0])
    with pytest.raises(CheckpointError, match="dt"):
        af.ensemble(MODEL, LAW, 50, 3, 1.0, dt=0.05, seed=4, save_times=TIMES, restart=states[0])


def test_simulate_resumes_bitwise_and_reports_progress():
    x0 = LAW.sample(40, 2)
    ref = af.simulate(MODEL, x0, 1.0, dt=0.09, save_times=TIMES)
    states, seen = [], []
    af.simulate(
        MODEL,
        x0,
        1.0,
        dt=0.09,
        save_times=TIMES,
        checkpoint_every=4,
        on_checkpoint=states.append,
        progress=lambda t, n: seen.append(t),
    )
    assert len(seen) == ref.n_steps and seen[-1] == pytest.approx(1.0)
    for s in states:
        out = af.simulate(MODEL, x0, 1.0, dt=0.09, save_times=TIMES, restart=s)
        np.testing.assert_array_equal(out.x, ref.x)
        assert out.n_steps == ref.n_steps
    with pytest.raises(ValueError, match="on_checkpoint"):
        af.simulate(MODEL, x0, 1.0, dt=0.09, checkpoint_every=2)
