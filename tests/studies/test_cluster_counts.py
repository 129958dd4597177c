"""Cluster counts: the linear theory on S^{d-1}, the counting criteria on meshes and clouds,
the band-limited perturbations, and a small study."""

import math

import numpy as np
import pytest
from scipy.special import ive

import attnflow as af
from attnflow.meshdata import circle_arrays, sphere_arrays
from attnflow.studies.cluster_counts import (
    band_perturbation,
    cell_adjacency,
    cluster_count_study,
    fem_cluster_count,
    gap_clusters,
    local_maxima,
    mode_prediction,
    sphere_kde_modes,
)
from attnflow.studies.metastability import log_growth_rates, most_unstable_mode, unstable_band


# -- linear theory -------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [4.0, 100.0, 1e4])
def test_the_s1_rates_are_the_bessel_formula_and_usa_shares_the_mode(beta):
    n = np.arange(1, 60)
    sa = np.exp(log_growth_rates(beta, n))
    np.testing.assert_allclose(sa, n**2 * ive(n, beta) / (beta * ive(0, beta)), rtol=1e-12)
    usa = log_growth_rates(beta, n, normalized=False, rescale_usa=True)  # n^2 I_n e^{-beta}/beta
    np.testing.assert_allclose(np.exp(usa), n**2 * ive(n, beta) / beta, rtol=1e-12)
    for d in (2, 3, 5):
        ls, lam = most_unstable_mode(beta, d=d)
        assert most_unstable_mode(beta, d=d, normalized=False, rescale_usa=True)[0] == ls
        lo, hi = unstable_band(beta, d=d)
        assert lo <= ls <= hi and np.isfinite(lam)
        # USA / SA = mean of the kernel over the sphere, the same for every degree
        ll = np.arange(1, 20)
        ratio = log_growth_rates(beta, ll, d=d, normalized=False) - log_growth_rates(beta, ll, d=d)
        np.testing.assert_allclose(ratio, ratio[0], atol=1e-9)


def test_the_most_unstable_degree_tends_to_sqrt_2_beta_in_every_dimension():
    beta = 1e4
    for d in (2, 3, 4, 8):
        ls, lam = most_unstable_mode(beta, d=d)
        assert abs(ls / math.sqrt(2 * beta) - 1) < 0.03 and abs(lam - 2 / math.e) < 0.01


def test_usa_rate_on_the_sphere_is_the_funk_hecke_coefficient_times_the_uniform_density():
    """d = 3: lambda_l = l(l+1) rho_0 mu_l / beta with mu_l = 4 pi i_l(beta), rho_0 = 1/(4 pi);
    mu_l by quadrature of e^{beta t} P_l(t) (Funk-Hecke), not by the Bessel closed form."""
    from numpy.polynomial.legendre import Legendre, leggauss

    beta = 3.0
    t, w = leggauss(80)
    for ll in (1, 2, 5):
        mu = 2 * np.pi * w @ (np.exp(beta * t) * Legendre.basis(ll)(t))
        lam = ll * (ll + 1) * mu / (4 * np.pi) / beta
        assert abs(np.exp(log_growth_rates(beta, [ll], d=3, normalized=False))[0] / lam - 1) < 1e-12


# -- counting ------------------------------------------------------------------------------------
def test_gap_clusters_is_the_circle_gap_criterion_on_s1():
    rng = np.random.default_rng(0)
    for beta in (10.0, 300.0):
        th = np.concatenate(
            [c + 0.3 * rng.standard_normal(40) / np.sqrt(beta) for c in rng.uniform(0, 6.28, 9)]
        )
        x = np.stack([np.cos(th), np.sin(th)], axis=1)
        for gap in (0.5 / np.sqrt(beta), 1 / np.sqrt(beta), 2 / np.sqrt(beta)):
            assert gap_clusters(x, gap) == af.metrics.circle_gap_clusters(x, gap=gap)


def test_gap_clusters_on_the_sphere_finds_separated_blobs():
    centres = af.UniformSphere(3).sample(1, rng=0)
    centres = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]], float)
    blobs = [af.VonMisesFisher(c, 4e4).sample(50, rng=k) for k, c in enumerate(centres)]
    assert gap_clusters(np.concatenate(blobs), 0.05) == 4


