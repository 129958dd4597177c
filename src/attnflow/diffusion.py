"""Noise as a term of the dynamics: ``Diffusion(sigma)``.

Noisy transformers are the McKean–Vlasov equation

    d_t rho + div(rho X[rho]) = sigma Delta rho,

``Delta`` the Laplace–Beltrami operator on ``S^{d-1}`` (the Laplacian in ``R^d``); for particles
``dx_i = X[mu_N](x_i) dt + sqrt(2 sigma) dB_i`` with ``B_i`` independent Brownian motions on the
sphere (in ``R^d``). ``Diffusion(sigma)`` is a term of the :class:`~attnflow.dynamics.Dynamics`
sum: ``SelfAttention(...) + Diffusion(0.1)``. It has no drift (its ``ambient_velocity`` is 0);
the solvers read the total diffusion coefficient of the active terms,
:meth:`Dynamics.diffusivity`, and add the noise (particles) or the diffusion operator (finite
elements) themselves.

A ``Diffusion`` created without ``d``/``sphere`` takes the space of the dynamics it is added
to; alone (pure Brownian motion) it needs them: ``Diffusion(0.5, d=3, sphere=True)``.
"""

from __future__ import annotations

import numpy as np

from attnflow.cloud import Cloud
from attnflow.dynamics import Dynamics
from attnflow.validation import check_real

__all__ = ["Diffusion"]


class Diffusion(Dynamics):
    """The diffusion term ``sigma Delta rho`` (particles: ``sqrt(2 sigma) dB``).

    Parameters
    ----------
    sigma : the diffusion coefficient, finite and ``>= 0`` (``0``: no noise).
    d, sphere : the space (``S^{d-1}`` when ``sphere``, else ``R^d``); leave both ``None`` to
        take the space of the dynamics the term is added to.

    Immutable. ``ambient_velocity`` is zero and ``speed_bound`` is 0: the term moves mass by
    diffusion only.
    """

    needs_measure = False
    has_drift = False

    def __init__(self, sigma: float, *, d: int | None = None, sphere: bool | None = None) -> None:
        a = check_real("sigma", sigma)
        s = float(a) if a.ndim == 0 else np.nan
        if not np.isfinite(s) or s < 0:
            raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
        if (d is None) != (sphere is None):
            raise ValueError("d and sphere must be given together (or both left None)")
        if d is not None:
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
                raise ValueError(f"d must be an int >= 1, got {d!r}")
            if sphere and d < 2:
                raise ValueError(f"d must be >= 2 on the sphere (S^(d-1) in R^d), got {d}")
        object.__setattr__(self, "_sigma", s)
        object.__setattr__(self, "_d", None if d is None else int(d))
        object.__setattr__(self, "_sphere", None if sphere is None else bool(sphere))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Diffusion is immutable")

    # -- the space ---------------------------------------------------------------------------
    @property
    def sigma(self) -> float:
        """The diffusion coefficient."""
        return self._sigma

    @property
    def has_space(self) -> bool:  # type: ignore[override]
        """Whether the term has its space (``d`` and ``sphere``)."""
        return self._d is not None

    @property
    def d(self) -> int:  # type: ignore[override]
        if self._d is None:
            raise ValueError(
                "model: Diffusion(sigma) alone has no space; add it to a dynamics "
                "(SelfAttention(...) + Diffusion(sigma)) or give d= and sphere="
            )
        return self._d

    @property
    def sphere(self) -> bool:  # type: ignore[override]
        if self._sphere is None:
            raise ValueError(
                "model: Diffusion(sigma) alone has no space; add it to a dynamics "
                "(SelfAttention(...) + Diffusion(sigma)) or give d= and sphere="
            )
        return self._sphere

    def in_space(self, d: int, sphere: bool) -> Diffusion:
        """This term in the space ``(d, sphere)`` (itself when it is already there)."""
        if self._d == d and self._sphere == sphere:
            return self
        if self.has_space:
            raise ValueError(
                f"terms must live in the same space: got d={d}/{self._d} and "
                f"sphere={sphere}/{self._sphere}"
            )
        return Diffusion(self._sigma, d=d, sphere=sphere)

    # -- the Dynamics interface --------------------------------------------------------------
    @property
    def diffusion(self) -> float:  # type: ignore[override]
        return self._sigma

    def ambient_velocity(self, x: np.ndarray, cloud: Cloud | None, t: float) -> np.ndarray:
        return np.zeros_like(np.asarray(x, dtype=np.float64))

    def speed_bound(self, radius: float, mass: float = 1.0) -> float:
        return 0.0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Diffusion):
            return NotImplemented
        return (self._sigma, self._d, self._sphere) == (other._sigma, other._d, other._sphere)

    def __hash__(self) -> int:
        return hash((Diffusion, self._sigma, self._d, self._sphere))

    def __repr__(self) -> str:
        if self._d is None:
            return f"Diffusion(sigma={self._sigma!r})"
        return f"Diffusion(sigma={self._sigma!r}, d={self._d}, sphere={self._sphere})"
