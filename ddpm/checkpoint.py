"""Checkpoints that survive a crash and cannot run code: atomic writes, ``weights_only`` loads, RNG states.

A checkpoint is a dict of tensors and plain Python values (ints, floats, strings, lists, dicts), so
``torch.load(..., weights_only=True)`` reads it and a stranger's file cannot execute anything on load.
It is written to a temporary file in the same directory, flushed to disk, and renamed over the old
one (``os.replace`` is atomic on POSIX and Windows): a run killed during a save leaves the previous
checkpoint intact and loadable. :func:`load_model` rebuilds the trained network from a checkpoint.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``: tensors and plain containers only, never code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first (python -m ddpm train) or pass the "
                                "path of an existing checkpoint.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} is not a safe ddpm checkpoint: it holds objects other than tensors and plain "
                         f"containers, which weights_only loading refuses ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or not written by torch.save): {e}") from None
    missing = {"step", "model", "ema", "config"} - set(state) if isinstance(state, dict) else {"a dict"}
    if missing:
        raise ValueError(f"{path} is not a ddpm checkpoint: it lacks {sorted(missing)}")
    return state


# What a resumed run must share with its checkpoint: every setting that changes the sequence of weights
# (not steps, intervals, out_dir, device, the GPU switches or the number of processes).
TRAJECTORY = ("data", "image_size", "model", "dropout", "T", "beta_1", "beta_T", "batch_size", "lr", "warmup",
              "grad_clip", "ema_decay", "flip", "seed", "loss", "variance")


def check_resumable(saved: dict, config: dict, path) -> None:
    """Raise a ValueError naming every ``TRAJECTORY`` setting in which two training configs differ."""
    diff = [f"{k}={saved.get(k)!r} there, {config.get(k)!r} here" for k in TRAJECTORY if saved.get(k) != config.get(k)]
    if diff:
        raise ValueError(f"{path} was trained with another config, so it cannot be resumed with this one: "
                         + "; ".join(diff) + ". Use the same values, or another out_dir for a new run.")


def rng_state() -> dict:
    """The states of every generator a run may touch, as tensors and plain values (``weights_only``-safe)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch_cpu": torch.get_rng_state(),
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # this process's GPU, if it used one
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (the CUDA state only where CUDA is present)."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"].cpu())


def load_model(path, use_ema: bool = True, device="cpu") -> tuple:
    """(network, config, image shape [C, H, W]) from a checkpoint: the EMA weights unless ``use_ema=False``."""
    from .train import TrainConfig, build_model  # here, because train imports this module
    from .unet import UNet

    state = load_checkpoint(path)
    known = {f.name for f in fields(TrainConfig)}
    saved = state["config"]
    if not isinstance(saved, dict) or not set(saved) <= known:
        unknown = sorted(set(saved) - known) if isinstance(saved, dict) else saved
        raise ValueError(f"{path} has a config this version of ddpm does not know: {unknown}")
    config = TrainConfig(**saved)
    if config.model not in UNet.PRESETS:
        raise ValueError(f"{path} holds a network passed to train() directly (model={config.model!r}); build that "
                         "network yourself and load_state_dict(ddpm.checkpoint.load_checkpoint(path)['ema'])")
    model = build_model(config, state["image_shape"][0])
    try:
        model.load_state_dict(state["ema" if use_ema else "model"])
    except RuntimeError as e:
        raise ValueError(f"the weights in {path} do not fit the {config.model!r} UNet its config describes: "
                         f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval(), config, tuple(state["image_shape"])
