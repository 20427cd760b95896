"""The Gaussian-mixture oracle's exact score, checked against autograd, finite differences and Monte Carlo.

Statistical checks allow Z = 5 standard errors: a false alarm has probability about 6e-7 per comparison,
under 1e-4 over every comparison in this file, for any seed.
"""

import math

import pytest
import torch

import ddpm
from ddpm import NoiseSchedule
from ddpm.oracles import GaussianMixture

Z = 5.0


@pytest.fixture
def mixture():
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    means = [[-1.0, 0.5, 0.0], [1.2, -0.3, 0.4], [0.0, 1.0, -1.0]]
    return GaussianMixture(s, means, [0.2, 0.5, 0.3], weights=[0.5, 0.3, 0.2])


def test_score_is_the_gradient_of_the_log_density(mixture, gen):
    t = torch.tensor([0, 1, 2, 5, 20, 50, 100, 100])
    x = torch.randn(len(t), 3, generator=gen, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(mixture.log_density(x, t).sum(), x)
    assert torch.allclose(mixture.score(x.detach(), t), grad, rtol=1e-10, atol=1e-12)


def test_score_matches_finite_differences(mixture, gen):
    t = torch.tensor([1, 10, 60, 100])
    x = torch.randn(len(t), 3, generator=gen, dtype=torch.float64)
    h = 1e-5
    numeric = torch.stack([(mixture.log_density(x + h * e, t) - mixture.log_density(x - h * e, t)) / (2 * h)
                           for e in torch.eye(3, dtype=torch.float64)], 1)
    assert torch.allclose(mixture.score(x, t), numeric, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [10, 40, 100])
def test_density_is_the_data_density_blurred_by_eq_4(mixture, t, gen):
    """q(x_t) = E_x0 N(x_t; √ᾱ_t x_0, (1 − ᾱ_t) I), estimated by Monte Carlo over the data."""
    n, ab = 200_000, mixture.s.alpha_bars[t]
    x0 = mixture.sample(n, gen)
    points = mixture.sample(4, gen) * ab.sqrt() + (1 - ab).sqrt() * torch.randn(4, 3, generator=gen,
                                                                                 dtype=torch.float64)
    d2 = torch.cdist(points, ab.sqrt() * x0).pow(2)  # [4, n]
    density = torch.exp(-d2 / (2 * (1 - ab))) / (2 * math.pi * (1 - ab)) ** 1.5
    estimate, se = density.mean(1), density.std(1) / math.sqrt(n)
    exact = mixture.log_density(points, torch.full((4,), t)).exp()
    assert ((estimate - exact).abs() < Z * se).all(), (estimate, exact, se)


def test_tweedie_posterior_mean(mixture, gen):
    """E[x_0 | x_t] by conditioning within components equals (x_t + (1 − ᾱ_t) ∇ log q(x_t)) / √ᾱ_t."""
    t = torch.tensor([1, 3, 10, 30, 70, 100])
    x = 1.5 * torch.randn(len(t), 3, generator=gen, dtype=torch.float64)
    ab = mixture.s.alpha_bars[t][:, None]
    tweedie = (x + (1 - ab) * mixture.score(x, t)) / ab.sqrt()
    assert torch.allclose(mixture.posterior_mean(x, t), tweedie, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t", [1, 5, 30, 100])
def test_eps_star_is_the_conditional_mean_of_the_noise(mixture, t, gen):
    """The residual ε − ε*(x_t) of the conditional mean is uncorrelated with every function of x_t."""
    s, n = mixture.s, 100_000
    x0 = mixture.sample(n, gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    xt = ddpm.q_sample(s, x0, t, eps)
    residual = eps - mixture(xt, torch.full((n,), t))
    features = [torch.ones(n, 1, dtype=torch.float64), xt, torch.tanh(3 * xt), xt[:, :1] * xt[:, 1:]]
    products = torch.cat([residual[:, :, None] * f[:, None, :] for f in features], 2).reshape(n, -1)
    z = products.mean(0) / (products.std(0) / math.sqrt(n))
    assert z.abs().max() < Z, z


def test_one_component_is_the_gaussian_data_oracle(gen):
    s = NoiseSchedule.linear(T=50, beta_1=1e-3, beta_T=0.3)
    mixture, gaussian = GaussianMixture(s, [[0.4, 0.4]], 0.3), ddpm.GaussianData(s, 0.4, 0.3)
    t = torch.arange(1, 51)
    x = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    assert torch.allclose(mixture(x, t), gaussian(x, t), rtol=1e-10, atol=1e-12)


def test_gaussians8_is_the_law_of_the_toy_set(gen):
    s = NoiseSchedule.linear(T=10)
    mixture, n = GaussianMixture.gaussians8(s), 50_000
    data = ddpm.toy_2d("gaussians8", n, gen).double()
    # mean log-likelihood of the toy points under the mixture = that of the mixture's own draws
    a, b = mixture.log_density(data, 0), mixture.log_density(mixture.sample(n, gen), 0)
    assert abs(a.mean() - b.mean()) < Z * math.sqrt(a.var() / n + b.var() / n)


@pytest.mark.parametrize("kwargs, message", [
    (dict(means=[0.0, 1.0], stds=1.0), "shape \\[K, D\\]"),
    (dict(means=[[0.0], [1.0]], stds=[1.0, -1.0]), "std must be positive"),
    (dict(means=[[0.0], [1.0]], stds=1.0, weights=[0.7, 0.7]), "summing to 1"),
])
def test_bad_mixtures_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(NoiseSchedule.linear(T=10), **kwargs)


def test_timesteps_out_of_range_are_refused(mixture):
    with pytest.raises(ValueError, match="timesteps must lie in"):
        mixture.score(torch.zeros(1, 3, dtype=torch.float64), 101)
