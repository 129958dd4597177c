"""Noise-driven phase transitions: linear theory, Landau expansion and the spectral reference.

Pure numpy/scipy: identical on every rank under mpiexec.
"""

import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import eval_legendre, iv, ive

from attnflow import SelfAttention
from attnflow.studies.phase_transitions import (
    critical_noise,
    landau_coefficient,
    noisy_growth_rates,
    spectral_branch,
    spectral_continuation,
    spectral_leading_eigenvalue,
    spectral_stationary_state,
    transition_type,
    tricritical_beta,
)


# -- linear theory ---------------------------------------------------------------------------
@pytest.mark.parametrize("normalized", [True, False])
@pytest.mark.parametrize("beta", [0.5, 3.0, 20.0])
def test_noisy_rates_on_the_circle(beta, normalized):
    n = np.arange(1, 8)
    sigma = 0.07
    base = iv(n, beta) / beta / (iv(0, beta) if normalized else 1.0)
    got = noisy_growth_rates(beta, sigma, n, normalized=normalized)
    np.testing.assert_allclose(got, n**2 * (base - sigma), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("normalized", [True, False])
def test_noisy_rates_on_s2_by_funk_hecke_quadrature(normalized):
    """S^2: ``mu_l = 2 pi int e^{beta t} P_l(t) dt`` by quadrature, not from Bessel functions."""
    beta, sigma = 2.5, 0.1
    ll = np.arange(1, 6)
    mu = np.array(
        [
            2 * np.pi * quad(lambda t, k=k: math.exp(beta * t) * eval_legendre(k, t), -1, 1)[0]
            for k in range(6)
        ]
    )
    kernel = mu[1:] / (beta * mu[0]) if normalized else mu[1:] / (4 * np.pi * beta)
    expected = ll * (ll + 1) * (kernel - sigma)
    got = noisy_growth_rates(beta, sigma, ll, d=3, normalized=normalized)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("d", [2, 3, 5])
@pytest.mark.parametrize("normalized", [True, False])
def test_mode_one_goes_first_at_sigma_c(d, normalized):
    ll = np.arange(1, 40)
    for beta in (0.3, 2.0, 15.0, 200.0):
        sc = critical_noise(beta, d=d, normalized=normalized)
        at = noisy_growth_rates(beta, sc, ll, d=d, normalized=normalized)
        assert abs(at[0]) < 1e-12 * sc and np.all(at[1:] < 0)
        below = noisy_growth_rates(beta, 0.99 * sc, ll, d=d, normalized=normalized)
        assert below[0] > 0
    # closed forms of the module docstring
    assert critical_noise(2.0, normalized=False) == pytest.approx(iv(1, 2.0) / 2.0, rel=1e-13)
    assert critical_noise(2.0) == pytest.approx(iv(1, 2.0) / (2 * iv(0, 2.0)), rel=1e-13)


def test_tricritical_beta_is_the_bessel_ratio_root():
    """Mun–Rosenzweig: I_{d/2+1}(beta_*)/I_{d/2}(beta_*) = 1/d; the sign of the USA Landau
    coefficient changes there; SA stays continuous."""
    for d, expected in ((2, 2.4469183), (3, 1.8161545)):
        b = tricritical_beta(d)
        assert b == pytest.approx(expected, abs=1e-6)
        assert ive(d / 2 + 1, b) / ive(d / 2, b) == pytest.approx(1 / d, rel=1e-12)
        assert landau_coefficient(0.99 * b, d=d, normalized=False) < 0
        assert landau_coefficient(1.01 * b, d=d, normalized=False) > 0
        assert transition_type(0.9 * b, d=d, normalized=False) == "continuous"
        assert transition_type(1.1 * b, d=d, normalized=False) == "discontinuous"
    for d in (2, 3, 4):
        g = [landau_coefficient(b, d=d) for b in np.geomspace(0.01, 300, 200)]
        assert max(g) < 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="sigma"):
        noisy_growth_rates(1.0, -0.1, [1])
    with pytest.raises(ValueError, match="beta"):
        critical_noise(0.0)
    with pytest.raises(ValueError, match="n must be an odd"):
        spectral_stationary_state(1.0, 0.3, n=64)
    with pytest.raises(ValueError, match="amplitudes"):
        spectral_branch(1.0, [0.2, 0.1])
    with pytest.raises(ValueError, match="d must be 2"):
        spectral_stationary_state(1.0, 0.3, d=4)


