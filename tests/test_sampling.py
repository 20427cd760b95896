"""Ancestral sampling (Algorithm 2) and DDIM, checked against the exact law of their output for Gaussian data.

Z = 5 standard errors: a false alarm has probability about 6e-7 per comparison, for any seed."""

import math

import pytest
import torch

import ddpm
from ddpm import NoiseSchedule

Z = 5.0


def x0_hat_coefficients(s, mu, std, t):
    """For N(mu, std^2) data the optimal x̂_0(x_t) is k x_t + c: returns (k, c)."""
    ab = s.alpha_bars[t]
    k = ab.sqrt() * std ** 2 / (ab * std ** 2 + 1 - ab)
    return k, mu * (1 - k * ab.sqrt())


def algorithm_2_law(s, mu, std, variance):
    """(mean, variance) of Algorithm 2's output with the optimal eps-model: mu_θ = a x_t + b is linear, so
    the recursion m <- a m + b, v <- a^2 v + sigma^2 from (0, 1) is exact."""
    sigma2 = s.model_variance(variance)
    m, v = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for t in range(s.T, 0, -1):
        k, c = x0_hat_coefficients(s, mu, std, t)
        a = s.posterior_mean_coef1[t] * k + s.posterior_mean_coef2[t]
        m, v = a * m + s.posterior_mean_coef1[t] * c, a ** 2 * v + (sigma2[t] if t > 1 else 0.0)
    return m, v


def assert_law(x, m, v):
    """Each column's sample mean and variance within Z standard errors of (m, v)."""
    n = len(x)
    assert ((x.mean(0) - m).abs() < Z * (v / n).sqrt()).all(), (x.mean(0), m)
    assert ((x.var(0) - v).abs() < Z * v * math.sqrt(2 / (n - 1))).all(), (x.var(0), v)


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_sampler_output_has_the_exact_law(variance, gen):
    """With the optimal eps-model for N(mu, s^2), mu_θ(x_t) = a_t x_t + b_t is linear, so the sampler's output
    is Gaussian with mean and variance given by the recursion m <- a m + b, v <- a^2 v + sigma^2 from (0, 1)."""
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    mu, std = 0.4, 0.3
    data = ddpm.GaussianData(s, mu, std)
    m, v = algorithm_2_law(s, mu, std, variance)
    n = 20_000
    x = ddpm.sample(s, data, (n, 2), variance, clip_denoised=False, generator=gen, dtype=torch.float64)
    assert_law(x, m, v)
    # that law has the data's mean; sigma^2 = beta overshoots the data's spread and beta-tilde undershoots it,
    # the two extremes of Ho et al. §3.2 (exact: 0.310 and 0.272 here, against std = 0.3)
    assert abs(m - mu) < 1e-5
    assert (v.sqrt() > std) if variance == "fixedlarge" else (v.sqrt() < std)


