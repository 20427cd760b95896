"""NoiseSchedule: the paper's index convention, the three schedules, the posterior coefficients."""

import math

import pytest
import torch

from ddpm import NoiseSchedule


def test_linear_matches_the_paper():
    s = NoiseSchedule.linear()
    assert s.T == 1000 and s.betas.dtype == torch.float64 and len(s.betas) == 1001
    assert s.betas[0] == 0 and s.alpha_bars[0] == 1  # index 0 is the clean data
    assert s.betas[1].item() == pytest.approx(1e-4) and s.betas[1000].item() == pytest.approx(0.02)
    assert torch.allclose(s.alpha_bars[1:], torch.cumprod(1 - s.betas[1:], 0), rtol=0, atol=1e-15)
    # sqrt(alpha_bar_T): the image is gone after T = 1000 steps, still visible after T = 200
    assert s.alpha_bars[-1].sqrt().item() == pytest.approx(0.006353, abs=5e-6)
    assert NoiseSchedule.linear(T=200).alpha_bars[-1].sqrt().item() == pytest.approx(0.3636, abs=5e-4)


def test_cosine_follows_nichol_dhariwal():
    T, s_off = 1000, 0.008
    s = NoiseSchedule.cosine(T)
    f = lambda t: math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2
    for t in (1, 10, 500, 900):  # unclipped region: alpha_bar_t = f(t) / f(0)
        assert s.alpha_bars[t].item() == pytest.approx(f(t) / f(0), rel=1e-12)
    assert s.betas.max().item() == pytest.approx(0.999)  # the last beta is clipped


def test_constant_and_custom():
    s = NoiseSchedule.constant(50, 0.1)
    assert torch.allclose(s.alpha_bars[1:], 0.9 ** torch.arange(1, 51, dtype=torch.float64))
    assert NoiseSchedule([0.5]).T == 1


def test_posterior_coefficients():
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    assert s.posterior_variance[1] == 0  # beta-tilde_1 = 0: x_0 is known given x_0
    t = torch.arange(2, 101)
    ab, ab_prev = s.alpha_bars[t], s.alpha_bars[t - 1]
    # beta-tilde_t = (1/(1 - ab_(t-1)) + alpha_t/beta_t)^-1, the precision form of Eq. 7
    expected = 1 / (1 / (1 - ab_prev) + s.alphas[t] / s.betas[t])
    assert torch.allclose(s.posterior_variance[t], expected, rtol=1e-12)
    # averaging the posterior mean over x_t ~ q(x_t | x_0) gives E[x_(t-1) | x_0] = sqrt(ab_(t-1)) x_0
    assert torch.allclose(s.posterior_mean_coef1[t] + s.posterior_mean_coef2[t] * ab.sqrt(), ab_prev.sqrt(),
                          rtol=1e-12)
    assert torch.isnan(s.posterior_variance[0])


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_model_variance_uses_beta_tilde_2_at_t_1(variance):
    s = NoiseSchedule.linear(T=10, beta_1=0.01, beta_T=0.2)
    var = s.model_variance(variance)
    assert var[1] == s.posterior_variance[2]
    expected = s.betas[2:] if variance == "fixedlarge" else s.posterior_variance[2:]
    assert torch.equal(var[2:], expected)


def test_snr_decreases():
    snr = NoiseSchedule.linear().snr
    assert torch.isinf(snr[0]) and (snr[1:].diff() < 0).all()


@pytest.mark.parametrize("betas, match", [
    ([0.1, 1.0], r"open interval \(0, 1\)"),
    ([0.0, 0.1], r"open interval \(0, 1\)"),
    ([-0.1], r"open interval \(0, 1\)"),
    ([float("nan")], r"open interval \(0, 1\)"),
    ([], "T >= 1"),
])
def test_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule(betas)


@pytest.mark.parametrize("make", [lambda: NoiseSchedule.linear(T=0), lambda: NoiseSchedule.cosine(T=-3),
                                  lambda: NoiseSchedule.constant(T=2.5, beta=0.1)])
def test_bad_T(make):
    with pytest.raises(ValueError, match="T, the number of diffusion steps"):
        make()


def test_bad_constant_beta():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        NoiseSchedule.constant(10, 1.5)