# -- the spectral reference --------------------------------------------------------------------
@pytest.mark.parametrize("normalized", [True, False])
def test_uniform_state_solves_both_equations(normalized):
    for d in (2, 3):
        st = spectral_stationary_state(2.0, 0.3, d=d, normalized=normalized, n=33, guess=0.0)
        assert st.residual_history[0] < 1e-13 and st.converged
        area = 2 * np.pi if d == 2 else 4 * np.pi
        np.testing.assert_allclose(st.rho, 1 / area, rtol=1e-13)
        assert st.amplitude < 1e-14


@pytest.mark.parametrize("normalized", [True, False])
def test_linearisation_of_the_uniform_state_gives_the_rates_and_sigma_c(normalized):
    beta = 1.7
    sc = critical_noise(beta, normalized=normalized)
    for sigma in (0.8 * sc, 1.3 * sc):
        st = spectral_stationary_state(beta, sigma, normalized=normalized, n=33, guess=0.0)
        _, lam = spectral_leading_eigenvalue(st, return_spectrum=True)
        rates = noisy_growth_rates(beta, sigma, np.arange(1, 5), normalized=normalized)
        # each rate twice (cos and sin), largest first
        np.testing.assert_allclose(lam.real[:8], np.repeat(rates, 2), rtol=1e-9, atol=1e-12)
        assert np.max(np.abs(lam.imag)) < 1e-9
    # the leading eigenvalue changes sign at sigma_c
    lead = [
        spectral_leading_eigenvalue(
            spectral_stationary_state(beta, s, normalized=normalized, n=33, guess=0.0)
        )
        for s in (0.999 * sc, 1.001 * sc)
    ]
    assert lead[0] > 0 > lead[1]


def test_stationary_state_has_zero_flux_in_the_models_own_field():
    """sigma rho' = rho X_theta with X from ``SelfAttention.velocity`` (the engine), not from
    the reference's kernel matrix."""
    for normalized, beta, sigma in ((True, 3.0, 0.15), (False, 1.5, 0.45)):
        st = spectral_stationary_state(beta, sigma, normalized=normalized, n=65, guess=0.8)
        assert st.converged and st.amplitude > 0.2
        th = st.nodes
        x = np.stack([np.cos(th), np.sin(th)], axis=1)
        v = SelfAttention(2, beta, normalized=normalized).velocity(x, x, st.weights * st.rho)
        v_theta = -np.sin(th) * v[:, 0] + np.cos(th) * v[:, 1]
        k = np.fft.fftfreq(th.size, 1 / th.size)
        drho = np.real(np.fft.ifft(1j * k * np.fft.fft(st.rho)))
        scale = np.abs(sigma * drho).max()
        np.testing.assert_allclose(sigma * drho, st.rho * v_theta, atol=1e-10 * scale)


def test_spectral_accuracy_and_quadratic_convergence():
    a = spectral_stationary_state(2.0, 0.2, n=33)
    b = spectral_stationary_state(2.0, 0.2, n=65)
    assert a.converged and b.converged
    np.testing.assert_allclose(a.rho, b.rho[::2][: a.rho.size], atol=1e-12)
    h = np.array(b.residual_history)
    # quadratic: once small, each residual is below a constant times the square of the last
    k = np.flatnonzero(h < 1e-2)
    assert k.size >= 2
    assert np.all(h[k[1:]] <= 10 * h[k[:-1]] ** 2 + 1e-13)
    # the interpolant reproduces the nodes
    x = np.stack([np.cos(b.nodes), np.sin(b.nodes)], axis=1)
    np.testing.assert_allclose(b(x), b.rho, atol=1e-12)


