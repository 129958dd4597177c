"""attnflow.timegrid (the one validation of the time arguments, the event grid) and
attnflow.particles.stepping (the step schedule over it)."""

import numpy as np
import pytest

from attnflow.particles.stepping import blocks, march
from attnflow.timegrid import SAVE_TIME_RTOL, check_every, check_t_final, time_grid


def test_save_times_default_and_checks():
    np.testing.assert_array_equal(time_grid(2.0).save_times, [0.0, 2.0])
    np.testing.assert_array_equal(time_grid(0.0).save_times, [0.0])
    # linspace may overshoot t_final by round-off: accepted within SAVE_TIME_RTOL.
    assert time_grid(1.0, [0.0, 1.0 + 0.5 * SAVE_TIME_RTOL]).save_times.size == 2
    for bad, match in [
        ([], "non-empty"),
        ([0.0, np.nan], "finite"),
        ([0.5, 0.2], "increasing"),
        ([0.0, 3.0], "lie in"),
        ("abc", "sequence of numbers"),
    ]:
        with pytest.raises(ValueError, match=match):
            time_grid(2.0, bad)
    for bad in (-1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="t_final must be finite"):
            check_t_final(bad)
    with pytest.raises(ValueError, match="needs an on_checkpoint"):
        check_every(3, None)
    with pytest.raises(ValueError, match="checkpoint_every"):
        check_every(-1, print)


def test_event_grid_merges_switching_times():
    g = time_grid(3.0, [0.0, 1.0, 3.0], breakpoints=[1.0, 2.5, 3.0, 7.0])
    np.testing.assert_array_equal(g.events, [0.0, 1.0, 2.5, 3.0])
    np.testing.assert_array_equal(g.is_save, [True, True, False, True])
    assert g.segment(2) == (1.0, 2.5)


def test_march_hits_every_event_and_records_only_saves():
    g = time_grid(1.0, [0.0, 0.5, 1.0], breakpoints=[0.3])
    steps, saves = [], []
    n = march(g, 0.1, lambda t, h, k: steps.append((t, h, k)), lambda j: saves.append(j) or True)
    assert saves == [0, 1, 2] and n == len(steps)
    # Each interval is split into equal steps that end exactly on its event.
    for k in range(1, g.events.size):
        a, b = g.segment(k)
        mine = [(t, h) for t, h, kk in steps if kk == k]
        assert mine[0][0] == a and mine[-1][0] + mine[-1][1] == pytest.approx(b, abs=1e-15)
        assert max(h for _, h in mine) <= 0.1 + 1e-15
    # A restart inside an interval takes exactly the remaining steps.
    rest: list = []
    march(
        g,
        0.1,
        lambda t, h, k: rest.append((t, h, k)),
        lambda j: True,
        segment0=2,
        segment_step0=1,
        step0=5,
    )
    assert rest == [s for s in steps if s[2] >= 2][1:]


def test_blocks_cover_the_range_evenly():
    for n, size in [(10, 3), (2, 3), (0, 2), (7, 1)]:
        b = blocks(n, size)
        assert b[0][0] == 0 and b[-1][1] == n and len(b) == size
        lengths = [hi - lo for lo, hi in b]
        assert max(lengths) - min(lengths) <= 1
