"""Algorithm 1 of Ho et al. (2020) as the paper ran it (or, with loss="vlb", the true bound of its Table 2):
Adam at 2e-4 with a linear warm-up, gradients clipped to norm 1, an EMA of the weights (decay 0.9999) to
sample from; with checkpoints that resume exactly, bf16 autocast where the device runs it natively,
torch.compile / channels_last on a GPU, and DistributedDataParallel under torchrun.

Randomness. Everything random in step k (which images, their flips, t and ε, dropout) is drawn from
generators seeded by (seed, k) (see ``ddpm.batches``), so a run resumed at step k takes the same steps
as one that never stopped, and the global batch is the same for any number of processes.

Failures. A NaN loss stops the run with the last good checkpoint kept and the command that goes on from
it with a lower lr (lr, warmup and grad_clip may change on resume; the change is recorded in log.csv and
the checkpoint). An unreadable image (an OSError, ValueError or RuntimeError from the data) stops it at a
step boundary after saving the steps done so far (one process only). Ctrl-C says which checkpoint is kept.

Several GPUs or machines: start the same command with ``torchrun --nproc_per_node N -m ddpm train …``.
``batch_size`` is the GLOBAL batch, split evenly across the N processes; rank 0 alone writes the
checkpoint, log.csv and sample grids (on several machines, resume needs out_dir on a shared file system);
every rank draws its share of each sample grid.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batches import StepBatches, step_noise, step_seed
from .checkpoint import (atomic_write, load_checkpoint, remove_stale_temporaries, rng_state, save_checkpoint,
                         set_rng_state)
from .config import TrainConfig, build_model, check_resumable, native_bf16, resolve
from .data import get_dataset
from .ema import ema_copy, ema_decay, ema_update
from .losses import l_simple, l_vlb
from .parameterization import as_eps_model
from .sampling import sample
from .schedule import NoiseSchedule

__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "resolve", "build_model", "train"]

DATA_ERRORS = (OSError, ValueError, RuntimeError)  # what an unreadable image raises from the data set


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
    your own instead of the config's. Raises :class:`NonFiniteLossError` when the loss stops being finite,
    ``KeyboardInterrupt`` with a one-line message on Ctrl-C, and a ValueError when a resumed run asks for
    fewer steps than its checkpoint has done.
    """
    config = config or TrainConfig()
    rank, world, device, started_group = _setup_device(config.device)
    try:
        return _train(config, model, dataset, progress, rank, world, device)
    finally:
        if started_group:
            dist.destroy_process_group()