def test_cell_adjacency_of_the_meshes():
    _, f = sphere_arrays(2)
    edge = cell_adjacency(f, shared=2)
    assert np.all(np.diff(edge.indptr) == 3)  # a triangle has three edge neighbours
    # (5 + 5 + 5) - 3 = 12 cells share a vertex; 11 for the 60 cells at a degree-5 vertex
    vert = np.diff(cell_adjacency(f).indptr)
    assert vert.max() == 12 and vert.min() == 11 and np.sum(vert == 11) == 12 * 5
    _, c = circle_arrays(16)
    assert np.all(np.diff(cell_adjacency(c).indptr) == 2)


def test_local_maxima_count_plateaus_once():
    _, c = circle_arrays(8)
    adj = cell_adjacency(c)
    assert local_maxima(np.array([0, 1, 1, 0, 2, 0, 0, 0.0]), adj).tolist() == [1, 4]
    assert local_maxima(np.ones(8), adj).tolist() == [0]
    assert local_maxima(np.array([0, 1, 1, 0, 2, 0, 0, 0.0]), adj, threshold=1.5).tolist() == [4]


@pytest.mark.parametrize("n", [1, 5, 13])
def test_fem_count_of_a_circle_mode_is_its_wavenumber(n):
    p, c = circle_arrays(256)
    mid = np.arctan2(*(p[c].mean(axis=1)[:, ::-1].T))
    masses = (1 + 0.5 * np.cos(n * mid)) * 2 * np.pi / 256
    assert fem_cluster_count(masses, 2, 256) == n


def test_fem_and_kde_counts_of_separated_bumps_on_the_sphere():
    v, f = sphere_arrays(4)
    centres = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-0.6, -0.6, -0.529]], float)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    mid = v[f].mean(axis=1)
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    dens = np.exp(30 * (mid @ centres.T - 1)).sum(axis=1)
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    assert fem_cluster_count(dens * area, 3, 4) == 4
    tokens = np.repeat(centres, 30, axis=0)
    count, level = sphere_kde_modes(tokens, 50.0)
    assert count == 4 and level == 5  # level-5 edges (0.034) <= h/4 = 0.035


def test_band_perturbation_is_the_projected_empirical_measure():
    rng = np.random.default_rng(3)
    th = rng.uniform(0, 2 * np.pi, 200)
    tokens = np.stack([np.cos(th), np.sin(th)], axis=1)
    g = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    pts = np.stack([np.cos(g), np.sin(g)], axis=1)
    direct = 1 + 2 / 200 * sum(np.cos(n * (g[:, None] - th)).sum(axis=1) for n in range(3, 8))
    np.testing.assert_allclose(
        band_perturbation(tokens, (3, 7), pts), np.maximum(direct, 0), atol=1e-6
    )
    # S^2: the band excludes degree 0, so the mean over the sphere is 1
    x = af.UniformSphere(3).sample(4000, rng=1)
    tok = af.UniformSphere(3).sample(300, rng=2)
    vals = band_perturbation(tok, (2, 6), x)
    assert abs(vals.mean() - 1) < 4 * vals.std() / np.sqrt(x.shape[0])


def test_mode_prediction_on_the_sphere_counts_maxima_of_random_harmonics():
    assert mode_prediction(100.0, 2) == most_unstable_mode(100.0)[0]
    ls = most_unstable_mode(100.0, d=3)[0]
    assert mode_prediction(100.0, 3) == pytest.approx(ls * (ls + 1) / (2 * math.sqrt(3)))


# -- a small study -------------------------------------------------------------------------------
@pytest.mark.usefixtures("one_numba_thread")
def test_a_small_study_on_the_circle():
    s = cluster_count_study(
        [4.0, 16.0],
        n_tokens=256,
        n_runs=2,
        n_fem_runs=1,
        n_kde_runs=2,
        fem_sizes=[128, 128],
        fit_from=4.0,
        dt=0.2,
    )
    assert s.particle_counts.shape == (2, 2) and s.fem_counts.shape == (2, 1)
    assert s.l_star.tolist() == [3, 6] and np.all(s.band[:, 0] <= s.l_star)
    assert np.all(s.particle_counts >= 1) and np.all(s.fem_counts >= 1)
    assert np.all(s.particle_mean[1] > s.particle_mean[0]) and np.isfinite(s.exponents["particles"])
    np.testing.assert_allclose(s.t_count, 1.5 * np.log(256) / s.growth_rate)
