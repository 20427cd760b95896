"""A network that outputs ε, μ̃, x_0 or v: the four describe one reverse step, so they must agree everywhere."""

import math

import pytest
import torch

import ddpm
from ddpm import NoiseSchedule
from ddpm.parameterization import AsEpsModel, eps_from_output, prediction_from_output, target

D = 6


def models(s, gen):
    """An arbitrary ε-model (a random t-dependent linear map) and the μ̃-, x_0- and v-models that encode the same
    prediction, each built from Eqs. 4 and 7 and v = √ᾱ ε − √(1 − ᾱ) x_0 written out with ᾱ and β (not with the
    code under test)."""
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

    def v(x, t):
        ab = col(s.alpha_bars, t)
        return ab.sqrt() * eps(x, t) - (1 - ab).sqrt() * x0(x, t)

    return {"eps": eps, "mu": mu, "x0": x0, "v": v}


OTHERS = ("mu", "x0", "v")  # the parameterizations checked against "eps"


def grid(gen, n):
    return torch.randint(0, 256, (n, D), generator=gen).double() / 127.5 - 1


def test_every_parameterization_gives_back_the_same_eps(gen):
    s = NoiseSchedule.linear(T=1000)
    nets = models(s, gen)
    x = torch.randn(200, D, generator=gen, dtype=torch.float64)
    t = torch.randint(1, s.T + 1, (200,), generator=gen)
    t[:2] = torch.tensor([1, s.T])  # both ends
    eps = nets["eps"](x, t)
    for p in OTHERS:
        assert torch.allclose(ddpm.as_eps_model(s, nets[p], p)(x, t), eps, rtol=1e-7, atol=1e-9), p
    assert ddpm.as_eps_model(s, nets["eps"], "eps") is nets["eps"]


def test_the_true_bound_is_the_same_for_the_four(gen):
    s = NoiseSchedule.linear(T=1000)
    nets = models(s, gen)
    x0 = grid(gen, 64)
    t = torch.randint(1, s.T + 1, (64,), generator=gen)
    t[0] = 1  # the decoder term
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    for variance in ("fixedlarge", "fixedsmall"):
        losses = {p: ddpm.l_vlb(s, net, x0, t, noise, variance, parameterization=p).item()
                  for p, net in nets.items()}
        for p in OTHERS:
            assert losses[p] == pytest.approx(losses["eps"], rel=1e-8), (p, variance)


