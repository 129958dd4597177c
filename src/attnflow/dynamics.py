"""Dynamics as a sum of terms: the interface both solvers consume.

A *dynamics* is the velocity field ``X[mu](x, t)`` of a measure ``mu`` (a
:class:`~attnflow.cloud.Cloud`) at target points ``x``, at time ``t``. It is a sum of *terms*;
each term gives an **ambient** velocity (a vector of ``R^d``) and the geometry projects the sum
once (``P_x = I - x x^T`` on the sphere ``S^{d-1}``, ``I`` in ``R^d``):

    X[mu](x, t) = P_x  sum_k  F_k[mu](x, t).

Terms come in two kinds, and the solvers treat them differently:

* :class:`KernelTerm` (self-attention heads): ``F`` is built from the kernel sums
  ``sum_j w_j e^{<a(x), b(y_j)>} (1, v(y_j))`` (:func:`attnflow.kernels.kernel_sums`). The
  particle solver calls the engine; the finite element solver assembles one kernel operator per
  term (``attnflow.fem``), since the source and target points of a mesh never move.
* any other :class:`Dynamics` term: ``ambient_velocity(x, cloud, t)``. Terms whose field does
  not depend on the measure (``needs_measure = False``: a perceptron, a fixed drift) are
  evaluated by the finite element solver directly at the velocity nodes; others are given the
  density's quadrature cloud.

Combinators: ``a + b`` is a :class:`Sum`; :class:`attnflow.MultiHead` is a sum of attention
heads; :class:`Piecewise` switches between dynamics at given times (weights that change with
depth). The solvers never step across a switching time (:mod:`attnflow.timegrid`): they ask
:meth:`Dynamics.on_interval` for the dynamics of each interval between events.

To add a term, subclass :class:`Dynamics` (or :class:`KernelTerm`), implement
``ambient_velocity`` and ``speed_bound`` and declare ``d``/``sphere``; see
``docs/architecture.md`` for a worked example.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from attnflow.cloud import Cloud
from attnflow.geometry import Geometry, euclidean, sphere
from attnflow.kernels import KernelSums, kernel_sums
from attnflow.validation import as_points

__all__ = ["Dynamics", "KernelTerm", "Piecewise", "Sum"]


class Dynamics(ABC):
    """A velocity field of a measure: the interface of every term and of their sums.

    Subclasses define ``d`` (ambient dimension), ``sphere`` (tokens on ``S^{d-1}`` or in
    ``R^d``), :meth:`ambient_velocity` and :meth:`speed_bound`. Composite dynamics
    (:class:`Sum`, :class:`Piecewise`) override :meth:`terms`, :meth:`on_interval` and
    :attr:`breakpoints`.
    """

    d: int
    sphere: bool
    #: Whether the field depends on the measure (``False``: evaluated without one).
    needs_measure: bool = True
    #: The diffusion coefficient ``sigma`` of an atomic term (``sigma Delta rho``; particles
    #: ``sqrt(2 sigma) dB``): nonzero for :class:`~attnflow.diffusion.Diffusion` only.
    diffusion: float = 0.0
    #: Whether the term moves mass by a velocity field (``False`` for a pure diffusion).
    has_drift: bool = True
    #: Whether the term has its space ``(d, sphere)``; a term without one (an unbound
    #: :class:`~attnflow.diffusion.Diffusion`) takes the space of the sum it joins.
    has_space: bool = True

    # -- structure ---------------------------------------------------------------------------
    @property
    def geometry(self) -> Geometry:
        """Where the tokens live: :func:`attnflow.geometry.sphere` or ``euclidean``."""
        return sphere() if self.sphere else euclidean()

    def terms(self, t: float | None = None) -> tuple[Dynamics, ...]:
        """The atomic terms active at time ``t`` (all terms of any time when ``t is None``)."""
        return (self,)

    @property
    def breakpoints(self) -> tuple[float, ...]:
        """Times at which the dynamics switches (sorted; empty when it is autonomous)."""
        return ()

    def in_space(self, d: int, sphere: bool) -> Dynamics:
        """This dynamics in the space ``(d, sphere)`` (raises if it lives elsewhere)."""
        if self.d != d or self.sphere != sphere:
            raise ValueError(
                f"terms must live in the same space: got d={d}/{self.d} and "
                f"sphere={sphere}/{self.sphere}"
            )
        return self

    def diffusivity(self, t: float) -> float:
        """The diffusion coefficient ``sigma`` of the terms active at time ``t`` (their sum)."""
        return float(sum(term.diffusion for term in self.terms(float(t))))

    @property
    def noisy(self) -> bool:
        """Whether any term, at any time, has a diffusion coefficient ``> 0``."""
        return any(term.diffusion > 0 for term in self.terms(None))

    def on_interval(self, a: float, b: float) -> Dynamics:
        """The dynamics on the open interval ``(a, b)``, which holds no switching time."""
        return self

    @property
    def has_energy(self) -> bool:
        """Whether :meth:`log_energy` is defined (an interaction energy is known)."""
        return False

    def log_energy(self, points: np.ndarray | Cloud, weights: np.ndarray | None = None) -> float:
        """``log`` of the interaction energy of the measure, when the dynamics has one."""
        raise NotImplementedError(f"{type(self).__name__} has no interaction energy")

    # -- evaluation --------------------------------------------------------------------------
    @abstractmethod
    def ambient_velocity(self, x: np.ndarray, cloud: Cloud | None, t: float) -> np.ndarray:
        """(n, d) ambient (unprojected) velocity of this term at the targets ``x`` (n, d) for
        the measure ``cloud`` at time ``t`` (``cloud`` may be ``None`` when
        ``needs_measure`` is ``False``)."""

    @abstractmethod
    def speed_bound(self, radius: float, mass: float = 1.0) -> float:
        """An a priori bound of ``|F[mu](x)|`` over ``|x|, |y| <= radius`` and measures of
        total mass ``mass`` (the CFL step of the finite element solver divides by it)."""

    def evaluate(
        self, x: np.ndarray, cloud: Cloud | None, t: float = 0.0, *, kernel: Any = None
    ) -> np.ndarray:
        """The velocity ``P_x sum_k F_k[cloud](x, t)`` at ``x`` (n, d) without input checks
        (the solvers' hot path: ``x`` a float64 array, ``cloud`` a validated :class:`Cloud`).

        ``kernel``: how kernel terms compute their sums: ``None`` (the direct engine), a kernel
        choice (:mod:`attnflow.kernels.choice`) for every term, or a
        :class:`~attnflow.kernels.choice.KernelPlan` (one choice per term).
        """
        f = None
        for term in self.terms(t):
            if isinstance(term, KernelTerm):
                g = term.ambient_velocity(x, cloud, t, kernel=_for_term(kernel, term))
            else:
                g = term.ambient_velocity(x, cloud, t)
            f = g if f is None else f + g
        return self.geometry.project(x, f)

    def velocity(
        self,
        targets: np.ndarray,
        sources: np.ndarray | Cloud,
        weights: np.ndarray | None = None,
        *,
        t: float = 0.0,
        kernel: Any = None,
    ) -> np.ndarray:
        """Velocity field of a measure at the targets.

        Parameters
        ----------
        targets : (n_t, d) points where the field is evaluated (on the unit sphere when
            ``sphere``).
        sources : a :class:`Cloud`, or (n_s, d) support points of the measure (on the sphere
            when ``sphere``) with ``weights`` (n_s,) ``>= 0`` (default ``1/n_s``).
        t : time (for dynamics that depend on it, e.g. :class:`Piecewise`).
        kernel : how the kernel sums are computed: ``None`` or ``"recomputed"`` (the direct
            engine), ``"spectral"`` / ``SpectralKernel(tol)`` (zonal kernels on S^1, S^2) or
            ``"auto"`` (the cheapest that fits the memory budget, see
            :mod:`attnflow.kernels.choice`).

        Returns
        -------
        (n_t, d) velocities (tangent to the sphere at each target when ``sphere``).
        """
        x = as_points("targets", targets, self.d, on_sphere=self.sphere)
        cloud = self.as_cloud(sources, weights)
        if cloud.n == 0 or not np.any(cloud.weights > 0):
            raise ValueError("weights must have a positive entry (the measure has zero mass)")
        if kernel is not None:
            from attnflow.kernels.choice import plan_kernels

            kernel = plan_kernels(
                self, kernel, n_targets=x.shape[0], n_sources=cloud.n, solver="particles"
            )
        return self.evaluate(x, cloud, float(t), kernel=kernel)

    def as_cloud(self, sources: np.ndarray | Cloud, weights: np.ndarray | None = None) -> Cloud:
        """``sources`` as a :class:`Cloud` in this dynamics' space (checked: dimension ``d``,
        on the sphere to 1e-8 when ``sphere`` and the points are given as an array)."""
        if isinstance(sources, Cloud):
            if weights is not None:
                raise ValueError("weights must be None when sources is a Cloud")
            if sources.d != self.d:
                raise ValueError(f"sources must have dimension d={self.d}, got {sources.d}")
            return sources
        y = as_points("sources", sources, self.d, on_sphere=self.sphere)
        return Cloud(y, weights)

    # -- algebra -----------------------------------------------------------------------------
    def __add__(self, other: object) -> Dynamics:
        if not isinstance(other, Dynamics):
            return NotImplemented
        return Sum(self, other)


class KernelTerm(Dynamics):
    """A term built from kernel sums (an attention head).

    With ``a = scores(x)`` (n_t, p), ``(b, v) = sources(y)`` ((n_s, p), (n_s, m)) and the
    stabilised sums ``(shift, den, num)`` of :func:`attnflow.kernels.kernel_sums`, the ambient
    velocity is ``field(x, shift, den, num)``. The finite element solver assembles the linear
    map ``density -> (den, num)`` once from :meth:`scores` and :meth:`sources`.
    """

    @property
    def hardmax(self) -> bool:
        """Whether the sums take the zero-temperature (argmax) limit."""
        return False

    @property
    def peaked_at_target(self) -> bool:
        """Whether, for every target ``x``, ``<a(x), b(y)>`` over the token space is largest at
        ``y = x`` (then an underflowed shifted denominator means "no mass in reach")."""
        return False

    def zonal(self) -> tuple[float, np.ndarray] | None:
        """``(kappa, V)`` when the kernel is ``e^{kappa <x, y>}`` on S^1 or S^2 and the values
        are ``V y`` (the spectral method applies), else ``None``."""
        return None

    @abstractmethod
    def scores(self, x: np.ndarray) -> np.ndarray:
        """(n, p) target vectors ``a(x)`` (already scaled by the inverse temperature)."""

    @abstractmethod
    def sources(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(b, v)``: (n, p) source vectors and (n, m) values carried by the sources."""

    @abstractmethod
    def field(
        self,
        x: np.ndarray,
        shift: np.ndarray,
        den: np.ndarray,
        num: np.ndarray,
        *,
        tiny: float = 0.0,
    ) -> np.ndarray:
        """(n, d) ambient velocity from the kernel sums at ``x``; targets whose shifted
        denominator is ``<= tiny`` (an underflowed kernel: no mass in reach) get 0."""

    def sums(self, x: np.ndarray, cloud: Cloud, kernel: Any = None) -> KernelSums:
        """The stabilised kernel sums of ``cloud`` at ``x``: the direct engine, or the
        spectral method when ``kernel`` is a ``SpectralKernel`` (see :meth:`zonal`)."""
        from attnflow.kernels.choice import SpectralKernel

        if isinstance(kernel, SpectralKernel):
            zonal = self.zonal()
            if zonal is None:
                raise ValueError(
                    f"kernel: 'spectral' needs a zonal kernel on S^1 or S^2, not {self!r}"
                )
            from attnflow.kernels.spectral import zonal_sums

            kappa, V = zonal
            s = zonal_sums(x, cloud.points, cloud.weights, kappa, tol=kernel.tol)
            return KernelSums(shift=s.shift, den=s.den, num=s.num @ V.T)
        b, v = self.sources(cloud.points)
        return kernel_sums(self.scores(x), b, v, cloud.weights, hardmax=self.hardmax)

    def ambient_velocity(
        self, x: np.ndarray, cloud: Cloud | None, t: float, *, kernel: Any = None
    ) -> np.ndarray:
        if cloud is None:
            raise ValueError(f"{type(self).__name__} needs a measure (cloud is None)")
        s = self.sums(x, cloud, kernel)
        return self.field(x, s.shift, s.den, s.num)


