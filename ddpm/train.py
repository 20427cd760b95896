"""Algorithm 1 of Ho et al. (2020) as the paper ran it (or, with loss="vlb", the true bound of its Table 2): Adam at 2e-4 with a linear warm-up, gradients
clipped to norm 1, an EMA of the weights (decay 0.9999) to sample from; with checkpoints that resume
exactly, bf16 autocast / torch.compile / channels_last on a GPU, and DistributedDataParallel under torchrun.

Randomness. Everything random in step k (which images, their flips, t and ε, dropout) is drawn from
generators seeded by (seed, k) (see ``ddpm.batches``), so a run resumed at step k takes the same steps
as one that never stopped, and the global batch is the same for any number of processes.

Several GPUs or machines: start the same command with ``torchrun --nproc_per_node N -m ddpm train …``.
``batch_size`` is the GLOBAL batch, split evenly across the N processes; rank 0 alone writes the
checkpoint, log.csv and sample grids (on several machines, resume needs out_dir on a shared file system).
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.utils import save_image
from tqdm.auto import tqdm

from .batches import StepBatches, step_noise, step_seed
from .checkpoint import check_resumable, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import get_dataset
from .ema import ema_copy, ema_decay, ema_update
from .losses import l_simple, l_vlb
from .sampling import sample
from .schedule import NoiseSchedule
from .unet import UNet


def _opt(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the default for this data or device" (see ``resolve``)."""

    data: str = _opt("digits", "'digits', 'celeba' (with data_dir) or the path of a preprocessed .npy array")
    data_dir: str | None = _opt(None, "the folder that holds CelebA (for data='celeba')")
    image_size: int | None = _opt(None, "image side in pixels (default: the data's own, 8 for digits, 64 for celeba)")
    model: str | None = _opt(None, "UNet preset: tiny, cifar10, celeba64, celebahq256 (default: by data and size)")
    dropout: float | None = _opt(None, "dropout rate (default: the preset's)")
    T: int = _opt(1000, "number of diffusion steps")
    beta_1: float = _opt(1e-4, "first variance of the linear schedule")
    beta_T: float = _opt(0.02, "last variance of the linear schedule")
    loss: str = _opt("simple", "training objective: 'simple' (L_simple, Eq. 14) or 'vlb' (the true bound, Eq. 5)")
    variance: str = _opt("fixedlarge", "sigma_t^2 of p_theta for loss='vlb': 'fixedlarge' (beta_t) or "
                                       "'fixedsmall' (beta-tilde_t)")
    batch_size: int = _opt(128, "GLOBAL batch size, divided evenly across torchrun processes (paper: 128)")
    lr: float = _opt(2e-4, "Adam learning rate (paper: 2e-4)")
    warmup: int | None = _opt(None, "steps of linear learning-rate warm-up (paper: 5000; digits: 200)")
    grad_clip: float = _opt(1.0, "clip the gradient's global norm to this (paper: 1.0)")
    ema_decay: float = _opt(0.9999, "EMA decay, reached after a warm-up min(decay, (1+k)/(10+k))")
    flip: bool | None = _opt(None, "random horizontal flips (default: on for photos, off for digits)")
    steps: int | None = _opt(None, "optimizer steps in total (default: 2000 for digits, 500000 for photos)")
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
    bf16: bool | None = _opt(None, "bfloat16 autocast (default: on with CUDA)")
    compile: bool | None = _opt(None, "torch.compile the model (default: on with CUDA)")
    channels_last: bool | None = _opt(None, "channels-last memory format (default: on with CUDA)")
    num_workers: int | None = _opt(None, "DataLoader worker processes, 0 loads in the main process "
                                         "(default: up to 8 with CUDA, else 0)")


# Defaults that depend on the data. Digits: a CPU run of a few minutes; digits are not mirror-symmetric
# (a flipped 3 is not a digit), so no flips. Photos: the paper's settings, flipped as the paper flips CIFAR10.
DIGITS = dict(model="tiny", steps=2000, warmup=200, flip=False, sample_every=500, checkpoint_every=500)
PHOTOS = dict(steps=500_000, warmup=5000, flip=True, sample_every=10_000, checkpoint_every=5_000)
PRESET_FOR_SIZE = {32: "cifar10", 64: "celeba64", 256: "celebahq256"}


