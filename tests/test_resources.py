"""A priori resource estimates (issue 11, item 5): units, budget, step limit, the estimates
against measured peaks, and the particle solvers refusing at once (before allocating)."""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest

import attnflow as af
from attnflow import resources as R

SPHERE3 = af.UniformSphere(3)


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# -- units and limits ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8G", 8 << 30),
        ("512MiB", 512 << 20),
        ("1.5k", 1536),
        ("1e9", 10**9),
        (4096, 4096),
        (" 2 TB ", 2 << 40),
    ],
)
def test_parse_bytes(text, value):
    assert R.parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "8X", True, None, "nan"])
def test_parse_bytes_refuses_in_one_line(text):
    with pytest.raises(R.ResourceError) as err:
        R.parse_bytes(text, "ATTNFLOW_MEMORY_BUDGET")
    assert "ATTNFLOW_MEMORY_BUDGET" in _one_line(err)


def test_format_bytes():
    assert R.format_bytes(512) == "512 B"
    assert R.format_bytes(3 << 30) == "3.0 GiB"
    assert R.format_bytes(1.5 * 2**20) == "1.5 MiB"


def test_memory_budget_argument_environment_and_default(monkeypatch):
    monkeypatch.delenv("ATTNFLOW_MEMORY_BUDGET", raising=False)
    avail = R.available_memory()
    assert avail > 0
    default = R.memory_budget()
    assert 0.4 * avail < default <= R.MEMORY_FRACTION * avail * 1.1
    assert R.memory_budget(ranks=2) <= default / 2 * 1.1
    monkeypatch.setenv("ATTNFLOW_MEMORY_BUDGET", "3M")
    assert R.memory_budget() == 3 << 20
    assert R.memory_budget(ranks=4) == 3 << 20  # an explicit budget is per rank
    assert R.memory_budget("1K") == 1024  # the argument wins
    monkeypatch.setenv("ATTNFLOW_MEMORY_BUDGET", "plenty")
    with pytest.raises(R.ResourceError, match="ATTNFLOW_MEMORY_BUDGET"):
        R.memory_budget()


def test_check_memory_names_item_estimate_and_budget():
    assert R.check_memory("saves", 1000, 2048) == 1000
    with pytest.raises(R.ResourceError) as err:
        R.check_memory("the dense kernel", 5 * 2**30, "1G")
    msg = _one_line(err)
    assert "the dense kernel" in msg and "5.0 GiB" in msg and "1.0 GiB" in msg
    assert isinstance(err.value, ValueError)
    with pytest.raises(R.ResourceError):
        R.check_memory("nan", math.nan, 1024)


def test_check_steps(monkeypatch):
    monkeypatch.delenv("ATTNFLOW_MAX_STEPS", raising=False)
    assert R.max_steps() == R.MAX_STEPS == 10**7
    assert R.check_steps(1.0, 0.1) == 10
    for t_final, dt in [(1.0, 1e-300), (1e300, 1.0), (1e300, 1e-300), (1.0, 2e-8)]:
        with pytest.raises(R.ResourceError) as err:
            R.check_steps(t_final, dt, "simulate")
        msg = _one_line(err)
        assert "simulate" in msg and "ATTNFLOW_MAX_STEPS" in msg and "10,000,000" in msg
    monkeypatch.setenv("ATTNFLOW_MAX_STEPS", "100")
    assert R.check_steps(1.0, 0.01) == 100
    with pytest.raises(R.ResourceError, match="maximum of 100"):
        R.check_steps(1.0, 0.001)
    monkeypatch.setenv("ATTNFLOW_MAX_STEPS", "0.5")
    with pytest.raises(R.ResourceError, match="ATTNFLOW_MAX_STEPS must be an int"):
        R.max_steps()


# -- estimates -------------------------------------------------------------------------------
def test_quadrature_table_is_the_solvers():
    """The constants are the point counts of the finite element solver's quadrature."""
    pytest.importorskip("dolfinx")
    import dolfinx.fem

    import attnflow.fem as fem
    from attnflow.fem.transport import cell_quadrature

    for mesh in (fem.circle_mesh(8), fem.sphere_mesh(0), fem.box_mesh(3, 1.0, 1)):
        tdim = mesh.topology.dim
        for degree in (0, 1):
            W = dolfinx.fem.functionspace(mesh, ("DG", degree))
            for q in (2, 4, 6):
                n_q = cell_quadrature(W, max(q, 2 * degree)).n_q
                assert R.quadrature_points(tdim, degree, q) == n_q


def test_mesh_counts_match_the_generators():
    from attnflow.meshdata import circle_arrays, icosphere

    for level in (0, 2):
        p, c = icosphere(level)
        mc = R.mesh_counts("sphere", level=level)
        assert (mc.n_cells, mc.n_vertices, mc.gdim, mc.tdim) == (c.shape[0], p.shape[0], 3, 2)
        edges = np.linalg.norm(p[c] - p[np.roll(c, 1, axis=1)], axis=2)
        assert edges.max() <= mc.h
    p, c = circle_arrays(12)
    assert R.mesh_counts("circle", cells=12).n_cells == 12
    assert R.mesh_counts("box", cells=4, dim=3).n_cells == 6 * 64


