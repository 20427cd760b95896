"""normal_kl, the discretized decoder L_0 (Eq. 13) and the prior term L_T."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import ddpm
from ddpm import NoiseSchedule

Z = 5.0
GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1


@pytest.mark.parametrize("m1, v1, m2, v2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0), (1.0, 0.01, 0.9, 0.02),
                                            (-2.0, 3.0, 1.0, 0.7)])
def test_normal_kl_matches_monte_carlo(m1, v1, m2, v2, gen):
    n = 400_000
    x = m1 + math.sqrt(v1) * torch.randn(n, generator=gen, dtype=torch.float64)
    log_ratio = (torch.distributions.Normal(m1, math.sqrt(v1)).log_prob(x)
                 - torch.distributions.Normal(m2, math.sqrt(v2)).log_prob(x))
    kl = ddpm.normal_kl(torch.tensor(m1), math.log(v1), m2, math.log(v2)).item()
    se = log_ratio.std().item() / math.sqrt(n)
    assert abs(log_ratio.mean().item() - kl) <= Z * se + 1e-12


def test_normal_kl_broadcasts_and_rejects_mismatch():
    kl = ddpm.normal_kl(torch.zeros(4, 3), torch.zeros(3), 0.0, torch.zeros(4, 1))
    assert kl.shape == (4, 3) and torch.all(kl == 0)
    with pytest.raises(ValueError, match="shapes do not broadcast"):
        ddpm.normal_kl(torch.zeros(4, 3), torch.zeros(2), 0.0, 0.0)


def test_decoder_probabilities_sum_to_one(gen):
    means = torch.cat([torch.rand(200, generator=gen, dtype=torch.float64) * 6 - 3,
                       torch.tensor([-1.0, 1.0, 0.0, 40.0, -40.0], dtype=torch.float64)])
    log_scales = torch.cat([torch.rand(200, generator=gen, dtype=torch.float64) * 10 - 8,
                            torch.tensor([-12.0, 3.0, -5.0, 0.0, 0.0], dtype=torch.float64)])
    logp = ddpm.discretized_gaussian_log_likelihood(GRID[None, :], means[:, None], log_scales[:, None])
    total = logp.exp().sum(1)
    assert (total - 1).abs().max().item() < 1e-6
    assert torch.isfinite(logp).all()  # even 40 standard deviations out, no -inf


def test_decoder_bins_against_scipy(gen):
    """Interior bins are [x - 1/255, x + 1/255]; the end bins are open to -inf at x = -1 and +inf at x = +1."""
    mean, scale = 0.1, 0.05
    logp = ddpm.discretized_gaussian_log_likelihood(GRID, mean, math.log(scale)).numpy()
    norm = stats.norm(loc=mean, scale=scale)
    x = GRID.numpy()
    # difference of CDFs below the mean, of survival functions above it (no cancellation in either tail)
    expected = np.where(x < mean, norm.cdf(x + 1 / 255) - norm.cdf(x - 1 / 255),
                        norm.sf(x - 1 / 255) - norm.sf(x + 1 / 255))
    expected[0], expected[-1] = norm.cdf(-1 + 1 / 255), norm.sf(1 - 1 / 255)
    assert np.allclose(logp, np.log(expected), rtol=1e-9, atol=0)


def test_decoder_works_in_float32():
    x = torch.tensor([-1.0, 128 / 127.5 - 1, 1.0])
    out = ddpm.discretized_gaussian_log_likelihood(x, torch.zeros(3), torch.full((3,), -3.0))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("bad", [0.5, 1.01, float("nan")])
def test_decoder_rejects_data_off_the_grid(bad):
    with pytest.raises(ValueError, match="256-level grid"):
        ddpm.discretized_gaussian_log_likelihood(torch.tensor([0.0, bad]), 0.0, 0.0)


def test_prior_term_of_the_paper_schedule_is_about_1e_5_bits_per_dim(gen):
    s = NoiseSchedule.linear()
    ab = s.alpha_bars[-1].item()
    # x_0 = ±1: KL(N(±sqrt(ab), 1 - ab) || N(0, 1)) = -log(1 - ab)/2 nats per dimension
    corners = ddpm.prior_bpd(s, torch.tensor([[1.0, -1.0]], dtype=torch.float64))
    assert corners.item() == pytest.approx(-math.log1p(-ab) / 2 / math.log(2), rel=1e-9)
    images = GRID[torch.randint(0, 256, (8, 3, 16, 16), generator=gen)]
    bpd = ddpm.prior_bpd(s, images)
    assert bpd.shape == (8,) and ((bpd > 1e-6) & (bpd < 3e-5)).all()


def test_prior_term_of_float32_images_is_computed_in_float64():
    s = NoiseSchedule.linear()
    x = torch.tensor([[1.0, -1.0, 0.0, 0.5]])
    # per dimension, KL(N(sqrt(ab) x, 1 - ab) || N(0, 1)) = (ab x^2 - ab - log(1 - ab)) / 2 nats
    ab = math.prod(1 - b for b in torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64).tolist())
    nats = [(ab * v * v - ab - math.log1p(-ab)) / 2 for v in x[0].tolist()]
    expected = sum(nats) / len(nats) / math.log(2)
    got = ddpm.prior_bpd(s, x)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(expected, rel=1e-9)