def resolve(config: TrainConfig, image_shape, device: torch.device, world_size: int = 1) -> TrainConfig:
    """``config`` with every ``None`` replaced by its default for this data and device, after checks."""
    c, size = config, image_shape[-1]
    defaults = DIGITS if c.data == "digits" else {**PHOTOS, "model": PRESET_FOR_SIZE.get(size)}
    if c.model is None and defaults["model"] is None:
        raise ValueError(f"no UNet preset for {size}x{size} images; choose one with model= (e.g. 'tiny')")
    cuda = device.type == "cuda"
    c = replace(c, image_size=size, data=str(c.data), out_dir=str(c.out_dir),  # plain str, also for a Path
                data_dir=None if c.data_dir is None else str(c.data_dir),
                **{k: v for k, v in defaults.items() if getattr(c, k) is None},
                **{k: cuda for k in ("bf16", "compile", "channels_last") if getattr(c, k) is None})
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
    if c.loss not in ("simple", "vlb"):
        raise ValueError(f"loss must be 'simple' or 'vlb', got {c.loss!r}")
    if c.variance not in ("fixedlarge", "fixedsmall"):
        raise ValueError(f"variance must be 'fixedlarge' or 'fixedsmall', got {c.variance!r}")
    if c.model not in UNet.PRESETS and c.model != "custom":
        raise ValueError(f"unknown model preset {c.model!r}; choose one of {sorted(UNet.PRESETS)}")
    return c


def build_model(config: TrainConfig, channels: int) -> UNet:
    """The UNet preset ``config.model`` for ``channels`` x image_size² images (with its dropout override)."""
    extra = {} if config.dropout is None else {"dropout": config.dropout}
    return UNet.preset(config.model, in_channels=channels, image_size=config.image_size, **extra)


# ----------------------------------------------------------------------------------------------- the loop