def test_trajectory_keeps_the_chosen_steps(gen):
    s = NoiseSchedule.linear(T=30, beta_1=1e-3, beta_T=0.3)
    model = lambda x, t: 0.5 * x
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    traj = ddpm.sample_trajectory(s, model, (4, 3), steps=[1, 30, 10], generator=torch.Generator().manual_seed(seed))
    assert traj.steps == [30, 10, 1]
    assert traj.xt.shape == (3, 4, 3) and traj.pred_x0.shape == (3, 4, 3)
    assert (traj.pred_x0.abs() <= 1).all()  # clipped by default
    again = ddpm.sample(s, model, (4, 3), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(traj.x0, again)
    # the first kept state is x_T itself, and x̂_0 at t is Eq. 4 solved for x_0 (then clipped)
    x0_hat = ddpm.predict_x0_from_eps(s, traj.xt[1], 10, model(traj.xt[1], None)).clamp(-1, 1)
    assert torch.allclose(traj.pred_x0[1], x0_hat)


def test_last_step_adds_no_noise():
    s = NoiseSchedule.linear(T=10)
    model = lambda x, t: torch.zeros_like(x)
    xt = torch.full((2, 3), 0.5)
    a, _ = ddpm.p_sample(s, model, xt, 1, torch.randn(2, 3))
    b, _ = ddpm.p_sample(s, model, xt, 1, torch.randn(2, 3))
    assert torch.equal(a, b)


def test_eps_form_of_the_mean_equals_eq_11(gen):
    """Unclipped, μ_θ = (x_t − β_t/√(1−ᾱ_t) ε_θ)/√α_t, the paper's Eq. 11."""
    s = NoiseSchedule.cosine(1000)
    xt = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([2, 10, 100, 700, 1000])
    step = ddpm.p_mean_variance(s, lambda x, tt: eps, xt, t, clip_denoised=False)
    a, b, ab = s.alphas[t, None], s.betas[t, None], s.alpha_bars[t, None]
    assert torch.allclose(step.mean, (xt - b / (1 - ab).sqrt() * eps) / a.sqrt(), rtol=1e-9, atol=1e-12)


def ddim_law(s, mu, std, taus, eta):
    """(mean, variance) of DDIM's output for N(mu, std^2) data, written from Song et al.'s Eq. 12 with
    the optimal (linear) x̂_0: every step is x <- A x + B + sigma z, so the recursion is exact."""
    m, v = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for t, t_prev in zip(reversed(taus), reversed([0] + taus[:-1])):
        ab, ab_prev = s.alpha_bars[t], s.alpha_bars[t_prev]
        k, c = x0_hat_coefficients(s, mu, std, t)
        sigma2 = eta ** 2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        direction = (1 - ab_prev - sigma2).sqrt() / (1 - ab).sqrt()  # times eps = x_t - sqrt(ab) x̂_0
        a = ab_prev.sqrt() * k + direction * (1 - ab.sqrt() * k)
        b = ab_prev.sqrt() * c - direction * ab.sqrt() * c
        m, v = a * m + b, a ** 2 * v + sigma2
    return m, v


def test_ddim_with_eta_1_over_all_steps_is_algorithm_2(gen):
    """Song et al. §4.1: η = 1 makes σ_t^2 = β̃_t, so over all T steps DDIM is Algorithm 2 with fixedsmall."""
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    mu, std, n = 0.4, 0.3, 20_000
    data = ddpm.GaussianData(s, mu, std)
    x = ddpm.ddim_sample(s, data, (n, 2), eta=1.0, clip_denoised=False, generator=gen, dtype=torch.float64)
    assert_law(x, *algorithm_2_law(s, mu, std, "fixedsmall"))
    # draw by draw: the same noises give the same path as ddpm.sample
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    model = lambda x, t: torch.tanh(x) + 0.01 * t[:, None]  # any eps-model, clipping on
    a = ddpm.ddim_sample(s, model, (64, 3), eta=1.0, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
    b = ddpm.sample(s, model, (64, 3), "fixedsmall", generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    assert torch.allclose(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("eta, steps", [(0.0, 10), (0.0, 100), (0.5, 7), (1.0, [3, 20, 50, 100])])
def test_ddim_output_has_the_exact_law(eta, steps, gen):
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    mu, std, n = -0.2, 0.5, 20_000
    taus = ddpm.ddim_timesteps(s, steps)
    x = ddpm.ddim_sample(s, ddpm.GaussianData(s, mu, std), (n, 2), steps, eta, clip_denoised=False,
                         generator=gen, dtype=torch.float64)
    assert_law(x, *ddim_law(s, mu, std, taus, eta))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_one_ddim_step_has_eq_12s_moments(eta, gen):
    """From one fixed x_t, x_(t_prev) ~ N(√ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε_θ, σ²) with Song et al.'s σ."""
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    t, t_prev, n = 60, 35, 20_000
    model = lambda x, tt: 0.3 * x + 0.1
    xt = torch.full((n, 2), 0.7, dtype=torch.float64)
    noise = torch.randn(xt.shape, generator=gen, dtype=torch.float64)
    x, x0_hat = ddpm.ddim_step(s, model, xt, t, t_prev, eta, noise, clip_denoised=False)
    ab, ab_prev = s.alpha_bars[t], s.alpha_bars[t_prev]
    var = eta ** 2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    eps = 0.3 * 0.7 + 0.1
    assert torch.allclose(x0_hat, (0.7 - (1 - ab).sqrt() * eps) / ab.sqrt())
    mean = ab_prev.sqrt() * x0_hat[0, 0] + (1 - ab_prev - var).sqrt() * eps
    if eta == 0:
        assert torch.allclose(x, mean.expand_as(x), rtol=0, atol=1e-12)
    else:
        assert_law(x, mean, var)


def test_ddim_with_eta_0_is_deterministic_given_x_T(gen):
    s = NoiseSchedule.linear(T=50, beta_1=1e-3, beta_T=0.3)
    model = lambda x, t: torch.sin(x) * 0.5
    x_T = torch.randn(16, 2, generator=gen)
    runs = [ddpm.ddim_sample(s, model, x_T.shape, 10, 0.0, x_T=x_T, generator=torch.Generator().manual_seed(i))
            for i in range(2)]
    assert torch.equal(*runs)
    other = ddpm.ddim_sample(s, model, x_T.shape, 10, 0.0, x_T=-x_T)
    assert not torch.allclose(runs[0], other)


def test_ddim_timesteps():
    s = NoiseSchedule.linear(T=1000)
    assert ddpm.ddim_timesteps(s, 10) == list(range(100, 1001, 100))
    assert ddpm.ddim_timesteps(s, None) == list(range(1, 1001))
    assert ddpm.ddim_timesteps(s, 1000) == list(range(1, 1001))
    with pytest.raises(ValueError, match="1..T=1000"):
        ddpm.ddim_timesteps(s, 0)
    with pytest.raises(ValueError, match="strictly increasing"):
        ddpm.ddim_timesteps(s, [5, 5, 10])
    with pytest.raises(ValueError, match="earlier t_prev"):
        ddpm.ddim_step(s, lambda x, t: x, torch.zeros(1, 1), 5, 5, 0.0, torch.zeros(1, 1))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddpm.ddim_sample(s, lambda x, t: x, (1, 1), eta=-1.0)
