"""L_(t-1) as a weighted eps-MSE (Eq. 12) and L_simple (Eq. 14)."""

import math

import pytest
import torch

import ddpm
from ddpm import NoiseSchedule

Z = 5.0


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_weighted_eps_mse_plus_constant_is_the_kl(variance, gen):
    """For any eps-model (here a random linear map), Eq. 12 + D·C equals KL(q(x_(t-1)|x_t,x_0) || p_θ) exactly."""
    s = NoiseSchedule.linear()
    D = 6
    W = torch.randn(D, D, generator=gen, dtype=torch.float64) * 0.3
    model = lambda x, t: x @ W + 0.01 * t[:, None].to(x)
    x0 = torch.rand(32, D, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(32, D, generator=gen, dtype=torch.float64)
    t = torch.randint(2, s.T + 1, (32,), generator=gen)
    weighted = ddpm.weighted_eps_mse(s, model, x0, t, noise, variance)
    xt = ddpm.q_sample(s, x0, t, noise)
    step = ddpm.p_mean_variance(s, model, xt, t, variance, clip_denoised=False)
    mean, var = ddpm.q_posterior(s, x0, xt, t)
    kl = ddpm.normal_kl(mean, var.log(), step.mean, step.log_variance).sum(1)
    assert torch.allclose(weighted + D * ddpm.variance_mismatch(s, t, variance), kl, rtol=1e-9, atol=1e-12)


def test_eps_mse_weight_formula():
    s = NoiseSchedule.linear()
    t = torch.tensor([2, 500, 1000])
    w = ddpm.eps_mse_weight(s, t, "fixedlarge")  # sigma^2 = beta: beta / (2 alpha (1 - ab))
    assert torch.allclose(w, s.betas[t] / (2 * s.alphas[t] * (1 - s.alpha_bars[t])), rtol=1e-12)


def test_l_simple_of_the_optimal_model(gen):
    """For Gaussian data the optimal model's L_simple is E_t[Var(eps | x_t)] = E_t[ab s^2 / (ab s^2 + 1 - ab)]."""
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    data = ddpm.GaussianData(s, mean=-0.2, std=0.6)
    ab = s.alpha_bars[1:]
    expected = (ab * 0.36 / (ab * 0.36 + 1 - ab)).mean().item()
    per_batch = torch.stack([ddpm.l_simple(s, data, data.sample((256, 4), generator=gen), generator=gen)
                             for _ in range(200)])
    se = per_batch.std().item() / math.sqrt(len(per_batch))
    assert abs(per_batch.mean().item() - expected) < Z * se


def test_l_simple_draws_t_in_1_to_T():
    s = NoiseSchedule.linear(T=3, beta_1=0.1, beta_T=0.3)
    seen = set()

    def model(x, t):
        seen.update(t.tolist())
        return torch.zeros_like(x)

    for _ in range(50):
        ddpm.l_simple(s, model, torch.zeros(16, 2))
    assert seen == {1, 2, 3}


def test_l_simple_is_differentiable():
    s = NoiseSchedule.linear(T=10)
    lin = torch.nn.Linear(2, 2)
    loss = ddpm.l_simple(s, lambda x, t: lin(x), torch.randn(8, 2))
    loss.backward()
    assert lin.weight.grad is not None and loss.ndim == 0


def test_bad_shapes():
    s = NoiseSchedule.linear(T=10)
    with pytest.raises(ValueError, match="eps_model returned shape"):
        ddpm.l_simple(s, lambda x, t: x.sum(1), torch.randn(8, 2))
    with pytest.raises(ValueError, match=r"\{1, ..., T=10\}"):
        ddpm.l_simple(s, lambda x, t: x, torch.randn(8, 2), t=torch.zeros(8, dtype=torch.long))


def test_l_vlb_sums_to_the_bound_of_the_memorizing_oracle(gen):
    """With every t once, T · mean_t L_(t-1) is Σ L_(t-1): for the oracle that is its closed-form bound minus L_T."""
    s = NoiseSchedule.linear(T=200, beta_1=1e-3, beta_T=0.1)
    x_star = (torch.randint(0, 256, (1, 4, 4), generator=gen).double() / 127.5 - 1)
    oracle = ddpm.MemorizingOracle(s, x_star)
    t = torch.arange(1, s.T + 1)
    x0 = x_star.expand(s.T, -1, -1).contiguous()
    for variance in ("fixedlarge", "fixedsmall"):
        loss = ddpm.l_vlb(s, oracle, x0, t, torch.randn(x0.shape, generator=gen, dtype=x0.dtype), variance)
        prior, terms = oracle.vlb_bpd(variance)
        assert s.T * loss.item() == pytest.approx(terms.sum().item(), rel=1e-9)


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_l_vlb_is_one_term_in_bits_per_dim_without_a_factor_T(variance, gen):
    """The original's "kl" loss: L_(t-1) per dimension in bits, averaged over the batch, not T times it.

    Computed independently through Eq. 12: (weighted ε-MSE + D·C_t) / (D ln 2), for t ≥ 2 and any ε-model.
    """
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    D = 16
    W = torch.randn(D, D, generator=gen, dtype=torch.float64) * 0.3
    model = lambda x, t: x.flatten(1) @ W + 0.01 * t[:, None].to(x)
    x0 = torch.randint(0, 256, (32, D), generator=gen).double() / 127.5 - 1
    noise = torch.randn(32, D, generator=gen, dtype=torch.float64)
    t = torch.randint(2, s.T + 1, (32,), generator=gen)
    nats = ddpm.weighted_eps_mse(s, model, x0, t, noise, variance) + D * ddpm.variance_mismatch(s, t, variance)
    expected = (nats / (D * math.log(2))).mean()
    assert ddpm.l_vlb(s, model, x0, t, noise, variance).item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("loss", [ddpm.l_simple, ddpm.l_vlb])
def test_t_and_noise_are_drawn_on_the_data_device(loss, monkeypatch):
    """Drawn where x_0 lives, not on the CPU and copied (a blocking transfer on every call on a GPU)."""
    devices = []
    for name in ("randint", "randn"):
        real = getattr(torch, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            devices.append((_name, kwargs.get("device")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch, name, spy)
    s = NoiseSchedule.linear(T=10)
    x0 = torch.zeros(4, 3)
    loss(s, lambda x, t: torch.zeros_like(x), x0)
    assert devices == [("randint", x0.device), ("randn", x0.device)]


def test_l_vlb_has_finite_gradients_at_t_1():
    """At t = 1 the posterior variance is 0; the unused KL branch must not poison the decoder's gradient."""
    s = NoiseSchedule.linear(T=10, beta_1=1e-3, beta_T=0.2)
    lin = torch.nn.Linear(4, 4)
    x0 = torch.tensor([[-1.0, 1.0, 3 / 127.5 - 1, 200 / 127.5 - 1]]).repeat(10, 1)
    loss = ddpm.l_vlb(s, lambda x, t: lin(x), x0, torch.arange(1, 11), torch.randn(10, 4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().sum() > 0
