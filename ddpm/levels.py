"""The 256-level grid of 8-bit images in the model's range: k ↦ k/127.5 − 1 (Ho et al. 2020, §3.3).

The levels are 2/255 apart, which is what the discretized decoder L_0 assumes. Images on the grid are also
what :func:`save_grid` writes.
"""

from __future__ import annotations

import math
from pathlib import Path

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


def save_grid(images: Tensor, path, per_row: int | None = None) -> Path:
    """Write images [N, C, H, W] (uint8 levels, or floats in [-1, 1] taken to the nearest level as by
    ``to_uint8``) to ``path`` as one PNG grid, ``per_row`` images a row (default ⌈√N⌉); images under 64 pixels
    are scaled up by nearest neighbour (an integer factor) to at least 64, so that a grid of small images can
    be seen."""
    from torchvision.utils import save_image  # here: importing torchvision takes seconds

    x = images.detach().cpu()
    x = x if x.dtype == torch.uint8 else to_uint8(x)
    scale = math.ceil(64 / x.shape[-1])
    x = x.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x.float() / 255, path, nrow=per_row or math.ceil(math.sqrt(len(x))))
    return path
