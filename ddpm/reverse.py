"""The learned reverse step p_θ(x_(t-1) | x_t) = N(μ_θ(x_t, t), σ_t² I) of an ε-model (Ho et al. 2020, §3.2)."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .posterior import predict_x0_from_eps, q_posterior
from .schedule import NoiseSchedule, extract

EpsModel = Callable[[Tensor, Tensor], Tensor]
"""Any callable ``eps_model(x_t, t) -> ε̂`` with t a long tensor of shape [B] in {1, …, T}."""


class ReverseStep(NamedTuple):
    mean: Tensor          # μ_θ(x_t, t)
    variance: Tensor      # σ_t², shaped to broadcast against x_t
    log_variance: Tensor  # log σ_t²
    pred_x0: Tensor       # x̂_0(x_t, t), clipped to [-1, 1] when asked
    eps: Tensor           # ε_θ(x_t, t)


def timesteps_like(s: NoiseSchedule, t, x: Tensor) -> Tensor:
    """``t`` (an int or a tensor) as a checked long tensor of shape [B] on ``x``'s device."""
    if isinstance(t, int):  # the sampler's case: check on the host, then build t on the device (no copy)
        s.checked(t)
        return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    t = s.check_t(t).to(x.device)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def call_eps_model(eps_model: EpsModel, xt: Tensor, t: Tensor) -> Tensor:
    eps = eps_model(xt, t)
    if eps.shape != xt.shape:
        raise ValueError(f"eps_model returned shape {tuple(eps.shape)} for an input of shape {tuple(xt.shape)}; "
                         "the predicted noise must have the input's shape")
    return eps


def p_mean_variance(s: NoiseSchedule, eps_model: EpsModel, xt: Tensor, t, variance: str = "fixedlarge",
                    clip_denoised: bool = True) -> ReverseStep:
    """Eq. 11 in the form the original code uses: μ_θ = μ̃_t(x_t, x̂_0) with x̂_0 from Eq. 4.

    Without clipping this equals Eq. 11, (x_t − β_t/√(1 − ᾱ_t) ε_θ)/√α_t; with clipping, x̂_0 is
    first projected onto the data range [-1, 1].
    """
    t_batch = timesteps_like(s, t, xt)
    eps = call_eps_model(eps_model, xt, t_batch)
    t = t if isinstance(t, int) else t_batch  # one int t: host coefficients (NoiseSchedule.at)
    pred_x0 = predict_x0_from_eps(s, xt, t, eps)
    if clip_denoised:
        pred_x0 = pred_x0.clamp(-1, 1)
    mean, _ = q_posterior(s, pred_x0, xt, t)
    s.model_variance(variance)  # checks the name
    return ReverseStep(mean, extract(getattr(s, f"{variance}_variance"), t_batch, xt),
                       extract(getattr(s, f"{variance}_log_variance"), t_batch, xt), pred_x0, eps)


def p_sample(s: NoiseSchedule, eps_model: EpsModel, xt: Tensor, t, noise: Tensor, variance: str = "fixedlarge",
             clip_denoised: bool = True) -> tuple[Tensor, Tensor]:
    """Algorithm 2, line 4: x_(t-1) = μ_θ(x_t, t) + σ_t z, with no noise added at t = 1.

    Returns (x_(t-1), x̂_0).
    """
    step = p_mean_variance(s, eps_model, xt, t, variance, clip_denoised)
    if isinstance(t, int):  # the sampler's case: σ_t as a host float
        sigma = 0.0 if t == 1 else math.exp(0.5 * s.at(f"{variance}_log_variance", t, xt))
        return step.mean + sigma * noise, step.pred_x0
    t = timesteps_like(s, t, xt)
    nonzero = (t > 1).to(xt.dtype).reshape(-1, *([1] * (xt.dim() - 1)))
    return step.mean + nonzero * torch.exp(0.5 * step.log_variance) * noise, step.pred_x0
