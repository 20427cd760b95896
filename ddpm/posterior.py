"""The forward-process posterior q(x_(t-1) | x_t, x_0) and the maps between x_0 and ε (Ho et al. 2020)."""

from __future__ import annotations

from torch import Tensor

from .forward import check_same_shape
from .schedule import NoiseSchedule, extract


def q_posterior(s: NoiseSchedule, x0: Tensor, xt: Tensor, t) -> tuple[Tensor, Tensor]:
    """Eqs. 6-7: the mean μ̃_t(x_t, x_0) and the variance β̃_t of q(x_(t-1) | x_t, x_0).

    The variance comes back shaped to broadcast against x0 (it depends on t only).
    """
    t = s.checked(t)
    check_same_shape(x0, xt, "x0", "xt")
    mean = s.at("posterior_mean_coef1", t, xt) * x0 + s.at("posterior_mean_coef2", t, xt) * xt
    return mean, extract(s.posterior_variance, t, xt)


def predict_x0_from_eps(s: NoiseSchedule, xt: Tensor, t, eps: Tensor) -> Tensor:
    """Eq. 4 solved for x_0: x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t."""
    t = s.checked(t)
    check_same_shape(xt, eps, "xt", "eps")
    return s.at("sqrt_recip_alpha_bars", t, xt) * xt - s.at("sqrt_recipm1_alpha_bars", t, xt) * eps


def predict_eps_from_x0(s: NoiseSchedule, xt: Tensor, t, x0: Tensor) -> Tensor:
    """Eq. 4 solved for ε: ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t)."""
    t = s.checked(t)
    check_same_shape(xt, x0, "xt", "x0")
    return (xt - s.at("sqrt_alpha_bars", t, xt) * x0) / s.at("sqrt_one_minus_alpha_bars", t, xt)