@pytest.mark.parametrize(
    "beta,d,normalized",
    [
        (1.0, 2, True),
        (2.0, 2, True),
        (1.0, 2, False),
        (4.0, 2, False),
        (1.0, 3, False),
        (3.0, 3, True),
    ],
)
def test_branch_amplitude_follows_the_landau_prediction(beta, d, normalized):
    br = spectral_branch(beta, [0.01, 0.02], d=d, normalized=normalized, n=33 if d == 2 else 24)
    est = (br.sigma / br.sigma_c - 1) / br.amplitude**2  # g + O(m^2)
    richardson = (4 * est[0] - est[1]) / 3
    assert richardson == pytest.approx(
        landau_coefficient(beta, d=d, normalized=normalized), rel=1e-6
    )


def test_usa_transition_type_changes_at_beta_star():
    """Below beta_*: sigma decreases along the branch, every state stable. Above: a fold at
    sigma_f > sigma_c; the branch is unstable before the fold and stable after it, and the
    first-order transition (equal free energies) lies in (sigma_c, sigma_f)."""
    bstar = tricritical_beta(2)
    m = np.linspace(0.02, 0.8, 40)
    below = spectral_branch(0.8 * bstar, m, normalized=False, n=65)
    assert np.all(np.diff(below.sigma) < 0) and below.folds() == []
    assert np.all(below.sigma < below.sigma_c) and np.all(below.stable)
    above = spectral_branch(4.0, m, normalized=False, n=65)
    ((mf, sf),) = above.folds()
    assert sf > above.sigma_c and 0.3 < mf < 0.7
    assert np.all(above.leading_eigenvalue[above.amplitude < mf - 0.05] > 0)
    assert np.all(above.leading_eigenvalue[above.amplitude > mf + 0.05] < 0)
    # free energy of the stable branch vs the uniform state at the same sigma
    stable = above.amplitude > mf
    f_uniform = above.sigma * math.log(1 / (2 * np.pi)) - iv(0, 4.0) / (2 * 4.0)
    diff = (above.free_energy - f_uniform)[stable]
    assert diff[0] > 0 > diff[-1]  # equal at some sigma_t in (sigma_c, sigma_f)
    i = np.flatnonzero(np.diff(np.sign(diff)))[0]
    s_t = above.sigma[stable][i]
    assert above.sigma_c < s_t < sf
    # the uniform state's free energy from the reference agrees with the closed form
    u = spectral_stationary_state(4.0, 2.0, normalized=False, n=33, guess=0.0)
    assert u.free_energy == pytest.approx(
        2.0 * math.log(1 / (2 * np.pi)) - iv(0, 4.0) / 8, rel=1e-12
    )


def test_s2_usa_fold_above_beta_star():
    m = np.linspace(0.02, 0.7, 30)
    below = spectral_branch(
        0.8 * tricritical_beta(3), m, d=3, normalized=False, n=24, stability=False
    )
    above = spectral_branch(3.0, m, d=3, normalized=False, n=24, stability=False)
    assert below.folds() == [] and np.all(np.diff(below.sigma) < 0)
    ((_, sf),) = above.folds()
    assert sf > above.sigma_c
    assert all(s.converged for s in above.states + below.states)


def test_natural_continuation_follows_the_stable_branch():
    sc = critical_noise(2.0)
    sig = sc * np.array([0.95, 0.9, 0.8])
    states = spectral_continuation(2.0, sig, n=33, guess=0.3)
    assert all(s.converged for s in states)
    amps = [s.amplitude for s in states]
    assert np.all(np.diff(amps) > 0)
    # the same states as the amplitude-parametrised branch
    br = spectral_branch(2.0, amps, n=33, stability=False)
    np.testing.assert_allclose(br.sigma, sig, rtol=1e-9)
