"""Algorithm 1 of Ho et al. (2020) as the paper ran it (or, with loss="vlb", the true bound of its Table 2):
Adam with a linear warm-up (at the paper's lr 2e-4 for photos, 2e-5 at 256x256; see ``ddpm.config`` for every
default), gradients clipped to norm 1, an EMA of the weights (decay 0.9999) to sample from; with checkpoints
that resume exactly, bf16 autocast where the device runs it natively, torch.compile / channels_last on a GPU,
and DistributedDataParallel under torchrun.

The loop reads as the algorithm: :func:`train_step` is one gradient step, and a :class:`Recorder` keeps
what a run writes (log.csv with step, loss, lr, grad_norm and note; the checkpoint) and says.

Randomness. Everything random in step k (which images, their flips, t and ε, dropout, dropped labels) is drawn from
generators seeded by (seed, k) (see ``ddpm.batches``), so a run resumed at step k takes the same steps
as one that never stopped, and the global batch is the same for any number of processes.

Failures. A NaN loss stops the run with the last good checkpoint kept and the command that goes on from
it with a lower lr (lr, warmup and grad_clip may change on resume; the change is recorded in log.csv and
the checkpoint). An unreadable image (an OSError, ValueError or RuntimeError from the data) stops it at a
step boundary after saving the steps done so far (one process only). So does Ctrl-C (one process only; a
second Ctrl-C stops at once and keeps the last checkpoint).

Several GPUs or machines: start the same command with ``torchrun --nproc_per_node N -m ddpm train …``.
``batch_size`` is the GLOBAL batch, split evenly across the N processes; rank 0 builds the data set first
(a download lands once), the others after it; rank 0 alone writes the checkpoint, log.csv and sample grids
(on several machines, resume needs out_dir on a shared file system); every rank draws its share of each grid.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from functools import partial
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batches import StepBatches, step_label_dropout, step_noise, step_seed
from .checkpoint import (atomic_write, build_network, load_checkpoint, network_config, remove_stale_temporaries,
                         rng_state, save_checkpoint, set_rng_state, unwritable)
from .config import (TrainConfig, build_model, check_resumable, native_bf16, resolve, resolve_device,
                     sampling_variance)
from .data import get_dataset
from .ema import ema_copy, ema_decay, ema_update
from .levels import save_grid
from .losses import l_simple, l_vlb
from .parameterization import as_eps_model
from .sampling import sample

__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "resolve", "build_model", "train", "train_step",
           "learning_rate"]

DATA_ERRORS = (OSError, ValueError, RuntimeError)  # what an unreadable image raises from the data set
LOG_COLUMNS = ("step", "loss", "lr", "grad_norm", "note")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or ±Inf. Training stops; the last good checkpoint is left as it was."""


@dataclass
class TrainResult:
    model: nn.Module      # the trained network, unwrapped (no DDP, no compile)
    ema: nn.Module        # the exponential moving average of its weights: sample from this one
    config: TrainConfig   # the config with every default filled in (see ``resolve``)
    step: int             # optimizer steps done in all, counting those before a resume
    losses: list[float]   # the objective on the global batch at each step this call ran: L_simple, or with
    #                       loss="vlb" the bound's term L_(t-1) in bits/dim (see ``ddpm.losses.l_vlb``)
    out_dir: Path         # where checkpoint.pt, log.csv and samples/ are


