"""Kernel choices and the automatic, memory-safe choice (numpy level)."""

import numpy as np
import pytest

import attnflow as af
from attnflow.kernels import (
    AutoKernel,
    DenseKernel,
    RecomputedKernel,
    SparseKernel,
    SpectralKernel,
)
from attnflow.kernels.choice import (
    as_kernel_choice,
    kernel_estimates,
    plan_kernels,
    zonal_kappa,
)

GIB = 1 << 30


def test_names_and_objects():
    assert as_kernel_choice("auto") == AutoKernel()
    assert as_kernel_choice("sparse") == SparseKernel()
    assert as_kernel_choice(SpectralKernel(1e-8)).tol == 1e-8
    with pytest.raises(ValueError, match="kernel must be 'auto'"):
        as_kernel_choice("dens")
    with pytest.raises(ValueError, match="tol must be in"):
        SparseKernel(0.0)
    with pytest.raises(ValueError, match="memory_budget must be"):
        AutoKernel(memory_budget=-1)


def test_zonal_kernels_are_recognised():
    assert zonal_kappa(af.SelfAttention(3, beta=7.0, Q=2 * np.eye(3))) == 14.0
    assert zonal_kappa(af.SelfAttention(2, beta=5.0, K=-np.eye(2))) == -5.0
    assert zonal_kappa(af.SelfAttention(3, Q=np.diag([1.0, 2.0, 3.0]))) is None
    assert zonal_kappa(af.SelfAttention(3, sphere=False)) is None  # R^d
    assert zonal_kappa(af.SelfAttention(4)) is None  # S^3: no transform here
    assert zonal_kappa(af.SelfAttention(3, beta=np.inf)) is None  # hardmax


def test_dense_memory_is_counted_and_an_explicit_choice_over_budget_is_refused(monkeypatch):
    m = af.SelfAttention(3, beta=10.0)
    sizes = dict(n_targets=2562, n_sources=30720, solver="fem", n_dofs=5120)
    est = kernel_estimates(m, **sizes)
    # At least the matrix twice (engine array + PETSc copy at assembly); resources.kernel_memory
    # is checked against measured peaks in tests/test_resources.py.
    assert 2 * 8 * 2562 * 4 * 5120 <= est["dense"].memory < 1.1 * 2 * 8 * 2562 * 4 * 5120
    monkeypatch.setenv("ATTNFLOW_MEMORY_BUDGET", "8M")
    with pytest.raises(ValueError, match=r"kernel: 'dense' needs about .* memory budget 8"):
        plan_kernels(m, DenseKernel(), **sizes)
    # "auto" takes what fits: not the dense matrix (840 MB), not the sparse one at beta = 10.
    plan = plan_kernels(m, "auto", **sizes)
    assert plan.describe()[0]["method"] in ("recomputed", "spectral")
    assert plan.describe()[0]["memory"] <= 8 << 20
    monkeypatch.setenv("ATTNFLOW_MEMORY_BUDGET", "1K")
    with pytest.raises(ValueError, match="no method fits the memory budget"):
        plan_kernels(m, "auto", **sizes)


def test_auto_prefers_matrices_on_mid_size_meshes_and_the_engine_for_few_particles():
    # S^2 level 4, DG0 (README: dense 0.12 s/step against 0.27 recomputed), beta = 100
    # (no spectral: a non-zonal Q).
    m = af.SelfAttention(3, beta=100.0, Q=np.diag([1.0, 1.0, 1.1]))
    fem = plan_kernels(m, "auto", n_targets=2562, n_sources=30720, solver="fem", n_dofs=5120)
    assert fem.describe()[0]["method"] in ("dense", "sparse")
    m = af.SelfAttention(2, beta=9.0)
    few = plan_kernels(m, "auto", n_targets=500, n_sources=500, solver="particles")
    assert few.for_term(m) == RecomputedKernel()


def test_choices_that_do_not_apply_are_refused_in_one_line():
    m = af.SelfAttention(3, beta=5.0, Q=np.diag([1.0, 2.0, 3.0]))
    for kernel, match in [
        (DenseKernel(), "for the finite element solver"),
        ("sparse", "for the finite element solver"),
        (SpectralKernel(), "needs a zonal kernel"),
    ]:
        with pytest.raises(ValueError, match=match):
            plan_kernels(m, kernel, n_targets=10, n_sources=10, solver="particles")
    with pytest.raises(ValueError, match="hardmax"):
        plan_kernels(
            af.SelfAttention(2, beta=np.inf),
            "spectral",
            n_targets=5,
            n_sources=5,
            solver="particles",
        )


def test_solvers_record_the_choice(rng):
    m = af.SelfAttention(2, beta=4.0)
    x0 = af.UniformSphere(2).sample(64, 3)
    sol = af.simulate(m, x0, 0.2, dt=0.1)
    assert sol.stats["kernel"] == "recomputed" and sol.stats["kernel_plan"][0]["budget"] > 0
    ref = af.simulate(m, x0, 0.2, dt=0.1, kernel="recomputed")
    np.testing.assert_array_equal(sol.x, ref.x)
    with pytest.raises(ValueError, match="kernel must be"):
        af.simulate(m, x0, 0.2, dt=0.1, kernel="fast")


@pytest.mark.parametrize("d", [2, 3])
def test_particles_with_the_spectral_kernel_follow_the_engine(d):
    m = af.SelfAttention(d, beta=10.0)
    x0 = af.UniformSphere(d).sample(1500, 11)
    times = [0.0, 1.0, 2.0]
    spec = af.simulate(m, x0, 2.0, dt=0.1, save_times=times, kernel=SpectralKernel(1e-10))
    ref = af.simulate(m, x0, 2.0, dt=0.1, save_times=times, kernel="recomputed")
    assert spec.stats["kernel"] == "spectral" and ref.stats["kernel"] == "recomputed"
    err = np.abs(spec.x - ref.x).max(axis=(1, 2))
    # The velocity agrees to ~tol; along the trajectory the difference grows with the
    # flow's instability (clusters form) but stays far below the token spacing.
    assert err[0] == 0 and err[-1] < 1e-7, err
