"""The forward process: the closed form q(x_t | x_0) (Eq. 4) against the chain of Eq. 2, and the naive process.

Tolerances: moments within 5 standard errors, KS tests at a per-test level of 1e-6. With about 50
checks per run the chance of a false failure is below 1e-4 for any seed.
"""

import math

import pytest
import torch
from scipy import stats

import ddpm
from ddpm import NoiseSchedule

Z = 5.0          # standard errors
KS_LEVEL = 1e-6  # per-test significance level


def moments_agree(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor):
    """Sample mean and variance of x (over dim 0) against Gaussian (mean, var), in standard errors."""
    n = x.shape[0]
    z_mean = (x.mean(0) - mean) / (var / n).sqrt()
    z_var = (x.var(0) - var) / (var * math.sqrt(2 / (n - 1)))
    return z_mean.abs().max().item(), z_var.abs().max().item()


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(), NoiseSchedule.cosine(1000)], ids=["linear", "cosine"])
def test_closed_form_matches_the_chain(schedule, gen):
    s, n = schedule, 4000
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0], dtype=torch.float64).expand(n, 4)
    checkpoints = {1, 10, 100, 500, 1000}
    x = x0
    for t in range(1, s.T + 1):
        x = ddpm.q_step(s, x, t, torch.randn(x.shape, generator=gen, dtype=x.dtype))
        if t not in checkpoints:
            continue
        mean, var = s.alpha_bars[t].sqrt() * x0[0], (1 - s.alpha_bars[t]).expand(4)
        z_mean, z_var = moments_agree(x, mean, var)
        assert z_mean < Z and z_var < Z, (t, z_mean, z_var)
        closed = ddpm.q_sample(s, x0, t, torch.randn(x0.shape, generator=gen, dtype=x0.dtype))
        for d in range(4):  # two-sample KS: chain draws against closed-form draws
            assert stats.ks_2samp(x[:, d].numpy(), closed[:, d].numpy()).pvalue > KS_LEVEL, (t, d)


def test_q_chain_returns_every_step(gen):
    s = NoiseSchedule.linear(T=20, beta_1=1e-3, beta_T=0.1)
    xs = ddpm.q_chain(s, torch.zeros(3, 2), generator=gen)
    assert xs.shape == (21, 3, 2) and torch.equal(xs[0], torch.zeros(3, 2))
    assert ddpm.q_chain(s, torch.zeros(3), steps=5).shape == (6, 3)


def test_one_step_of_the_closed_form_is_one_step_of_the_chain(gen):
    s = NoiseSchedule.linear()
    x0, eps = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    assert torch.allclose(ddpm.q_sample(s, x0, 1, eps), ddpm.q_step(s, x0, 1, eps))


def test_naive_noise_explodes_while_ddpm_converges(gen):
    """Seed 000's experiment: the additive process's std grows as sqrt(t) and never looks like N(0, 1)."""
    x0 = torch.linspace(-1, 1, 20_000, dtype=torch.float64)  # the pixels of an "image"
    steps = 500
    naive = ddpm.naive_chain(x0, steps, generator=gen)
    for t in range(1, steps + 1):
        # Var(x_t - x_0) = t: within Z standard errors at the steps we check
        if t in (1, 10, 100, 500):
            _, z_var = moments_agree((naive[t] - x0)[:, None], torch.zeros(1, dtype=torch.float64),
                                     torch.tensor([float(t)], dtype=torch.float64))
            assert z_var < Z, (t, z_var)
        assert stats.kstest(naive[t].numpy(), "norm").pvalue < KS_LEVEL, t  # rejected at every step
    s = NoiseSchedule.linear()
    x = x0
    for t in range(1, s.T + 1):
        x = ddpm.q_step(s, x, t, torch.randn(x.shape, generator=gen, dtype=x.dtype))
    # after T steps the pixel values are N(0, 1) up to sqrt(alpha_bar_T) x_0 ~ 0.006: KS cannot tell
    assert stats.kstest(x.numpy(), "norm").pvalue > KS_LEVEL


def test_shapes_must_match():
    s = NoiseSchedule.linear(T=10)
    with pytest.raises(ValueError, match="noise has shape"):
        ddpm.q_sample(s, torch.zeros(4, 3), 2, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        ddpm.q_sample(s, torch.zeros(4, 3), torch.tensor([1, 2, 3]), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"\{1, ..., T=10\}"):
        ddpm.q_sample(s, torch.zeros(4, 3), 0, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="sigma must be positive"):
        ddpm.naive_chain(torch.zeros(3), 5, sigma=0.0)