def train(config: TrainConfig | None = None, model: nn.Module | None = None, dataset=None,
          progress: bool = True) -> TrainResult:
    """Algorithm 1: repeat {x_0 ~ q(x_0); t ~ U{1..T}; ε ~ N(0, I); a gradient step on ‖ε − ε_θ(x_t, t)‖²}.

    Pass ``model`` (any ε-network) or ``dataset`` (items: image tensors [C, H, W] in [-1, 1]) to use
    your own instead of the config's. With ``config.class_conditional`` (Ho & Salimans 2022), the items are
    (image, label) pairs, the network is called ``model(x_t, t, y)`` and has ``.num_classes`` K, and each label
    is replaced by the null class K with probability ``config.label_dropout``. Raises :class:`NonFiniteLossError`
    when the loss stops being finite, ``KeyboardInterrupt`` with a one-line message on Ctrl-C (after saving the
    last finished step), and a ValueError before any work when out_dir cannot be written or holds a run that
    resume=True does not continue, when the data's items are not images, or when a resumed run asks for fewer
    steps than done.
    """
    config = config or TrainConfig()
    _check_out_dir(config)
    rank, world, device, started_group = _setup_device(config.device)
    try:
        return _train(config, model, dataset, progress, rank, world, device)
    finally:
        if started_group:
            dist.destroy_process_group()


def learning_rate(config: TrainConfig, step: int) -> float:
    """The lr of step ``step`` (counting from 0): lr · min(1, (step + 1) / warmup), the paper's linear warm-up."""
    return config.lr * min(1.0, (step + 1) / config.warmup) if config.warmup else config.lr


def train_step(s, net, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, x0: Tensor, t: Tensor,
               noise: Tensor, step: int, config: TrainConfig, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Step ``step`` (from 0) of Algorithm 1 on x_0, t and ε: the loss (L_simple, Eq. 14, or the bound's term
    with loss="vlb") under autocast, its gradient clipped to global norm grad_clip, Adam at the warm-up lr,
    then the EMA of the weights. ``net`` computes (``model`` wrapped in DDP or compiled, or ``model`` itself),
    given the labels ``y`` where there are (a class-conditional run).
    Returns the loss and the gradient's norm before clipping, as tensors (reading them waits for the device)."""
    for group in opt.param_groups:
        group["lr"] = learning_rate(config, step)
    eps_model = net if y is None else (lambda xt, tt: net(xt, tt, y))
    with torch.autocast(x0.device.type, torch.bfloat16, enabled=config.bf16):
        if config.loss == "simple":
            loss = l_simple(s, eps_model, x0, t, noise, parameterization=config.parameterization)
        else:
            loss = l_vlb(s, eps_model, x0, t, noise, config.variance, parameterization=config.parameterization)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    opt.step()
    ema_update(ema, model, ema_decay(step + 1, config.ema_decay))
    return loss.detach(), grad_norm.detach()


def _train(config, model, dataset, progress, rank, world, device) -> TrainResult:
    """The run's data, config, network, optimizer and resumed state; then Algorithm 1's loop."""
    given, custom = config, model is not None or dataset is not None  # custom: no command line reruns it
    out = Path(config.out_dir)
    ckpt_path = out / "checkpoint.pt"
    if rank == 0:  # what a process killed during a save left behind
        remove_stale_temporaries(ckpt_path)
        remove_stale_temporaries(out / "log.csv")
    dataset = _load_data(config, rank, world) if dataset is None else dataset
    shape = _image_shape(dataset)
    config = resolve(replace(config, model="custom") if model is not None else config, shape, device, world)
    if config.data_dir is not None:  # stored absolute, so evaluate finds it from any folder
        config = replace(config, data_dir=os.path.abspath(os.path.expanduser(config.data_dir)))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the shapes never change: let cuDNN pick its fastest kernels

    state = load_checkpoint(ckpt_path, map_location=device) if ckpt_path.exists() else None
    changed = _check_resume(state, config, ckpt_path) if state else {}
    torch.manual_seed(config.seed)  # the initial weights
    if model is None:  # the config's network; on resume, the one its checkpoint was trained as
        model = build_network(state, config, ckpt_path) if state else build_model(config, shape[0])
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    num_classes = _num_classes(config, model, dataset)
    ema = ema_copy(model)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True if device.type == "cuda" else None)
    start, changes = 0, []
    if state:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        _match_strides(opt)
        set_rng_state(state["rng"])  # for draws outside the loop's own, e.g. a data set's random transforms
        start, changes = state["step"], state.get("changes", [])
        changes = [*changes, {"step": start, **changed}] if changed else changes
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    net = torch.compile(net) if config.compile else net

    s = config.noise_schedule().to(device)  # on the device: no host syncs per step
    sampler = StepBatches(len(dataset), config.batch_size, config.seed, start, config.steps, rank, world)
    batches = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                              pin_memory=device.type == "cuda"))
    show = progress and rank == 0
    if show:
        tqdm.write(f"train: {_precision(config, device)}, compile {'on' if config.compile else 'off'}, channels_last "
                   f"{'on' if config.channels_last else 'off'}, {world} process(es) on {device}; steps {start} to "
                   f"{config.steps}, in {out}", file=sys.stderr)
    note = ", ".join(f"{k}={new} (was {old})" for k, (old, new) in changed.items())
    rec = Recorder(config, partial(_command, given, world, custom), start, shape, changes,
                   note and f"resumed with {note}", rank, world, show)

    model.train()
    with rec, _ctrl_c_at_step_boundaries(world == 1) as ctrl_c:
        try:
            for step in range(start, config.steps):
                if ctrl_c.pressed:
                    break
                try:
                    batch = next(batches)
                except DATA_ERRORS as e:  # at a step boundary: keep the steps done, then say what was wrong
                    rec.keep(model, ema, opt)
                    raise rec.data_error(e, step) from None
                x0, t, noise, y = _step_inputs(batch, step, config, shape, sampler.part, device, num_classes)
                torch.manual_seed(step_seed(config.seed, step, 2, rank))  # dropout masks, different on each rank
                loss, grad_norm = train_step(s, net, model, ema, opt, x0, t, noise, step, config, y)
                rec.record(loss, grad_norm)

                done = step + 1
                save_due = done == config.steps or (config.checkpoint_every and done % config.checkpoint_every == 0)
                sample_due = config.sample_every and (done == config.steps or done % config.sample_every == 0)
                early = done < config.log_every and done & (done - 1) == 0  # steps 1, 2, 4, 8, ...: a bar at once
                if done % config.log_every == 0 or save_due or sample_due or early:
                    rec.flush()
                if sample_due:
                    with rec.pause("drawing samples"):
                        _sample_grid(s, ema, config, shape, device, out / "samples" / f"step_{done:07d}.png",
                                     rank, world, show)
                if save_due:
                    rec.save(model, ema, opt)
        except KeyboardInterrupt:  # in the middle of a step (a second Ctrl-C, or several processes)
            raise KeyboardInterrupt(rec.interrupted(saved_now=False)) from None
        if ctrl_c.pressed and rec.done < config.steps:  # the first Ctrl-C, at a step boundary
            rec.keep(model, ema, opt)
            raise KeyboardInterrupt(rec.interrupted(saved_now=True))
    return TrainResult(model, ema, config, max(start, config.steps), rec.losses, out)


