"""Classifier-free guidance (ddpm/guidance.py, Ho & Salimans 2022, Eq. 6): against two explicit network calls,
linear in w for a model that is linear in its label's vector, the score of p(x | y)^(1+w) / p(x)^w for Gaussian
classes, one network call per step, every sampler, x_0 and v networks, bf16, and the errors."""

import math

import pytest
import torch
from torch import nn

import ddpm
from ddpm import NoiseSchedule, UNet, classifier_free_guidance
from ddpm.oracles import GaussianMixture
from ddpm.parameterization import eps_from_output
from ddpm.reverse import call_eps_model

K = 4


def conditional_unet(gen, **overrides) -> UNet:
    """A tiny class-conditional UNet with every weight moved off its initial value (so that it is not the all-zero
    output of a fresh network), in eval mode."""
    m = UNet.preset("tiny", num_classes=K, **overrides).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return m


def inputs(gen, batch=3):
    return torch.randn(batch, 1, 8, 8, generator=gen), torch.randint(1, 1001, (batch,), generator=gen)


class Counted(nn.Module):
    """A network that records the batch size of each call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.num_classes, self.batches = net, net.num_classes, []

    def forward(self, x, t, y=None):
        self.batches.append(len(x))
        return self.net(x, t, y)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("labels", ["int", "tensor"])
def test_guidance_is_eq_6_of_two_explicit_calls_in_one_call_of_the_doubled_batch(w, labels, gen):
    m = Counted(conditional_unet(gen))
    x, t = inputs(gen)
    y = 2 if labels == "int" else torch.tensor([0, 3, K])  # K: the null class for that row
    rows = torch.full((3,), y) if labels == "int" else y
    with torch.no_grad():
        conditional, unconditional = m.net(x, t, rows), m.net(x, t)
        guided = classifier_free_guidance(m, y, w)(x, t)
    assert (conditional - unconditional).abs().max() > 0.1  # the label matters
    torch.testing.assert_close(guided, (1 + w) * conditional - w * unconditional, rtol=0, atol=2e-5)
    assert m.batches == [3] if w == 0 else m.batches == [6]
    if w == 0:
        assert torch.equal(guided, conditional)
    if labels == "tensor":  # the null row is the unconditional model, to rounding
        torch.testing.assert_close(guided[2], unconditional[2], rtol=0, atol=2e-5)


class LinearInTheLabel(nn.Module):
    """ε(x, t, y) = a x + e_y: a model linear in its label's vector e_y (row K: the null class)."""

    num_classes = K

    def __init__(self, gen):
        super().__init__()
        self.a, self.e = 0.7, torch.randn(K + 1, 5, dtype=torch.float64, generator=gen)

    def forward(self, x, t, y):
        return self.a * x + self.e[y]


def test_guidance_of_a_model_linear_in_the_label_moves_along_the_label_difference(gen):
    """ε̃ = a x + e_y + w (e_y − e_∅): linear in w, exactly (in float64)."""
    m = LinearInTheLabel(gen)
    x, t, y = torch.randn(6, 5, dtype=torch.float64, generator=gen), torch.ones(6, dtype=torch.long), 1
    for w in (0.0, 0.5, 3.0, 10.0):
        expected = m.a * x + m.e[y] + w * (m.e[y] - m.e[K])
        torch.testing.assert_close(classifier_free_guidance(m, y, w)(x, t), expected, rtol=0, atol=1e-13)


class TwoGaussianClasses(nn.Module):
    """The exact ε of data from two Gaussian classes in 2-D: class k ~ N(m_k, s_k² I), each with probability 1/2.
    Label k gives ε*(x_t, t | k) of the class alone, the null label 2 that of the mixture, p(x_t)."""

    num_classes = 2

    def __init__(self, s):
        super().__init__()
        means, stds = [[1.5, 0.0], [-1.0, 0.5]], [0.3, 0.6]
        self.classes = [GaussianMixture(s, [m], [d]) for m, d in zip(means, stds)]
        self.mixture = GaussianMixture(s, means, stds)

    def forward(self, x, t, y):
        out = torch.empty_like(x)
        for k, oracle in enumerate([*self.classes, self.mixture]):
            out[y == k] = oracle(x[y == k], t[y == k])
        return out


