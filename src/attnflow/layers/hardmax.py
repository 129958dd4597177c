"""Hardmax layers with normalisation (Alcalde, Fantuzzi, Zuazua, arXiv:2407.01602).

One layer maps the tokens ``z_1..z_N`` of R^d to

    z_i <- ( z_i + alpha mean_{j in C_i} z_j ) / (1 + alpha),
    C_i = argmax_j <A z_i, z_j>     (ties: scores within TIE_RTOL * max(1, |best|)),

with ``A`` symmetric positive definite and the argmax means from the kernel engine
(:func:`attnflow.kernel_sums` with ``hardmax=True``). **Leaders** are the tokens that attend
only to themselves (``C_i = {i}``): they are fixed points of the layer, and a follower of a
leader ``l`` (``C_i = {l}``) moves to ``z_l + (z_i - z_l) / (1 + alpha)``, so its distance to
the leader shrinks by exactly ``1 / (1 + alpha)`` per layer. A token tied between several
leaders is drawn to their mean (a cluster between leaders, e.g. the midpoint of an edge).

Continuous time: the layer is the explicit Euler step, of length ``alpha / (1 + alpha)``, of
``dz_i/dt = mean_{C_i} z_j - z_i`` (``attnflow.SelfAttention(d, math.inf, Q=A, sphere=False,
centered=True)``). With ``t_l = l * log(1 + alpha)`` the follower-leader contraction is exact
(``(1 + alpha)^{-l} = e^{-t_l}``), and in general the layers follow the flow with an ``O(alpha)``
error (:func:`hardmax_time`).

Floating point: once a follower is within ``tie_rtol`` (in score) of its leader it ties with
it, and a token tied between leaders then weights them by their cluster sizes; run as many
layers as the clusters need (``(1 + alpha)^{-l} ~ 1e-12``), not many more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from attnflow.kernels import TIE_RTOL, kernel_sums
from attnflow.layers.residual import record_layers
from attnflow.layers.results import LayerSolution

__all__ = ["argmax_sets", "cluster_centres", "hardmax_layer", "hardmax_layers", "hardmax_time"]


def hardmax_time(n_layers: int | np.ndarray, alpha: float) -> np.ndarray:
    """Continuous time of ``n_layers`` hardmax layers, ``n_layers * log(1 + alpha)``."""
    return np.asarray(n_layers, dtype=float) * math.log1p(alpha)


def _check_A(A: np.ndarray | None, d: int) -> np.ndarray:
    if A is None:
        return np.eye(d)
    A = np.asarray(A, dtype=float)
    if A.shape != (d, d) or not np.allclose(A, A.T, rtol=0, atol=1e-14 * np.abs(A).max()):
        raise ValueError(f"A must be a symmetric ({d}, {d}) matrix")
    if np.linalg.eigvalsh(A).min() <= 0:
        raise ValueError("A must be positive definite")
    return A


def hardmax_layer(
    z: np.ndarray, alpha: float, A: np.ndarray | None = None, tie_rtol: float = TIE_RTOL
) -> np.ndarray:
    """One hardmax layer: (N, d) tokens -> (N, d) tokens (module docstring)."""
    return _layer(z, alpha, _check_A(A, z.shape[1]), tie_rtol)


def _layer(z: np.ndarray, alpha: float, A: np.ndarray, tie_rtol: float) -> np.ndarray:
    s = kernel_sums(z @ A, z, z, np.ones(z.shape[0]), hardmax=True, tie_rtol=tie_rtol)
    return (z + alpha * s.num / s.den[:, None]) / (1.0 + alpha)


def argmax_sets(
    z: np.ndarray, A: np.ndarray | None = None, tie_rtol: float = TIE_RTOL
) -> np.ndarray:
    """(N, N) boolean: ``j in C_i`` (the same tie rule as the kernel engine)."""
    return _argmax_sets(z, _check_A(A, z.shape[1]), tie_rtol)


def _argmax_sets(z: np.ndarray, A: np.ndarray, tie_rtol: float) -> np.ndarray:
    s = (z @ A) @ z.T
    best = s.max(axis=1, keepdims=True)
    return s >= best - tie_rtol * np.maximum(1.0, np.abs(best))


def cluster_centres(z: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Group tokens closer than ``tol`` to a centre (greedy, in order).

    Returns
    -------
    centres : (k, d); labels : (N,) index of each token's centre.
    """
    centres: list[np.ndarray] = []
    labels = np.empty(z.shape[0], dtype=int)
    for i, p in enumerate(z):
        for c, q in enumerate(centres):
            if np.linalg.norm(p - q) <= tol:
                labels[i] = c
                break
        else:
            labels[i] = len(centres)
            centres.append(p)
    return np.array(centres).reshape(-1, z.shape[1]), labels


def hardmax_layers(
    z0: np.ndarray,
    n_layers: int,
    alpha: float,
    *,
    A: np.ndarray | None = None,
    record: Sequence[int] | int | None = None,
    tie_rtol: float = TIE_RTOL,
    cluster_tol: float = 1e-10,
) -> LayerSolution:
    """``n_layers`` hardmax layers on ``z0`` (N, d), with the leaders identified.

    Parameters
    ----------
    alpha : step, ``> 0``. A : (d, d) symmetric positive definite (default identity).
    record : layers to keep; tie_rtol : the tie tolerance; cluster_tol : distance (relative to
        the input's diameter) under which final tokens share a centre.

    Returns
    -------
    :class:`LayerSolution`: ``leaders`` (indices with ``C_i = {i}`` at the input; they never
    move), ``stats``: ``"centres"`` (k, d) and ``"labels"`` (N,) of the final clusters,
    ``"n_self_attending"`` (n_rec,) the number of tokens with ``C_i = {i}`` at each record,
    ``"layer_time"`` ``log(1 + alpha)``.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    z = np.array(z0, dtype=float)
    if z.ndim != 2:
        raise ValueError(f"z0 must have shape (N, d), got {z.shape}")
    A = _check_A(A, z.shape[1])
    rec = record_layers(n_layers, record)
    keep = set(rec.tolist())

    def self_attending(p: np.ndarray) -> np.ndarray:
        c = _argmax_sets(p, A, tie_rtol)
        return np.flatnonzero(np.diag(c) & (c.sum(axis=1) == 1))

    leaders = self_attending(z)
    out, n_self = [z.copy()], [leaders.size]
    for layer in range(1, n_layers + 1):
        z = _layer(z, alpha, A, tie_rtol)
        if layer in keep:
            out.append(z.copy())
            n_self.append(self_attending(z).size)
    diam = float(np.ptp(np.asarray(z0, dtype=float), axis=0).max()) or 1.0
    centres, labels = cluster_centres(z, cluster_tol * diam)
    return LayerSolution(
        layers=rec,
        points=np.stack(out),
        leaders=leaders,
        stats={
            "centres": centres,
            "labels": labels,
            "n_self_attending": np.array(n_self),
            "layer_time": math.log1p(alpha),
            "alpha": alpha,
        },
    )