class Recorder:
    """What a run keeps and says: log.csv and the checkpoint (written by rank 0), the progress bar, and the
    messages that stop a run (a NaN, unreadable data, Ctrl-C), each with ``command()``, the command that
    continues the run (``command(lr=...)``: with that setting changed)."""

    def __init__(self, config: TrainConfig, command, start: int, shape, changes: list, note: str, rank: int,
                 world: int, show: bool):
        self.config, self.command, self.shape, self.changes, self.note = config, command, list(shape), changes, note
        self.rank, self.world, self.out = rank, world, Path(config.out_dir)
        self.done, self.saved = start, start or None  # steps done; the step of the checkpoint on disk
        self.losses, self.pending = [], []  # the logged losses; (loss, grad_norm, lr) of the steps not yet logged
        self.log = _open_log(self.out / "log.csv", start) if rank == 0 else None
        self.bar = tqdm(total=config.steps, initial=start, unit="step", desc="train", disable=not show)
        self.tick = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
        if self.log is not None:
            self.log.close()

    def record(self, loss: Tensor, grad_norm: Tensor) -> None:
        """One more step done, with its loss and gradient norm (read at the next flush)."""
        self.pending.append((loss, grad_norm, learning_rate(self.config, self.done)))
        self.done += 1
        self.bar.update(1)

    def flush(self) -> None:
        """The pending steps' global mean losses: checked, logged with their lr and gradient norm, shown."""
        if not self.pending:
            return
        losses, grad_norms, lrs = zip(*self.pending)
        values = _global_mean(losses, self.world)
        norms = torch.stack(grad_norms).float().tolist()  # the same on every rank: DDP averaged the gradients
        first = self.done - len(values) + 1
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise self.nonfinite(f"the loss became {values[bad[0]]} at step {first + bad[0]}")
        self.losses.extend(values)
        if self.log is not None:
            rows = [[first + i, v, lr, norm, ""] for i, (v, lr, norm) in enumerate(zip(values, lrs, norms))]
            rows[0][-1], self.note = self.note, ""
            csv.writer(self.log).writerows(rows)
            self.log.flush()
        now = time.perf_counter()
        self.bar.set_postfix(loss=f"{sum(values) / len(values):.4f}",
                             img_per_s=f"{len(values) * self.config.batch_size / (now - self.tick):.0f}")
        self.pending, self.tick = [], now

    def save(self, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> None:
        """The checkpoint of the steps done, with the network's architecture (``UNet(**unet)``)."""
        if not all(torch.isfinite(p).all() for p in (*model.parameters(), *ema.parameters())):
            raise self.nonfinite(f"the weights stopped being finite by step {self.done}")
        if self.rank == 0:
            with self.pause("saving"):
                save_checkpoint({"step": self.done, "model": model.state_dict(), "ema": ema.state_dict(),
                                 "optimizer": opt.state_dict(), "config": asdict(self.config),
                                 "unet": network_config(model), "image_shape": self.shape, "rng": rng_state(),
                                 "changes": self.changes}, self.out / "checkpoint.pt")
        self.saved = self.done

    def keep(self, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> None:
        """Before a stop between steps: log and save the steps done since the last checkpoint (one process
        only: with several, the others are not at this boundary)."""
        if self.world == 1 and self.done > (self.saved or 0):
            self.flush()
            self.save(model, ema, opt)

    @contextmanager
    def pause(self, doing: str):
        """Time spent ``doing`` something other than steps: shown on the bar, left out of its speed."""
        self.bar.set_description(f"train: {doing}")
        try:
            yield
        finally:
            self.bar.set_description("train")
            self.tick = time.perf_counter()

    def kept(self) -> str:
        return f"the checkpoint of step {self.saved} in {self.out} is kept" if self.saved else \
            "no checkpoint had been saved yet"

    def nonfinite(self, what: str) -> NonFiniteLossError:
        kept = f"{self.out / 'checkpoint.pt'} (step {self.saved}) is kept as it was" if self.saved else \
            "no checkpoint had been saved yet"
        lower = float(f"{self.config.lr / 10:.3g}")
        return NonFiniteLossError(
            f"{what}; training stopped and {kept}. To go on with a lower learning rate, run "
            f"`{self.command(lr=lower)}` (lr, warmup and grad_clip may change on --resume); a longer warm-up "
            f"(warmup={self.config.warmup}), bf16=False, or a check of the data for NaN or Inf values may also help.")

    def data_error(self, e: BaseException, step: int) -> BaseException:
        """``e`` as one line (a DataLoader worker's error carries its traceback: keep its last line) that also
        says which checkpoint is kept and how to go on."""
        text = str(e).strip()
        if "Original Traceback" in text:
            text = text.splitlines()[-1].removeprefix(f"{type(e).__name__}: ")
        try:
            return type(e)(f"{text} (training stopped at step {step + 1}; {self.kept()}; fix the data, then "
                           f"continue with `{self.command()}`)")
        except TypeError:  # an exception type that wants other arguments: keep it as it was
            return e

    def interrupted(self, saved_now: bool) -> str:
        """What a Ctrl-C kept, worded to follow "stopped: " (as the command line prints it)."""
        kept = f"saved the checkpoint of step {self.saved} in {self.out}" if saved_now and self.saved else self.kept()
        return f"at step {self.done}; {kept}; continue with `{self.command()}`"


@contextmanager
def _ctrl_c_at_step_boundaries(enabled: bool):
    """While the loop runs, a first Ctrl-C (SIGINT) only sets ``.pressed``, which the loop reads between steps,
    so that it never saves half a step; a second one raises KeyboardInterrupt at once. Installed only where
    Python's own handler is in place, in the main thread (``enabled``: one process); restored afterwards."""
    class CtrlC:
        pressed = False

    def handler(signum, frame):
        if CtrlC.pressed:
            raise KeyboardInterrupt
        CtrlC.pressed = True

    ours = enabled and threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    previous = signal.signal(signal.SIGINT, handler) if ours else None
    try:
        yield CtrlC
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)


def _check_out_dir(config: TrainConfig) -> None:
    """A ValueError, before any work, unless out_dir is, or can be created as, a folder this process may
    write in, and holds no checkpoint unless resume=True."""
    out = Path(config.out_dir)
    if why := unwritable(out):
        raise ValueError(f"out_dir {out} cannot be written: {why}; choose another with out_dir= (--out-dir)")
    if (out / "checkpoint.pt").exists() and not config.resume:
        raise ValueError(f"{out / 'checkpoint.pt'} already exists; pass resume=True (--resume) to continue that "
                         "run, or choose another out_dir")


def _setup_device(name: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we started the process group), from torchrun's environment: each
    process on a CUDA machine takes the GPU of its LOCAL_RANK unless the device names one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(name)
    if device.type == "cuda":
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    start_group = world > 1 and not dist.is_initialized()
    if start_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device, start_group


def _load_data(config: TrainConfig, rank: int, world: int):
    """The config's training set, built by rank 0 first and by the other ranks after a barrier, so that a
    data set that downloads (CIFAR-10) fetches into its folder once. Flipping is left to the loop."""
    if rank > 0:
        dist.barrier()
    dataset = get_dataset(config.data, "train", config.data_dir, config.image_size, labels=config.class_conditional)
    if rank == 0 and world > 1:
        dist.barrier()
    if hasattr(dataset, "flip"):
        dataset.flip = False  # the loop flips, from the step's seed (see step_noise), so resume is exact
    return dataset


def _image_shape(dataset) -> tuple:
    """[C, H, W] of the data's items; a ValueError unless they are images."""
    if len(dataset) == 0:
        raise ValueError("the training data set is empty")
    item = _images(dataset[0])
    shape = tuple(getattr(item, "shape", ()))
    if len(shape) != 3:
        what = f"of shape {list(shape)}" if hasattr(item, "shape") else f"a {type(item).__name__}"
        raise ValueError(f"train needs images: items [C, H, W] in [-1, 1] (or (image, label) pairs), but item 0 "
                         f"of the data is {what}; for other data (e.g. 2-D points), write the loop with ddpm.l_simple")
    return shape


def _num_classes(config: TrainConfig, model: nn.Module, dataset) -> int | None:
    """The network's number of classes K for a class-conditional run (None for others), after checks that it
    has classes and that the data's items are (image, label) pairs."""
    if not config.class_conditional:
        return None
    if not isinstance(getattr(model, "num_classes", None), int):
        raise ValueError("class_conditional=True needs a network with classes, called model(x, t, y) and with "
                         ".num_classes K (ddpm.UNet(..., num_classes=K))")
    if not isinstance(dataset[0], (list, tuple)):
        raise ValueError("class_conditional=True needs labelled data: items (image, label), as data='digits' or "
                         "'cifar10' gives them")
    return model.num_classes


def _check_resume(state: dict, config: TrainConfig, path: Path) -> dict:
    """The adjustable settings that changed since the checkpoint (see ``check_resumable``), after checks."""
    changed = check_resumable(state["config"], asdict(config), path)
    if config.steps < state["step"]:
        raise ValueError(f"{path} has done {state['step']} steps, more than steps={config.steps}: nothing "
                         f"to do. To train further, pass a larger steps (--steps), e.g. {2 * state['step']}")
    return changed


def _step_inputs(batch, step: int, config: TrainConfig, shape, part: slice, device, num_classes: int | None = None):
    """Step ``step``'s x_0 ~ q(x_0) (this rank's images, mirrored where the step's coin flips say and config.flip),
    t ~ U{1..T} and ε ~ N(0, I), all from (seed, step) (see ``ddpm.batches``), laid out for the network; and
    for a class-conditional run (``num_classes`` K) the labels y, each replaced by the null class K where the
    step's label dropout says (else None)."""
    x0 = _images(batch).to(device, non_blocking=True)
    t, noise, flip = step_noise(config.seed, step, config.T, config.batch_size, shape, part, device)
    x0 = torch.where(flip[:, None, None, None] & config.flip, x0.flip(-1), x0)
    if config.channels_last:
        x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
    y = None
    if num_classes is not None:
        drop = step_label_dropout(config.seed, step, config.batch_size, config.label_dropout, part, device)
        y = torch.where(drop, num_classes, batch[1].to(device, torch.long, non_blocking=True))
    return x0, t, noise, y


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


def _global_mean(values, world: int) -> list[float]:
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


def _open_log(path: Path, start: int):
    """log.csv (step, loss, lr, grad_norm, note), cut back to the rows of steps <= start (rewritten atomically,
    so a kill loses nothing; a log older than the grad_norm column gets it, empty), opened for appending."""
    rows = []
    if start and path.exists():
        with open(path, newline="") as f:
            rows = [[r.get(c) or "" for c in LOG_COLUMNS] for r in csv.DictReader(f)
                    if (r.get("step") or "").isdigit() and int(r["step"]) <= start]
    text = io.StringIO()
    csv.writer(text).writerows([LOG_COLUMNS, *rows])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))
    return open(path, "a", newline="")


