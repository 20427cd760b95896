"""ddpm.sde against closed forms: the SDE's ᾱ(t), the exact chain, the Gaussian-data ODE map, the ODE's likelihood,
the samplers' moments and the continuous-time loss of Gaussian data.

Statistical checks allow Z = 5 standard errors: a false alarm has probability about 6e-7 per comparison, under
1e-5 over every comparison in this file, for any seed.
"""

import math

import pytest
import torch

import ddpm
from ddpm import sde as S

Z = 5.0


@pytest.fixture
def vp():
    return S.VPSDE.linear()


def one_gaussian(mean, std):
    """Gaussian data N(mean, std² I) as a one-component mixture."""
    return ddpm.GaussianMixture(ddpm.NoiseSchedule.linear(10), [mean], std)


def test_alpha_bar_integrates_beta(vp):
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)
    numeric = torch.cat([torch.zeros(1, dtype=torch.float64),
                         torch.cumulative_trapezoid(vp.beta(t), t)])
    assert torch.allclose(vp.integral(t), numeric, atol=1e-7)
    assert torch.allclose(vp.alpha_bar(t), torch.exp(-numeric), atol=1e-8)
    assert torch.allclose(vp.log_snr(t[1:]), torch.log(vp.alpha_bar(t[1:]) / (1 - vp.alpha_bar(t[1:]))))


def test_cosine_matches_the_discrete_cosine_schedule():
    cos, T = S.VPSDE.cosine(), 1000
    s = ddpm.NoiseSchedule.cosine(T)
    t = torch.arange(T, dtype=torch.float64) / T   # the last step is clamped by max_beta in the discrete schedule
    assert torch.allclose(cos.alpha_bar(t), s.alpha_bars[:T], rtol=1e-10, atol=1e-12)
    u, h = torch.linspace(0.05, 0.95, 7, dtype=torch.float64), 1e-6
    assert torch.allclose(cos.beta(u), (cos.integral(u + h) - cos.integral(u - h)) / (2 * h), rtol=1e-6)


def test_discretize_gives_the_sde_at_the_grid_and_from_schedule_inverts_linear(vp):
    s = vp.discretize(50)
    assert torch.allclose(s.alpha_bars, vp.alpha_bar(torch.arange(51, dtype=torch.float64) / 50), rtol=1e-12)
    back = S.VPSDE.from_schedule(ddpm.NoiseSchedule.linear(1000, 1e-4, 0.02))
    assert torch.allclose(back.beta(torch.tensor([0.0, 1.0])), torch.tensor([0.1, 20.0], dtype=torch.float64))


def test_time_of_snr_inverts_log_snr(vp):
    for snr in (1e4, 1.0, 1e-4):
        assert math.isclose(float(vp.log_snr(vp.time_of_snr(snr))), math.log(snr), abs_tol=1e-9)
    with pytest.raises(ValueError, match="never falls"):
        vp.time_of_snr(1e-9)


def test_diffused_mixture_is_the_schedules_marginal(gen):
    s = ddpm.NoiseSchedule.linear(100, 1e-3, 0.2)
    mix = ddpm.GaussianMixture(s, [[-1.0, 0.5], [1.0, 0.0]], [0.2, 0.4], weights=[0.3, 0.7])
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    for t in (1, 30, 100):
        noisy = mix.diffused(float(s.alpha_bars[t]))
        assert torch.allclose(noisy.log_density(x, 0), mix.log_density(x, t), atol=1e-12)
        assert torch.allclose(noisy.score(x, 0), mix.score(x, t), atol=1e-12)
    with pytest.raises(ValueError, match="alpha_bar"):
        mix.diffused(0.0)


def test_mixture_denoiser_is_the_posterior_mean(gen):
    s = ddpm.NoiseSchedule.linear(100, 1e-3, 0.2)
    mix = ddpm.GaussianMixture(s, [[-1.0, 0.5], [1.0, 0.0]], [0.2, 0.4])
    z = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    t = 40
    ab = float(s.alpha_bars[t])
    vp_case = S.mixture_denoiser(mix)(z, math.sqrt(ab), math.sqrt(1 - ab))
    assert torch.allclose(vp_case, mix.posterior_mean(z, t), atol=1e-12)
    # the same noisy point written variance-exploding: z / √ᾱ = x_0 + σ ε with σ² = (1 − ᾱ)/ᾱ
    ve_case = S.mixture_denoiser(mix)(z / math.sqrt(ab), 1.0, math.sqrt((1 - ab) / ab))
    assert torch.allclose(ve_case, vp_case, atol=1e-12)


