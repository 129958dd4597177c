"""The synthetic hardmax sentiment classifier (attnflow.studies.sentiment)."""

import math

import numpy as np
import pytest

from attnflow.studies import sentiment_study

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def test_meaningful_words_lead_and_the_readout_beats_chance():
    n_test = 200
    s = sentiment_study(4, n_train=200, n_test=n_test, seed=0)
    again = sentiment_study(4, n_train=200, n_test=n_test, seed=0)
    assert s.accuracy_layers == again.accuracy_layers  # seeded
    v = s.vocabulary
    # leaders: meaningful words lead far more often than neutral ones
    assert np.nanmean(s.leader_rate[v.meaningful]) > np.nanmean(s.leader_rate[v.polarity == 0])
    # better than chance by more than 3 binomial standard errors
    assert s.accuracy_layers > 0.5 + 3 * 0.5 / math.sqrt(n_test)
