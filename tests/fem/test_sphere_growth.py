"""Growth rates of zonal harmonics on S^2 (Funk–Hecke, SA): the finite element solver against
``lambda_l = l(l+1) I_{l+1/2}(beta) / (beta I_{1/2}(beta))`` (metastability.log_growth_rates).

The approach of the S^1 tests of test_solver.py: a small perturbation ``eps P_l(z)`` of the
uniform density, its projection on ``P_l`` after a time ``min(1/lambda_l, 2)``. The icosphere
is not exactly symmetric, so the uniform density itself moves by O(h^2): the run without
perturbation is subtracted (the response is linear in eps).
"""

import numpy as np
import pytest
from mpi4py import MPI
from scipy.special import eval_legendre, spherical_in

import attnflow as af
from attnflow.fem import DenseKernel, MeanFieldSolver, sphere_mesh
from attnflow.studies.metastability import log_growth_rates

BETA = 4.0


def measured_rate(level: int, degree: int) -> tuple[float, float]:
    lam = float(np.exp(log_growth_rates(BETA, [degree], d=3))[0])
    T = min(1.0 / lam, 2.0)
    mesh = sphere_mesh(level, MPI.COMM_SELF)
    model = af.SelfAttention(3, beta=BETA)

    def solve(eps: float):
        rho0 = lambda x: 1.0 + eps * eval_legendre(degree, x[:, 2])  # noqa: E731
        return MeanFieldSolver(model, mesh, rho0, kernel=DenseKernel()).solve(T)

    base, pert = solve(0.0), solve(1e-4)
    p = eval_legendre(degree, pert.points[:, 2] / np.linalg.norm(pert.points, axis=1))
    a = (pert.weights - base.weights) @ p
    return float(np.log(a[1] / a[0]) / T), lam


def test_the_sphere_rates_reduce_to_spherical_bessel_functions():
    ell = np.arange(1, 8)
    ref = ell * (ell + 1) * spherical_in(ell, BETA) / (BETA * spherical_in(0, BETA))
    np.testing.assert_allclose(np.exp(log_growth_rates(BETA, ell, d=3)), ref, rtol=1e-13)


@pytest.mark.parametrize("degree", [2, 3])
def test_zonal_harmonics_grow_at_the_funk_hecke_rate(degree):
    """Within 2% on sphere_mesh(3) (DG0), and the error falls at second order in h."""
    errs = []
    for level in (2, 3):
        rate, lam = measured_rate(level, degree)
        errs.append(abs(rate / lam - 1))
    assert errs[1] < 0.02, errs
    assert errs[1] < errs[0] / 3, errs  # h halves: O(h^2) divides by 4
