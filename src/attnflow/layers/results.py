"""The results of discrete-depth runs: frozen dataclasses like :mod:`attnflow.solutions`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ["LayerEnsemble", "LayerSolution"]


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class LayerSolution:
    """Tokens of one cloud at recorded layers.

    Attributes
    ----------
    layers : (n_rec,) recorded layer indices (0 is the input).
    points : (n_rec, N, d) tokens after each recorded layer.
    leaders : (n_leaders,) indices of the leaders (hardmax layers; empty otherwise).
    stats : read-only mapping (e.g. ``"layer_time"``, ``"centres"``, ``"labels"``).
    """

    layers: np.ndarray
    points: np.ndarray
    leaders: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    stats: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _frozen(self.layers))
        object.__setattr__(self, "points", _frozen(self.points))
        object.__setattr__(self, "leaders", _frozen(self.leaders))
        object.__setattr__(self, "stats", MappingProxyType(dict(self.stats)))

    @property
    def final(self) -> np.ndarray:
        """(N, d) tokens after the last recorded layer."""
        return self.points[-1]


@dataclass(frozen=True)
class LayerEnsemble:
    """Independent runs (random transformers or SDE paths) at recorded layers / times.

    Attributes
    ----------
    times : (n_rec,) homogenized times of the records (``layer * eta^2 * H * sigma^2`` for
        the discrete model, the SDE time for the SDE).
    layers : (n_rec,) recorded layer (or step) indices.
    points : (n_runs, n_rec, N, d) tokens of every run at every record.
    stats : read-only mapping.
    """

    times: np.ndarray
    layers: np.ndarray
    points: np.ndarray
    stats: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("times", "layers", "points"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "stats", MappingProxyType(dict(self.stats)))

    @property
    def n_runs(self) -> int:
        return int(self.points.shape[0])

    def mean_cosine(self) -> np.ndarray:
        """(n_runs, n_rec) mean of ``<x_i, x_j>`` over the pairs ``i < j`` of each run."""
        g = np.einsum("rkid,rkjd->rkij", self.points, self.points)
        n = self.points.shape[2]
        iu = np.triu_indices(n, 1)
        return g[:, :, iu[0], iu[1]].mean(axis=2)