@pytest.mark.parametrize("w", [0.0, 1.0, 4.0])
def test_guided_eps_is_the_score_of_the_tilted_density(w, gen):
    """Guidance samples p(x_t | y)^(1+w) / p(x_t)^w (Ho & Salimans 2022, §3.2): its ε is −√(1 − ᾱ_t) times the
    gradient of that log density, here by autograd of the two closed-form log densities."""
    s = NoiseSchedule.linear(100)
    m = TwoGaussianClasses(s)
    x = torch.randn(8, 2, dtype=torch.float64, generator=gen) * 1.5
    t = torch.randint(1, 101, (8,), generator=gen)
    for y in (0, 1):
        xr = x.clone().requires_grad_(True)
        log_tilted = (1 + w) * m.classes[y].log_density(xr, t) - w * m.mixture.log_density(xr, t)
        (score,) = torch.autograd.grad(log_tilted.sum(), xr)
        expected = -(1 - s.alpha_bars[t]).sqrt()[:, None] * score
        torch.testing.assert_close(classifier_free_guidance(m, y, w)(x, t), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("parameterization", ["x0", "v"])
def test_an_x0_or_v_network_is_guided_on_eps(parameterization, gen):
    """Guidance is defined on ε: each output becomes ε before the mix (the mixed x_0 or v itself, read as ε,
    would be far off). The conversion is affine in the output and the weights 1 + w and −w sum to 1, so mixing
    the raw outputs and converting after would give the same; what matters is that ε comes out."""
    s, m = NoiseSchedule.linear(1000), conditional_unet(gen)
    x, t = inputs(gen)
    with torch.no_grad():
        c, u = (eps_from_output(s, parameterization, x, t, m(x, t, y)) for y in (torch.full((3,), 1), None))
        guided = classifier_free_guidance(m, 1, 2.0, schedule=s, parameterization=parameterization)(x, t)
    torch.testing.assert_close(guided, 3 * c - 2 * u, rtol=0, atol=1e-4 * c.abs().max().item())
    with pytest.raises(ValueError, match="needs schedule="):
        classifier_free_guidance(m, 1, 2.0, parameterization=parameterization)


@pytest.mark.parametrize("sampler", ["sample", "sample_trajectory", "ddim_sample", "vlb"])
def test_every_sampler_takes_the_guided_model(sampler, gen):
    """w = 0 gives what the sampler gives with the conditional network itself (bit for bit); w = 2 something else."""
    s, m = NoiseSchedule.linear(20), conditional_unet(gen)
    x0 = torch.randint(0, 256, (2, 1, 8, 8), generator=gen) / 127.5 - 1  # on the 256-level grid

    def run(eps_model):
        g = torch.Generator().manual_seed(5)
        if sampler == "vlb":
            return ddpm.vlb(s, eps_model, x0, generator=g).total_bpd
        if sampler == "sample_trajectory":
            return ddpm.sample_trajectory(s, eps_model, (2, 1, 8, 8), steps=[10], generator=g).pred_x0
        return getattr(ddpm, sampler)(s, eps_model, (2, 1, 8, 8), generator=g)

    with torch.no_grad():
        plain = run(lambda x, t: m(x, t, torch.full((len(x),), 3)))
        assert torch.equal(run(classifier_free_guidance(m, 3, 0.0)), plain)
        guided = run(classifier_free_guidance(m, 3, 2.0))
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)


def test_the_guided_model_samples_with_the_networks_own_variance(gen):
    s, m = NoiseSchedule.linear(20), conditional_unet(gen)
    m.variance = "fixedsmall"
    guided = classifier_free_guidance(m, 1, 1.0)
    assert guided.variance == "fixedsmall" and dict(guided.named_children())["model"] is m
    with torch.no_grad():
        a = ddpm.sample(s, guided, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
        b = ddpm.sample(s, guided, (2, 1, 8, 8), "fixedsmall", generator=torch.Generator().manual_seed(0))
        c = ddpm.sample(s, guided, (2, 1, 8, 8), "fixedlarge", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, c)


class Bf16Net(nn.Module):
    """A network whose output is bfloat16 under autocast (a convolution's), and depends on the label."""

    num_classes = K

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t, y):
        return self.conv(x * (1 + y[:, None, None, None]))


def test_under_bf16_the_outputs_are_mixed_in_float32(gen):
    """``call_eps_model(..., bf16=True)`` runs the network in bf16; the mix (1 + w) c − w u, which cancels, runs
    in float32 on those outputs (in bf16 it would be off by ~2^-8 of (1 + w)|c|, ~1e-2 here)."""
    torch.manual_seed(0)
    m, w = Bf16Net(), 2.5
    x, t = torch.randn(4, 1, 8, 8, generator=gen), torch.ones(4, dtype=torch.long)
    with torch.no_grad():
        guided = call_eps_model(classifier_free_guidance(m, 1, w), x, t, bf16=True)
        with torch.autocast("cpu", torch.bfloat16):
            c, u = m(x, t, torch.full((4,), 1)), m(x, t, torch.full((4,), K))
    assert c.dtype == torch.bfloat16 and guided.dtype == torch.float32
    torch.testing.assert_close(guided, (1 + w) * c.float() - w * u.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("y, w, message", [
    (1, -0.5, "the guidance weight w must be a finite number >= 0"),
    (1, math.inf, "finite number >= 0"),
    (1, math.nan, "finite number >= 0"),
    (K + 1, 1.0, rf"labels must lie in 0..{K - 1} \(or {K}, the null class\); got \[{K + 1}\]"),
    (-1, 1.0, r"got \[-1\]"),
    (torch.tensor([0.0, 1.0]), 1.0, "y must be an int or an integer tensor"),
    (torch.tensor([[0, 1]]), 1.0, "shape \\(1, 2\\)"),
    ("3", 1.0, "y must be an int .* got str"),
])
def test_bad_labels_and_weights_are_refused_in_one_line(y, w, message, gen):
    with pytest.raises(ValueError, match=message) as error:
        classifier_free_guidance(conditional_unet(gen), y, w)
    assert "\n" not in str(error.value)


def test_a_network_without_classes_or_a_batch_of_another_size_is_refused(gen):
    with pytest.raises(ValueError, match="needs a class-conditional network, one with .num_classes"):
        classifier_free_guidance(UNet.preset("tiny"), 1, 1.0)
    x, t = inputs(gen)
    with pytest.raises(ValueError, match="y holds 2 labels for a batch of 3 images"):
        classifier_free_guidance(conditional_unet(gen), torch.tensor([0, 1]), 1.0)(x, t)
