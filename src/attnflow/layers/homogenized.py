"""The homogenized limit of random multi-head layers: an SDE with common noise on the sphere.

**Derivation.** Write one layer of :mod:`attnflow.layers.random_heads` as
``x_i <- (x_i + xi_i) / |x_i + xi_i|`` with ``xi_i = eta sum_h V_h m_h(x_i)``. Given the
tokens, ``V_h`` is independent of ``(Q_h, K_h)`` with mean zero, so ``E xi_i = 0`` (no drift
from the attention) and

    E[xi_i xi_k^T] = eta^2 H (sigma^2 / d) C_ik(x) I,   C_ik(x) = E_{Q,K} <m(x_i), m(x_k)>,

the expectation over one head's ``(Q, K)``. With the **time per layer**
``dt = eta^2 * H * sigma^2`` the increments are ``O(sqrt(dt))``, mean zero, and the second-order
expansion ``N(x + xi) = x + P_x xi - <x, xi> xi - |xi|^2 x / 2 + 3 <x, xi>^2 x / 2 + O(xi^3)``
has mean ``-(d - 1) C_ii dt / (2 d) x`` (the normalisation's Itô term). As ``eta -> 0``
(``H`` and ``sigma`` fixed, depth ``~ t / dt``) the tokens solve

    dx_i = P_{x_i} dM_i - ((d - 1) / (2 d)) C_ii(x) x_i dt,
    d<M_i^a, M_k^b>_t = delta_ab C_ik(x) dt / d,

a martingale common to all tokens: ``dM_i = d^{-1/2} int m(x_i; Q, K) W(dQ, dK, dt)``, with
``W`` one matrix-valued Brownian sheet over the weights' law. At ``beta = 0`` every head
averages all tokens, ``m = x_bar``, so ``dM_i = |x_bar| dB / sqrt(d)`` with ONE d-dimensional
Brownian motion ``B`` for all tokens; the drift of the limit is the Itô term only. Given the
common noise, the token law solves a stochastic Fokker-Planck (transport) equation
``d mu + div(mu P_x dM) = (second-order Itô terms) dt`` without an independent diffusion:
tokens only collapse, never separate.

*One token* (``m = x``, ``C = 1``): Brownian motion on ``S^{d-1}`` with generator
``Delta / (2 d)``, so ``E <x_t, x_0> = exp(-(d - 1) t / (2 d))`` (:func:`one_token_correlation`).

*Two tokens*, ``rho = <x_1, x_2>``: Itô's formula with ``tr(P_1 P_2) = d - 2 + rho^2`` gives

    d rho = [ (d - 2 + rho^2) C_12 - (d - 1) rho (C_11 + C_22) / 2 ] dt / d + dN,
    d<N> = [ C_11 |P_1 x_2|^2 + C_22 |P_2 x_1|^2 + 2 C_12 <P_1 x_2, P_2 x_1> ] dt / d,

and at ``beta = 0`` (``C_ik = (1 + rho) / 2``) the closed scalar SDE

    d rho = (1 - rho^2)(d - 2 - rho) / (2 d) dt + (1 - rho^2) / sqrt(d) dB,
    d artanh(rho) = (d - 2 + rho) / (2 d) dt + dB / sqrt(d)

(:func:`pair_moments_beta0` solves its backward Kolmogorov equation for ``E rho_t``,
``E artanh rho_t``). The collapse rate ``d E rho / dt`` at ``t = 0`` is :func:`pair_drift`; in
layers it is multiplied by ``eta^2 H sigma^2``: linear in ``H``, and at ``beta = 0`` equal to
``(1 - rho^2)(d - 2 - rho) / (2 d) -> (1 - rho^2) / 2`` as ``d -> infinity``.

**Scheme** (:func:`homogenized_sde`): the tangent step plus the projection retraction,
``x <- N(x + P_x dM)``. The Itô term is radial, and the retraction's second-order term
``-|P_x dM|^2 x / 2`` has exactly its mean, so it is produced by the retraction (adding it before
normalising would change nothing at first order). At ``beta = 0`` ``dM`` is the exact Gaussian
increment of the common Brownian motion; at ``beta > 0`` ``C`` has no closed form and ``dM`` is
``sum_{r<R} G_r m(x_i; Q_r, K_r)`` over ``R`` fresh weight samples per step, ``G_r`` Gaussian
with variance ``dt / (d R)`` (the Brownian sheet on ``R`` random features: the first two moments
of the increment are exact, the third vanishes). Weak order 1 in ``dt``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from attnflow.layers.random_heads import (
    GaussianHeads,
    attention_means,
    gather_runs,
    split_runs,
)
from attnflow.layers.residual import normalise, record_layers
from attnflow.layers.results import LayerEnsemble

__all__ = [
    "attention_covariance",
    "homogenized_sde",
    "one_token_correlation",
    "pair_drift",
    "pair_moments_beta0",
]


def one_token_correlation(d: int, t: np.ndarray | float) -> np.ndarray:
    """``E <x_t, x_0> = exp(-(d - 1) t / (2 d))`` for one token (any beta)."""
    return np.exp(-(d - 1) * np.asarray(t, dtype=float) / (2.0 * d))


def attention_covariance(
    x: np.ndarray, beta: float, sigma: float = 1.0, *, n_samples: int = 20000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``C_ik = E_{Q,K} <m(x_i), m(x_k)>`` by Monte Carlo over the weights' law.

    Parameters
    ----------
    x : (N, d) tokens; beta : inverse temperature; sigma : the law's scale.

    Returns
    -------
    C, stderr : (N, N) the estimate and its standard error (zero at ``beta = 0``, where
    ``C_ik = |x_bar|^2`` exactly).
    """
    x = np.asarray(x, dtype=float)
    d = x.shape[1]
    if beta == 0.0:
        xb = x.mean(axis=0)
        return np.full((x.shape[0],) * 2, xb @ xb), np.zeros((x.shape[0],) * 2)
    law = GaussianHeads(d, 1, sigma)
    Q, K, _ = law.sample(seed, 0, n_samples)
    m = attention_means(np.broadcast_to(x, (n_samples, *x.shape)), Q[:, 0], K[:, 0], beta)
    g = np.einsum("rid,rkd->rik", m, m)
    return g.mean(axis=0), g.std(axis=0, ddof=1) / math.sqrt(n_samples)


