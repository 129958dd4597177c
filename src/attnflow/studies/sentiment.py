"""An interpretable sentiment classifier with hardmax layers, on synthetic data.

In the spirit of Alcalde, Fantuzzi and Zuazua (arXiv:2407.01602), whose experiments use the
IMDb reviews: **that data cannot be downloaded here**, so the vocabulary and the sequences are
synthetic and seeded. The vocabulary has ``n_neutral`` neutral words (small embeddings, random
directions of R^p, ``2 <= p <= 8``) and ``n_meaningful`` meaningful words, half positive
(embeddings near ``+scale e_1``) and half negative (near ``-scale e_1``). A sequence has
``length`` words: neutral words and an odd number (1 or 3) of meaningful words; its label is the
sign of the sum of their polarities.

The model: ``n_layers`` hardmax layers with normalisation (:func:`attnflow.layers.hardmax_layers`,
``A = I``) cluster every sequence onto its **leaders** (tokens attending only to themselves);
a linear read-out on the mean token (least squares on ``[mean, 1]`` against the labels, fitted on
the training sequences) classifies. :func:`sentiment_study` reports which words were leaders and
the held-out accuracy, with the same read-out on the raw mean embedding for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnflow.layers import hardmax_layers

__all__ = ["SentimentStudy", "Vocabulary", "make_sequences", "make_vocabulary", "sentiment_study"]


@dataclass(frozen=True)
class Vocabulary:
    """Word embeddings (n_words, p) and polarities (n_words,) in {-1, 0, +1}."""

    embeddings: np.ndarray
    polarity: np.ndarray

    @property
    def meaningful(self) -> np.ndarray:
        """Indices of the meaningful (non-neutral) words."""
        return np.flatnonzero(self.polarity != 0)


@dataclass(frozen=True)
class SentimentStudy:
    """Results of :func:`sentiment_study`.

    Attributes
    ----------
    vocabulary : the words.
    leader_rate : (n_words,) fraction of a word's occurrences (test set) in which it is a leader.
    accuracy_layers, accuracy_raw : held-out accuracy with and without the hardmax layers.
    train_accuracy : training accuracy with the layers.
    weights : (p + 1,) the read-out (mean token, bias).
    mean_leaders : mean number of leaders per test sequence.
    """

    vocabulary: Vocabulary
    leader_rate: np.ndarray
    accuracy_layers: float
    accuracy_raw: float
    train_accuracy: float
    weights: np.ndarray
    mean_leaders: float


def make_vocabulary(
    p: int = 4, n_neutral: int = 40, n_meaningful: int = 6, *, scale: float = 2.0, seed: int = 0
) -> Vocabulary:
    """The synthetic vocabulary (module docstring): neutral words first, then meaningful ones."""
    if not 2 <= p <= 8:
        raise ValueError(f"p must be in [2, 8], got {p}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    g = rng.standard_normal((n_neutral, p))
    neutral = g / np.linalg.norm(g, axis=1, keepdims=True) * rng.uniform(0.2, 0.6, (n_neutral, 1))
    sign = np.where(np.arange(n_meaningful) % 2 == 0, 1.0, -1.0)
    e1 = np.eye(p)[0]
    meaning = scale * (sign[:, None] * e1 + 0.25 * rng.standard_normal((n_meaningful, p)))
    return Vocabulary(
        embeddings=np.vstack([neutral, meaning]),
        polarity=np.r_[np.zeros(n_neutral, dtype=int), sign.astype(int)],
    )


def make_sequences(
    vocab: Vocabulary, n: int, length: int = 12, *, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of word indices (n, length) and their labels (n,) in {-1, +1}."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    neutral = np.flatnonzero(vocab.polarity == 0)
    meaningful = vocab.meaningful
    words = rng.choice(neutral, size=(n, length))
    labels = np.empty(n, dtype=int)
    for s in range(n):
        k = rng.choice([1, 3])
        pos = rng.choice(length, size=k, replace=False)
        words[s, pos] = rng.choice(meaningful, size=k)
        labels[s] = int(np.sign(vocab.polarity[words[s, pos]].sum()))
    return words, labels


def _fit(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    X = np.c_[features, np.ones(len(features))]
    return np.linalg.lstsq(X, labels.astype(float), rcond=None)[0]


def _accuracy(w: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
    pred = np.sign(np.c_[features, np.ones(len(features))] @ w)
    return float(np.mean(pred == labels))


def sentiment_study(
    p: int = 4,
    *,
    n_train: int = 400,
    n_test: int = 400,
    length: int = 12,
    alpha: float = 1.0,
    n_layers: int = 30,
    seed: int = 0,
) -> SentimentStudy:
    """Cluster every sequence with hardmax layers, fit the read-out, test it (seeded)."""
    vocab = make_vocabulary(p, seed=seed)
    words, labels = make_sequences(vocab, n_train + n_test, length, seed=seed + 1)
    feats = np.empty((len(words), p))
    raw = np.empty((len(words), p))
    n_words = len(vocab.polarity)
    seen, led = np.zeros(n_words), np.zeros(n_words)
    n_lead = []
    for s, seq in enumerate(words):
        z0 = vocab.embeddings[seq]
        sol = hardmax_layers(z0, n_layers, alpha, record=[n_layers])
        feats[s] = sol.final.mean(axis=0)
        raw[s] = z0.mean(axis=0)
        if s >= n_train:
            np.add.at(seen, seq, 1)
            np.add.at(led, seq[sol.leaders], 1)
            n_lead.append(sol.leaders.size)
    tr, te = slice(0, n_train), slice(n_train, None)
    w = _fit(feats[tr], labels[tr])
    w_raw = _fit(raw[tr], labels[tr])
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(seen > 0, led / seen, np.nan)
    return SentimentStudy(
        vocabulary=vocab,
        leader_rate=rate,
        accuracy_layers=_accuracy(w, feats[te], labels[te]),
        accuracy_raw=_accuracy(w_raw, raw[te], labels[te]),
        train_accuracy=_accuracy(w, feats[tr], labels[tr]),
        weights=w,
        mean_leaders=float(np.mean(n_lead)),
    )
