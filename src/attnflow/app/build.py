"""The library objects a configuration describes, built in one place.

Every object a run needs is made here from the (plain data) sections of a
:class:`~attnflow.app.config.Config`: the model (:func:`build_model`), the initial density of
the finite element solver (:func:`initial_density`) and the law the particles are drawn from
(:func:`initial_law`), the mesh (:func:`build_mesh`), the kernel (:func:`build_kernel`), the
finite element solver with its options (:func:`build_fem_solver`), the particle time stepping
method (:func:`particle_method`), and the metrics that depend on the geometry
(:func:`geometry`, :func:`clusters_fn`, :func:`histogram_fn`).

Noise (``model.noise = sigma > 0``) is the term ``+ attnflow.Diffusion(sigma)`` of the dynamics;
a causal model (``model.causal = true``) is a ``SelfAttention(..., causal=True, alibi=lam)``
or an :class:`attnflow.causal.CausalInteraction`, whose finite element solver is
:class:`attnflow.fem.CausalSolver` (``fem.slices`` slices in the position ``s``).

The functions that need dolfinx (mesh, kernel, solver) import it when called, so the
configuration checks, which build the model, density and law, need numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from attnflow import laws, metrics
from attnflow.app.config.expressions import compile_expression
from attnflow.app.config.schema import PerceptronTerm
from attnflow.causal.particles import CausalInteraction
from attnflow.diffusion import Diffusion
from attnflow.dynamics import Dynamics, Piecewise
from attnflow.model import MultiHead, SelfAttention
from attnflow.particles import RK4, Euler
from attnflow.perceptron import Perceptron

if TYPE_CHECKING:
    from attnflow.app.config.schema import AttentionTerm, Config, InitialSection, ModelSection

__all__ = [
    "build_fem_solver",
    "build_head",
    "build_kernel",
    "build_mesh",
    "build_model",
    "clusters_fn",
    "geometry",
    "histogram_fn",
    "initial_density",
    "initial_law",
    "particle_method",
]


# -- model and initial data --------------------------------------------------------------------
def _matrix(a: tuple | None) -> np.ndarray | None:
    return None if a is None else np.array(a, dtype=float)


def build_head(head: ModelSection | AttentionTerm, d: int, sphere: bool) -> SelfAttention:
    """The :class:`~attnflow.SelfAttention` head of ``[model]`` or of an attention term."""
    return SelfAttention(
        d,
        beta=head.beta,
        Q=_matrix(head.Q),
        K=_matrix(head.K),
        V=_matrix(head.V),
        normalized=head.attention == "SA",
        sphere=sphere,
        rescale_usa=head.rescale_usa,
        centered=head.centered,
    )


def build_model(model: ModelSection) -> Dynamics | CausalInteraction:
    """The dynamics of ``[model]``, ``[[terms]]`` and ``[[controls]]``.

    The attention heads (``[model]``'s unless ``attention = "none"``, then the attention
    terms) form one :class:`~attnflow.SelfAttention` (a single head, no ``output``) or a
    :class:`~attnflow.MultiHead`; then come the perceptron terms (:class:`~attnflow.Perceptron`)
    in their order and the controls (an :class:`~attnflow.Piecewise` of width-one perceptrons
    switching at the controls' start times), summed with ``+``. Without terms and controls
    this is the :class:`~attnflow.SelfAttention` of ``[model]``, as before. With
    ``model.noise = sigma > 0`` the term :class:`~attnflow.Diffusion` ``(sigma)`` is added last.

    A causal model is one head: ``SelfAttention(..., causal=True, alibi=model.alibi)``
    (``form = "softmax"``) or ``CausalInteraction(d, beta, alibi, rescale=rescale_usa)``
    (``form = "interaction"``).
    """
    d, sphere = model.d, model.sphere
    if model.interaction:
        return CausalInteraction(d, model.beta, model.alibi, rescale=model.rescale_usa)
    if model.causal:
        return replace(build_head(model, d, sphere), causal=True, alibi=model.alibi)
    heads = [build_head(h, d, sphere) for _, h in model.heads()]
    parts: list[Dynamics] = []
    if len(heads) == 1 and model.output is None:
        parts.append(heads[0])
    elif heads:
        parts.append(MultiHead(heads, output=_matrix(model.output)))
    for t in model.terms:
        if isinstance(t, PerceptronTerm):
            parts.append(Perceptron(t.W, t.A, t.b, t.activation, sphere))
    if model.controls:
        pieces = [Perceptron.single(c.w, c.a, c.b, c.activation, sphere) for c in model.controls]
        parts.append(Piecewise([c.start for c in model.controls[1:]], pieces))
    if not parts:
        raise ValueError("the dynamics is empty (no attention head, term or control)")
    if model.noise > 0:
        parts.append(Diffusion(model.noise))
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def _named_law(initial: InitialSection, d: int) -> laws.Law:
    """The laws of :mod:`attnflow.laws` that an initial type names directly."""
    p, t = initial.params, initial.type
    if t == "uniform":
        return laws.UniformSphere(d)
    if t == "perturbed_circle":
        return laws.PerturbedCircle(p["eps"], p["mode"], p["phase"])
    if t == "von_mises_fisher":
        return laws.VonMisesFisher(p["mu"], p["kappa"])
    if t == "gaussian":
        return laws.Gaussian(p["mean"], p["cov"])
    raise AssertionError(t)  # pragma: no cover


def initial_density(initial: InitialSection, d: int) -> Callable[[np.ndarray], np.ndarray]:
    """The (not necessarily normalised) initial density ``(n, d) -> (n,)`` of ``[initial]``."""
    p, t = initial.params, initial.type
    if t == "expression":
        return compile_expression("initial.expression", p["expression"], d)
    if t == "circle_modes":
        a, n, ph = (np.array(p[k]) for k in ("amplitudes", "modes", "phases"))

        def circle_modes(x: np.ndarray) -> np.ndarray:
            th = np.arctan2(x[:, 1], x[:, 0])
            return (1 + np.cos(np.outer(th, n) + ph) @ a) / (2 * np.pi)

        return circle_modes
    if t == "uniform" and initial.half_width is not None:
        return lambda x: np.ones(np.asarray(x).shape[0])
    return _named_law(initial, d).pdf


def initial_law(initial: InitialSection, d: int, sphere: bool) -> laws.Law:
    """The law the particles are drawn from (``sphere``: on S^(d-1), else in R^d)."""
    t = initial.type
    if t in ("expression", "circle_modes") or (t == "uniform" and not sphere):
        domain: laws.Box | int = (
            d if sphere else laws.Box([-initial.half_width] * d, [initial.half_width] * d)
        )
        bound = initial.bound
        if t == "circle_modes":
            bound = (1 + float(np.abs(initial.params["amplitudes"]).sum())) / (2 * np.pi)
        if t == "uniform":
            bound = 1.0
        return laws.DensityLaw(initial_density(initial, d), domain, bound=bound)
    return _named_law(initial, d)


# -- finite elements ---------------------------------------------------------------------------
def build_mesh(cfg: Config, comm: Any) -> Any:
    """The distributed dolfinx mesh of ``[mesh]`` on the communicator ``comm``."""
    from attnflow.fem import box_mesh, circle_mesh, sphere_mesh

    m = cfg.mesh
    if m.type == "circle":
        return circle_mesh(m.cells, comm)
    if m.type == "sphere":
        return sphere_mesh(m.level, comm)
    if m.type == "box":
        return box_mesh(cfg.model.d, m.length, m.cells, comm)
    from attnflow.fem.meshes import load_mesh

    return load_mesh(m.path, comm)


def build_kernel(cfg: Config) -> Any:
    """The finite element attention kernel of ``fem.kernel`` (and ``fem.tol``)."""
    from attnflow.fem import DenseKernel, RecomputedKernel, SparseKernel

    k = cfg.fem.kernel
    if k == "dense":
        return DenseKernel()
    if k == "sparse":
        return SparseKernel(tol=cfg.fem.tol)
    return RecomputedKernel()


def build_fem_solver(cfg: Config, comm: Any) -> Any:
    """The :class:`~attnflow.fem.MeanFieldSolver` of a configuration (collective on ``comm``);
    for a causal model the :class:`~attnflow.fem.CausalSolver` with ``fem.slices`` slices (the
    same initial density in every slice)."""
    if cfg.model.causal:
        from attnflow.fem import CausalSolver

        return CausalSolver(
            build_model(cfg.model),
            build_mesh(cfg, comm),
            initial_density(cfg.initial, cfg.model.d),
            n_slices=cfg.fem.slices,
            degree=cfg.fem.degree,
            kernel=build_kernel(cfg),
            cfl=cfg.fem.cfl,
            quadrature_degree=cfg.fem.quadrature_degree,
            normalize=cfg.initial.normalize,
        )
    from attnflow.fem import MeanFieldSolver

    return MeanFieldSolver(
        build_model(cfg.model),
        build_mesh(cfg, comm),
        initial_density(cfg.initial, cfg.model.d),
        degree=cfg.fem.degree,
        kernel=build_kernel(cfg),
        cfl=cfg.fem.cfl,
        quadrature_degree=cfg.fem.quadrature_degree,
        normalize=cfg.initial.normalize,
    )


# -- particles ---------------------------------------------------------------------------------
def particle_method(cfg: Config) -> RK4 | Euler:
    """The time stepping method of ``particles.method``."""
    return RK4() if cfg.particles.method == "rk4" else Euler()


# -- metrics -----------------------------------------------------------------------------------
def geometry(cfg: Config) -> str:
    """The cost of Wasserstein distances: ``"circle"``, ``"sphere"`` or ``"euclidean"``."""
    m = cfg.model
    if not m.sphere:
        return "euclidean"
    return "circle" if m.d == 2 else "sphere"


def clusters_fn(cfg: Config) -> Callable[..., int] | None:
    """The cluster counter of the geometry (S^1, S^2), ``None`` elsewhere."""
    m = cfg.model
    if m.sphere and m.d == 2:
        return metrics.circle_clusters
    if m.sphere and m.d == 3:
        return metrics.sphere_clusters
    return None


def histogram_fn(cfg: Config) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """Cell histograms ``(x, w) -> masses`` on the circle and sphere meshes, else ``None``."""
    mesh = cfg.mesh
    if mesh is None:
        return None
    if mesh.type == "circle":
        return lambda x, w: metrics.circle_histogram(x, w, mesh.cells)
    if mesh.type == "sphere":
        return lambda x, w: metrics.sphere_histogram(x, w, mesh.level)
    return None
