"""A network that outputs ε, μ̃ or x_0: the three describe one reverse step, so they must agree everywhere."""

import math

import pytest
import torch

import ddpm
from ddpm import NoiseSchedule
from ddpm.parameterization import AsEpsModel, eps_from_output, target

D = 6


def models(s, gen):
    """An arbitrary ε-model (a random t-dependent linear map) and the μ̃- and x_0-models that encode the same
    prediction, each built from Eqs. 4 and 7 written out with ᾱ and β (not with the code under test)."""
    W = torch.randn(D, D, generator=gen, dtype=torch.float64) * 0.3

    def eps(x, t):
        return x.flatten(1).tanh() @ W + 0.1 * torch.sin(t[:, None].to(x))

    def col(values, t):
        return values[t][:, None]

    def x0(x, t):
        ab = col(s.alpha_bars, t)
        return (x - (1 - ab).sqrt() * eps(x, t)) / ab.sqrt()

    def mu(x, t):
        ab, ab_prev, beta = col(s.alpha_bars, t), col(s.alpha_bars, t - 1), col(s.betas, t)
        return (ab_prev.sqrt() * beta * x0(x, t) + (1 - ab_prev) * (1 - beta).sqrt() * x) / (1 - ab)

    return {"eps": eps, "mu": mu, "x0": x0}


def grid(gen, n):
    return torch.randint(0, 256, (n, D), generator=gen).double() / 127.5 - 1


def test_every_parameterization_gives_back_the_same_eps(gen):
    s = NoiseSchedule.linear(T=1000)
    nets = models(s, gen)
    x = torch.randn(200, D, generator=gen, dtype=torch.float64)
    t = torch.randint(1, s.T + 1, (200,), generator=gen)
    t[:2] = torch.tensor([1, s.T])  # both ends
    eps = nets["eps"](x, t)
    for p in ("mu", "x0"):
        assert torch.allclose(ddpm.as_eps_model(s, nets[p], p)(x, t), eps, rtol=1e-7, atol=1e-9), p
    assert ddpm.as_eps_model(s, nets["eps"], "eps") is nets["eps"]


def test_the_true_bound_is_the_same_for_the_three(gen):
    s = NoiseSchedule.linear(T=1000)
    nets = models(s, gen)
    x0 = grid(gen, 64)
    t = torch.randint(1, s.T + 1, (64,), generator=gen)
    t[0] = 1  # the decoder term
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    for variance in ("fixedlarge", "fixedsmall"):
        losses = {p: ddpm.l_vlb(s, net, x0, t, noise, variance, parameterization=p).item()
                  for p, net in nets.items()}
        assert losses["mu"] == pytest.approx(losses["eps"], rel=1e-8)
        assert losses["x0"] == pytest.approx(losses["eps"], rel=1e-8)


def test_the_full_bound_and_the_samples_are_the_same_for_the_three(seed):
    s = NoiseSchedule.linear(T=50, beta_1=1e-3, beta_T=0.3)
    nets = models(s, torch.Generator().manual_seed(seed))
    x0 = grid(torch.Generator().manual_seed(seed), 4)
    results = {}
    for p, net in nets.items():
        model = ddpm.as_eps_model(s, net, p)
        b = ddpm.vlb(s, model, x0, generator=torch.Generator().manual_seed(seed))
        x = ddpm.sample(s, model, (8, D), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        results[p] = b.total_bpd, x
    for p in ("mu", "x0"):
        assert torch.allclose(results[p][0], results["eps"][0], rtol=1e-8), p
        assert torch.allclose(results[p][1], results["eps"][1], rtol=1e-7, atol=1e-9), p


def test_the_unweighted_mse_targets(gen):
    """‖μ̃ − μ_θ‖² = c_t² (1 − ᾱ_t)/ᾱ_t ‖ε − ε_θ‖² with c_t = √ᾱ_(t−1) β_t / (1 − ᾱ_t), and
    ‖x_0 − x̂_0‖² = (1 − ᾱ_t)/ᾱ_t ‖ε − ε_θ‖²: the same error, scaled per t (Eqs. 4 and 7)."""
    s = NoiseSchedule.linear(T=1000)
    nets = models(s, gen)
    x0 = grid(gen, 32)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    for t_value in (1, 2, 300, 1000):
        t = torch.full((32,), t_value)
        ab, ab_prev, beta = s.alpha_bars[t_value], s.alpha_bars[t_value - 1], s.betas[t_value]
        eps_err = ddpm.l_simple(s, nets["eps"], x0, t, noise)
        c = ab_prev.sqrt() * beta / (1 - ab)
        mu_err = ddpm.l_simple(s, nets["mu"], x0, t, noise, parameterization="mu")
        x0_err = ddpm.l_simple(s, nets["x0"], x0, t, noise, parameterization="x0")
        assert mu_err.item() == pytest.approx((c ** 2 * (1 - ab) / ab * eps_err).item(), rel=1e-7)
        assert x0_err.item() == pytest.approx(((1 - ab) / ab * eps_err).item(), rel=1e-7)


def test_target_of_a_perfect_model_is_zero_loss(gen):
    s = NoiseSchedule.linear(T=100)
    x0 = grid(gen, 16)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.randint(1, s.T + 1, (16,), generator=gen)
    xt = ddpm.q_sample(s, x0, t, noise)
    for p in ddpm.PARAMETERIZATIONS:
        out = target(s, p, x0, xt, t, noise)
        assert torch.allclose(eps_from_output(s, p, xt, t, out), noise, rtol=1e-8, atol=1e-8), p
        oracle = lambda x, tt, out=out: out
        assert ddpm.l_simple(s, oracle, x0, t, noise, parameterization=p).item() == 0.0


def test_the_adapter_carries_eval_mode_and_parameters():
    s = NoiseSchedule.linear(T=10)
    net = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.Dropout(0.5))
    wrapped = ddpm.as_eps_model(s, net, "x0")
    assert isinstance(wrapped, AsEpsModel) and len(list(wrapped.parameters())) == 2
    wrapped.eval()
    assert not net.training


def test_unknown_parameterization_is_a_one_line_error():
    s = NoiseSchedule.linear(T=10)
    with pytest.raises(ValueError, match=r"parameterization must be one of \('eps', 'mu', 'x0'\)"):
        ddpm.as_eps_model(s, lambda x, t: x, "v")
    with pytest.raises(ValueError, match="parameterization must be one of"):
        ddpm.l_simple(s, lambda x, t: x, torch.zeros(2, 3), parameterization="xstart")
    assert math.isfinite(ddpm.l_simple(s, lambda x, t: x, torch.zeros(2, 3), parameterization="mu").item())