def _train(config, model, dataset, progress, rank, world, device) -> TrainResult:
    given, custom = config, model is not None or dataset is not None  # custom: no command line reruns it
    out = Path(config.out_dir)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.csv"
    if ckpt_path.exists() and not config.resume:
        raise ValueError(f"{ckpt_path} already exists; pass resume=True (--resume) to continue that run, "
                         "or choose another out_dir")
    if rank == 0:  # what a process killed during a save left behind
        remove_stale_temporaries(ckpt_path)
        remove_stale_temporaries(log_path)
    if dataset is None:
        dataset = get_dataset(config.data, "train", config.data_dir, config.image_size)
        if hasattr(dataset, "flip"):
            dataset.flip = False  # the loop flips, from the step's seed (see step_noise), so resume is exact
    if len(dataset) == 0:
        raise ValueError("the training data set is empty")
    shape = tuple(_images(dataset[0]).shape)
    config = resolve(replace(config, model="custom") if model is not None else config, shape, device, world)
    if config.data_dir is not None:  # stored absolute, so evaluate finds it from any folder
        config = replace(config, data_dir=os.path.abspath(os.path.expanduser(config.data_dir)))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the shapes never change: let cuDNN pick its fastest kernels

    torch.manual_seed(config.seed)  # the initial weights
    model = (build_model(config, shape[0]) if model is None else model).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ema_copy(model)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True if device.type == "cuda" else None)
    start, changes, note = 0, [], ""
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        changed = check_resumable(state["config"], asdict(config), ckpt_path)
        if config.steps < state["step"]:
            raise ValueError(f"{ckpt_path} has done {state['step']} steps, more than steps={config.steps}: nothing "
                             f"to do. To train further, pass a larger steps (--steps), e.g. {2 * state['step']}")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        _match_strides(opt)
        set_rng_state(state["rng"])  # for draws outside the loop's own, e.g. a data set's random transforms
        start, changes = state["step"], state.get("changes", [])
        if changed:
            changes = [*changes, {"step": start, **changed}]
            note = "resumed with " + ", ".join(f"{k}={new} (was {old})" for k, (old, new) in changed.items())
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    net = torch.compile(net) if config.compile else net

    def command(**new) -> str:
        return _command(given, world, custom, **new)

    s = NoiseSchedule.linear(config.T, config.beta_1, config.beta_T).to(device)  # no host syncs per step
    sampler = StepBatches(len(dataset), config.batch_size, config.seed, start, config.steps, rank, world)
    batches = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                              pin_memory=device.type == "cuda"))
    log = _open_log(log_path, start) if rank == 0 else None
    show = progress and rank == 0
    if show:
        tqdm.write(f"train: {_precision(config, device)}, compile {'on' if config.compile else 'off'}, channels_last "
                   f"{'on' if config.channels_last else 'off'}, {world} process(es) on {device}; steps {start} to "
                   f"{config.steps}, in {out}", file=sys.stderr)
    bar = tqdm(total=config.steps, initial=start, unit="step", desc="train", disable=not show)
    losses, pending, lrs, saved, done, tick = [], [], [], start or None, start, time.perf_counter()

    def flush():
        """The pending steps' global mean losses: checked, logged, shown."""
        nonlocal pending, lrs, tick, note
        values = _global_mean(pending, world)
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            step_bad = done - len(values) + 1 + bad[0]
            _stop(f"the loss became {values[bad[0]]} at step {step_bad}", ckpt_path, saved, config, command)
        losses.extend(values)
        if log is not None:
            rows = [[done - len(values) + 1 + i, v, lr, ""] for i, (v, lr) in enumerate(zip(values, lrs))]
            rows[0][3], note = note, ""
            csv.writer(log).writerows(rows)
            log.flush()
        now = time.perf_counter()
        bar.set_postfix(loss=f"{sum(values) / len(values):.4f}",
                        img_per_s=f"{len(values) * config.batch_size / (now - tick):.0f}")
        pending, lrs, tick = [], [], now

    def save():
        nonlocal saved
        if not all(torch.isfinite(p).all() for p in (*model.parameters(), *ema.parameters())):
            _stop(f"the weights stopped being finite by step {done}", ckpt_path, saved, config, command)
        if rank == 0:
            save_checkpoint({"step": done, "model": model.state_dict(), "ema": ema.state_dict(),
                             "optimizer": opt.state_dict(), "config": asdict(config), "image_shape": list(shape),
                             "rng": rng_state(), "changes": changes}, ckpt_path)
        saved = done

    model.train()
    try:
        for step in range(start, config.steps):
            try:
                batch = next(batches)
            except DATA_ERRORS as e:  # at a step boundary: keep the steps done, then say what was wrong
                if world == 1 and done > (saved or 0):
                    if pending:
                        flush()
                    save()
                raise _data_error(e, step, saved, out, command()) from None
            x0 = _images(batch).to(device, non_blocking=True)
            t, noise, flip = step_noise(config.seed, step, config.T, config.batch_size, shape, sampler.part, device)
            x0 = torch.where(flip[:, None, None, None] & config.flip, x0.flip(-1), x0)
            if config.channels_last:
                x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
            torch.manual_seed(step_seed(config.seed, step, 2, rank))  # dropout masks, different on each rank
            lrs.append(config.lr * min(1.0, (step + 1) / config.warmup) if config.warmup else config.lr)  # warm-up
            for group in opt.param_groups:
                group["lr"] = lrs[-1]
            with torch.autocast(device.type, torch.bfloat16, enabled=config.bf16):
                loss = l_simple(s, net, x0, t, noise, parameterization=config.parameterization) \
                    if config.loss == "simple" else \
                    l_vlb(s, net, x0, t, noise, config.variance, parameterization=config.parameterization)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            done = step + 1  # optimizer steps done
            ema_update(ema, model, ema_decay(done, config.ema_decay))
            pending.append(loss.detach())
            bar.update(1)

            save_due = done == config.steps or (config.checkpoint_every and done % config.checkpoint_every == 0)
            sample_due = config.sample_every and (done == config.steps or done % config.sample_every == 0)
            early = done < config.log_every and done & (done - 1) == 0  # steps 1, 2, 4, 8, ...: a bar from the start
            if not (done % config.log_every == 0 or save_due or sample_due or early):
                continue
            flush()
            if sample_due:
                bar.set_description("train: drawing samples")
                _save_grid(s, as_eps_model(s, ema, config.parameterization), config, shape, device,
                           out / "samples" / f"step_{done:07d}.png", rank, world, show)
                bar.set_description("train")
            if save_due:
                save()
            tick = time.perf_counter()
    except KeyboardInterrupt:
        kept = f"the checkpoint of step {saved} in {out} is kept" if saved else "no checkpoint had been saved yet"
        raise KeyboardInterrupt(f"stopped at step {done}; {kept}; continue with `{command()}`") from None
    finally:
        bar.close()
        if log is not None:
            log.close()
    return TrainResult(model, ema, config, max(start, config.steps), losses, out)


