"""The learned reverse step p_θ(x_(t-1) | x_t) = N(μ_θ(x_t, t), σ_t² I) of an ε-model (Ho et al. 2020, §3.2)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .posterior import predict_x0_from_eps, q_posterior
from .schedule import NoiseSchedule, check_variance, extract

EpsModel = Callable[[Tensor, Tensor], Tensor]
"""Any callable ``eps_model(x_t, t) -> ε̂`` with t a long tensor of shape [B] in {1, …, T}. It may also have
a ``.variance`` (σ_t² it is sampled with by default) and a ``.prediction(x_t, t, bf16=False)`` that returns
a :class:`Prediction` (a network that outputs μ̃, x_0 or v, :class:`ddpm.parameterization.AsEpsModel`)."""


class Prediction(NamedTuple):
    """What the model predicts at x_t."""

    eps: Tensor          # ε_θ(x_t, t)
    pred_x0: Tensor      # x̂_0(x_t, t), not clipped
    mean: Tensor | None  # μ_θ(x_t, t) when the network outputs it (the original's "xprev"), else None


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


def math_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the step's math runs in: the tensors' common dtype, but never below float32."""
    dtype = torch.float32
    for x in tensors:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def call_eps_model(eps_model: EpsModel, xt: Tensor, t: Tensor, *, bf16: bool = False) -> Tensor:
    """``eps_model(x_t, t)``, checked to have x_t's shape. With ``bf16`` the call alone runs under bfloat16
    autocast and its output comes back in :func:`math_dtype` (float32 for float32 x_t)."""
    with torch.autocast(xt.device.type, torch.bfloat16) if bf16 else nullcontext():
        eps = eps_model(xt, t)
    if eps.shape != xt.shape:
        raise ValueError(f"eps_model returned shape {tuple(eps.shape)} for an input of shape {tuple(xt.shape)}; "
                         "the predicted noise must have the input's shape")
    return eps.to(math_dtype(eps, xt)) if bf16 else eps


def model_variance_name(eps_model: EpsModel, variance: str | None) -> str:
    """``variance``, or for None the model's own ``.variance`` (a released model's) where it names one, else
    "fixedlarge"."""
    own = getattr(eps_model, "variance", None)
    return check_variance(variance or (own if isinstance(own, str) else "fixedlarge"))


def predict(s: NoiseSchedule, eps_model: EpsModel, xt: Tensor, t, *, bf16: bool = False) -> Prediction:
    """ε̂, x̂_0 (Eq. 15) and, for a network that outputs it, μ_θ: from the model's ``.prediction`` where it
    has one, else from its ε̂."""
    t_batch = timesteps_like(s, t, xt)
    if hasattr(eps_model, "prediction"):
        return eps_model.prediction(xt, t_batch, bf16=bf16)
    eps = call_eps_model(eps_model, xt, t_batch, bf16=bf16)
    return Prediction(eps, predict_x0_from_eps(s, xt, t if isinstance(t, int) else t_batch, eps), None)


def p_mean_variance(s: NoiseSchedule, eps_model: EpsModel, xt: Tensor, t, variance: str | None = None,
                    clip_denoised: bool = True, *, bf16: bool = False) -> ReverseStep:
    """Eq. 11 in the form the original code uses: μ_θ = μ̃_t(x_t, x̂_0) with x̂_0 from Eq. 4.

    Without clipping this equals Eq. 11, (x_t − β_t/√(1 − ᾱ_t) ε_θ)/√α_t; with clipping, x̂_0 is
    first projected onto the data range [-1, 1]. A network that outputs μ_θ itself (parameterization
    "mu") gives the mean as it is, as the original's "xprev" does: clipping then changes only x̂_0.
    ``variance``: None takes the model's own (:func:`model_variance_name`). ``bf16``: see :func:`call_eps_model`.
    """
    variance = model_variance_name(eps_model, variance)
    t_batch = timesteps_like(s, t, xt)
    eps, pred_x0, mean = predict(s, eps_model, xt, t, bf16=bf16)
    if clip_denoised:
        pred_x0 = pred_x0.clamp(-1, 1)
    if mean is None:
        mean, _ = q_posterior(s, pred_x0, xt, t if isinstance(t, int) else t_batch)  # one int t: host coefficients
    return ReverseStep(mean, extract(getattr(s, f"{variance}_variance"), t_batch, xt),
                       extract(getattr(s, f"{variance}_log_variance"), t_batch, xt), pred_x0, eps)


def p_sample(s: NoiseSchedule, eps_model: EpsModel, xt: Tensor, t, noise: Tensor, variance: str | None = None,
             clip_denoised: bool = True, *, bf16: bool = False) -> tuple[Tensor, Tensor]:
    """Algorithm 2, line 4: x_(t-1) = μ_θ(x_t, t) + σ_t z, with no noise added at t = 1.

    Returns (x_(t-1), x̂_0). ``variance`` and ``bf16``: as for :func:`p_mean_variance`.
    """
    variance = model_variance_name(eps_model, variance)
    step = p_mean_variance(s, eps_model, xt, t, variance, clip_denoised, bf16=bf16)
    if isinstance(t, int):  # the sampler's case: σ_t as a host float
        sigma = 0.0 if t == 1 else math.exp(0.5 * s.at(f"{variance}_log_variance", t, xt))
        return step.mean + sigma * noise, step.pred_x0
    t = timesteps_like(s, t, xt)
    nonzero = (t > 1).to(xt.dtype).reshape(-1, *([1] * (xt.dim() - 1)))
    return step.mean + nonzero * torch.exp(0.5 * step.log_variance) * noise, step.pred_x0
