"""Training objectives of Ho et al. (2020): the true bound (Eq. 5), L_(t-1) as a weighted ε-MSE (Eq. 12),
L_simple (Eq. 14), each for a network that outputs ε, μ̃, x_0 or v (see :mod:`ddpm.parameterization`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .forward import q_sample
from .likelihood import bound_term_bpd
from .parameterization import as_eps_model, target
from .reverse import EpsModel, call_eps_model
from .schedule import NoiseSchedule


def _draw(s: NoiseSchedule, x0: Tensor, t, noise, generator):
    """t ~ Uniform{1, …, T} and ε ~ N(0, I) where not given, drawn on the data's device (or the generator's)."""
    device = x0.device if generator is None else generator.device
    if t is None:
        t = torch.randint(1, s.T + 1, (x0.shape[0],), generator=generator, device=device)
    t = s.check_t(t).to(x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=device)
    return t, noise.to(x0.device)


def l_simple(s: NoiseSchedule, eps_model: EpsModel, x0: Tensor, t=None, noise=None, generator=None,
             parameterization: str = "eps") -> Tensor:
    """Eq. 14: E_(t, x_0, ε) ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖², averaged over dimensions.

    t ~ Uniform{1, …, T} and ε ~ N(0, I) are drawn when not given. For a network that outputs μ̃, x_0 or v
    (``parameterization`` "mu", "x0" or "v"), the same unweighted MSE of its own target: Table 2's ‖μ̃ − μ_θ‖²,
    or Salimans & Ho's (2022) ‖v − v_θ‖².
    """
    t, noise = _draw(s, x0, t, noise, generator)
    xt = q_sample(s, x0, t, noise)
    output = call_eps_model(eps_model, xt, t)
    return ((output - target(s, parameterization, x0, xt, t, noise)) ** 2).mean()


def eps_mse_weight(s: NoiseSchedule, t, variance: str = "fixedlarge") -> Tensor:
    """The weight β_t² / (2 σ_t² α_t (1 − ᾱ_t)) of Eq. 12, float64, one per entry of t."""
    t = s.check_t(t)
    sigma2 = s.model_variance(variance)
    return s.betas[t] ** 2 / (2 * sigma2[t] * s.alphas[t] * (1 - s.alpha_bars[t]))


def variance_mismatch(s: NoiseSchedule, t, variance: str = "fixedlarge") -> Tensor:
    """The constant C of Eq. 12 per dimension: KL(N(0, β̃_t) ‖ N(0, σ_t²)), nats, float64, for t ≥ 2."""
    t = s.check_t(t)
    ratio = s.posterior_variance[t] / s.model_variance(variance)[t]
    return 0.5 * (ratio - 1 - ratio.log())


def weighted_eps_mse(s: NoiseSchedule, eps_model: EpsModel, x0: Tensor, t=None, noise=None,
                     variance: str = "fixedlarge", generator=None) -> Tensor:
    """Eq. 12 without its constant: the weighted ‖ε − ε_θ‖² summed over dimensions, nats, shape [B].

    For t ≥ 2 and an unclipped model, adding ``variance_mismatch`` per dimension gives L_(t-1) exactly.
    """
    t, noise = _draw(s, x0, t, noise, generator)
    eps = call_eps_model(eps_model, q_sample(s, x0, t, noise), t)
    weight = eps_mse_weight(s, t, variance).to(x0)
    weight = weight.reshape(-1, *([1] * (x0.dim() - 1))) if weight.dim() else weight
    return (weight * (eps - noise) ** 2).flatten(1).sum(1)


def l_vlb(s: NoiseSchedule, eps_model: EpsModel, x0: Tensor, t=None, noise=None, variance: str = "fixedlarge",
          generator=None, parameterization: str = "eps") -> Tensor:
    """Eq. 5 as a training objective: L_(t-1) in bits/dim at t ~ Uniform{1, …, T}, averaged over the batch.

    The original's "kl" loss: one term, its mean over dimensions, without the factor T that would make
    it an unbiased estimate of Σ_t L_(t-1) (T times larger, which only rescales the gradient, and with
    clipping at norm 1 clips every step). This is the "true variational bound" objective of the paper's
    Table 2; x_0 must lie on the 256-level grid. ``parameterization``: what the network outputs.
    """
    t, noise = _draw(s, x0, t, noise, generator)
    model = as_eps_model(s, eps_model, parameterization)
    terms, _ = bound_term_bpd(s, model, x0, t, noise, variance, clip_denoised=False)
    return terms.mean()
