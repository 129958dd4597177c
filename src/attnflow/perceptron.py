"""The perceptron term: a measure-independent velocity ``F(x) = sum_k W[:, k] s(A[k] . x + b[k])``.

A perceptron (the MLP block of a transformer, or the velocity field of a normalizing flow) is a
:class:`~attnflow.dynamics.Dynamics` term that does not depend on the measure
(``needs_measure = False``): the finite element solver evaluates it directly at the velocity
nodes, without gathering the density. On the sphere (``sphere=True``) the geometry projects
the sum of all terms onto the tangent space, ``P_x = I - x x^T``.

Width-one ReLU fields ``w (a . x + b)_+`` with piecewise-constant controls ``(w, a, b)``
(:class:`~attnflow.Piecewise`) are the normalizing flows of Álvarez-López, Geshkovski and
Ruiz-Balet (arXiv:2412.19366); ``a . w = 0`` is a divergence-free shear. With
``W[:, k] = c_k A[k]`` the field is the gradient of the potential

    Phi(x) = sum_k c_k S(A[k] . x + b[k]),   S' = s   (S(z) = z_+^2 / 2 for ReLU,
                                                       log cosh z for tanh, log(1 + e^z) for
                                                       the sigmoid),

so that attention (USA) plus this perceptron on the sphere is the Wasserstein gradient ascent
of ``E(mu) + int Phi dmu`` (:meth:`Perceptron.potential`; derivation in the README section
"Perceptrons and normalizing flows").
"""

from __future__ import annotations

import numpy as np

from attnflow.cloud import Cloud
from attnflow.dynamics import Dynamics
from attnflow.validation import check_real

__all__ = ["ACTIVATIONS", "Perceptron"]

#: The activations ``s`` (applied elementwise).
ACTIVATIONS = ("relu", "tanh", "sigmoid")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # 1 / (1 + e^{-z}) without overflow for large |z|.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _activate(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    return _sigmoid(z)


def _antiderivative(name: str, z: np.ndarray) -> np.ndarray:
    """``S(z)`` with ``S' = s`` (ReLU: ``z_+^2/2``; tanh: ``log cosh z``; sigmoid: softplus)."""
    if name == "relu":
        return 0.5 * np.maximum(z, 0.0) ** 2
    if name == "tanh":
        a = np.abs(z)
        return a + np.log1p(np.exp(-2.0 * a)) - np.log(2.0)
    return np.logaddexp(0.0, z)


