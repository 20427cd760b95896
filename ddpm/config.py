"""What a training run depends on: :class:`TrainConfig`, its defaults by data and device (:func:`resolve`),
the network it builds, and which settings a resumed run must share with its checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

import torch

from .data import NUM_CLASSES, check_labelled
from .parameterization import check_parameterization
from .schedule import NoiseSchedule, check_variance
from .unet import UNet


def _opt(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the default for this data or device" (see ``resolve``)."""

    data: str = _opt("digits", "'digits', 'celeba' or 'cifar10' (with data_dir), or the path of a "
                               "preprocessed .npy array")
    data_dir: str | None = _opt(None, "the folder that holds CelebA or CIFAR-10 (for data='celeba', 'cifar10')")
    image_size: int | None = _opt(None, "image side in pixels (default: the data's own, 8 for digits, 64 for celeba)")
    model: str | None = _opt(None, "UNet preset: tiny, cifar10, celeba64, celebahq256 (default: by data and size)")
    dropout: float | None = _opt(None, "dropout rate (default: the preset's)")
    T: int = _opt(1000, "number of diffusion steps")
    beta_1: float = _opt(1e-4, "first variance of the linear schedule")
    beta_T: float = _opt(0.02, "last variance of the linear schedule")
    loss: str = _opt("simple", "training objective: 'simple' (L_simple, Eq. 14) or 'vlb' (the true bound, Eq. 5)")
    parameterization: str = _opt("eps", "what the network outputs: 'eps' (the noise, the paper's choice), "
                                        "'mu' (the posterior mean, Table 2's baseline), 'x0', or 'v' "
                                        "(sqrt(abar_t) eps - sqrt(1 - abar_t) x0, Salimans & Ho 2022)")
    variance: str = _opt("fixedlarge", "sigma_t^2 of p_theta for loss='vlb': 'fixedlarge' (beta_t) or "
                                       "'fixedsmall' (beta-tilde_t)")
    class_conditional: bool = _opt(False, "learn eps(x_t, t, y) with labels, for classifier-free guidance (Ho & "
                                          "Salimans 2022); needs labelled data: digits or cifar10")
    label_dropout: float = _opt(0.1, "the share of labels replaced by the null class in training, so that the "
                                     "network also learns eps(x_t, t) (Ho & Salimans 2022); may change on --resume")
    batch_size: int | None = _opt(None, "GLOBAL batch size, divided evenly across torchrun processes "
                                        "(default: the paper's 128; 64 at 256x256)")
    lr: float | None = _opt(None, "Adam learning rate (default: the paper's 2e-4; 2e-5 at 256x256; 5e-4 for "
                                  "digits); may change on --resume")
    warmup: int | None = _opt(None, "steps of linear learning-rate warm-up (paper: 5000; digits: 200); "
                                    "may change on --resume")
    grad_clip: float = _opt(1.0, "clip the gradient's global norm to this (paper: 1.0); may change on --resume")
    ema_decay: float = _opt(0.9999, "EMA decay (paper: 0.9999), reached after a warm-up min(decay, (1+k)/(10+k))")
    flip: bool | None = _opt(None, "random horizontal flips (default: on for photos, off for digits)")
    steps: int | None = _opt(None, "optimizer steps in total (default: 1500 for digits, the paper's 800000 "
                                   "for cifar10, 500000 for other photos)")
    log_every: int = _opt(50, "write the losses to log.csv and the progress bar every this many steps")
    sample_every: int | None = _opt(None, "save a grid of EMA samples every this many steps, 0 never "
                                    "(default: 500 digits, 10000 photos)")
    checkpoint_every: int | None = _opt(None, "save out_dir/checkpoint.pt every this many steps and at the end "
                                        "(default: 500 digits, 5000 photos)")
    num_samples: int = _opt(64, "images in each sample grid")
    out_dir: str = _opt("runs/ddpm", "folder for checkpoint.pt, log.csv and samples/")
    resume: bool = _opt(False, "continue from out_dir/checkpoint.pt if it exists (without it, an existing "
                               "checkpoint is an error, so a run is never overwritten by accident)")
    seed: int = _opt(0, "seed of the initial weights, the data order, t, noise and dropout")
    device: str = _opt("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:1, mps, ...")
    bf16: bool | None = _opt(None, "bfloat16 autocast (default: on where the device runs bf16 natively, "
                                   "a CUDA GPU that supports it or a CPU with AVX512-BF16 or AMX, for "
                                   "parameterization 'eps' and 'v'; float32 for 'mu' and 'x0')")
    compile: bool | None = _opt(None, "torch.compile the model (default: on with CUDA)")
    channels_last: bool | None = _opt(None, "channels-last memory format (default: on with CUDA)")
    num_workers: int | None = _opt(None, "DataLoader worker processes, 0 loads in the main process "
                                         "(default: up to 8 with CUDA, else 0)")

    def noise_schedule(self) -> NoiseSchedule:
        """The run's linear schedule β_1..β_T (the paper's §4), in float64."""
        return NoiseSchedule.linear(self.T, self.beta_1, self.beta_T)


