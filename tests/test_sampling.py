"""Ancestral sampling (Algorithm 2) and DDIM, checked against the exact law of their output for Gaussian data.

Z = 5 standard errors: a false alarm has probability about 6e-7 per comparison, for any seed."""

import math

import pytest
import torch

import ddpm
from ddpm import NoiseSchedule

Z = 5.0


def x0_hat_coefficients(s, mu, std, t):
    """For N(mu, std^2) data the optimal x̂_0(x_t) is k x_t + c: returns (k, c)."""
    ab = s.alpha_bars[t]
    k = ab.sqrt() * std ** 2 / (ab * std ** 2 + 1 - ab)
    return k, mu * (1 - k * ab.sqrt())


def algorithm_2_law(s, mu, std, variance):
    """(mean, variance) of Algorithm 2's output with the optimal eps-model: mu_θ = a x_t + b is linear, so
    the recursion m <- a m + b, v <- a^2 v + sigma^2 from (0, 1) is exact."""
    sigma2 = s.model_variance(variance)
    m, v = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for t in range(s.T, 0, -1):
        k, c = x0_hat_coefficients(s, mu, std, t)
        a = s.posterior_mean_coef1[t] * k + s.posterior_mean_coef2[t]
        m, v = a * m + s.posterior_mean_coef1[t] * c, a ** 2 * v + (sigma2[t] if t > 1 else 0.0)
    return m, v


def assert_law(x, m, v):
    """Each column's sample mean and variance within Z standard errors of (m, v)."""
    n = len(x)
    assert ((x.mean(0) - m).abs() < Z * (v / n).sqrt()).all(), (x.mean(0), m)
    assert ((x.var(0) - v).abs() < Z * v * math.sqrt(2 / (n - 1))).all(), (x.var(0), v)


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_sampler_output_has_the_exact_law(variance, gen):
    """With the optimal eps-model for N(mu, s^2), mu_θ(x_t) = a_t x_t + b_t is linear, so the sampler's output
    is Gaussian with mean and variance given by the recursion m <- a m + b, v <- a^2 v + sigma^2 from (0, 1)."""
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    mu, std = 0.4, 0.3
    data = ddpm.GaussianData(s, mu, std)
    m, v = algorithm_2_law(s, mu, std, variance)
    n = 20_000
    x = ddpm.sample(s, data, (n, 2), variance, clip_denoised=False, generator=gen, dtype=torch.float64)
    assert_law(x, m, v)
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


def ddim_law(s, mu, std, taus, eta):
    """(mean, variance) of DDIM's output for N(mu, std^2) data, written from Song et al.'s Eq. 12 with
    the optimal (linear) x̂_0: every step is x <- A x + B + sigma z, so the recursion is exact."""
    m, v = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for t, t_prev in zip(reversed(taus), reversed([0] + taus[:-1])):
        ab, ab_prev = s.alpha_bars[t], s.alpha_bars[t_prev]
        k, c = x0_hat_coefficients(s, mu, std, t)
        sigma2 = eta ** 2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        direction = (1 - ab_prev - sigma2).sqrt() / (1 - ab).sqrt()  # times eps = x_t - sqrt(ab) x̂_0
        a = ab_prev.sqrt() * k + direction * (1 - ab.sqrt() * k)
        b = ab_prev.sqrt() * c - direction * ab.sqrt() * c
        m, v = a * m + b, a ** 2 * v + sigma2
    return m, v