def pair_drift(rho: float, C: np.ndarray, d: int) -> float:
    """Drift of ``rho = <x_1, x_2>`` in the homogenized time, from the (2, 2) matrix ``C``:
    ``[(d - 2 + rho^2) C_12 - (d - 1) rho (C_11 + C_22) / 2] / d``."""
    return float(((d - 2 + rho**2) * C[0, 1] - (d - 1) * rho * (C[0, 0] + C[1, 1]) / 2) / d)


def pair_moments_beta0(
    d: int, rho0: float, times: Sequence[float], *, n_grid: int = 1601, half_width: float = 12.0
) -> tuple[np.ndarray, np.ndarray]:
    """``E rho_t`` and ``E artanh rho_t`` of the closed ``beta = 0`` pair SDE (no Monte Carlo).

    Solves the backward Kolmogorov equation of ``u = artanh rho``,
    ``v_t = (d - 2 + tanh u) / (2 d) v_u + v_uu / (2 d)``, ``v(0) = tanh`` or ``u``, by
    second-order finite differences on ``u0 +- half_width`` (``n_grid`` nodes; ``v`` held at
    its initial value at the two end nodes, which the paths reach with negligible probability
    for ``t / d << half_width^2``) and the exact
    exponential of the semi-discrete operator (``expm_multiply``).

    Returns
    -------
    mean_rho, mean_artanh : each (n_times,).
    """
    u0 = math.atanh(rho0)
    u = u0 + np.linspace(-half_width, half_width, n_grid)
    h = u[1] - u[0]
    b = (d - 2 + np.tanh(u)) / (2 * d)
    D = 1.0 / (2 * d)
    lo = np.r_[b[1:-1] * (-1 / (2 * h)) + D / h**2, 0.0]
    mid = np.r_[0.0, np.full(n_grid - 2, -2 * D / h**2), 0.0]
    up = np.r_[0.0, b[1:-1] / (2 * h) + D / h**2]
    L = scipy.sparse.diags([lo, mid, up], [-1, 0, 1], format="csr")
    i0 = n_grid // 2
    out = []
    for t in times:
        f = np.stack([np.tanh(u), u], axis=1)
        v = scipy.sparse.linalg.expm_multiply(L * float(t), f) if t > 0 else f
        out.append(v[i0])
    res = np.array(out)
    return res[:, 0], res[:, 1]


