import numpy as np
import pytest
from mpi4py import MPI

import attnflow as af
from attnflow import metrics
from attnflow.compare import compare

fem_mod = pytest.importorskip("attnflow.fem")


def test_w1_between_fem_and_particles_decays_like_n_to_the_minus_half():
    model = af.SelfAttention(2, beta=4.0)
    law = af.PerturbedCircle(0.3, 2)
    fem = fem_mod.MeanFieldSolver(
        model, fem_mod.circle_mesh(200, MPI.COMM_SELF), law, degree=1
    ).solve(0.5, [0.0, 0.5])
    means = []
    for n in (200, 3200):
        ens = af.ensemble(model, law, n, 8, 0.5, dt=0.05, seed=3, save_times=[0.0, 0.5])
        c = compare(
            fem,
            ens,
            model,
            geometry="circle",
            histogram=lambda x, w: metrics.circle_histogram(x, w, 200),
            clusters=metrics.circle_clusters,
        )
        assert c.w1.shape == (8, 2) and c.w1_method == "circle"
        assert np.all(np.isfinite(c.l1)) and np.all(c.clusters_fem == 1)
        if n >= 1000:  # the histogram criterion needs many more tokens than arcs (180)
            assert np.all(c.clusters_particles == 1)
        mean, sd = c.mean_sd(c.w1)
        assert np.all(sd > 0)
        means.append(mean)
    ratio = means[0] / means[1]  # 16 times more tokens: 4 times smaller distance
    assert np.all((ratio > 2.5) & (ratio < 6.5)), ratio


def test_sphere_histogram_of_a_fem_cloud_is_its_cell_masses():
    fem = fem_mod.MeanFieldSolver(
        af.SelfAttention(3, beta=4.0),
        fem_mod.sphere_mesh(2),
        af.VonMisesFisher([0.0, 0.6, 0.8], 2.0),
    ).solve(0.1)
    h = metrics.sphere_histogram(fem.points, fem.weights[-1], 2)
    m = fem.cell_masses()
    np.testing.assert_allclose(h, m / m.sum(), atol=1e-15)


def test_sphere_clusters_counts_separated_caps():
    laws = [af.VonMisesFisher(mu, 300.0) for mu in ([0, 0, 1.0], [1.0, 0, 0], [0, -1.0, 0])]
    x = af.Mixture(laws, [0.3, 0.3, 0.4]).sample(3000, 1)
    assert metrics.sphere_clusters(x) == 3
    R = np.linalg.qr(np.random.default_rng(2).standard_normal((3, 3)))[0]
    assert metrics.sphere_clusters(x @ R.T) == 3
    assert metrics.sphere_clusters(af.UniformSphere(3).sample(5000, 3)) == 1
