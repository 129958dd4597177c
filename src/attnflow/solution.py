"""Solution objects returned by the solvers (diffrax style: times, states, a status)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

__all__ = ["Solution", "Status"]


class Status(enum.Enum):
    """How a solve ended."""

    SUCCESS = "success"
    NONFINITE = "non-finite state"


@dataclass(frozen=True)
class Solution:
    """A particle trajectory sampled at the save times.

    Attributes
    ----------
    t : (n_saved,) save times.
    x : (n_saved, N, d) token positions at the save times.
    weights : (N,) token weights (constant in time).
    status : :class:`Status` of the solve.
    n_steps : number of time steps taken.
    """

    t: np.ndarray
    x: np.ndarray
    weights: np.ndarray
    status: Status
    n_steps: int

    @property
    def final(self) -> np.ndarray:
        """(N, d) positions at the last save time."""
        return self.x[-1]