def test_ddim_with_eta_1_over_all_steps_is_algorithm_2(gen):
    """Song et al. §4.1: η = 1 makes σ_t^2 = β̃_t, so over all T steps DDIM is Algorithm 2 with fixedsmall."""
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    mu, std, n = 0.4, 0.3, 20_000
    data = ddpm.GaussianData(s, mu, std)
    x = ddpm.ddim_sample(s, data, (n, 2), eta=1.0, clip_denoised=False, generator=gen, dtype=torch.float64)
    assert_law(x, *algorithm_2_law(s, mu, std, "fixedsmall"))
    # draw by draw: the same noises give the same path as ddpm.sample
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    model = lambda x, t: torch.tanh(x) + 0.01 * t[:, None]  # any eps-model, clipping on
    a = ddpm.ddim_sample(s, model, (64, 3), eta=1.0, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
    b = ddpm.sample(s, model, (64, 3), "fixedsmall", generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    assert torch.allclose(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("eta, steps", [(0.0, 10), (0.0, 100), (0.5, 7), (1.0, [3, 20, 50, 100])])
def test_ddim_output_has_the_exact_law(eta, steps, gen):
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    mu, std, n = -0.2, 0.5, 20_000
    taus = ddpm.ddim_timesteps(s, steps)
    x = ddpm.ddim_sample(s, ddpm.GaussianData(s, mu, std), (n, 2), steps, eta, clip_denoised=False,
                         generator=gen, dtype=torch.float64)
    assert_law(x, *ddim_law(s, mu, std, taus, eta))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_one_ddim_step_has_eq_12s_moments(eta, gen):
    """From one fixed x_t, x_(t_prev) ~ N(√ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε_θ, σ²) with Song et al.'s σ."""
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    t, t_prev, n = 60, 35, 20_000
    model = lambda x, tt: 0.3 * x + 0.1
    xt = torch.full((n, 2), 0.7, dtype=torch.float64)
    noise = torch.randn(xt.shape, generator=gen, dtype=torch.float64)
    x, x0_hat = ddpm.ddim_step(s, model, xt, t, t_prev, eta, noise, clip_denoised=False)
    ab, ab_prev = s.alpha_bars[t], s.alpha_bars[t_prev]
    var = eta ** 2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    eps = 0.3 * 0.7 + 0.1
    assert torch.allclose(x0_hat, (0.7 - (1 - ab).sqrt() * eps) / ab.sqrt())
    mean = ab_prev.sqrt() * x0_hat[0, 0] + (1 - ab_prev - var).sqrt() * eps
    if eta == 0:
        assert torch.allclose(x, mean.expand_as(x), rtol=0, atol=1e-12)
    else:
        assert_law(x, mean, var)


def test_ddim_with_eta_0_is_deterministic_given_x_T(gen):
    s = NoiseSchedule.linear(T=50, beta_1=1e-3, beta_T=0.3)
    model = lambda x, t: torch.sin(x) * 0.5
    x_T = torch.randn(16, 2, generator=gen)
    runs = [ddpm.ddim_sample(s, model, x_T.shape, 10, 0.0, x_T=x_T, generator=torch.Generator().manual_seed(i))
            for i in range(2)]
    assert torch.equal(*runs)
    other = ddpm.ddim_sample(s, model, x_T.shape, 10, 0.0, x_T=-x_T)
    assert not torch.allclose(runs[0], other)


def test_ddim_timesteps():
    s = NoiseSchedule.linear(T=1000)
    assert ddpm.ddim_timesteps(s, 10) == list(range(100, 1001, 100))
    assert ddpm.ddim_timesteps(s, None) == list(range(1, 1001))
    assert ddpm.ddim_timesteps(s, 1000) == list(range(1, 1001))
    with pytest.raises(ValueError, match="1..T=1000"):
        ddpm.ddim_timesteps(s, 0)
    with pytest.raises(ValueError, match="strictly increasing"):
        ddpm.ddim_timesteps(s, [5, 5, 10])
    with pytest.raises(ValueError, match="earlier t_prev"):
        ddpm.ddim_step(s, lambda x, t: x, torch.zeros(1, 1), 5, 5, 0.0, torch.zeros(1, 1))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddpm.ddim_sample(s, lambda x, t: x, (1, 1), eta=-1.0)


def nonlinear(x, t):
    return torch.tanh(2 * x) * 0.7 + 0.01 * t[:, None]  # any eps-model; clipping on by default


def test_a_given_x_T_continues_the_generator(gen):
    """x_T drawn first from the generator, then passed: the same sample as when the sampler draws x_T itself."""
    s = NoiseSchedule.linear(T=30, beta_1=1e-3, beta_T=0.3)
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    drawn = ddpm.sample(s, nonlinear, (16, 3), generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(16, 3, generator=g)
    assert torch.equal(ddpm.sample(s, nonlinear, (16, 3), generator=g, x_T=x_T), drawn)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(16, 3, generator=g)
    assert torch.equal(ddpm.sample(s, nonlinear, None, generator=g, x_T=x_T, start_t=s.T), drawn)


def aligned(seed, shape, draws):
    """A generator that has made ``draws`` draws of ``shape``, as the sampler has after x_T and those steps."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(draws):
        torch.randn(shape, generator=g)
    return g


@pytest.mark.parametrize("k", [1, 2, 17, 30])
def test_starting_at_t_reproduces_the_tail_of_a_full_run(k, gen):
    """Started at t = k from the full run's x_k, with the generator past x_T and the noises of steps T..k+1,
    the sampler retraces that run: the same x_(k-1), ..., x_0 bit for bit. An off-by-one in the start step
    (x_k taken as x_(k+1) or x_(k-1)) or in the noise draws would not."""
    s = NoiseSchedule.linear(T=30, beta_1=1e-3, beta_T=0.3)
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    shape = (16, 3)
    full = ddpm.sample_trajectory(s, nonlinear, shape, steps=range(1, k + 1),
                                  generator=torch.Generator().manual_seed(seed))
    x_k = full.xt[0]
    tail = ddpm.sample_trajectory(s, nonlinear, None, steps=range(1, k + 1), x_T=x_k, start_t=k,
                                  generator=aligned(seed, shape, 1 + s.T - k))
    assert tail.steps == full.steps and torch.equal(tail.xt, full.xt) and torch.equal(tail.pred_x0, full.pred_x0)
    assert torch.equal(tail.x0, full.x0)
    g = aligned(seed, shape, 1 + s.T - k)
    assert torch.equal(ddpm.sample(s, nonlinear, shape, x_T=x_k, start_t=k, generator=g), full.x0)
    # the check's power: one step off, or one noise draw off (where a step adds noise: k ≥ 2), gives another x_0
    for start_t, draws in ((k + 1, 1 + s.T - k), (k - 1, 1 + s.T - k), (k, s.T - k), (k, 2 + s.T - k)):
        if 1 <= start_t <= s.T and (start_t != k or k >= 2):
            other = ddpm.sample(s, nonlinear, shape, x_T=x_k, start_t=start_t, generator=aligned(seed, shape, draws))
            assert (other - full.x0).abs().max() > 1e-3, (start_t, draws)


def test_start_state_errors():
    s = NoiseSchedule.linear(T=30)
    with pytest.raises(ValueError, match="needs x_T"):
        ddpm.sample(s, nonlinear, (2, 3), start_t=10)
    with pytest.raises(ValueError, match="differ"):
        ddpm.sample(s, nonlinear, (2, 4), x_T=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="1..start_t = 10"):
        ddpm.sample_trajectory(s, nonlinear, None, steps=[11], x_T=torch.zeros(2, 3), start_t=10)
    with pytest.raises(ValueError, match="timesteps must lie in"):
        ddpm.sample(s, nonlinear, None, x_T=torch.zeros(2, 3), start_t=31)
    with pytest.raises(ValueError, match="differ"):
        ddpm.ddim_sample(s, nonlinear, (2, 4), x_T=torch.zeros(2, 3))


class WithVariance(torch.nn.Module):
    """An ε-network that carries its sampling variance, as ``UNet.from_pretrained`` leaves a released model."""

    def __init__(self, variance):
        super().__init__()
        self.variance = variance

    def forward(self, x, t):
        return nonlinear(x, t)


@pytest.mark.parametrize("own", ["fixedsmall", "fixedlarge"])
def test_variance_none_is_the_models_own(own, gen):
    s = NoiseSchedule.linear(T=30, beta_1=1e-3, beta_T=0.3)
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    other = "fixedlarge" if own == "fixedsmall" else "fixedsmall"

    def draw(model, *variance, **kwargs):
        return ddpm.sample(s, model, (16, 3), *variance, generator=torch.Generator().manual_seed(seed), **kwargs)

    expected, unexpected = draw(nonlinear, own), draw(nonlinear, other)
    assert (expected - unexpected).abs().max() > 1e-3  # the two variances do give other samples
    net = WithVariance(own)

    def x0_output(x, t):  # the same prediction as x_0 (Eq. 4 solved for x_0)
        ab = s.alpha_bars[t][:, None].to(x)
        return (x - (1 - ab).sqrt() * nonlinear(x, t)) / ab.sqrt()

    x0_net = ddpm.as_eps_model(s, x0_output, "x0")
    x0_output.variance = own  # a network that carries a variance: the wrapper passes it through
    assert x0_net.variance == own and ddpm.as_eps_model(s, nonlinear, "x0").variance is None
    for model in (net, x0_net):
        # float32 rounding of Eq. 4 solved for x_0, then for ε (the x0-network): a few ulps of |x| ≲ 4
        assert torch.allclose(draw(model), expected, rtol=0, atol=1e-5), model
        assert torch.allclose(draw(model, None), expected, rtol=0, atol=1e-5)
        assert torch.allclose(draw(model, other), unexpected, rtol=0, atol=1e-5)
        traj = ddpm.sample_trajectory(s, model, (16, 3), generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(traj.x0, expected, rtol=0, atol=1e-5)
    assert torch.equal(draw(nonlinear), draw(nonlinear, "fixedlarge"))  # no .variance: fixedlarge
    x = torch.randn(16, 3, generator=gen)
    noise = torch.randn(16, 3, generator=gen)
    assert torch.equal(ddpm.p_sample(s, net, x, 12, noise)[0], ddpm.p_sample(s, net, x, 12, noise, own)[0])
    assert not torch.equal(ddpm.p_sample(s, net, x, 12, noise)[0], ddpm.p_sample(s, net, x, 12, noise, other)[0])
    with pytest.raises(ValueError, match="variance must be"):
        draw(WithVariance("learned"))


def test_a_released_model_samples_with_its_own_variance(tmp_path, gen):
    """UNet.from_pretrained reads the scheduler's variance into ``.variance``; ``sample`` then uses it."""
    s = NoiseSchedule.linear(T=10)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    net = ddpm.UNet.preset("tiny", in_channels=1, image_size=8, t_offset=1, downsample_padding="tf_same").eval()
    with torch.no_grad():  # the output layer starts at zero (as in the original): give it weights
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    released = ddpm.UNet.from_pretrained(ddpm.save_pretrained(net, tmp_path, s, "fixedsmall"))
    assert released.variance == "fixedsmall"

    def draw(*variance):
        return ddpm.sample(released.schedule, released, (4, 1, 8, 8), *variance,
                           generator=torch.Generator().manual_seed(0))

    assert torch.equal(draw(), draw("fixedsmall")) and not torch.equal(draw(), draw("fixedlarge"))