# Defaults that depend on the data. Digits: the recipe that gave the best samples for about three minutes of
# one CPU core (benchmarks/DIGITS_RECIPE.md): the paper's batch of 128 at 2.5 times its learning rate, which a
# run this short can afford; digits are not mirror-symmetric (a flipped 3 is not a digit), so no flips.
# Photos: the paper's settings, flipped as the paper flips CIFAR10.
DIGITS = dict(model="tiny", steps=1500, lr=5e-4, warmup=200, flip=False, sample_every=500, checkpoint_every=500)
PHOTOS = dict(steps=500_000, warmup=5000, flip=True, sample_every=10_000, checkpoint_every=5_000)
PHOTOS_CIFAR10 = dict(PHOTOS, steps=800_000)  # the paper's CIFAR10 run (its Appendix B)
PRESET_FOR_SIZE = {32: "cifar10", 64: "celeba64", 256: "celebahq256"}
# The paper's optimizer settings: lr 2e-4 and batch 128, except for its 256x256 models (CelebA-HQ, LSUN),
# which its scripts ran at lr 2e-5 and batch 64 (run_celebahq.py, run_lsun.py).
PAPER = dict(lr=2e-4, batch_size=128)
PAPER_256 = dict(lr=2e-5, batch_size=64)


def resolve_device(name: str) -> torch.device:
    """The device ``name`` names ("auto": CUDA if present, else the CPU), if this machine has it; else a
    ValueError that says what to use instead."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:1, mps, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA GPU; use cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS is not available here; use cpu or auto")
    return device


def sampling_variance(config: TrainConfig) -> str:
    """σ_t² that a run's samples are drawn with: the one it was trained with for loss='vlb'; else σ_t² = β_t,
    except at 256x256, where the original sampled with β̃_t (its CelebA-HQ and LSUN runs)."""
    if config.loss == "vlb":
        return config.variance
    return "fixedsmall" if (config.image_size or 0) >= 256 else "fixedlarge"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it without emulation, or
    a CPU with AVX512-BF16 or AMX tiles (elsewhere bf16 is emulated, and slower than float32)."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no including_emulation and does not count emulation
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch's own probes of the CPU's instruction set (no public API exists)
        probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(probe() for probe in probes if probe is not None)
    return False


def resolve(config: TrainConfig, image_shape, device: torch.device, world_size: int = 1) -> TrainConfig:
    """``config`` with every ``None`` replaced by its default for this data and device, after checks."""
    c, size = config, image_shape[-1]
    defaults = DIGITS if c.data == "digits" else \
        {**(PHOTOS_CIFAR10 if c.data == "cifar10" else PHOTOS), "model": PRESET_FOR_SIZE.get(size)}
    if c.model is None and defaults["model"] is None:
        raise ValueError(f"no UNet preset for {size}x{size} images; choose one with model= (e.g. 'tiny')")
    cuda = device.type == "cuda"
    paper = PAPER_256 if (c.model or defaults["model"]) == "celebahq256" else PAPER
    c = replace(c, image_size=size, data=str(c.data), out_dir=str(c.out_dir),  # plain str, also for a Path
                data_dir=None if c.data_dir is None else str(c.data_dir),
                **{k: v for k, v in {**paper, **defaults}.items() if getattr(c, k) is None},
                **{k: cuda for k in ("compile", "channels_last") if getattr(c, k) is None})
    # A μ̃ or x_0 output carries its signal below bf16's rounding at large t (review N5). ε and v are O(1) outputs,
    # and v̂ becomes ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂ and x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v̂ with coefficients ≤ 1, so its
    # rounding is not amplified: it moves μ_θ = c1 x̂_0 + c2 x_t by c1 √(1 − ᾱ_t) δv, √ᾱ_t times what the same
    # rounding of an ε output costs (tests/test_parameterization.py, test_a_bf16_v_output_is_not_amplified).
    if c.bf16 is None:
        c = replace(c, bf16=native_bf16(device) and c.parameterization in ("eps", "v"))
    if c.num_workers is None:
        c = replace(c, num_workers=min(8, os.cpu_count() or 1) if cuda else 0)
    for name in ("batch_size", "steps", "log_every", "num_samples", "T"):
        if getattr(c, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(c, name)}")
    for name in ("warmup", "sample_every", "checkpoint_every", "num_workers", "seed"):
        if getattr(c, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(c, name)}")
    if not (c.lr > 0 and c.grad_clip > 0 and 0 <= c.ema_decay < 1):
        raise ValueError(f"need lr > 0, grad_clip > 0 and 0 <= ema_decay < 1; got {c.lr}, {c.grad_clip}, {c.ema_decay}")
    if c.batch_size % world_size:
        raise ValueError(f"batch_size={c.batch_size} is the global batch and must divide evenly across the "
                         f"{world_size} processes; use a multiple of {world_size}")
    if not 0 <= c.label_dropout <= 1:
        raise ValueError(f"label_dropout must lie in [0, 1] (the share of labels dropped to the null class), got "
                         f"{c.label_dropout}")
    if c.class_conditional and c.model != "custom":
        check_labelled(c.data)
    if c.loss not in ("simple", "vlb"):
        raise ValueError(f"loss must be 'simple' or 'vlb', got {c.loss!r}")
    check_parameterization(c.parameterization)
    check_variance(c.variance)
    if c.model not in UNet.PRESETS and c.model != "custom":
        raise ValueError(f"unknown model preset {c.model!r}; choose one of {sorted(UNet.PRESETS)}")
    check_preset_fits(c.model, size)
    return c


def check_preset_fits(name: str, size: int) -> None:
    """A ValueError that names the fix when preset ``name`` cannot take size x size images (its attention
    resolutions are not among those it visits, or the image cannot be halved often enough)."""
    if name not in UNet.PRESETS or name == "tiny":  # tiny puts its attention wherever the size leads
        return
    preset = UNet.PRESETS[name]
    levels = len(preset["ch_mult"])
    visits = [size // 2**i for i in range(levels)]
    if size % 2 ** (levels - 1) or not set(preset["attn_resolutions"]) <= set(visits):
        raise ValueError(f"model={name!r} is built for {preset['image_size']}x{preset['image_size']} images, "
                         f"not {size}x{size}; use image_size={preset['image_size']} (--image-size "
                         f"{preset['image_size']}) or model='tiny' (--model tiny)")


def build_model(config: TrainConfig, channels: int, **overrides) -> UNet:
    """The UNet preset ``config.model`` for ``channels`` x image_size² images (with its dropout override), with
    the data's classes for a class-conditional run."""
    extra = {} if config.dropout is None else {"dropout": config.dropout}
    if config.class_conditional:
        extra["num_classes"] = NUM_CLASSES[config.data]
    return UNet.preset(config.model, in_channels=channels, image_size=config.image_size, **extra, **overrides)


