"""The forward (diffusion) process q, and the naive additive process it replaces (Ho et al. 2020, §2)."""

from __future__ import annotations

import torch
from torch import Tensor

from .schedule import NoiseSchedule


def check_same_shape(a: Tensor, b: Tensor, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{b_name} has shape {tuple(b.shape)} but {a_name} has shape {tuple(a.shape)}; "
                         "they must be equal")


def q_step(s: NoiseSchedule, x_prev: Tensor, t, noise: Tensor) -> Tensor:
    """Eq. 2: one step x_t = √(1 − β_t) x_(t-1) + √β_t ε of q(x_t | x_(t-1))."""
    t = s.checked(t)
    check_same_shape(x_prev, noise, "x_prev", "noise")
    return s.at("sqrt_alphas", t, x_prev) * x_prev + s.at("sqrt_betas", t, x_prev) * noise


def q_sample(s: NoiseSchedule, x0: Tensor, t, noise: Tensor) -> Tensor:
    """Eq. 4: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a draw from q(x_t | x_0) in one step."""
    t = s.checked(t)
    check_same_shape(x0, noise, "x0", "noise")
    return s.at("sqrt_alpha_bars", t, x0) * x0 + s.at("sqrt_one_minus_alpha_bars", t, x0) * noise


def q_chain(s: NoiseSchedule, x0: Tensor, steps: int | None = None, generator=None) -> Tensor:
    """Run q(x_t | x_(t-1)) step by step from x_0; returns x_0, x_1, …, x_steps stacked on dim 0."""
    steps = s.T if steps is None else steps
    s.check_t(steps)
    xs = [x0]
    for t in range(1, steps + 1):
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        xs.append(q_step(s, xs[-1], t, noise))
    return torch.stack(xs)


def naive_chain(x0: Tensor, steps: int, sigma: float = 1.0, generator=None) -> Tensor:
    """The additive process x_t = x_(t-1) + σ ε, whose variance t σ² grows without bound.

    Returns x_0, …, x_steps stacked on dim 0. Its marginal is N(x_0, t σ² I): the noise explodes
    rather than converging to N(0, I), which is why DDPM scales x_(t-1) by √(1 − β_t).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    noise = torch.randn((steps, *x0.shape), generator=generator, dtype=x0.dtype, device=x0.device)
    return torch.cat([x0[None], x0[None] + sigma * noise.cumsum(0)])
