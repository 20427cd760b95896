"""The variational bound of Ho et al. (2020), Eq. 5: L = L_T + Σ_(t>1) L_(t-1) + L_0, in bits/dim."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .forward import q_sample
from .posterior import q_posterior
from .reverse import EpsModel, p_mean_variance, timesteps_like
from .schedule import NoiseSchedule, extract

BIN_HALF_WIDTH = 1 / 255  # the 256 levels k/127.5 - 1 are 2/255 apart


def _as_tensors(*values):
    ref = next((v for v in values if isinstance(v, Tensor) and v.is_floating_point()), None)
    dtype = ref.dtype if ref is not None else torch.float64
    tensors = [torch.as_tensor(v, dtype=dtype, device=None if ref is None else ref.device) for v in values]
    try:
        torch.broadcast_shapes(*(v.shape for v in tensors))
    except RuntimeError:
        raise ValueError("shapes do not broadcast: " + ", ".join(str(tuple(v.shape)) for v in tensors)) from None
    return tensors


def normal_kl(mean1, logvar1, mean2, logvar2) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    mean1, logvar1, mean2, logvar2 = _as_tensors(mean1, logvar1, mean2, logvar2)
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def check_on_grid(x: Tensor) -> None:
    """Raise unless every value of ``x`` is one of the 256 levels k/127.5 − 1, k ∈ {0, …, 255}."""
    k = (x.detach().double() + 1) * 127.5
    bad = ~torch.isfinite(k) | (k < -1e-3) | (k > 255 + 1e-3) | ((k - k.round()).abs() > 1e-3)
    if bad.any():
        raise ValueError(
            f"the discretized decoder needs data on the 256-level grid k/127.5 - 1 in [-1, 1]; "
            f"{int(bad.sum())} values are off it (e.g. {x.flatten()[bad.flatten()][:3].tolist()}). "
            "Scale uint8 images with x = k / 127.5 - 1, or use discrete=False for continuous data."
        )


def _log_ndtr_diff(upper: Tensor, lower: Tensor) -> Tensor:
    """log(Φ(upper) − Φ(lower)) for upper > lower, accurate in both tails."""
    flip = lower > 0  # in the upper tail use Φ(u) − Φ(l) = Φ(−l) − Φ(−u)
    a = torch.where(flip, -lower, upper)
    b = torch.where(flip, -upper, lower)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return log_a + torch.log(-torch.expm1(log_b - log_a))


def discretized_gaussian_log_likelihood(x, mean, log_scale, *, check: bool = True) -> Tensor:
    """Eq. 13: log of the mass N(mean, e^(2 log_scale)) puts on x's bin, elementwise, in nats.

    The bin of x is [x − 1/255, x + 1/255], open-ended below at x = −1 and above at x = +1, so the
    probabilities of the 256 levels sum to one. ``x`` must lie on the 256-level grid (checked unless
    ``check=False``, for callers that checked it once already: the check reads values back to the host).
    """
    x, mean, log_scale = _as_tensors(x, mean, log_scale)
    if check:
        check_on_grid(x)
    out_dtype = x.dtype
    x, mean, log_scale = x.double(), mean.double(), log_scale.double()
    inv_scale = torch.exp(-log_scale)
    upper = (x - mean + BIN_HALF_WIDTH) * inv_scale
    lower = (x - mean - BIN_HALF_WIDTH) * inv_scale
    log_probs = torch.where(
        x < -1 + 1e-3, torch.special.log_ndtr(upper),
        torch.where(x > 1 - 1e-3, torch.special.log_ndtr(-lower), _log_ndtr_diff(upper, lower)))
    return log_probs.to(out_dtype)


def gaussian_log_likelihood(x, mean, log_scale) -> Tensor:
    """log N(x; mean, e^(2 log_scale)), elementwise, in nats: the decoder for continuous data."""
    x, mean, log_scale = _as_tensors(x, mean, log_scale)
    return -0.5 * math.log(2 * math.pi) - log_scale - 0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2


def _mean_bits(x: Tensor) -> Tensor:
    """Average over all but the batch dimension, converted from nats to bits."""
    return x.flatten(1).mean(1) / math.log(2)


def prior_bpd(s: NoiseSchedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) for each image, in bits/dim, computed in float64: with ᾱ_T near 0
    the KL is a difference of O(1) numbers that float32 would get wrong in the fifth digit."""
    x0 = x0.double()
    t = torch.full((x0.shape[0],), s.T, dtype=torch.long)
    mean = extract(s.sqrt_alpha_bars, t, x0) * x0
    logvar = extract(s.log_one_minus_alpha_bars, t, x0).expand_as(x0)
    return _mean_bits(normal_kl(mean, logvar, 0.0, 0.0))