# What a resumed run must share with its checkpoint: every setting that changes the sequence of weights
# (not steps, intervals, out_dir, device, the GPU switches or the number of processes), except the three
# a user may change to get past a NaN stop and the label dropout, a knob of the objective like the lr
# (ADJUSTABLE), which the run records where it changes them.
TRAJECTORY = ("data", "image_size", "model", "dropout", "T", "beta_1", "beta_T", "batch_size", "ema_decay", "flip",
              "seed", "loss", "parameterization", "variance", "class_conditional")
ADJUSTABLE = ("lr", "warmup", "grad_clip", "label_dropout")


def check_resumable(saved: dict, config: dict, path) -> dict:
    """The ``ADJUSTABLE`` settings that differ, as {name: [there, here]}; a ValueError naming every
    ``TRAJECTORY`` setting in which the two training configs differ."""
    saved = {**{f.name: f.default for f in fields(TrainConfig)}, **saved}  # a field newer than the checkpoint
    diff = [f"{k}={saved.get(k)!r} there, {config.get(k)!r} here" for k in TRAJECTORY if saved.get(k) != config.get(k)]
    if diff:
        raise ValueError(f"{path} was trained with another config, so it cannot be resumed with this one: "
                         + "; ".join(diff) + f". Use the same values (only {', '.join(ADJUSTABLE)} may change), "
                         "or another out_dir for a new run.")
    return {k: [saved.get(k), config.get(k)] for k in ADJUSTABLE if saved.get(k) != config.get(k)}
