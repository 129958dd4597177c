"""Residual layer maps with a normalisation: any :class:`~attnflow.Dynamics` as the field.

One layer is

    x_i <- N( x_i + eta F[mu](x_i, t_l) ),   mu = sum_j w_j delta_{x_j},   t_l = l * eta,

with ``F = dyn.evaluate(x, Cloud(x, w), t)`` (the dynamics' own projection included) and the
normalisation ``N``:

* ``"sphere"``: layer norm onto the unit sphere, ``N(y) = y / |y|``;
* ``"convex"``: the ``1/(1 + alpha)`` form ``x <- (x + eta F) / (1 + eta)`` (``eta`` plays
  ``alpha``): with ``F`` the plain attention average this is the hardmax-transformer layer of
  Alcalde, Fantuzzi and Zuazua;
* ``None``: the plain residual (explicit Euler) step ``x <- x + eta F``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnflow.cloud import Cloud
from attnflow.dynamics import Dynamics
from attnflow.layers.results import LayerSolution

__all__ = ["NORMALISATIONS", "normalise", "record_layers", "residual_layers"]

NORMALISATIONS = ("sphere", "convex", None)


def normalise(y: np.ndarray) -> np.ndarray:
    """Rows of ``y`` (..., d) divided by their norms (layer norm onto the unit sphere)."""
    return y / np.linalg.norm(y, axis=-1, keepdims=True)


def record_layers(n_layers: int, record: Sequence[int] | int | None) -> np.ndarray:
    """The sorted recorded layers: all (``None``), every ``k``-th (an int) or a list; the
    input (layer 0) and the last layer are always included."""
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers}")
    if record is None:
        rec = np.arange(n_layers + 1)
    elif isinstance(record, (int, np.integer)):
        if record < 1:
            raise ValueError(f"record every k >= 1 layers, got {record}")
        rec = np.arange(0, n_layers + 1, int(record))
    else:
        rec = np.asarray(record, dtype=int)
        if rec.size and (rec.min() < 0 or rec.max() > n_layers):
            raise ValueError(f"recorded layers must lie in [0, {n_layers}]")
    return np.unique(np.concatenate([[0, n_layers], rec]))


def residual_layers(
    dyn: Dynamics,
    x0: np.ndarray,
    n_layers: int,
    eta: float,
    *,
    normalisation: str | None = "sphere",
    weights: np.ndarray | None = None,
    record: Sequence[int] | int | None = None,
) -> LayerSolution:
    """Apply ``n_layers`` residual layers with field ``dyn`` to the tokens ``x0``.

    Parameters
    ----------
    dyn : any dynamics (a sum of terms, a :class:`~attnflow.MultiHead`, a
        :class:`~attnflow.Piecewise` in the layer time ``t_l = l * eta``, ...).
    x0 : (N, d) input tokens (on the unit sphere for ``"sphere"``).
    eta : step (``alpha`` of the ``"convex"`` form), ``> 0``.
    normalisation : ``"sphere"``, ``"convex"`` or ``None`` (see the module docstring).
    weights : (N,) token weights (default ``1/N``).
    record : layers to keep (see :func:`record_layers`).

    Returns
    -------
    :class:`LayerSolution` with ``points`` (n_rec, N, d) and ``stats["layer_time"] = eta``.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    if isinstance(dyn, Dynamics) and dyn.noisy:
        raise ValueError(
            "dyn: residual layers have no noise; a Diffusion term would be dropped (use "
            "attnflow.simulate for the noisy flow)"
        )
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    x = np.array(x0, dtype=float)
    if x.ndim != 2 or x.shape[1] != dyn.d:
        raise ValueError(f"x0 must have shape (N, {dyn.d}), got {x.shape}")
    n = x.shape[0]
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float)
    rec = record_layers(n_layers, record)
    keep = set(rec.tolist())
    out = [x.copy()] if rec[0] == 0 else []
    for layer in range(1, n_layers + 1):
        f = dyn.evaluate(x, Cloud(x, w), (layer - 1) * eta)
        y = x + eta * f
        if normalisation == "sphere":
            y = normalise(y)
        elif normalisation == "convex":
            y = y / (1.0 + eta)
        x = y
        if layer in keep:
            out.append(x.copy())
    return LayerSolution(
        layers=rec, points=np.stack(out), stats={"layer_time": eta, "normalisation": normalisation}
    )