def bound_term_bpd(s: NoiseSchedule, eps_model: EpsModel, x0: Tensor, t, noise: Tensor,
                   variance: str = "fixedlarge", clip_denoised: bool = True, discrete: bool = True):
    """L_(t-1) of Eq. 5 for each image at its own t, in bits/dim: KL(q(x_(t-1) | x_t, x_0) ‖ p_θ(x_(t-1) | x_t))
    for t ≥ 2 and the decoder's −log p_θ(x_0 | x_1) for t = 1, with x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) noise.

    Returns (terms [B] in float64, the reverse step). Differentiable; reads nothing back to the host.
    """
    t = s.check_t(t)
    xt = q_sample(s, x0, t, noise)
    step = p_mean_variance(s, eps_model, xt, t, variance, clip_denoised)
    true_mean, true_var = q_posterior(s, x0, xt, t)
    # in float64: for t near T the KL is a small difference of O(1) numbers. At t = 1, β̃_1 = 0: the clamp
    # keeps that (unused) KL finite, so that its zero weight in the torch.where below gives zero gradient.
    kl = _mean_bits(normal_kl(true_mean.double(), true_var.double().clamp_min(1e-300).log(), step.mean.double(),
                              step.log_variance.double()))
    decoder = (lambda *a: discretized_gaussian_log_likelihood(*a, check=False)) if discrete \
        else gaussian_log_likelihood
    nll = -_mean_bits(decoder(x0, step.mean, (0.5 * step.log_variance).expand_as(x0)).double())
    return torch.where(timesteps_like(s, t, x0) == 1, nll, kl), step


class VLB(NamedTuple):
    total_bpd: Tensor  # [B] L_T + Σ L_(t-1) + L_0
    prior_bpd: Tensor  # [B] L_T
    terms_bpd: Tensor  # [B, T]: column t-1 holds L_(t-1), so column 0 holds L_0
    eps_mse: Tensor    # [B, T]: mean squared error of ε_θ at the x_t drawn for each term


def vlb(s: NoiseSchedule, eps_model: EpsModel, x0: Tensor, variance: str = "fixedlarge",
        clip_denoised: bool = True, *, discrete: bool = True, batch_size: int = 256, generator=None,
        progress: bool = False) -> VLB:
    """The full bound of Eq. 5 for each image, with one draw x_t ~ q(x_t | x_0) per term.

    The T terms are evaluated in batches of about ``batch_size`` (image, t) pairs per model call.
    ``discrete=True`` scores L_0 with the discretized decoder (data on the 256-level grid);
    ``discrete=False`` with a Gaussian density, for continuous data.
    """
    if x0.dim() < 2 or not x0.is_floating_point():
        raise ValueError(f"x0 must be a float tensor of shape [B, ...]; got {x0.dtype} of shape {tuple(x0.shape)}")
    if discrete:
        check_on_grid(x0)
    B, T = x0.shape[0], s.T
    terms = torch.empty(B, T, dtype=torch.float64, device=x0.device)
    mse = torch.empty_like(terms)
    per_call = max(1, batch_size // B)
    for t0 in tqdm(range(1, T + 1, per_call), desc="bound", disable=not progress, leave=False):
        ts = torch.arange(t0, min(t0 + per_call, T + 1), device=x0.device)
        t = ts.repeat_interleave(B)
        x = x0.repeat(len(ts), *([1] * (x0.dim() - 1)))
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        term, step = bound_term_bpd(s, eps_model, x, t, noise, variance, clip_denoised, discrete)
        terms[:, ts - 1] = term.reshape(len(ts), B).T
        mse[:, ts - 1] = ((step.eps - noise) ** 2).flatten(1).mean(1).double().reshape(len(ts), B).T
    prior = prior_bpd(s, x0).double()
    return VLB(prior + terms.sum(1), prior, terms, mse)
