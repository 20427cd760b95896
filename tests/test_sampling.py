"""Ancestral sampling (Algorithm 2), checked against the exact law of its output for Gaussian data."""

import math

import pytest
import torch

import ddpm
from ddpm import NoiseSchedule

Z = 5.0


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_sampler_output_has_the_exact_law(variance, gen):
    """With the optimal eps-model for N(mu, s^2), mu_θ(x_t) = a_t x_t + b_t is linear, so the sampler's output
    is Gaussian with mean and variance given by the recursion m <- a m + b, v <- a^2 v + sigma^2 from (0, 1)."""
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    mu, std = 0.4, 0.3
    data = ddpm.GaussianData(s, mu, std)
    sigma2 = s.model_variance(variance)
    m, v = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for t in range(s.T, 0, -1):
        ab = s.alpha_bars[t]
        k = ab.sqrt() * std ** 2 / (ab * std ** 2 + 1 - ab)  # x̂_0 = mu + k (x_t - sqrt(ab) mu)
        a = s.posterior_mean_coef1[t] * k + s.posterior_mean_coef2[t]
        b = s.posterior_mean_coef1[t] * (mu - k * ab.sqrt() * mu)
        m, v = a * m + b, a ** 2 * v + (sigma2[t] if t > 1 else 0.0)
    n = 20_000
    x = ddpm.sample(s, data, (n, 2), variance, clip_denoised=False, generator=gen, dtype=torch.float64)
    assert ((x.mean(0) - m).abs() < Z * (v / n).sqrt()).all()
    assert ((x.var(0) - v).abs() < Z * v * math.sqrt(2 / (n - 1))).all()
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