def test_unclipped_the_full_bound_and_the_samples_are_the_same_for_the_four(seed):
    """With clip_denoised=False the four are one reverse step (with clipping they differ: the μ̃-network's
    mean is its output, the others' mean is rebuilt from a clipped x̂_0; see the tests below)."""
    s = NoiseSchedule.linear(T=50, beta_1=1e-3, beta_T=0.3)
    nets = models(s, torch.Generator().manual_seed(seed))
    x0 = grid(torch.Generator().manual_seed(seed), 4)
    results = {}
    for p, net in nets.items():
        model = ddpm.as_eps_model(s, net, p)
        b = ddpm.vlb(s, model, x0, clip_denoised=False, generator=torch.Generator().manual_seed(seed))
        x = ddpm.sample(s, model, (8, D), clip_denoised=False, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
        results[p] = b.total_bpd, x
    for p in OTHERS:
        assert torch.allclose(results[p][0], results["eps"][0], rtol=1e-8), p
        assert torch.allclose(results[p][1], results["eps"][1], rtol=1e-7, atol=1e-9), p


def off_range_networks(s, x_star):
    """An x̂_0 that leaves [-1, 1] wherever the image x_star is at ±1 (x_star + 0.02 sin(9 x_t + t)), as the
    x_0-, ε- and μ̃-networks that output it, each written out with ᾱ and β (Eqs. 4 and 7), not with the code
    under test. The μ̃-network is not built from an ε-network, so it sees whether its output is kept."""
    def at(values, t):
        return values[t].reshape(-1, 1, 1, 1)

    def x0(x, t):
        return x_star.repeat(len(x) // len(x_star), 1, 1, 1) + 0.02 * torch.sin(9 * x + t.reshape(-1, 1, 1, 1))

    def eps(x, t):
        ab = at(s.alpha_bars, t)
        return (x - ab.sqrt() * x0(x, t)) / (1 - ab).sqrt()

    def mu(x, t):
        ab, ab_prev, beta = at(s.alpha_bars, t), at(s.alpha_bars, t - 1), at(s.betas, t)
        return (ab_prev.sqrt() * beta * x0(x, t) + (1 - ab_prev) * (1 - beta).sqrt() * x) / (1 - ab)

    return {"eps": eps, "mu": mu, "x0": x0}


def digit_setup(n=8, dtype=torch.float64):
    s = NoiseSchedule.linear(T=1000)
    x_star = ddpm.digits("test")[:n].to(dtype)
    t = torch.tensor([1, 2, 10, 300, 700, 999, 1000, 500])[:n]
    xt = ddpm.q_sample(s, x_star, t, torch.randn(x_star.shape, generator=torch.Generator().manual_seed(0), dtype=dtype))
    return s, x_star, t, xt


def test_a_mu_network_s_output_is_its_mean_whatever_the_clipping():
    """The original's "xprev" (diffusion_utils_2.py, p_mean_variance): model_mean = model_output; clipping
    changes only the reported x̂_0. So the mean is the output bit for bit, and the bound and the samples do
    not depend on clip_denoised."""
    s, x_star, t, xt = digit_setup()
    mu = off_range_networks(s, x_star)["mu"]
    model = ddpm.as_eps_model(s, mu, "mu")
    unclipped = ddpm.p_mean_variance(s, model, xt, t, clip_denoised=False).pred_x0
    assert unclipped.abs().max() > 1.01  # clipping x̂_0 would change the mean here
    for clip in (True, False):
        step = ddpm.p_mean_variance(s, model, xt, t, clip_denoised=clip)
        assert torch.equal(step.mean, mu(xt, t)), clip
        assert torch.equal(step.pred_x0, unclipped.clamp(-1, 1) if clip else unclipped), clip
    bounds = [ddpm.vlb(s, model, x_star, clip_denoised=clip, generator=torch.Generator().manual_seed(1))
              for clip in (True, False)]
    assert torch.equal(bounds[0].terms_bpd, bounds[1].terms_bpd)
    short = NoiseSchedule.linear(T=20, beta_1=1e-3, beta_T=0.3)
    model = ddpm.as_eps_model(short, off_range_networks(short, x_star)["mu"], "mu")
    samples = [ddpm.sample(short, model, x_star.shape, clip_denoised=clip, generator=torch.Generator().manual_seed(2),
                           dtype=torch.float64) for clip in (True, False)]
    assert torch.equal(*samples)


def test_eps_and_x0_networks_still_clip_x0_before_the_mean():
    """The original's "eps" and "xstart": x̂_0 is clipped, then μ_θ = μ̃_t(x_t, x̂_0) (Eq. 7)."""
    s, x_star, t, xt = digit_setup()
    nets = off_range_networks(s, x_star)
    x0_hat = nets["x0"](xt, t)
    ab, ab_prev, beta = (v.reshape(-1, 1, 1, 1) for v in (s.alpha_bars[t], s.alpha_bars[t - 1], s.betas[t]))
    clipped_mean = (ab_prev.sqrt() * beta * x0_hat.clamp(-1, 1) + (1 - ab_prev) * (1 - beta).sqrt() * xt) / (1 - ab)
    for p in ("eps", "x0"):
        model = ddpm.as_eps_model(s, nets[p], p)
        step = ddpm.p_mean_variance(s, model, xt, t)
        assert torch.allclose(step.pred_x0, x0_hat.clamp(-1, 1), rtol=0, atol=1e-9), p  # float64 rounding of Eq. 4
        assert torch.allclose(step.mean, clipped_mean, rtol=0, atol=1e-12), p
        unclipped = ddpm.p_mean_variance(s, model, xt, t, clip_denoised=False).mean
        assert (unclipped - step.mean).abs().max() > 1e-6, p  # the clipping did change the mean


def test_an_x0_network_s_x0_is_its_output():
    """The original's "xstart": x̂_0 is the output itself (clipped or not), with no round trip through ε."""
    s, x_star, t, xt = digit_setup()
    x0 = off_range_networks(s, x_star)["x0"]
    model = ddpm.as_eps_model(s, x0, "x0")
    for clip in (True, False):
        expected = x0(xt, t).clamp(-1, 1) if clip else x0(xt, t)
        assert torch.equal(ddpm.p_mean_variance(s, model, xt, t, clip_denoised=clip).pred_x0, expected), clip


def test_the_reviews_mu_model_is_scored_the_same_with_and_without_clipping():
    """The code review's mu_clip.py (N4): μ = c1 (x_0 + 0.02 z) + c2 x_t on one digit, z ~ N(0, I) at every call.
    Its Σ L_(t−1) was 2.1058 bits/dim unclipped and 1.6894 with the default clipping; now both are 2.1058."""
    s = NoiseSchedule.linear()
    img = ddpm.digits("test")[:1].double()
    x0 = img.repeat(8, 1, 1, 1)
    g = torch.Generator()

    def mu_model(xt, t):
        z = torch.randn(xt.shape, generator=g, dtype=xt.dtype)
        c1, c2 = (v[t].reshape(-1, 1, 1, 1) for v in (s.posterior_mean_coef1, s.posterior_mean_coef2))
        return c1 * (img.expand_as(xt) + 0.02 * z) + c2 * xt

    model = ddpm.as_eps_model(s, mu_model, "mu")
    g.manual_seed(1)
    out = mu_model(x0, torch.full((8,), 700))
    g.manual_seed(1)
    assert torch.equal(ddpm.p_mean_variance(s, model, x0, torch.full((8,), 700)).mean, out)
    bounds = {}
    for clip in (False, True):
        g.manual_seed(2)
        bounds[clip] = ddpm.vlb(s, model, x0, "fixedlarge", clip_denoised=clip,
                                generator=torch.Generator().manual_seed(3))
    assert torch.equal(bounds[True].terms_bpd, bounds[False].terms_bpd)
    diffusion = bounds[True].terms_bpd[:, 1:].sum(1).mean().item()
    assert diffusion == pytest.approx(2.1058, abs=5e-5)  # the review's unclipped figure, printed to 4 decimals


@pytest.mark.parametrize("parameterization", ["mu", "x0"])
@pytest.mark.parametrize("t", [800, 1000, "800..1000"])
def test_a_bf16_output_is_converted_in_float32(parameterization, t, gen):
    """The conversion of a bf16 output (a network under autocast) runs in float32: it equals the conversion of
    the same values given in float32, bit for bit, even with x_t in bf16 too. Done in bf16 it would be off by
    0.14-0.17 RMS in ε at these t for "mu" (c1 x_0 is below μ̃'s bf16 rounding) and 2e-3 for "x0" (measured)."""
    s = NoiseSchedule.linear(T=1000)
    n = 64
    t = torch.linspace(800, 1000, n).round().long() if t == "800..1000" else t
    t_batch = t if isinstance(t, torch.Tensor) else torch.full((n,), t)
    x0 = grid(gen, n)[:, :, None, None].float()
    noise = torch.randn(x0.shape, generator=gen)
    xt = ddpm.q_sample(s, x0, t_batch, noise)
    out = target(s, parameterization, x0, xt, t_batch, noise).bfloat16()
    expected = eps_from_output(s, parameterization, xt, t, out.float())
    for xt_in in (xt, xt.bfloat16()):
        eps = eps_from_output(s, parameterization, xt_in, t, out)
        assert eps.dtype == torch.float32
        assert torch.equal(eps, eps_from_output(s, parameterization, xt_in.float(), t, out.float()))
    assert torch.equal(eps_from_output(s, parameterization, xt, t, out), expected)
    # the bar's power: the same conversion written out in bf16 arithmetic is far off
    c = {k: getattr(s, k)[t_batch].reshape(-1, 1, 1, 1).bfloat16() for k in
         ("posterior_mean_coef1", "posterior_mean_coef2", "sqrt_alpha_bars", "sqrt_one_minus_alpha_bars")}
    xt16 = xt.bfloat16()
    x0_16 = out if parameterization == "x0" else (out - c["posterior_mean_coef2"] * xt16) / c["posterior_mean_coef1"]
    eps16 = (xt16 - c["sqrt_alpha_bars"] * x0_16) / c["sqrt_one_minus_alpha_bars"]
    assert (eps16.float() - expected).abs().max() > 1e-3


def test_the_unweighted_mse_targets(gen):
    """‖μ̃ − μ_θ‖² = c_t² (1 − ᾱ_t)/ᾱ_t ‖ε − ε_θ‖² with c_t = √ᾱ_(t−1) β_t / (1 − ᾱ_t),
    ‖x_0 − x̂_0‖² = (1 − ᾱ_t)/ᾱ_t ‖ε − ε_θ‖², and ‖v − v̂‖² = ‖ε − ε_θ‖²/ᾱ_t (v − v̂ = √ᾱ_t (ε − ε̂) −
    √(1 − ᾱ_t)(x_0 − x̂_0) with x_0 − x̂_0 = −√((1 − ᾱ_t)/ᾱ_t)(ε − ε̂)): the same error, scaled per t."""
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
        v_err = ddpm.l_simple(s, nets["v"], x0, t, noise, parameterization="v")
        assert v_err.item() == pytest.approx((eps_err / ab).item(), rel=1e-7)


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
    with pytest.raises(ValueError, match=r"parameterization must be one of \('eps', 'mu', 'x0', 'v'\)"):
        ddpm.as_eps_model(s, lambda x, t: x, "velocity")
    with pytest.raises(ValueError, match="parameterization must be one of"):
        ddpm.l_simple(s, lambda x, t: x, torch.zeros(2, 3), parameterization="xstart")
    assert math.isfinite(ddpm.l_simple(s, lambda x, t: x, torch.zeros(2, 3), parameterization="mu").item())


# v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, §4) ----------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_network_that_outputs_the_true_v_gives_back_eps_and_x0(schedule, gen):
    """For random x_0, ε and t in float64 (both ends included, and the cosine schedule's last steps, where ᾱ_t
    falls to 2.4e-9), v and x_t written out here from ᾱ_t: the target is v, and a network that outputs it
    gives back ε and x_0 to 1e-12, in the conversion, the ε-model and the reverse step."""
    s = NoiseSchedule.linear(T=1000) if schedule == "linear" else NoiseSchedule.cosine(1000)
    n = 256
    x0 = torch.randn(n, 3, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.randint(1, s.T + 1, (n,), generator=gen)
    t[:6] = torch.tensor([1, 2, s.T - 2, s.T - 1, s.T, s.T])
    ab = s.alpha_bars[t].reshape(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    assert torch.allclose(target(s, "v", x0, xt, t, eps), v, rtol=0, atol=1e-15)
    pred = prediction_from_output(s, "v", xt, t, v)
    assert pred.mean is None and pred.eps.dtype == torch.float64
    assert (pred.eps - eps).abs().max() < 1e-12 and (pred.pred_x0 - x0).abs().max() < 1e-12
    model = ddpm.as_eps_model(s, lambda x, tt: v, "v")
    assert (model(xt, t) - eps).abs().max() < 1e-12
    step = ddpm.p_mean_variance(s, model, xt, t, clip_denoised=False)
    assert (step.pred_x0 - x0).abs().max() < 1e-12 and (step.eps - eps).abs().max() < 1e-12


def test_the_gaussian_data_oracle_as_a_v_model_has_the_same_bound(gen):
    """ddpm.GaussianData's exact ε-oracle made a v-oracle by v̂ = √ᾱ_t ε̂ − √(1 − ᾱ_t) x̂_0, x̂_0 = (x_t −
    √(1 − ᾱ_t) ε̂)/√ᾱ_t (Eq. 4), written out here: its bound through as_eps_model is the ε-oracle's, term by
    term, for the same draws, and both lie within 6 standard errors of the closed-form expected bound."""
    s = NoiseSchedule.linear(T=1000)
    data = ddpm.GaussianData(s, mean=0.3, std=0.5)

    def v_oracle(x, t):
        ab = s.alpha_bars[t].reshape(-1, *([1] * (x.dim() - 1)))
        eps = data(x, t)
        return ab.sqrt() * eps - (1 - ab).sqrt() * (x - (1 - ab).sqrt() * eps) / ab.sqrt()

    x0 = data.sample((32, 4), generator=gen)
    seed = int(torch.randint(2**31, (1,), generator=gen))
    bounds = {name: ddpm.vlb(s, model, x0, "fixedlarge", clip_denoised=False, discrete=False,
                             generator=torch.Generator().manual_seed(seed))
              for name, model in (("eps", data), ("v", ddpm.as_eps_model(s, v_oracle, "v")))}
    assert torch.allclose(bounds["v"].terms_bpd, bounds["eps"].terms_bpd, rtol=1e-9, atol=1e-12)
    assert torch.allclose(bounds["v"].total_bpd, bounds["eps"].total_bpd, rtol=1e-10, atol=0)
    prior, terms = data.expected_vlb_bpd("fixedlarge")
    expected = (prior + terms.sum()).item()
    total = bounds["v"].total_bpd
    assert abs(total.mean().item() - expected) < 6 * total.std().item() / math.sqrt(len(total))


@pytest.mark.parametrize("t", [1, 10, 300, 800, 1000])
def test_a_bf16_v_output_is_not_amplified(t, gen):
    """Why "v" may run in bf16 like "eps" (ddpm.config.resolve): ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂ and x̂_0 = √ᾱ_t x_t −
    √(1 − ᾱ_t) v̂ take v̂'s rounding with coefficients ≤ 1, so a v rounded to bf16 (relative error ≤ 2^-8) moves
    ε̂ and x̂_0 by at most 2^-8 max|v|, at every t, and the conversion itself runs in float32 (measured over 30
    seeds: up to 0.77 of the bar for ε̂, 0.99 for x̂_0 at t = 1000, where √(1 − ᾱ_t) ≈ 1 makes it tight). The bar
    has power where the other outputs leave a division: x̂_0 of an ε rounded to bf16 exceeds it 12-130 times at
    t = 800-1000 (÷ √ᾱ_t), ε̂ of a μ̃ rounded to bf16 22-150 times at every t here (÷ c1); we require 3 and 10."""
    s = NoiseSchedule.linear(T=1000)
    n = 64
    x0 = grid(gen, n)[:, :, None, None]
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    ab = s.alpha_bars[t]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    unit = 2.0 ** -8  # bf16 keeps 8 significant bits
    slack = 1e-6  # the float32 conversion
    pred = prediction_from_output(s, "v", xt.float(), t, v.bfloat16())
    assert pred.eps.dtype == pred.pred_x0.dtype == torch.float32
    assert (pred.eps.double() - eps).abs().max() <= unit * v.abs().max() + slack
    assert (pred.pred_x0.double() - x0).abs().max() <= unit * v.abs().max() + slack
    # the bar's power: where the other parameterizations divide, the same rounding is amplified past it
    if t >= 800:
        x0_of_eps = prediction_from_output(s, "eps", xt.float(), t, eps.bfloat16()).pred_x0.double()
        assert (x0_of_eps - x0).abs().max() > 3 * unit * eps.abs().max()
    mu = (s.alpha_bars[t - 1].sqrt() * s.betas[t] * x0 + (1 - s.alpha_bars[t - 1]) * s.alphas[t].sqrt() * xt) / (1 - ab)
    eps_of_mu = prediction_from_output(s, "mu", xt.float(), t, mu.bfloat16()).eps.double()
    assert (eps_of_mu - eps).abs().max() > 10 * unit * mu.abs().max()