@pytest.mark.parametrize("t", [0, 11, -1, [1, 12], torch.tensor([0, 3])])
def test_timesteps_outside_1_to_T(t):
    with pytest.raises(ValueError, match=r"\{1, ..., T=10\}"):
        NoiseSchedule.linear(T=10).check_t(t)


def test_float_timesteps_rejected():
    with pytest.raises(ValueError, match="integers"):
        NoiseSchedule.linear(T=10).check_t(torch.tensor([1.5]))


def test_bad_variance_name():
    with pytest.raises(ValueError, match="'fixedlarge' or 'fixedsmall'"):
        NoiseSchedule.linear(T=10).model_variance("learned")


def test_schedule_on_the_data_device_needs_no_host_sync():
    """On the meta device any read back to the host (.item(), a copy to the CPU) raises: the training step's
    use of the schedule (q_sample, the eps-model call, L_simple, the reverse step) must never need one."""
    s = NoiseSchedule.linear().to("meta")
    assert s.device.type == "meta" and s.alpha_bars.dtype == torch.float64
    x0 = torch.empty(4, 3, 8, 8, device="meta")
    t = torch.empty(4, dtype=torch.long, device="meta")
    model = lambda x, tt: x * 0.5
    import ddpm
    assert ddpm.l_simple(s, model, x0, t, torch.empty_like(x0)).device.type == "meta"
    assert ddpm.p_mean_variance(s, model, x0, t).mean.device.type == "meta"


def test_to_keeps_the_values():
    s = NoiseSchedule.cosine(100)
    moved = s.to("cpu")
    assert moved is not s and torch.equal(moved.posterior_variance.nan_to_num(), s.posterior_variance.nan_to_num())


@pytest.mark.parametrize("make", [lambda: NoiseSchedule.linear(), lambda: NoiseSchedule.cosine(200)])
def test_cached_coefficients_equal_their_definitions(make):
    """The per-t coefficients computed once in __init__, against the formulas in Python floats."""
    s = make()
    for t in (1, 2, s.T // 2, s.T):
        ab = math.prod(1 - s.betas[k].item() for k in range(1, t + 1))
        expect = {"sqrt_alpha_bars": math.sqrt(ab), "sqrt_one_minus_alpha_bars": math.sqrt(1 - ab),
                  "log_one_minus_alpha_bars": math.log(1 - ab), "sqrt_recip_alpha_bars": ab ** -0.5,
                  "sqrt_recipm1_alpha_bars": math.sqrt(1 / ab - 1),
                  "sqrt_alphas": math.sqrt(1 - s.betas[t].item()), "sqrt_betas": math.sqrt(s.betas[t].item())}
        for name, value in expect.items():
            assert getattr(s, name)[t].item() == pytest.approx(value, rel=1e-9), (name, t)
            assert s.at(name, t, torch.zeros(1)) == getattr(s, name)[t].item()  # the host copy
        for variance in ("fixedlarge", "fixedsmall"):
            log_var = getattr(s, f"{variance}_log_variance")[t].item()
            assert log_var == pytest.approx(math.log(s.model_variance(variance)[t].item()), rel=1e-12)


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_one_int_t_gives_what_a_batch_of_t_gives(variance, gen):
    """The sampler's fast path (one Python int t, host-float coefficients) against the tensor path, to
    float32 rounding: both multiply the same float64 coefficient rounded to float32."""
    import ddpm
    s = NoiseSchedule.linear(T=100)
    x, noise = torch.randn(2, 5, 3, 3, generator=gen).unbind(0)
    model = lambda xt, tt: 0.3 * xt + tt.float().reshape(-1, 1, 1) / 100
    for t in (1, 2, 57, 100):
        batch = torch.full((5,), t)
        assert torch.equal(ddpm.q_sample(s, x, t, noise), ddpm.q_sample(s, x, batch, noise))
        one, many = ddpm.p_sample(s, model, x, t, noise, variance), ddpm.p_sample(s, model, x, batch, noise, variance)
        for a, b in zip(one, many):
            torch.testing.assert_close(a, b, rtol=2e-7, atol=2e-7)
    with pytest.raises(ValueError, match=r"\{1, ..., T=100\}"):
        ddpm.q_sample(s, x, 101, noise)
