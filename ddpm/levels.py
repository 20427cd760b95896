"""The 256-level grid of 8-bit images in the model's range: k ↦ k/127.5 − 1 (Ho et al. 2020, §3.3).

The levels are 2/255 apart, which is what the discretized decoder L_0 assumes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_model_range(x_uint8) -> Tensor:
    """Integer levels k ∈ {0, …, 255} to the model's range: k ↦ k/127.5 − 1 (float32)."""
    x = torch.as_tensor(x_uint8)
    if x.is_floating_point():
        raise ValueError(f"to_model_range expects integer levels 0..255 (e.g. uint8), got {x.dtype}; "
                         "use to_uint8 first if the values are already in [-1, 1]")
    return x.to(torch.float32) / 127.5 - 1


def to_uint8(x: Tensor) -> Tensor:
    """The inverse of ``to_model_range``: [-1, 1] ↦ the nearest level round((x + 1)·127.5), clamped to 0..255."""
    return ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