def _space(parts: Sequence[Dynamics]) -> tuple[int, bool, tuple[Dynamics, ...]]:
    """The common space of ``parts`` and the parts placed in it (terms without a space, such
    as ``Diffusion(sigma)``, take it)."""
    if not parts:
        raise ValueError("terms must hold at least one dynamics")
    for p in parts:
        if not isinstance(p, Dynamics):
            raise TypeError(f"terms must be Dynamics, got {type(p).__name__}")
    placed = [p for p in parts if p.has_space]
    if not placed:
        raise ValueError(
            "terms must include a dynamics with a space (d, sphere): Diffusion(sigma) alone "
            "needs d= and sphere="
        )
    d, sph = placed[0].d, placed[0].sphere
    return d, sph, tuple(p.in_space(d, sph) for p in parts)


class Sum(Dynamics):
    """The sum of dynamics living in the same space: ``Sum(a, b, c)`` or ``a + b + c``.

    The velocity is ``P_x (F_a + F_b + ...)``; the speed bound is the sum of the bounds;
    nested sums are flattened.
    """

    def __init__(self, *parts: Dynamics) -> None:
        flat: list[Dynamics] = []
        for p in parts:
            flat.extend(p.parts if type(p) is Sum else (p,))
        self.d, self.sphere, self._parts = _space(flat)

    @property
    def parts(self) -> tuple[Dynamics, ...]:
        """The summands."""
        return self._parts

    @property
    def needs_measure(self) -> bool:  # type: ignore[override]
        return any(p.needs_measure for p in self._parts)

    def terms(self, t: float | None = None) -> tuple[Dynamics, ...]:
        return tuple(term for p in self._parts for term in p.terms(t))

    @property
    def breakpoints(self) -> tuple[float, ...]:
        return tuple(sorted({b for p in self._parts for b in p.breakpoints}))

    def on_interval(self, a: float, b: float) -> Dynamics:
        parts = [p.on_interval(a, b) for p in self._parts]
        if all(q is p for q, p in zip(parts, self._parts, strict=True)):
            return self
        return Sum(*parts)

    def ambient_velocity(self, x: np.ndarray, cloud: Cloud | None, t: float) -> np.ndarray:
        f = None
        for term in self.terms(t):
            g = term.ambient_velocity(x, cloud, t)
            f = g if f is None else f + g
        return f

    def speed_bound(self, radius: float, mass: float = 1.0) -> float:
        return float(sum(p.speed_bound(radius, mass) for p in self._parts))

    def _drifts(self) -> tuple[Dynamics, ...]:
        return tuple(p for p in self._parts if p.has_drift)

    @property
    def has_energy(self) -> bool:
        """A sum has the interaction energy of its one term with a drift, when the others are
        drift-free (``SelfAttention(...) + Diffusion(sigma)``: the energy ``E`` of the free
        energy ``sigma int rho log rho - E``)."""
        drifts = self._drifts()
        return len(drifts) == 1 and drifts[0].has_energy

    def log_energy(self, points: np.ndarray | Cloud, weights: np.ndarray | None = None) -> float:
        if not self.has_energy:
            raise NotImplementedError(f"{self!r} has no interaction energy")
        return self._drifts()[0].log_energy(points, weights)

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self._parts)


