import numpy as np
import pytest
from conftest import random_sphere

from attnflow import metrics


def circle(th):
    th = np.atleast_1d(th)
    return np.stack([np.cos(th), np.sin(th)], axis=1)


@pytest.mark.parametrize("p", [1, 2])
def test_circle_wasserstein_between_diracs_uses_the_shorter_arc(p):
    d = metrics.wasserstein(circle(0.3), None, circle(1.0), None, p=p, geometry="circle")
    assert d.method == "circle" and d.value == pytest.approx(0.7, abs=1e-6)
    d = metrics.wasserstein(
        circle(0.1), None, circle(2 * np.pi - 0.1), None, p=p, geometry="circle"
    )
    assert d.value == pytest.approx(0.2, abs=1e-6)


def test_circle_wasserstein_of_a_rotated_uniform_cloud():
    th = 2 * np.pi * np.arange(360) / 360
    d = metrics.wasserstein(circle(th), None, circle(th + 0.004), None, geometry="circle")
    assert d.value == pytest.approx(0.004, rel=1e-4)


def test_sphere_emd_and_sliced(rng):
    north, east = np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]])
    d = metrics.wasserstein(north, None, east, None, geometry="sphere")
    assert d.method == "emd" and d.value == pytest.approx(np.pi / 2, rel=1e-12)
    x, y = random_sphere(rng, 300, 3), random_sphere(rng, 300, 3)
    y[:, 2] = np.abs(y[:, 2])  # y lives on the upper hemisphere
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    exact = metrics.wasserstein(x, None, y, None, p=2, geometry="sphere").value
    old = metrics.EXACT_MAX_PAIRS
    try:
        metrics.EXACT_MAX_PAIRS = 0
        sliced = metrics.wasserstein(x, None, y, None, p=2, geometry="sphere")
    finally:
        metrics.EXACT_MAX_PAIRS = old
    assert sliced.method == "sliced" and 0 < sliced.value <= exact * 1.05


@pytest.mark.parametrize("p", [1, 2])
def test_euclidean_translation_is_transported_by_its_length(rng, p):
    x = rng.standard_normal((200, 2))
    m = np.array([0.3, -0.4])
    d = metrics.wasserstein(x, None, x + m, None, p=p)
    assert d.value == pytest.approx(0.5, rel=1e-9)
    assert metrics.wasserstein(x, None, x, None, p=p).value == pytest.approx(0.0, abs=1e-12)


def test_moments_and_histogram():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0]])
    mean, cov = metrics.moments(x, np.array([1.0, 1.0, 2.0]))
    np.testing.assert_allclose(mean, [1.5, 1.0])
    np.testing.assert_allclose(cov, [[0.75, 0.5], [0.5, 1.0]])
    h = metrics.circle_histogram(circle(np.array([0.01, 3.2, 6.28])), None, 4)
    np.testing.assert_allclose(h, [1 / 3, 0, 1 / 3, 1 / 3])
    assert metrics.l1_distance(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == 2.0


def test_cluster_count_is_invariant_under_relabelling_and_rotation(rng):
    centres = np.array([0.5, 2.0, 4.0, 5.5])
    th = np.concatenate([c + 0.02 * rng.standard_normal(100) for c in centres])
    assert metrics.circle_clusters(circle(th)) == 4
    assert metrics.circle_clusters(circle(rng.permutation(th))) == 4
    for rot in (0.1, 1.234, np.pi):
        assert metrics.circle_clusters(circle(th + rot)) == 4
    # A cluster with less than min_mass does not count; the uniform cloud is one cluster.
    assert metrics.circle_clusters(circle(np.append(th, 3.0))) == 4
    assert metrics.circle_clusters(circle(np.linspace(0, 2 * np.pi, 1000))) == 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: metrics.wasserstein(np.ones((2, 2)), None, np.ones((2, 2)), None, p=3), "p must"),
        (
            lambda: metrics.wasserstein(
                np.ones((2, 2)), None, np.ones((2, 2)), None, geometry="torus"
            ),
            "geometry must",
        ),
        (
            lambda: metrics.wasserstein(np.ones((2, 2)), -np.ones(2), np.ones((2, 2)), None),
            "weights must",
        ),
        (
            lambda: metrics.wasserstein(np.ones((2, 2)), None, np.ones((2, 3)), None),
            "same dimension",
        ),
        (lambda: metrics.l1_distance(np.ones(2), np.ones(3)), "same shape"),
    ],
)
def test_bad_metric_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_circle_wasserstein_is_robust_to_rounding_of_the_total_mass(rng):
    # Totals 1 and 1 + 2e-16 used to make POT's circle solver return > the circle's half.
    x = circle(rng.uniform(0, 2 * np.pi, 3000))
    y = circle(np.repeat([0.5, 2.0, -2.0], 400) + 1e-3 * rng.standard_normal(1200))
    wy = rng.random(1200) ** 8
    for _ in range(5):
        d = metrics.wasserstein(y, wy, x, None, geometry="circle")
        assert 0 <= d.value <= np.pi
        x = x[rng.permutation(3000)]


