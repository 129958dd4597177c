"""Resource and overflow checks of a configuration: refuse what cannot run, before any work.

:func:`check_limits` estimates, from the sizes alone (nothing is allocated), the memory of the
arrays a run will allocate on one rank — the particle ensemble
(:func:`attnflow.resources.ensemble_memory`: tokens, runs, saves) and the finite element run
(:func:`attnflow.resources.fem_memory`: mesh, quadrature, kernel operators, saves) — against
the memory budget (:func:`attnflow.resources.memory_budget`: half the available memory shared
by the ranks, or ``ATTNFLOW_MEMORY_BUDGET``), and the number of time steps (the particles'
``t_final / dt``; the finite element CFL step estimated from the mesh size and the model's
speed bound, :meth:`attnflow.Dynamics.speed_bound`: the sum of the terms' bounds, the
largest over the controls' pieces) against :func:`attnflow.resources.max_steps`
(``ATTNFLOW_MAX_STEPS``); the kernel memory counts one operator per attention head. A USA
head whose field must overflow float64 (:meth:`attnflow.SelfAttention.check_finite_field`)
is refused naming its ``beta`` (``model.beta``, ``terms[i].beta``). Every refusal is one
:class:`~attnflow.app.config.values.ConfigError` line naming the key.

A causal model: the particle prompts are estimated by :func:`attnflow.causal.prompt_memory`
(``particles.runs`` prompts of ``particles.n`` tokens), the kinetic finite element run as a
finite element run with ``fem.slices`` times the saves (the slices share one kernel
operator), its step from the speed bound of the causal field (``beta e^beta`` for the
interaction form).
"""

from __future__ import annotations

import math

import numpy as np

from attnflow import resources
from attnflow.app.config.schema import Config, ModelSection
from attnflow.app.config.values import ConfigError
from attnflow.dynamics import KernelTerm

__all__ = ["check_limits", "check_model_overflow", "fem_step_estimate", "mesh_size"]


def check_model_overflow(model: ModelSection, radius: float | None) -> None:
    """Refuse a USA ``beta`` whose field must overflow for tokens with ``|x| <= radius``
    (``None``: unknown, checked by the solvers once the tokens exist), naming the head's key
    (``model.beta`` or ``terms[i].beta``); with an output matrix the heads' value matrices
    include it."""
    if radius is None or model.causal:  # causal: checked when the model is built
        return
    from attnflow.app.build import build_model
    from attnflow.model import SelfAttention

    heads = model.heads()
    if not any(h.attention == "USA" and not math.isinf(h.beta) for _, h in heads):
        return
    built = [t for t in build_model(model).terms() if isinstance(t, SelfAttention)]
    for (prefix, h), head in zip(heads, built, strict=True):
        if h.attention != "USA" or math.isinf(h.beta):
            continue
        try:
            head.check_finite_field(radius)
        except ValueError as e:
            msg = str(e).replace("rescale_usa=True", f"{prefix}.rescale_usa = true")
            raise ConfigError(f"{prefix}.beta", msg) from None


def _radius(cfg: Config) -> float | None:
    """A bound of the tokens' norms: 1 on the sphere, the sampling box in R^d."""
    if cfg.model.sphere:
        return 1.0
    hw = cfg.initial.half_width
    return None if hw is None else float(hw) * math.sqrt(cfg.model.d)


def mesh_size(cfg: Config, arrays: tuple[np.ndarray, np.ndarray] | None = None):
    """:class:`attnflow.resources.MeshCounts` of the mesh of ``cfg`` (a file mesh from its
    ``arrays``)."""
    m = cfg.mesh
    assert m is not None
    if m.type in ("circle", "sphere", "box"):
        return resources.mesh_counts(
            m.type, cells=m.cells, level=m.level, dim=cfg.model.d, length=m.length or 1.0
        )
    assert arrays is not None
    points, cells = arrays
    edges = np.linalg.norm(points[cells[:, 1]] - points[cells[:, 0]], axis=1)
    h = float(edges.min()) if edges.size else 0.0
    return resources.MeshCounts(
        cells.shape[0], points.shape[0], points.shape[1], cells.shape[1] - 1, h
    )