@torch.no_grad()
def _sample_grid(s, ema, config, shape, device, path: Path, rank=0, world=1, progress=False) -> None:
    """Algorithm 2 with the EMA weights (σ_t² as ``sampling_variance`` says; the network in bf16 where the run
    trains in it), always from the same noise (seeded by config.seed), as a PNG grid (see ``save_grid``). A
    class-conditional run's grid is of the conditional model ε_θ(x_t, t, y) without guidance (w = 0): image i
    is of class i mod K, with K images a row, so that column k shows class k.

    Under DDP every rank draws the whole grid's noise but runs the network on its own share of the images
    only; the shares are gathered on every rank, so no rank waits idle in a collective while another samples.
    """
    n = config.num_samples
    share = math.ceil(n / world)
    part = slice(min(rank * share, n), min((rank + 1) * share, n))
    K = ema.num_classes if config.class_conditional else None
    y = None if K is None else torch.arange(n, device=device) % K

    def network(x, t, rows=slice(None)):  # the network's output for these rows, with their labels if any
        return ema(x[rows], t[rows]) if y is None else ema(x[rows], t[rows], y[rows])

    def network_share(x, t):  # the network's output for this rank's rows; the others' rows get 0, discarded
        output = torch.zeros_like(x)
        if part.start < part.stop:
            output[part] = network(x, t, part)
        return output

    eps_model = as_eps_model(s, network if world == 1 else network_share, config.parameterization)
    g = torch.Generator(device).manual_seed(config.seed)
    x = sample(s, eps_model, (n, *shape), variance=sampling_variance(config), generator=g, device=device,
               progress=progress, bf16=config.bf16)
    if world > 1:
        mine = x[part].float()
        mine = torch.cat([mine, mine.new_zeros((share - len(mine), *shape))])
        shares = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(shares, mine)
        x = torch.cat(shares)[:n]
    if rank == 0:
        save_grid(x, path, per_row=K)