def test_divergence_is_the_trace_of_the_jacobian(gen):
    A = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    out, div = S.divergence(lambda y: torch.tanh(y) @ A.T, x)
    expected = ((1 - torch.tanh(x) ** 2) * torch.diagonal(A)).sum(1)
    assert torch.allclose(out, torch.tanh(x) @ A.T) and torch.allclose(div, expected, atol=1e-12)


@pytest.mark.parametrize("method,steps,tol", [("euler", 2000, 2e-2), ("heun", 200, 1e-3), ("rk4", 100, 1e-6)])
def test_ode_maps_gaussian_data_by_its_standardised_coordinate(vp, gen, method, steps, tol):
    # for Gaussian data the flow keeps u = (x_t − √ᾱ_t m)/√(ᾱ_t s² + 1 − ᾱ_t) fixed
    m, sd = torch.tensor([0.7, -0.3], dtype=torch.float64), 0.3
    score = S.MixtureScore(one_gaussian(m.tolist(), sd), vp)
    x1 = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    ab1 = float(vp.alpha_bar(1.0))
    expected = m + sd * (x1 - math.sqrt(ab1) * m) / math.sqrt(ab1 * sd ** 2 + 1 - ab1)
    assert (S.ode_sample(vp, score, x1, steps, method) - expected).abs().max() < tol


def test_ode_log_likelihood_is_the_log_density_and_converges_at_fourth_order(vp, gen):
    mix = ddpm.GaussianMixture(ddpm.NoiseSchedule.linear(10), [[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.5])
    score = S.MixtureScore(mix, vp)
    x0 = mix.sample(200, gen)
    true = mix.log_density(x0, 0)
    errors = [(S.ode_log_likelihood(vp, score, x0, n, lambda x: score.log_density(x, 1.0)) - true).abs()
              for n in (100, 200)]
    # RK4's order from the median error (the largest is set by paths between the components);
    # over 300 seeds (benchmarks/ode_likelihood_unit.py) the order ran 3.70-4.20 (SD 0.085), the
    # median error 3.7e-9 to 1.1e-8 and the largest 5.6e-8 to 6.9e-7: every bar over 10 SD away
    assert errors[1].max() < 1e-5 and errors[1].median() < 1e-7
    assert math.log2(errors[0].median() / errors[1].median()) > 3


@pytest.mark.parametrize("sampler", ["sde", "pc"])
def test_stochastic_samplers_reach_gaussian_data(vp, gen, sampler):
    m, sd, n = [0.5, -1.0], 0.4, 20_000
    score = S.MixtureScore(one_gaussian(m, sd), vp)
    x1 = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    if sampler == "sde":
        x = S.reverse_sde_sample(vp, score, x1, 1000, gen)
    else:
        x = S.pc_sample(vp, score, x1, 500, n_corrector=1, generator=gen)
    mean_z = (x.mean(0) - torch.tensor(m, dtype=torch.float64)) / (sd / math.sqrt(n))
    var_z = (x.var(0) - sd ** 2) / (sd ** 2 * math.sqrt(2 / n))
    # the discretisation's bias (variance off by about 1 % at these steps) stays within the tolerance
    assert mean_z.abs().max() < Z and var_z.abs().max() < Z + 2


def test_diffusion_loss_of_gaussian_data_and_its_schedule_invariance(gen):
    # Gaussian data N(0, s² I): x̂ = α s² z/(α² s² + σ²) and E L_∞ = D/2 · log((1 + SNR_max s²)/(1 + SNR_min s²))
    sd, D, n = 0.5, 2, 4000
    denoise = lambda z, a, s: a * sd ** 2 * z / (a ** 2 * sd ** 2 + s ** 2)
    x0 = sd * torch.randn(n, D, generator=gen, dtype=torch.float64)
    eps = torch.randn(n, D, generator=gen, dtype=torch.float64)
    ve = S.diffusion_loss(lambda u: torch.ones_like(u), lambda u: 1e-2 * 1e4 ** u, denoise, x0, eps)
    cos = S.VPSDE.cosine()
    a, b = cos.time_of_snr(1e4), cos.time_of_snr(1e-4)
    integral = lambda u: cos.integral(a + u * (b - a))
    vp = S.diffusion_loss(lambda u: torch.exp(-integral(u) / 2), lambda u: (-torch.expm1(-integral(u))).sqrt(),
                          denoise, x0, eps)
    assert (ve - vp).abs().max() < 1e-4
    expected = D / 2 * math.log((1 + 1e4 * sd ** 2) / (1 + 1e-4 * sd ** 2))
    assert abs(vp.mean() - expected) < Z * vp.std() / math.sqrt(n)