def _images(batch):
    """The image tensor of a batch or item (the first entry of an (image, label) pair)."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _precision(config: TrainConfig, device: torch.device) -> str:
    """The arithmetic a run trains in, in words."""
    if config.bf16:
        return "bf16 autocast"
    return "float32" if native_bf16(device) else f"float32 (no native bf16 on this {device.type})"


def _match_strides(opt: torch.optim.Optimizer) -> None:
    """Give each loaded optimizer state tensor its parameter's strides: a run may resume with channels_last
    switched, and CUDA's fused Adam refuses states whose layout differs from the parameter's."""
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def _global_mean(values: list[torch.Tensor], world: int) -> list[float]:
    v = torch.stack(values).float()
    if world > 1:
        dist.all_reduce(v)  # sum over ranks (gloo has no average)
        v /= world
    return v.tolist()


def _command(config: TrainConfig, world: int, custom: bool, **new) -> str:
    """The command that continues this run from its checkpoint (with the settings in ``new`` changed)."""
    if custom:
        changes = "".join(f", {k}={v!r}" for k, v in new.items())
        return f"the same train(...) call with config=replace(config, resume=True{changes})"
    parts = ["torchrun", "--nproc_per_node", str(world), "-m"] if world > 1 else ["python", "-m"]
    parts += ["ddpm", "train"]
    for f in fields(TrainConfig):
        value = new.get(f.name, getattr(config, f.name))
        if f.name == "resume" or value is None or (f.name not in new and value == f.default):
            continue
        flag = "--" + f.name.replace("_", "-")
        parts += [flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    return shlex.join([*parts, "--resume"])


def _stop(what, ckpt_path, saved, config, command):
    kept = f"{ckpt_path} (step {saved}) is kept as it was" if saved else "no checkpoint had been saved yet"
    lower = float(f"{config.lr / 10:.3g}")
    raise NonFiniteLossError(
        f"{what}; training stopped and {kept}. To go on with a lower learning rate, run `{command(lr=lower)}` "
        f"(lr, warmup and grad_clip may change on --resume); a longer warm-up (warmup={config.warmup}), "
        "bf16=False, or a check of the data for NaN or Inf values may also help.")


def _data_error(e: BaseException, step: int, saved, out: Path, command: str) -> BaseException:
    """``e`` as one line (a DataLoader worker's error carries its traceback: keep its last line) that also
    says which checkpoint is kept and how to go on."""
    text = str(e).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].removeprefix(f"{type(e).__name__}: ")
    kept = f"the checkpoint of step {saved} in {out} is kept" if saved else "no checkpoint had been saved yet"
    try:
        return type(e)(f"{text} (training stopped at step {step + 1}; {kept}; fix the data, then continue "
                       f"with `{command}`)")
    except TypeError:  # an exception type that wants other arguments: keep it as it was
        return e


def _open_log(path: Path, start: int):
    """log.csv (step, loss, lr, note), cut back to the rows of steps <= start (rewritten atomically, so a kill
    loses nothing), opened for appending."""
    rows = []
    if start and path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and r[0].isdigit() and int(r[0]) <= start]
    text = io.StringIO()
    csv.writer(text).writerows([("step", "loss", "lr", "note"), *rows])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))
    return open(path, "a", newline="")


@torch.no_grad()
def _save_grid(s, ema, config, shape, device, path: Path, rank=0, world=1, progress=False) -> None:
    """Algorithm 2 with the EMA weights, always from the same noise (seeded by config.seed), as a PNG grid.

    Under DDP every rank draws the whole grid's noise but runs the network on its own share of the images
    only; the shares are gathered on every rank, so no rank waits idle in a collective while another samples.
    Images smaller than 64 pixels are scaled up (nearest neighbour) so that a grid of them can be seen.
    """
    n = config.num_samples
    share = math.ceil(n / world)
    part = slice(min(rank * share, n), min((rank + 1) * share, n))

    def eps_share(x, t):  # ε̂ for this rank's rows; the others' rows get 0 and are discarded
        eps = torch.zeros_like(x)
        if part.start < part.stop:
            eps[part] = ema(x[part], t[part])
        return eps

    g = torch.Generator(device).manual_seed(config.seed)
    with torch.autocast(device.type, torch.bfloat16, enabled=config.bf16):
        x = sample(s, ema if world == 1 else eps_share, (n, *shape), generator=g, device=device, progress=progress)
    if world > 1:
        mine = x[part].float()
        mine = torch.cat([mine, mine.new_zeros((share - len(mine), *shape))])
        shares = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(shares, mine)
        x = torch.cat(shares)[:n]
    if rank != 0:
        return
    from torchvision.utils import save_image  # here: importing torchvision takes seconds

    scale = math.ceil(64 / shape[-1])
    x = ((x.float() + 1) / 2).repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x, path, nrow=math.ceil(math.sqrt(n)))