def homogenized_sde(
    x0: np.ndarray,
    t_final: float,
    dt: float,
    beta: float,
    *,
    sigma: float = 1.0,
    n_runs: int = 1,
    n_features: int = 8,
    seed: int = 0,
    record: Sequence[int] | int | None = None,
    comm: Any = None,
) -> LayerEnsemble:
    """Paths of the homogenized SDE (module docstring) by the tangent step + retraction.

    Parameters
    ----------
    x0 : (N, d) unit tokens (the same for every run) or (n_runs, N, d).
    t_final, dt : final time and step (``n = round(t_final / dt)`` steps of ``t_final / n``).
    beta : inverse temperature (finite, ``>= 0``); sigma : the weights' scale.
    n_features : weight samples per step for ``beta > 0`` (the Brownian sheet's features).
    seed : step ``k`` draws from ``SeedSequence(seed, spawn_key=(k, 0 or 1))`` for all runs
        (run ``r`` takes slice ``r``), so the paths do not depend on the number of ranks.
    record : steps to keep; comm : runs dealt round-robin to the ranks.

    Returns
    -------
    :class:`LayerEnsemble` (``layers`` are step indices, ``times`` the SDE times).
    """
    x = np.asarray(x0, dtype=float)
    x = np.broadcast_to(x, (n_runs, *x.shape)) if x.ndim == 2 else x
    d = x.shape[2]
    n_steps = max(1, round(t_final / dt))
    h = t_final / n_steps
    mine = split_runs(n_runs, comm)
    x = normalise(np.array(x[mine]))
    rec = record_layers(n_steps, record)
    keep = set(rec.tolist())
    law = GaussianHeads(d, n_features, sigma)
    out = [x.copy()]
    for k in range(1, n_steps + 1):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k, 0)))
        if beta == 0.0:
            z = rng.standard_normal((n_runs, d))[mine]
            xb = np.linalg.norm(x.mean(axis=1), axis=1)
            dM = (math.sqrt(h / d) * xb[:, None] * z)[:, None, :]
        else:
            Q, K, _ = law.sample(seed + 1, k, n_runs)  # (Q, K) of the features
            G = rng.standard_normal((n_runs, n_features, d, d))[mine]
            G *= math.sqrt(h / (d * n_features))
            dM = np.zeros_like(x)
            for r in range(n_features):
                m = attention_means(x, Q[mine, r], K[mine, r], beta)
                dM += np.matmul(m, np.swapaxes(G[:, r], 1, 2))
        dM = dM - np.sum(dM * x, axis=2, keepdims=True) * x  # tangent step
        x = normalise(x + dM)  # retraction (produces the Itô term)
        if k in keep:
            out.append(x.copy())
    pts = gather_runs(np.stack(out, axis=1), n_runs, comm)
    return LayerEnsemble(
        times=rec * h,
        layers=rec,
        points=pts,
        stats={"dt": h, "beta": beta, "n_features": n_features, "scheme": "tangent+retraction"},
    )
