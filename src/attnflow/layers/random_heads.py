"""Random multi-head attention layers: weights resampled per layer and head (Koubbi,
Geshkovski, Rigollet, "Homogenized Transformers", arXiv:2604.01978).

One layer acts on the tokens ``x_1..x_N`` of the unit sphere ``S^{d-1}`` as

    x_i <- ( x_i + eta sum_h V_h m_h(x_i) ) / | ... |,
    m_h(x_i) = sum_j softmax_j( beta <Q_h x_i, K_h x_j> ) x_j,

with ``(Q_h, K_h, V_h)`` drawn afresh at every layer and head from the **Gaussian law**: all
entries independent ``N(0, sigma^2 / d)`` (:class:`GaussianHeads`). The draws of layer ``l`` and
head ``h`` come from ``numpy.random.SeedSequence(seed, spawn_key=(l, h))`` (one draw for all runs,
run ``r`` takes slice ``r``), so a run does not depend on the number of ranks: with ``comm`` the
runs are dealt round-robin to the ranks (as :func:`attnflow.ensemble` does) and gathered.

The homogenized time of layer ``l`` is ``t = l * eta^2 * H * sigma^2``
(:func:`layer_time`, derived in :mod:`attnflow.layers.homogenized`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnflow.layers.residual import normalise, record_layers
from attnflow.layers.results import LayerEnsemble
from attnflow.model import MultiHead, SelfAttention

__all__ = [
    "GaussianHeads",
    "attention_means",
    "layer_time",
    "multihead_of",
    "random_head_layers",
    "split_runs",
]


def layer_time(eta: float, n_heads: int, sigma: float = 1.0) -> float:
    """Homogenized time of one layer, ``eta^2 * H * sigma^2``."""
    return float(eta) ** 2 * int(n_heads) * float(sigma) ** 2


@dataclass(frozen=True)
class GaussianHeads:
    """The law of the weights: ``Q_h, K_h, V_h`` with iid ``N(0, sigma^2/d)`` entries.

    Parameters
    ----------
    d : token dimension (``>= 2``).
    n_heads : heads per layer ``H >= 1``.
    sigma : standard deviation scale (entries have variance ``sigma^2 / d``, so that
        ``|V u| ~ sigma |u|``).
    """

    d: int
    n_heads: int
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.d < 2 or self.n_heads < 1 or not self.sigma > 0:
            raise ValueError(f"need d >= 2, n_heads >= 1, sigma > 0, got {self}")

    def sample(
        self, seed: int, layer: int, n_runs: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The weights of ``layer`` for runs ``0..n_runs-1``.

        Returns
        -------
        Q, K, V : each (n_runs, H, d, d).
        """
        d, s = self.d, self.sigma / math.sqrt(self.d)
        draws = np.empty((3, n_runs, self.n_heads, d, d))
        for h in range(self.n_heads):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(layer, h)))
            draws[:, :, h] = s * rng.standard_normal((3, n_runs, d, d))
        return draws[0], draws[1], draws[2]


def multihead_of(Q: np.ndarray, K: np.ndarray, V: np.ndarray, beta: float) -> MultiHead:
    """One layer's heads (H, d, d) as an :class:`attnflow.MultiHead` in R^d (``sphere=False``:
    the layer map projects by normalising), for :func:`~attnflow.layers.residual_layers`."""
    d = Q.shape[-1]
    return MultiHead(
        [
            SelfAttention(d, beta, Q=q, K=k, V=v, sphere=False)
            for q, k, v in zip(Q, K, V, strict=True)
        ]
    )


def attention_means(x: np.ndarray, Q: np.ndarray, K: np.ndarray, beta: float) -> np.ndarray:
    """Softmax attention averages ``m(x_i) = sum_j softmax_j(beta <Q x_i, K x_j>) x_j``.

    Parameters
    ----------
    x : (R, N, d) tokens of R runs; Q, K : (R, d, d) one head per run; beta : finite, >= 0.

    Returns
    -------
    (R, N, d) attention averages.
    """
    if beta == 0.0:
        return np.broadcast_to(x.mean(axis=1, keepdims=True), x.shape)
    s = beta * np.matmul(np.matmul(x, np.swapaxes(Q, 1, 2)), np.matmul(K, np.swapaxes(x, 1, 2)))
    s -= s.max(axis=2, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=2, keepdims=True)
    return np.matmul(p, x)


def split_runs(n_runs: int, comm: Any) -> np.ndarray:
    """The runs of this rank: round-robin, ``rank, rank + size, ...``."""
    if comm is None or comm.size == 1:
        return np.arange(n_runs)
    return np.arange(comm.rank, n_runs, comm.size)


def gather_runs(points: np.ndarray, n_runs: int, comm: Any) -> np.ndarray:
    """(n_mine, ...) per rank -> (n_runs, ...) on every rank, in run order."""
    if comm is None or comm.size == 1:
        return points
    parts = comm.allgather(points)
    out = np.empty((n_runs, *points.shape[1:]))
    for rank, part in enumerate(parts):
        out[rank :: comm.size] = part
    return out


def random_head_layers(
    x0: np.ndarray,
    n_layers: int,
    eta: float,
    heads: GaussianHeads,
    beta: float,
    *,
    n_runs: int = 1,
    seed: int = 0,
    record: Sequence[int] | int | None = None,
    comm: Any = None,
) -> LayerEnsemble:
    """``n_runs`` random transformers of ``n_layers`` random multi-head layers on ``x0``.

    Parameters
    ----------
    x0 : (N, d) unit input tokens (the same for every run) or (n_runs, N, d).
    eta : residual step, ``> 0``.
    heads : the law of the weights (:class:`GaussianHeads`).
    beta : inverse temperature, finite, ``>= 0``.
    seed : the root of the weights' seed sequence (see the module docstring).
    record : layers to keep (see :func:`~attnflow.layers.record_layers`).
    comm : an ``mpi4py`` communicator: the runs are dealt round-robin to its ranks.

    Returns
    -------
    :class:`LayerEnsemble`, ``points`` (n_runs, n_rec, N, d), ``times = layers * eta^2 H s^2``.
    """
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    x = np.asarray(x0, dtype=float)
    x = np.broadcast_to(x, (n_runs, *x.shape)) if x.ndim == 2 else x
    if x.shape[0] != n_runs or x.shape[2] != heads.d:
        raise ValueError(f"x0 must be (N, {heads.d}) or ({n_runs}, N, {heads.d}), got {x.shape}")
    mine = split_runs(n_runs, comm)
    x = normalise(np.array(x[mine]))
    rec = record_layers(n_layers, record)
    keep = set(rec.tolist())
    out = [x.copy()]
    for layer in range(1, n_layers + 1):
        Q, K, V = (a[mine] for a in heads.sample(seed, layer, n_runs))
        incr = np.zeros_like(x)
        for h in range(heads.n_heads):
            m = attention_means(x, Q[:, h], K[:, h], beta)
            incr += np.matmul(m, np.swapaxes(V[:, h], 1, 2))
        x = normalise(x + eta * incr)
        if layer in keep:
            out.append(x.copy())
    pts = gather_runs(np.stack(out, axis=1), n_runs, comm)
    dt = layer_time(eta, heads.n_heads, heads.sigma)
    return LayerEnsemble(
        times=rec * dt,
        layers=rec,
        points=pts,
        stats={"eta": eta, "beta": beta, "n_heads": heads.n_heads, "sigma": heads.sigma},
    )