def fem_step_estimate(cfg: Config, counts) -> float:
    """An estimate of the finite element time step: the CFL step ``cfl h / (2 tdim speed)``
    (DG1: ``tdim + 1`` times smaller) with ``h`` the mesh size and the model's a priori speed
    bound."""
    from attnflow.app.build import build_model

    radius = 1.0 if cfg.model.sphere else float(cfg.mesh.length or 1.0) * math.sqrt(cfg.model.d)
    model = build_model(cfg.model)
    if cfg.model.interaction:  # beta times the USA field of a mixture: beta e^beta (rescaled: beta)
        speed = model.speed_bound()
    else:
        speed = model.speed_bound(radius)
    dg = 1.0 if cfg.fem.degree == 0 else 1.0 / (counts.tdim + 1)
    return cfg.fem.cfl * dg * counts.h / (2.0 * counts.tdim) / max(speed, 1e-300)


def _particles(cfg: Config, ranks: int, budget: int) -> None:
    p, t = cfg.particles, cfg.time
    try:
        resources.check_steps(t.t_final, p.dt, "the particle run")
    except resources.ResourceError as e:
        key = "time.t_final" if t.t_final > 1e6 else "particles.dt"
        raise ConfigError(key, str(e)) from None
    n_save = len(t.save_times)
    if cfg.model.causal:
        from attnflow.causal import prompt_memory

        need = prompt_memory(p.n, cfg.model.d, n_save, p.runs, ranks=ranks)
    else:
        need = resources.ensemble_memory(
            p.n,
            cfg.model.d,
            n_save,
            p.runs,
            stages=4 if p.method == "rk4" else 1,
            ranks=ranks,
        )
    scale = {"particles.n": p.n / 1000, "particles.runs": p.runs, "time.save_times": n_save / 2}
    key = max(scale, key=lambda k: scale[k])
    what = f"{p.runs} particle run(s) of {p.n} tokens in d={cfg.model.d} with {n_save} saves"
    try:
        resources.check_memory(what, need, budget)
    except resources.ResourceError as e:
        raise ConfigError(key, str(e)) from None


def _fem(cfg: Config, ranks: int, budget: int, arrays) -> None:
    from attnflow.app.build import build_model

    m, f = cfg.mesh, cfg.fem
    assert m is not None
    key = {"circle": "mesh.cells", "sphere": "mesh.level", "box": "mesh.cells"}.get(
        m.type, "mesh.path"
    )
    counts = mesh_size(cfg, arrays)
    n_save = len(cfg.time.save_times)
    kernel = f.kernel if f.kernel in ("dense", "sparse", "recomputed") else "recomputed"
    kept = 1.0
    model = build_model(cfg.model)
    if cfg.model.causal:  # one kernel operator; every slice is recorded at every save
        n_save *= f.slices
        key = "fem.slices" if f.slices > counts.n_cells else key
        heads = [] if cfg.model.interaction else [model]
    else:
        heads = [t for t in model.terms() if isinstance(t, KernelTerm)]
    if kernel == "sparse" and heads:
        kept = max(resources.sparse_kept_fraction(t, f.tol, counts.h) for t in heads)
    need = resources.fem_memory(
        counts,
        degree=f.degree,
        n_save=n_save,
        kernel=kernel,
        kept_fraction=kept,
        n_terms=max(1, len(heads)),
        ranks=ranks,
        quadrature_degree=f.quadrature_degree,
        checkpoints=cfg.checkpoint.every > 0,
    )
    what = f"the finite element run ({counts.n_cells} cells, {kernel} kernel, {n_save} saves)"
    if n_save > 1000 and n_save > counts.n_cells:
        key = "time.save_times"
    try:
        resources.check_memory(what, need, budget)
    except resources.ResourceError as e:
        raise ConfigError(key, str(e)) from None
    dt = fem_step_estimate(cfg, counts)
    try:
        resources.check_steps(cfg.time.t_final, dt, "the finite element run (CFL step estimate)")
    except resources.ResourceError as e:
        raise ConfigError("time.t_final", str(e)) from None


def check_limits(
    cfg: Config, ranks: int = 1, arrays: tuple[np.ndarray, np.ndarray] | None = None
) -> None:
    """Refuse a configuration that cannot run (see the module docstring); ``ranks``: the MPI
    ranks sharing the work, ``arrays``: the mesh file's ``(points, cells)`` if any."""
    try:
        budget = resources.memory_budget(ranks=ranks)
    except resources.ResourceError as e:
        raise ConfigError("ATTNFLOW_MEMORY_BUDGET", str(e)) from None
    check_model_overflow(cfg.model, _radius(cfg))
    if cfg.run.particles:
        _particles(cfg, ranks, budget)
    if cfg.run.fem and cfg.mesh is not None:
        _fem(cfg, ranks, budget, arrays)
