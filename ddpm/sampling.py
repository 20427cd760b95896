"""Ancestral sampling, Algorithm 2 of Ho et al. (2020): from x_T ~ N(0, I) down to x_0."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .reverse import EpsModel, p_sample
from .schedule import NoiseSchedule


@dataclass
class Trajectory:
    """What :func:`sample_trajectory` keeps: the sample, and x_t and x̂_0 at the chosen steps."""

    x0: Tensor        # the final sample, [B, ...]
    steps: list[int]  # the kept timesteps t, in the order they were visited (T first)
    xt: Tensor        # x_t at each kept step, [len(steps), B, ...]
    pred_x0: Tensor   # the model's x̂_0(x_t, t) at each kept step, [len(steps), B, ...]


@torch.no_grad()
def sample_trajectory(s: NoiseSchedule, eps_model: EpsModel, shape, steps=(), variance: str = "fixedlarge",
                      clip_denoised: bool = True, generator=None, device=None, dtype=torch.float32,
                      progress: bool = False) -> Trajectory:
    """Algorithm 2, keeping x_t and the predicted x̂_0 at every t in ``steps`` (each in {1, …, T})."""
    keep = sorted({int(t) for t in s.check_t(list(steps)).tolist()}, reverse=True)
    x = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    xs, x0s = [], []
    for t in tqdm(range(s.T, 0, -1), desc="sampling", disable=not progress, leave=False):
        noise = torch.randn(x.shape, generator=generator, dtype=dtype, device=device)
        x_prev, pred_x0 = p_sample(s, eps_model, x, t, noise, variance, clip_denoised)
        if t in keep:
            xs.append(x)
            x0s.append(pred_x0)
        x = x_prev
    empty = x.new_empty((0, *x.shape))
    return Trajectory(x, keep, torch.stack(xs) if xs else empty, torch.stack(x0s) if x0s else empty)


def sample(s: NoiseSchedule, eps_model: EpsModel, shape, variance: str = "fixedlarge", clip_denoised: bool = True,
           generator=None, device=None, dtype=torch.float32, progress: bool = False) -> Tensor:
    """Algorithm 2: draw ``shape[0]`` samples x_0 from p_θ."""
    return sample_trajectory(s, eps_model, shape, (), variance, clip_denoised, generator, device, dtype,
                             progress).x0