def test_fit_slope_recovers_a_power_law():
    from attnflow.studies import fit_slope

    n = np.array([10.0, 100.0, 1000.0])
    assert fit_slope(n, 3.0 * n**-0.5) == pytest.approx(-0.5, abs=1e-12)


def _clustered_angles(rng, centres, per_cluster, width):
    return np.concatenate([c + width * rng.uniform(-1, 1, per_cluster) for c in centres])


@pytest.mark.parametrize("k", [1, 2, 5, 45])
def test_gap_clusters_count_well_separated_clusters_exactly(rng, k):
    # k clusters of width 2e-3 at spacing 2 pi / k (jittered), one of them across theta = pi.
    centres = np.pi + 2 * np.pi * (np.arange(k) + 0.2 * rng.uniform(-1, 1, k)) / k
    th = _clustered_angles(rng, centres, 7, 1e-3)
    assert metrics.circle_gap_clusters(circle(th), gap=0.02) == k
    # Relabelling and rotation (random angles, and one that puts a cluster on the cut at pi).
    for rot in [*rng.uniform(0, 2 * np.pi, 6), np.pi - centres[0]]:
        assert metrics.circle_gap_clusters(circle(rng.permutation(th) + rot), gap=0.02) == k


def test_gap_clusters_weights_min_mass_and_agreement_with_the_histogram(rng):
    centres = np.array([0.5, 2.0, 4.0, 5.5])
    th = _clustered_angles(rng, centres, 100, 0.03)
    assert metrics.circle_gap_clusters(circle(th), gap=0.2) == 4
    assert metrics.circle_clusters(circle(th)) == 4
    # A straggler is a cluster of its own unless min_mass drops it.
    x = circle(np.append(th, 3.0))
    assert metrics.circle_gap_clusters(x, gap=0.2) == 5
    assert metrics.circle_gap_clusters(x, gap=0.2, min_mass=0.01) == 4
    # Zero-weight points do not count; weights set the masses.
    w = np.ones(401)
    w[-1] = 0.0
    assert metrics.circle_gap_clusters(x, w, gap=0.2) == 4
    w = np.r_[np.full(300, 1.0), np.full(100, 1e-4), 1.0]
    assert metrics.circle_gap_clusters(x, w, gap=0.2, min_mass=0.001) == 4  # 4th cluster light
    # A single point, and a uniform cloud denser than the gap, are one cluster; a wider gap
    # merges neighbouring clusters (the gaps between these clusters are ~1.44, 1.94, 1.44, 1.22;
    # one wide gap leaves a single arc).
    assert metrics.circle_gap_clusters(circle(1.0), gap=0.1) == 1
    assert metrics.circle_gap_clusters(circle(np.linspace(0, 2 * np.pi, 200)), gap=0.1) == 1
    assert metrics.circle_gap_clusters(circle(th), gap=1.1) == 4
    assert metrics.circle_gap_clusters(circle(th), gap=1.4) == 3
    assert metrics.circle_gap_clusters(circle(th), gap=1.6) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gap": 0.0}, "gap must"),
        ({"gap": 7.0}, "gap must"),
        ({"gap": 0.1, "min_mass": 2.0}, "min_mass must"),
    ],
)
def test_gap_clusters_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.circle_gap_clusters(circle(np.array([0.0, 1.0])), **kwargs)
    with pytest.raises(ValueError, match="points must"):
        metrics.circle_gap_clusters(np.ones((3, 3)), gap=0.1)
