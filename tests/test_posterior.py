"""q(x_(t-1) | x_t, x_0) (Eqs. 6-7) against Bayes' rule, exactly and by Monte Carlo; x_0 <-> eps."""

import math

import pytest
import torch

import ddpm
from ddpm import NoiseSchedule

Z = 5.0


@pytest.mark.parametrize("t", [2, 10, 300, 1000])
def test_matches_bayes_rule_by_quadrature(t):
    """q(x_(t-1)|x_t,x_0) ∝ q(x_t|x_(t-1)) q(x_(t-1)|x_0): normalise the product on a grid, take its moments."""
    s = NoiseSchedule.linear()
    x0, xt = torch.tensor([0.7], dtype=torch.float64), torch.tensor([-0.4], dtype=torch.float64)
    mean, var = ddpm.q_posterior(s, x0, xt, t)
    a, b, ab_prev = s.alphas[t], s.betas[t], s.alpha_bars[t - 1]
    centre, width = mean.item(), 12 * var.sqrt().item()
    grid = torch.linspace(centre - width, centre + width, 200_001, dtype=torch.float64)
    log_p = (-(xt - a.sqrt() * grid) ** 2 / (2 * b)            # q(x_t | x_(t-1)), Eq. 2
             - (grid - ab_prev.sqrt() * x0) ** 2 / (2 * (1 - ab_prev)))  # q(x_(t-1) | x_0), Eq. 4
    w = torch.exp(log_p - log_p.max())
    w = w / w.sum()
    grid_mean = (w * grid).sum()
    grid_var = (w * (grid - grid_mean) ** 2).sum()
    assert grid_mean.item() == pytest.approx(mean.item(), rel=1e-9, abs=1e-12)
    assert grid_var.item() == pytest.approx(var.item(), rel=1e-6)


def test_matches_bayes_rule_by_monte_carlo(gen):
    """Draw (x_(t-1), x_t) from the chain; regressing x_(t-1) on x_t recovers the posterior's coefficients."""
    s, n = NoiseSchedule.linear(), 200_000
    for t in (5, 200, 900):
        x0 = torch.full((n,), 0.3, dtype=torch.float64)
        x_prev = ddpm.q_sample(s, x0, t - 1, torch.randn(n, generator=gen, dtype=torch.float64)) if t > 1 else x0
        xt = ddpm.q_step(s, x_prev, t, torch.randn(n, generator=gen, dtype=torch.float64))
        X = torch.stack([torch.ones(n, dtype=torch.float64), xt], 1)
        coef = torch.linalg.lstsq(X, x_prev[:, None]).solution.squeeze(1)
        resid = x_prev - X @ coef
        resid_var = resid.var()
        cov = resid_var * torch.linalg.inv(X.T @ X)  # OLS standard errors
        intercept = s.posterior_mean_coef1[t] * 0.3  # E[x_(t-1) | x_t] = coef1 x_0 + coef2 x_t
        assert abs(coef[0] - intercept) < Z * cov[0, 0].sqrt(), t
        assert abs(coef[1] - s.posterior_mean_coef2[t]) < Z * cov[1, 1].sqrt(), t
        var = s.posterior_variance[t]
        assert abs(resid_var - var) < Z * var * math.sqrt(2 / (n - 1)), t


def test_x0_and_eps_round_trip(gen):
    s = NoiseSchedule.cosine(1000)
    x0, eps = torch.randn(16, 3, 4, 4, generator=gen, dtype=torch.float64), torch.randn(16, 3, 4, 4, generator=gen,
                                                                                         dtype=torch.float64)
    t = torch.randint(1, 1001, (16,), generator=gen)
    xt = ddpm.q_sample(s, x0, t, eps)
    assert torch.allclose(ddpm.predict_x0_from_eps(s, xt, t, eps), x0, atol=1e-9)
    assert torch.allclose(ddpm.predict_eps_from_x0(s, xt, t, x0), eps, atol=1e-9)


def test_shapes_must_match():
    s = NoiseSchedule.linear(T=10)
    with pytest.raises(ValueError, match="xt has shape"):
        ddpm.q_posterior(s, torch.zeros(2, 3), torch.zeros(2, 4), 3)
