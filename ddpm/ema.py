"""The exponential moving average of the weights that Ho et al. (2020, App. B) sample from (decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, decay: float = 0.9999) -> float:
    """The decay used at optimizer step ``step`` (1, 2, …): min(decay, (1 + step) / (10 + step)).

    The original code uses a constant 0.9999: it builds ``tf.train.ExponentialMovingAverage(0.9999)``
    without ``num_updates``. This warm-up is the rule that class applies when it is given
    ``num_updates`` (TensorFlow's documentation of ExponentialMovingAverage), here with num_updates = step.
    (Mean Teacher, Tarvainen & Valpola 2017, warms up differently, with min(decay, 1 − 1/(step + 1)).)
    Early on the average forgets fast (0.18 at step 1, 0.5 at step 8, 0.9 at step 80), so a short run's
    EMA follows the trained weights instead of staying near the random initialisation, where a fixed
    0.9999 would leave it for the first ~10⁴ steps. It reaches 0.9999 at step 89,990; after about 10⁵
    steps the two averages are the same.
    """
    if not 0 <= decay < 1:
        raise ValueError(f"the EMA decay must lie in [0, 1), got {decay}")
    return min(decay, (1 + step) / (10 + step))


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` to hold the average (in evaluation mode, no gradients)."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← decay · θ_ema + (1 − decay) · θ for every parameter (one fused lerp over all of them);
    buffers are copied."""
    ema_params, params = list(ema.parameters()), [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError(f"the EMA has {len(ema_params)} parameters but the model has {len(params)}")
    if ema_params:
        torch._foreach_lerp_(ema_params, [p.to(e.dtype) for e, p in zip(ema_params, params)], 1 - decay)
    buffers = list(ema.buffers())
    if buffers:
        torch._foreach_copy_(buffers, list(model.buffers()))