class Piecewise(Dynamics):
    """Dynamics that switch at given times: ``pieces[k]`` acts on ``[times[k-1], times[k])``.

    Parameters
    ----------
    times : the ``K - 1`` switching times, finite, ``> 0`` and increasing.
    pieces : ``K`` dynamics in the same space (e.g. the layers of a transformer whose weights
        change with depth: time is depth).

    At a switching time the new piece acts (right-continuous). The solvers stop at every
    switching time, so no step mixes two pieces; a solve across a switch equals two
    consecutive solves (tested).
    """

    def __init__(self, times: Iterable[float], pieces: Sequence[Dynamics]) -> None:
        self.d, self.sphere, pieces = _space(tuple(pieces))
        try:
            tt = np.asarray(list(times), dtype=float).ravel()
        except (TypeError, ValueError):
            raise ValueError(f"times must be a sequence of numbers, got {times!r}") from None
        if tt.size != len(pieces) - 1:
            raise ValueError(
                f"times must hold len(pieces) - 1 = {len(pieces) - 1} switching times, "
                f"got {tt.size}"
            )
        if not np.all(np.isfinite(tt)) or np.any(tt <= 0) or np.any(np.diff(tt) <= 0):
            raise ValueError(f"times must be finite, > 0 and increasing, got {tt.tolist()}")
        self._times = tuple(float(v) for v in tt)
        self._pieces = pieces

    @property
    def times(self) -> tuple[float, ...]:
        """The switching times."""
        return self._times

    @property
    def pieces(self) -> tuple[Dynamics, ...]:
        """The dynamics of each interval."""
        return self._pieces

    @property
    def needs_measure(self) -> bool:  # type: ignore[override]
        return any(p.needs_measure for p in self._pieces)

    def piece_at(self, t: float) -> Dynamics:
        """The piece acting at time ``t``."""
        return self._pieces[int(np.searchsorted(self._times, float(t), side="right"))]

    def terms(self, t: float | None = None) -> tuple[Dynamics, ...]:
        if t is None:
            return tuple(term for p in self._pieces for term in p.terms(None))
        return self.piece_at(t).terms(t)

    @property
    def breakpoints(self) -> tuple[float, ...]:
        inner = {b for p in self._pieces for b in p.breakpoints}
        return tuple(sorted(inner | set(self._times)))

    def on_interval(self, a: float, b: float) -> Dynamics:
        a, b = float(a), float(b)
        inside = [s for s in self._times if a < s < b]
        if inside:
            raise ValueError(f"the interval ({a:g}, {b:g}) holds the switching time {inside[0]}")
        mid = 0.5 * (a + b) if b > a else a
        return self.piece_at(mid).on_interval(a, b)

    def ambient_velocity(self, x: np.ndarray, cloud: Cloud | None, t: float) -> np.ndarray:
        return self.piece_at(t).ambient_velocity(x, cloud, t)

    def speed_bound(self, radius: float, mass: float = 1.0) -> float:
        return float(max(p.speed_bound(radius, mass) for p in self._pieces))

    def __repr__(self) -> str:
        return f"Piecewise(times={list(self._times)}, pieces={list(self._pieces)!r})"


def _for_term(kernel: Any, term: Dynamics) -> Any:
    """The kernel choice of ``term`` from ``None``, a choice or a plan."""
    if kernel is None:
        return None
    for_term = getattr(kernel, "for_term", None)
    return for_term(term) if for_term is not None else kernel