@pytest.mark.parametrize(
    ("n", "d", "n_save", "method"), [(4000, 3, 11, af.RK4()), (3000, 3, 40, af.Euler())]
)
def test_particle_estimate_bounds_the_measured_peak(n, d, n_save, method):
    rng = np.random.default_rng(0)
    model = af.SelfAttention(d, beta=2.0, Q=rng.standard_normal((d, d)))  # not zonal: engine
    x0 = SPHERE3.sample(n, rng)
    af.simulate(model, x0[:10], 0.1, dt=0.1)  # compile first
    tracemalloc.start()
    try:
        af.simulate(model, x0, 0.2, dt=0.1, save_times=np.linspace(0, 0.2, n_save), method=method)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    est = R.particle_memory(n, d, n_save, stages=method.stages)
    assert peak <= est <= 3 * peak, (peak, est)


def test_ensemble_estimate_bounds_the_measured_peak():
    rng = np.random.default_rng(1)
    model = af.SelfAttention(3, beta=2.0, Q=rng.standard_normal((3, 3)))
    tracemalloc.start()
    try:
        af.ensemble(model, SPHERE3, 800, 6, 0.2, dt=0.1, seed=0, save_times=np.linspace(0, 0.2, 11))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    est = R.ensemble_memory(800, 3, 11, 6)
    assert peak <= est <= 3 * peak, (peak, est)


def test_kernel_memory_of_each_choice():
    kw = dict(n_targets=1000, n_groups=4000, n_q=6, gdim=3)
    dense = R.kernel_memory("dense", **kw)
    assert dense >= 2 * 1000 * 4 * 4000 * 8  # the numpy matrix and the PETSc copy
    sparse = R.kernel_memory("sparse", kept_fraction=0.01, **kw)
    recomputed = R.kernel_memory("recomputed", **kw)
    assert recomputed < sparse < dense
    assert R.kernel_memory("dense", n_terms=2, **kw) > 1.4 * dense
    with pytest.raises(ValueError, match="kernel must be"):
        R.kernel_memory("fft", **kw)


def test_sparse_kept_fraction_is_the_cap_and_bounds_the_kept_entries():
    """A priori bound against the entries the sparse assembly actually keeps (S^2, S^1)."""
    pytest.importorskip("dolfinx")
    import attnflow.fem as fem

    for beta, mesh, law, level_h in [
        (200.0, fem.sphere_mesh(2), SPHERE3, R.mesh_counts("sphere", level=2).h),
        (500.0, fem.circle_mesh(200), af.UniformSphere(2), 2 * math.pi / 200),
    ]:
        d = mesh.geometry.dim
        model = af.SelfAttention(d, beta=beta)
        tol = 1e-12
        frac = R.sparse_kept_fraction(model, tol, level_h)
        cap = R.sparse_kept_fraction(model, tol, 0.0)
        theta = math.acos(1 - math.log(1 / tol) / beta)
        assert cap == pytest.approx((1 - math.cos(theta)) / 2 if d == 3 else theta / math.pi)
        sol = fem.MeanFieldSolver(model, mesh, law, kernel=fem.SparseKernel(tol)).solve(0.0)
        tdim = mesh.topology.dim
        # Global counts: every rank must take the same branch (a collective solve follows).
        n_nodes = mesh.geometry.index_map().size_global
        n_cells = mesh.topology.index_map(tdim).size_global
        kept = sol.stats["matrix_entries"] / (d + 1) / (n_nodes * n_cells)
        assert kept <= frac <= 5 * kept, (kept, frac)  # loose on coarse meshes (the h margin)
    assert R.sparse_kept_fraction(af.SelfAttention(2, beta=5.0, sphere=False), 1e-12) == 1.0


# -- the particle entry points refuse at once ------------------------------------------------
def test_simulate_refuses_dt_1e_300_at_once():
    x0 = SPHERE3.sample(50, 0)
    for t_final, dt in [(1.0, 1e-300), (1e300, 1.0)]:
        start = time.perf_counter()
        with pytest.raises(R.ResourceError) as err:
            af.simulate(af.SelfAttention(3), x0, t_final, dt=dt)
        assert time.perf_counter() - start < 0.5
        assert "time steps" in _one_line(err)


def test_sizes_that_cannot_fit_are_refused_before_allocating(monkeypatch):
    monkeypatch.setenv("ATTNFLOW_MEMORY_BUDGET", "1M")
    x0 = SPHERE3.sample(1000, 0)
    with pytest.raises(R.ResourceError) as err:  # 1000 saves of 1000 tokens: 48 MB
        af.simulate(af.SelfAttention(3), x0, 1.0, dt=0.1, save_times=np.linspace(0, 1, 1000))
    assert "simulate" in _one_line(err) and "1.0 MiB" in str(err.value)
    monkeypatch.delenv("ATTNFLOW_MEMORY_BUDGET")
    start = time.perf_counter()
    with pytest.raises(R.ResourceError, match="ensemble: 100000 runs of 1000000000 tokens"):
        af.ensemble(af.SelfAttention(3), SPHERE3, 10**9, 10**5, 1.0, dt=0.1, seed=0)
    assert time.perf_counter() - start < 0.5
