"""One entry point for a trained model, wherever it came from: :func:`load` takes a ``checkpoint.pt`` that
``train`` wrote (or the run folder that holds it), a folder in diffusers' layout, or a Hub name such as
``google/ddpm-cifar10-32``, and returns what sampling and the bound need.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .config import TrainConfig, sampling_variance
from .parameterization import as_eps_model
from .pretrained import HUB_NAME
from .schedule import NoiseSchedule


class Loaded(NamedTuple):
    """A trained model and what it was trained with."""

    model: nn.Module                # the ε-model (x_t, t) ↦ ε̂: the network, or an AsEpsModel around it (for a
    #                                 class-conditional network, its null class; see ddpm.classifier_free_guidance)
    schedule: NoiseSchedule         # the schedule it was trained with, on the model's device
    variance: str                   # σ_t² it is sampled with: "fixedlarge" (β_t) or "fixedsmall" (β̃_t)
    shape: tuple                    # one image's [C, H, W]
    network: nn.Module              # the UNet itself, whatever it outputs
    parameterization: str           # what the network outputs: "eps", "mu", "x0" or "v"
    config: TrainConfig | None      # the training run's settings (None for a released model)


def is_hub_name(name) -> bool:
    """Whether ``name`` is a Hub name (``owner/name``) rather than a local file or folder."""
    return not Path(name).expanduser().exists() and bool(HUB_NAME.fullmatch(str(name))) \
        and not str(name).endswith(".pt")


def checkpoint_file(path) -> Path | None:
    """The ``checkpoint.pt`` that ``path`` stands for: the file itself, or the one in a run folder (train's
    out_dir); None for a folder in diffusers' layout or a Hub name."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path / "checkpoint.pt" if (path / "checkpoint.pt").is_file() else None
    return None if is_hub_name(path) else path


def load(path_or_name, device=None, use_ema: bool = True) -> Loaded:
    """A trained model on ``device`` (default: the CPU), in eval mode, with its schedule and variance.

    ``path_or_name``: a checkpoint.pt written by ``train``, the run folder that holds one, a folder in
    diffusers' layout (``model_index.json``, ``unet/``, ``scheduler/``, or those files side by side), or a
    Hub name (needs the ``hub`` extra). ``use_ema`` picks a checkpoint's EMA weights or its raw ones (a
    released folder holds one set).
    """
    from .checkpoint import load_model
    from .unet import UNet

    device = torch.device(device or "cpu")
    path = checkpoint_file(path_or_name)
    if path is None:
        network = UNet.from_pretrained(path_or_name, device=device)
        s, parameterization = network.schedule, network.parameterization
        return Loaded(as_eps_model(s, network, parameterization), s, network.variance,
                      (network.in_channels, network.image_size, network.image_size), network, parameterization, None)
    network, config, shape = load_model(path, use_ema, device)
    network.parameterization = config.parameterization  # as from_pretrained sets it, for save_pretrained
    s = config.noise_schedule().to(device)
    return Loaded(as_eps_model(s, network, config.parameterization), s, sampling_variance(config), shape, network,
                  config.parameterization, config)