class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or ±Inf. Training stops; the last good checkpoint is left as it was."""


@dataclass
class TrainResult:
    model: nn.Module      # the trained network, unwrapped (no DDP, no compile)
    ema: nn.Module        # the exponential moving average of its weights: sample from this one
    config: TrainConfig   # the config with every default filled in (see ``resolve``)
    step: int             # optimizer steps done in all, counting those before a resume
    losses: list[float]   # L_simple of the global batch at each step this call ran
    out_dir: Path         # where checkpoint.pt, log.csv and samples/ are


def _setup_device(name: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we started the process group), from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but this machine has no CUDA GPU; use device='cpu' or 'auto'")
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    start_group = world > 1 and not dist.is_initialized()
    if start_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device, start_group


def train(config: TrainConfig | None = None, model: nn.Module | None = None, dataset=None,
          progress: bool = True) -> TrainResult:
    """Algorithm 1: repeat {x_0 ~ q(x_0); t ~ U{1..T}; ε ~ N(0, I); a gradient step on ‖ε − ε_θ(x_t, t)‖²}.

    Pass ``model`` (any ε-network) or ``dataset`` (items: image tensors [C, H, W] in [-1, 1]) to use
    your own instead of the config's. Raises :class:`NonFiniteLossError` when the loss stops being finite.
    """
    config = config or TrainConfig()
    rank, world, device, started_group = _setup_device(config.device)
    try:
        return _train(config, model, dataset, progress, rank, world, device)
    finally:
        if started_group:
            dist.destroy_process_group()


def _train(config, model, dataset, progress, rank, world, device) -> TrainResult:
    out = Path(config.out_dir)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not config.resume:
        raise ValueError(f"{ckpt_path} already exists; pass resume=True (--resume) to continue that run, "
                         "or choose another out_dir")
    if dataset is None:
        dataset = get_dataset(config.data, "train", config.data_dir, config.image_size)
        if hasattr(dataset, "flip"):
            dataset.flip = False  # the loop flips, from the step's seed (see step_noise), so resume is exact
    if len(dataset) == 0:
        raise ValueError("the training data set is empty")
    shape = tuple(_images(dataset[0]).shape)
    config = resolve(replace(config, model="custom") if model is not None else config, shape, device, world)

    torch.manual_seed(config.seed)  # the initial weights
    model = (build_model(config, shape[0]) if model is None else model).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ema_copy(model)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True if device.type == "cuda" else None)
    start = 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        check_resumable(state["config"], asdict(config), ckpt_path)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])  # for draws outside the loop's own, e.g. a data set's random transforms
        start = state["step"]
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    net = torch.compile(net) if config.compile else net

    s = NoiseSchedule.linear(config.T, config.beta_1, config.beta_T).to(device)  # no host syncs per step
    sampler = StepBatches(len(dataset), config.batch_size, config.seed, start, config.steps, rank, world)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda")
    log = _open_log(out / "log.csv", start) if rank == 0 else None
    bar = tqdm(total=config.steps, initial=start, unit="step", desc="train", disable=rank != 0 or not progress)
    losses, pending, lrs, saved, tick = [], [], [], start or None, time.perf_counter()
    model.train()
    for step, batch in enumerate(loader, start):
        x0 = _images(batch).to(device, non_blocking=True)
        t, noise, flip = step_noise(config.seed, step, config.T, config.batch_size, shape, sampler.part, device)
        x0 = torch.where(flip[:, None, None, None] & config.flip, x0.flip(-1), x0)
        if config.channels_last:
            x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
        done = step + 1  # optimizer steps done after this one
        torch.manual_seed(step_seed(config.seed, step, 2, rank))  # dropout masks, different on each rank
        lrs.append(config.lr * min(1.0, done / config.warmup) if config.warmup else config.lr)  # linear warm-up
        for group in opt.param_groups:
            group["lr"] = lrs[-1]
        with torch.autocast(device.type, torch.bfloat16, enabled=config.bf16):
            loss = l_simple(s, net, x0, t, noise) if config.loss == "simple" else \
                l_vlb(s, net, x0, t, noise, config.variance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        ema_update(ema, model, ema_decay(done, config.ema_decay))
        pending.append(loss.detach())

        save_due = done == config.steps or (config.checkpoint_every and done % config.checkpoint_every == 0)
        sample_due = config.sample_every and (done == config.steps or done % config.sample_every == 0)
        if not (done % config.log_every == 0 or save_due or sample_due):
            continue
        values = _global_mean(pending, world)
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            step_bad = done - len(values) + 1 + bad[0]
            _stop(f"the loss became {values[bad[0]]} at step {step_bad}", ckpt_path, saved, config)
        losses += values
        if log is not None:
            csv.writer(log).writerows((done - len(values) + 1 + i, v, lr) for i, (v, lr) in enumerate(zip(values, lrs)))
            log.flush()
        now = time.perf_counter()
        bar.set_postfix(loss=f"{sum(values) / len(values):.4f}",
                        img_per_s=f"{len(values) * config.batch_size / (now - tick):.0f}")
        bar.update(len(values))
        pending, lrs = [], []
        if save_due and not all(torch.isfinite(p).all() for p in (*model.parameters(), *ema.parameters())):
            _stop(f"the weights stopped being finite by step {done}", ckpt_path, saved, config)
        if rank == 0 and sample_due:
            _save_grid(s, ema, config, shape, device, out / "samples" / f"step_{done:07d}.png")
        if rank == 0 and save_due:
            save_checkpoint({"step": done, "model": model.state_dict(), "ema": ema.state_dict(),
                             "optimizer": opt.state_dict(), "config": asdict(config),
                             "image_shape": list(shape), "rng": rng_state()}, ckpt_path)
            saved = done
        tick = time.perf_counter()
    bar.close()
    if log is not None:
        log.close()
    return TrainResult(model, ema, config, max(start, config.steps), losses, out)


def _images(batch):
    """The image tensor of a batch or item (the first entry of an (image, label) pair)."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _global_mean(values: list[torch.Tensor], world: int) -> list[float]:
    v = torch.stack(values).float()
    if world > 1:
        dist.all_reduce(v)  # sum over ranks (gloo has no average)
        v /= world
    return v.tolist()


def _stop(what, ckpt_path, saved, config):
    kept = f"{ckpt_path} (step {saved}) is kept as it was" if saved else "no checkpoint had been saved yet"
    raise NonFiniteLossError(
        f"{what}; training stopped and {kept}. Try a lower learning rate (lr={config.lr}), a longer warm-up "
        f"(warmup={config.warmup}), bf16=False, or check the data for NaN or Inf values.")


def _open_log(path: Path, start: int):
    """log.csv (step, loss, lr), cut back to the rows of steps <= start, opened for appending."""
    rows = []
    if start and path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and r[0].isdigit() and int(r[0]) <= start]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("step", "loss", "lr"), *rows])
    return open(path, "a", newline="")


@torch.no_grad()
def _save_grid(s, ema, config, shape, device, path: Path) -> None:
    """Algorithm 2 with the EMA weights, always from the same noise (seeded by config.seed), as a PNG grid."""
    g = torch.Generator(device).manual_seed(config.seed)
    with torch.autocast(device.type, torch.bfloat16, enabled=config.bf16):
        x = sample(s, ema, (config.num_samples, *shape), generator=g, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((x.float() + 1) / 2, path, nrow=math.ceil(math.sqrt(config.num_samples)))