def _array(name: str, value: object, shape: tuple[int, ...], text: str) -> np.ndarray:
    a = np.array(check_real(name, value), dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {text}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must have finite entries (no NaN or inf)")
    a.setflags(write=False)
    return a


class Perceptron(Dynamics):
    """The perceptron field ``F(x) = sum_k W[:, k] s(A[k] . x + b[k])`` (measure-independent).

    Parameters
    ----------
    W : (d, m) output weights (column ``k`` is the direction neuron ``k`` pushes along).
    A : (m, d) input weights.
    b : (m,) biases.
    activation : ``"relu"`` (default), ``"tanh"`` or ``"sigmoid"``.
    sphere : tokens on ``S^{d-1}`` (the geometry projects the sum of the terms; ``d >= 2``) or
        in ``R^d``.

    The instance is immutable (read-only float64 arrays). Use :meth:`single` for a width-one
    field ``w s(a . x + b)`` and :meth:`gradient` for a gradient field ``W[:, k] = c_k A[k]``.
    """

    needs_measure = False

    def __init__(
        self,
        W: object,
        A: object,
        b: object,
        activation: str = "relu",
        sphere: bool = False,
    ) -> None:
        Wa = np.asarray(check_real("W", W))
        if Wa.ndim != 2 or Wa.shape[0] < 1 or Wa.shape[1] < 1:
            raise ValueError(f"W must have shape (d, m) with d, m >= 1, got {Wa.shape}")
        d, m = Wa.shape
        self.W = _array("W", Wa, (d, m), f"(d, m) = ({d}, {m})")
        self.A = _array("A", A, (m, d), f"(m, d) = ({m}, {d})")
        self.b = _array("b", b, (m,), f"(m,) = ({m},)")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not isinstance(sphere, (bool, np.bool_)):
            raise ValueError(f"sphere must be True or False, got {sphere!r}")
        if sphere and d < 2:
            raise ValueError(f"d must be >= 2 on the sphere (S^(d-1) in R^d), got {d}")
        self.activation = activation
        self.d = int(d)
        self.sphere = bool(sphere)

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def single(
        cls,
        w: object,
        a: object,
        b: float,
        activation: str = "relu",
        sphere: bool = False,
    ) -> Perceptron:
        """The width-one field ``w s(a . x + b)``: ``w`` (d,), ``a`` (d,), ``b`` a number."""
        wv = np.asarray(check_real("w", w), dtype=np.float64)
        if wv.ndim != 1:
            raise ValueError(f"w must have shape (d,), got {wv.shape}")
        av = np.asarray(check_real("a", a), dtype=np.float64)
        if av.shape != wv.shape:
            raise ValueError(f"a must have shape {wv.shape} (that of w), got {av.shape}")
        bv = np.asarray(check_real("b", b), dtype=np.float64)
        if bv.size != 1:
            raise ValueError(f"b must be a number, got shape {bv.shape}")
        return cls(wv[:, None], av[None, :], bv.reshape(1), activation, sphere)

    @classmethod
    def gradient(
        cls,
        A: object,
        b: object,
        c: object,
        activation: str = "relu",
        sphere: bool = False,
    ) -> Perceptron:
        """The gradient field ``W[:, k] = c[k] A[k]``: ``F = grad Phi`` with
        ``Phi(x) = sum_k c_k S(A[k] . x + b[k])`` (:meth:`potential`). ``A`` (m, d), ``b``,
        ``c`` (m,)."""
        Aa = np.asarray(check_real("A", A), dtype=np.float64)
        if Aa.ndim != 2:
            raise ValueError(f"A must have shape (m, d), got {Aa.shape}")
        cv = _array("c", c, (Aa.shape[0],), f"(m,) = ({Aa.shape[0]},)")
        return cls(Aa.T * cv[None, :], Aa, b, activation, sphere)

    # -- the field -----------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """Number of neurons ``m``."""
        return self.W.shape[1]

    def preactivation(self, x: np.ndarray) -> np.ndarray:
        """(n, m) ``A x + b`` at the rows of ``x`` (n, d)."""
        return x @ self.A.T + self.b

    def ambient_velocity(self, x: np.ndarray, cloud: Cloud | None, t: float) -> np.ndarray:
        """(n, d) ``sum_k W[:, k] s(A[k] . x + b[k])`` at ``x`` (n, d); ``cloud`` is ignored."""
        return _activate(self.activation, self.preactivation(x)) @ self.W.T

    def speed_bound(self, radius: float, mass: float = 1.0) -> float:
        """A bound of ``|F(x)|`` over ``|x| <= radius`` (independent of the measure).

        Neuron ``k`` satisfies ``|s(A[k] . x + b[k])| <= M_k`` with ``M_k = (|A_k| R + b_k)_+``
        (ReLU), ``tanh(|A_k| R + |b_k|)`` (tanh), ``sigmoid(|A_k| R + b_k)`` (sigmoid), since
        ``|A_k . x| <= |A_k| R``; then ``|F| <= min(sum_k |W_k| M_k, |W|_2 |M|)``.
        """
        r = float(radius)
        reach = np.linalg.norm(self.A, axis=1) * r
        if self.activation == "relu":
            bound = np.maximum(reach + self.b, 0.0)
        elif self.activation == "tanh":
            bound = np.tanh(reach + np.abs(self.b))
        else:
            bound = _sigmoid(reach + self.b)
        by_column = float(np.linalg.norm(self.W, axis=0) @ bound)
        by_norm = float(np.linalg.norm(self.W, 2) * np.linalg.norm(bound))
        return min(by_column, by_norm)

    def divergence(self, x: np.ndarray) -> np.ndarray:
        """(n,) the ambient divergence ``sum_k (W[:, k] . A[k]) s'(A[k] . x + b[k])`` at ``x``
        (n, d) (the ReLU's ``s'`` is taken as 0 at the kink)."""
        z = self.preactivation(x)
        if self.activation == "relu":
            ds = (z > 0).astype(float)
        elif self.activation == "tanh":
            ds = 1.0 - np.tanh(z) ** 2
        else:
            s = _sigmoid(z)
            ds = s * (1.0 - s)
        return ds @ np.einsum("dk,kd->k", self.W, self.A)

    # -- gradient fields -----------------------------------------------------------------------
    def gradient_coefficients(self, rtol: float = 1e-12) -> np.ndarray | None:
        """``c`` (m,) with ``W[:, k] = c_k A[k]`` (to ``rtol``), or ``None`` if the field is not
        of that form (neurons with ``A[k] = 0`` need ``W[:, k] = 0``)."""
        c = np.zeros(self.width)
        for k in range(self.width):
            a, w = self.A[k], self.W[:, k]
            aa = float(a @ a)
            c[k] = float(a @ w) / aa if aa > 0 else 0.0
            scale = max(float(np.linalg.norm(w)), float(np.linalg.norm(c[k] * a)), 1e-300)
            if np.linalg.norm(w - c[k] * a) > rtol * scale and np.any(w != 0):
                return None
        return c

    def potential(self, x: np.ndarray) -> np.ndarray:
        """(n,) ``Phi(x) = sum_k c_k S(A[k] . x + b[k])`` at ``x`` (n, d), with ``grad Phi = F``
        (ambient gradient; on the sphere ``P_x grad Phi`` is the velocity of this term).

        Raises ``ValueError`` if ``W`` is not of the gradient form ``W[:, k] = c_k A[k]``.
        """
        c = self.gradient_coefficients()
        if c is None:
            raise ValueError("W must be of the gradient form W[:, k] = c_k A[k] for a potential")
        return _antiderivative(self.activation, self.preactivation(np.asarray(x, float))) @ c

    def __repr__(self) -> str:
        return (
            f"Perceptron(d={self.d}, width={self.width}, activation={self.activation!r}, "
            f"sphere={self.sphere})"
        )
