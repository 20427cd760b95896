"""Ancestral sampling, Algorithm 2 of Ho et al. (2020): from x_T ~ N(0, I) (or a given x_t) down to x_0; and DDIM."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .posterior import predict_eps_from_x0
from .reverse import EpsModel, model_variance_name, p_sample, predict
from .schedule import NoiseSchedule


@dataclass
class Trajectory:
    """What :func:`sample_trajectory` keeps: the sample, and x_t and x̂_0 at the chosen steps."""

    x0: Tensor        # the final sample, [B, ...]
    steps: list[int]  # the kept timesteps t, in the order they were visited (T first)
    xt: Tensor        # x_t at each kept step, [len(steps), B, ...]
    pred_x0: Tensor   # the model's x̂_0(x_t, t) at each kept step, [len(steps), B, ...]


def start_state(shape, x_T: Tensor | None, generator, device, dtype) -> Tensor:
    """x_T ~ N(0, I) of ``shape``, or the given ``x_T`` (in its own dtype, on ``device`` if one is given)."""
    if x_T is None:
        if shape is None:
            raise ValueError("give the shape of the samples, or the starting state x_T")
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    if shape is not None and tuple(shape) != tuple(x_T.shape):
        raise ValueError(f"shape {tuple(shape)} and x_T's shape {tuple(x_T.shape)} differ; pass one of them")
    return x_T if device is None else x_T.to(device)


@torch.no_grad()
def sample_trajectory(s: NoiseSchedule, eps_model: EpsModel, shape, steps=(), variance: str | None = None,
                      clip_denoised: bool = True, generator=None, device=None, dtype=torch.float32,
                      progress: bool = False, *, x_T: Tensor | None = None, start_t: int | None = None,
                      bf16: bool = False) -> Trajectory:
    """Algorithm 2 from x_(start_t) = ``x_T`` (default: t = T, x_T ~ N(0, I)) down to x_0, keeping x_t and the
    predicted x̂_0 at every t in ``steps`` (each in {1, …, start_t}).

    ``variance``: None samples with the model's own (:func:`ddpm.reverse.model_variance_name`). ``bf16``: the
    network runs under bfloat16 autocast, the step's math in float32 (:func:`ddpm.reverse.call_eps_model`).
    Each step draws its noise from ``generator`` after x_T, so a run from x_t continues one from x_T when the
    generator has made the same draws for the steps T, …, t + 1.
    """
    start_t = s.T if start_t is None else s.checked(start_t)
    if start_t != s.T and x_T is None:
        raise ValueError(f"starting at t = {start_t} < T needs x_T, the state x_t to start from")
    keep = sorted({int(t) for t in s.check_t(list(steps)).tolist()}, reverse=True)
    if keep and keep[0] > start_t:
        raise ValueError(f"steps to keep must lie in 1..start_t = {start_t}, got {keep[0]}")
    variance = model_variance_name(eps_model, variance)
    x = start_state(shape, x_T, generator, device, dtype)
    xs, x0s = [], []
    for t in tqdm(range(start_t, 0, -1), desc="sampling", disable=not progress, leave=False):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x_prev, pred_x0 = p_sample(s, eps_model, x, t, noise, variance, clip_denoised, bf16=bf16)
        if t in keep:
            xs.append(x)
            x0s.append(pred_x0)
        x = x_prev
    empty = x.new_empty((0, *x.shape))
    return Trajectory(x, keep, torch.stack(xs) if xs else empty, torch.stack(x0s) if x0s else empty)


def sample(s: NoiseSchedule, eps_model: EpsModel, shape, variance: str | None = None, clip_denoised: bool = True,
           generator=None, device=None, dtype=torch.float32, progress: bool = False, *, x_T: Tensor | None = None,
           start_t: int | None = None, bf16: bool = False) -> Tensor:
    """Algorithm 2: draw ``shape[0]`` samples x_0 from p_θ, from x_T ~ N(0, I) or from ``x_T`` at ``start_t``
    (see :func:`sample_trajectory`)."""
    return sample_trajectory(s, eps_model, shape, (), variance, clip_denoised, generator, device, dtype,
                             progress, x_T=x_T, start_t=start_t, bf16=bf16).x0


def ddim_timesteps(s: NoiseSchedule, steps) -> list[int]:
    """The increasing subsequence τ_1 < … < τ_S of {1, …, T} that DDIM visits: ``steps`` is S (spread
    evenly, ending at T), or the timesteps themselves, or None for all T."""
    if steps is None:
        return list(range(1, s.T + 1))
    if isinstance(steps, int) and not isinstance(steps, bool):
        if not 1 <= steps <= s.T:
            raise ValueError(f"the number of DDIM steps must lie in 1..T={s.T}, got {steps}")
        return torch.linspace(s.T / steps, s.T, steps, dtype=torch.float64).round().long().tolist()
    taus = s.check_t(list(steps)).tolist()
    if not taus or any(b <= a for a, b in zip(taus, taus[1:])):
        raise ValueError(f"DDIM timesteps must be a non-empty, strictly increasing list, got {taus}")
    return taus


def ddim_step(s: NoiseSchedule, eps_model: EpsModel, xt: Tensor, t: int, t_prev: int, eta: float, noise: Tensor,
              clip_denoised: bool = True, *, bf16: bool = False) -> tuple[Tensor, Tensor]:
    """One DDIM step from t to t_prev < t (Song et al. 2021, Eq. 12), returning (x_(t_prev), x̂_0):

    x_(t_prev) = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε_θ + σ z,
    σ² = η² (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev), with ᾱ_prev = ᾱ_0 = 1 for t_prev = 0.

    When x̂_0 is clipped, ε_θ is recomputed from it so that both terms describe the same clean point.
    ``bf16``: see :func:`ddpm.reverse.call_eps_model`.
    """
    if not 0 <= t_prev < t:
        raise ValueError(f"a DDIM step goes from t to an earlier t_prev >= 0; got t={t}, t_prev={t_prev}")
    ab, ab_prev = float(s.alpha_bars[t]), float(s.alpha_bars[t_prev])
    eps, pred_x0, _ = predict(s, eps_model, xt, t, bf16=bf16)
    if clip_denoised:
        pred_x0 = pred_x0.clamp(-1, 1)
        eps = predict_eps_from_x0(s, xt, t, pred_x0)
    var = eta ** 2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    x_prev = ab_prev ** 0.5 * pred_x0 + max(1 - ab_prev - var, 0.0) ** 0.5 * eps + var ** 0.5 * noise
    return x_prev, pred_x0


@torch.no_grad()
def ddim_sample(s: NoiseSchedule, eps_model: EpsModel, shape, steps=None, eta: float = 0.0,
                clip_denoised: bool = True, x_T: Tensor | None = None, generator=None, device=None,
                dtype=torch.float32, progress: bool = False, *, bf16: bool = False) -> Tensor:
    """DDIM (Song et al. 2021) from x_T ~ N(0, I) (or the given ``x_T``) down the timesteps of
    :func:`ddim_timesteps`, one :func:`ddim_step` each, to x_0. ``bf16``: see :func:`sample_trajectory`.

    η = 0 is deterministic given x_T; η = 1 over all T steps is Algorithm 2 with σ_t² = β̃_t.
    """
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM's posterior variance), got {eta}")
    taus = [0] + ddim_timesteps(s, steps)
    x = start_state(shape, x_T, generator, device, dtype)
    for i in tqdm(range(len(taus) - 1, 0, -1), desc="DDIM", disable=not progress, leave=False):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x, _ = ddim_step(s, eps_model, x, taus[i], taus[i - 1], eta, noise, clip_denoised, bf16=bf16)
    return x
