"""Two data sets whose optimal ε-model and whose variational bound are known in closed form.

They make the bound checkable: ``ddpm.vlb`` run on them must reproduce these numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .likelihood import BIN_HALF_WIDTH
from .losses import variance_mismatch
from .posterior import predict_eps_from_x0
from .schedule import NoiseSchedule, extract

LOG2 = math.log(2)


def _prior_kl_per_dim(s: NoiseSchedule, second_moment: Tensor) -> Tensor:
    """E KL(N(√ᾱ_T x_0, 1 − ᾱ_T) ‖ N(0, 1)) per dimension, given E[x_0²], in nats."""
    ab = s.alpha_bars[-1]
    return 0.5 * (-1 - torch.log1p(-ab) + (1 - ab) + ab * second_moment)


class MemorizingOracle:
    """The optimal ε-model when the data is one fixed image x*: ε*(x_t, t) = (x_t − √ᾱ_t x*)/√(1 − ᾱ_t).

    Its x̂_0 is exactly x*, so μ_θ = μ̃_t and each L_(t-1) is only the variance mismatch between
    σ_t² and β̃_t; L_0 is the mass of x*'s own bin under N(x*, σ_1²); L_T is a Gaussian KL.
    """

    def __init__(self, s: NoiseSchedule, x_star: Tensor):
        self.s, self.x_star = s, x_star

    def __call__(self, xt: Tensor, t: Tensor) -> Tensor:
        return predict_eps_from_x0(self.s, xt, t, self.x_star.to(xt).expand_as(xt))

    def vlb_bpd(self, variance: str = "fixedlarge") -> tuple[Tensor, Tensor]:
        """(L_T, [L_0, L_1, …, L_(T-1)]) of x* in bits/dim, float64, from the closed forms."""
        s, x = self.s, self.x_star.double()
        prior = _prior_kl_per_dim(s, x ** 2).mean() / LOG2
        terms = torch.empty(s.T, dtype=torch.float64)
        if s.T > 1:
            terms[1:] = variance_mismatch(s, torch.arange(2, s.T + 1), variance) / LOG2
        z = BIN_HALF_WIDTH / s.model_variance(variance)[1].sqrt()
        edge = (x.abs() > 1 - 1e-3)
        log_p = torch.where(edge, torch.special.log_ndtr(z), torch.log(torch.erf(z / math.sqrt(2))))
        terms[0] = -log_p.mean() / LOG2
        return prior, terms


class GaussianData:
    """Data x_0 ~ N(μ, s² I): every marginal q(x_t) = N(√ᾱ_t μ, ᾱ_t s² + 1 − ᾱ_t) is Gaussian.

    The optimal ε-model is linear: E[ε | x_t] = √(1 − ᾱ_t)(x_t − √ᾱ_t μ)/(ᾱ_t s² + 1 − ᾱ_t), and
    the expected bound (continuous decoder, no clipping) has a closed form.
    """

    def __init__(self, s: NoiseSchedule, mean: float = 0.0, std: float = 1.0):
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.s, self.mean, self.std = s, float(mean), float(std)

    def sample(self, shape, generator=None, dtype=torch.float64) -> Tensor:
        return self.mean + self.std * torch.randn(tuple(shape), generator=generator, dtype=dtype)

    def __call__(self, xt: Tensor, t: Tensor) -> Tensor:
        ab = extract(self.s.alpha_bars, t, xt)
        return (1 - ab).sqrt() * (xt - ab.sqrt() * self.mean) / (ab * self.std ** 2 + 1 - ab)

    def posterior_x0_variance(self) -> Tensor:
        """Var(x_0 | x_t) = s²(1 − ᾱ_t)/(ᾱ_t s² + 1 − ᾱ_t) for t = 0..T, float64."""
        ab, s2 = self.s.alpha_bars, self.std ** 2
        return s2 * (1 - ab) / (ab * s2 + 1 - ab)

    def expected_vlb_bpd(self, variance: str = "fixedlarge") -> tuple[Tensor, Tensor]:
        """(E L_T, [E L_0, …, E L_(T-1)]) in bits/dim, for ``vlb(..., clip_denoised=False, discrete=False)``."""
        s = self.s
        sigma2, v = s.model_variance(variance), self.posterior_x0_variance()
        prior = _prior_kl_per_dim(s, torch.tensor(self.mean ** 2 + self.std ** 2, dtype=torch.float64)) / LOG2
        t = torch.arange(1, s.T + 1)
        terms = 0.5 * s.posterior_mean_coef1[t] ** 2 * v[t] / sigma2[t]  # E(μ̃ − μ_θ)² / 2σ²
        if s.T > 1:
            terms[1:] += variance_mismatch(s, t[1:], variance)
        terms[0] += 0.5 * torch.log(2 * math.pi * sigma2[1])  # −E log N(x_0; x̂_0, σ_1²)
        return prior, terms / LOG2
