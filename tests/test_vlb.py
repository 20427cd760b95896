"""The full bound L_T + Σ L_(t-1) + L_0 (Eq. 5) against two models whose bound is known in closed form."""

import math

import pytest
import torch

import ddpm
from ddpm import NoiseSchedule

Z = 5.0
GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1


def grid_image(gen, shape=(3, 8, 8)):
    x = GRID[torch.randint(0, 256, shape, generator=gen)]
    x.view(-1)[:2] = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # exercise both open-ended bins
    return x


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_memorizing_oracle_bound_is_exact(variance, gen):
    """With x_0 = x*, the oracle's x̂_0 is x* exactly, so the bound is deterministic: float64 rounding only."""
    s = NoiseSchedule.linear()
    x_star = grid_image(gen)
    oracle = ddpm.MemorizingOracle(s, x_star)
    result = ddpm.vlb(s, oracle, x_star.expand(2, -1, -1, -1).contiguous(), variance, batch_size=512, generator=gen)
    prior, terms = oracle.vlb_bpd(variance)
    assert result.terms_bpd.shape == (2, 1000) and result.total_bpd.shape == (2,)
    assert torch.allclose(result.prior_bpd, prior.expand(2), rtol=1e-12)
    assert torch.allclose(result.terms_bpd, terms.expand(2, -1), rtol=1e-9, atol=1e-12)
    assert torch.allclose(result.total_bpd, prior + terms.sum(), rtol=1e-9)
    if variance == "fixedsmall":  # sigma_t^2 = beta-tilde_t: every L_(t-1) with t >= 2 vanishes
        assert result.terms_bpd[:, 1:].abs().max() < 1e-12


def test_memorizing_oracle_in_float32(gen):
    """In float32 the model's rounding enters; the bound still agrees to 1e-4 bits/dim in total."""
    s = NoiseSchedule.linear()
    x_star = grid_image(gen).float()
    oracle = ddpm.MemorizingOracle(s, x_star)
    result = ddpm.vlb(s, oracle, x_star[None], generator=gen)
    prior, terms = oracle.vlb_bpd()
    assert abs(result.total_bpd.item() - (prior + terms.sum()).item()) < 1e-4


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_gaussian_data_bound_matches_its_expectation(variance, gen):
    """x_0 ~ N(mu, s^2 I) with the optimal (linear) eps-model: the mean bound over samples is the exact one."""
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    data = ddpm.GaussianData(s, mean=0.3, std=0.5)
    n = 400
    x0 = data.sample((n, 8), generator=gen)
    result = ddpm.vlb(s, data, x0, variance, clip_denoised=False, discrete=False, batch_size=4000, generator=gen)
    prior, terms = data.expected_vlb_bpd(variance)

    def within(samples, expected):
        se = samples.std(0) / math.sqrt(samples.shape[0])
        return ((samples.mean(0) - expected).abs() <= Z * se).all()

    assert within(result.total_bpd, prior + terms.sum())
    assert within(result.prior_bpd, prior)
    assert within(result.terms_bpd, terms)  # each of the T terms, Bonferroni: 100 x P(|z| > 5) < 1e-4


def test_batching_does_not_change_a_deterministic_bound(gen):
    s = NoiseSchedule.linear(T=50, beta_1=1e-3, beta_T=0.3)
    x_star = grid_image(gen)
    oracle = ddpm.MemorizingOracle(s, x_star)
    x0 = x_star.expand(3, -1, -1, -1).contiguous()
    a = ddpm.vlb(s, oracle, x0, batch_size=3)
    b = ddpm.vlb(s, oracle, x0, batch_size=10_000)
    assert torch.allclose(a.terms_bpd, b.terms_bpd, rtol=1e-12)


def test_model_calls_are_batched():
    s = NoiseSchedule.linear(T=100)
    calls = []

    def model(x, t):
        calls.append(len(t))
        return torch.zeros_like(x)

    ddpm.vlb(s, model, GRID[:64].reshape(4, 1, 4, 4), batch_size=200)
    assert len(calls) == 2 and sum(calls) == 400  # 50 timesteps x 4 images per call


def test_eps_mse_is_zero_for_the_oracle(gen):
    s = NoiseSchedule.linear(T=20, beta_1=1e-3, beta_T=0.3)
    x_star = grid_image(gen)
    result = ddpm.vlb(s, ddpm.MemorizingOracle(s, x_star), x_star[None])
    assert result.eps_mse.max() < 1e-20


def test_bad_input():
    s = NoiseSchedule.linear(T=10)
    zero = lambda x, t: torch.zeros_like(x)
    with pytest.raises(ValueError, match="256-level grid"):
        ddpm.vlb(s, zero, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="shape \\[B, ...\\]"):
        ddpm.vlb(s, zero, torch.zeros(3))
    with pytest.raises(ValueError, match="eps_model returned shape"):
        ddpm.vlb(s, lambda x, t: x[:, :1], torch.full((2, 3), -1.0))
    with pytest.raises(ValueError, match="'fixedlarge' or 'fixedsmall'"):
        ddpm.vlb(s, zero, torch.full((2, 3), -1.0), variance="large")
