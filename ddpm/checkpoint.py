"""Checkpoints that survive a crash, cannot run code and cannot be corrupted silently: atomic writes,
``weights_only`` loads, a checksum, RNG states.

A checkpoint is a dict of tensors and plain Python values (ints, floats, strings, lists, dicts), so
``torch.load(..., weights_only=True)`` reads it and a stranger's file cannot execute anything on load.
It is written to a temporary file in the same directory, flushed to disk, and renamed over the old
one (``os.replace`` is atomic on POSIX and Windows): a run killed during a save leaves the previous
checkpoint intact and loadable, and :func:`remove_stale_temporaries` clears what the kill left. The
SHA-256 of its contents is saved with it and checked on load, so flipped bytes are an error, not
black images. :func:`load_model` rebuilds the trained network from the architecture the checkpoint stores
(``UNet(**config)``), so a later change of a preset cannot load old weights into another function.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import random
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig, build_model
from .unet import UNet

CHECKSUM = "sha256"  # the key under which a checkpoint holds the digest of everything else in it


class DiskFullError(OSError):
    """A checkpoint did not fit on its disk. The previous checkpoint is kept and the partial file removed."""


def _leaves(value, key=""):
    """(key path, leaf) for every tensor and plain value in a nested dict/list, in a fixed order."""
    if isinstance(value, dict):
        for k in sorted(value, key=repr):
            yield from _leaves(value[k], f"{key}/{k!r}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{key}/{i}")
    else:
        yield key, value


def checksum(state: dict) -> str:
    """The SHA-256 of ``state`` without its own checksum: every key, every plain value, and every tensor's
    dtype, shape and bytes (in logical order, so a tensor's memory layout does not change it)."""
    h = hashlib.sha256()
    for key, leaf in _leaves({k: v for k, v in state.items() if k != CHECKSUM}):
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().cpu().contiguous().reshape(-1)
            h.update(f"{key}:{t.dtype}{tuple(leaf.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().data)
        else:
            h.update(f"{key}={leaf!r};".encode())
    return h.hexdigest()


def _nbytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for _, v in _leaves(state) if isinstance(v, torch.Tensor))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_full(e: BaseException) -> bool:
    """Whether ``e`` or an exception it was raised from is "no space left" (torch.save turns that into
    a RuntimeError whose context is the OSError)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def unwritable(folder) -> str | None:
    """Why ``folder`` cannot be, or be created as, a folder this process writes in; None when it can."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"this process may not write in {existing}"
    return None


def atomic_write(path, write) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it and rename it over ``path``, so ``path``
    is always either the old file or the new one. The file gets the mode the umask gives (not 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
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


def remove_stale_temporaries(path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files that :func:`atomic_write` left beside ``path`` when a process was
    killed during a save (only files of that pattern). Call it before a run writes ``path`` again."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` and its checksum to ``path`` atomically; a full disk is a :class:`DiskFullError`."""
    state = {**state, CHECKSUM: checksum(state)}
    try:
        return atomic_write(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:
        path, needed = Path(path), _nbytes(state)
        free = shutil.disk_usage(path.parent).free
        if not (_disk_full(e) or free < needed):
            raise
        full = DiskFullError(f"the disk is full: saving {path} needs about {needed / 1e6:.1f} MB and "
                             f"{free / 1e6:.1f} MB are free; the previous checkpoint is kept. Free some space "
                             "(or choose an out_dir on another disk) and continue with --resume")
        full.errno = errno.ENOSPC
        raise full from None


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint with ``weights_only=True`` (tensors and plain containers only, never code) and check
    its checksum (files written before checksums existed have none to check)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first (python -m ddpm train) or pass the "
                                "path of an existing checkpoint.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a safe ddpm checkpoint: it holds objects other than tensors and plain "
                         f"containers, which weights_only loading refuses ({first})") from None
    except Exception as e:  # a torn zip, a text file, ...: torch raises RuntimeError, EOFError, KeyError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{path} is not a readable checkpoint (truncated, or not written by torch.save): "
                         f"{type(e).__name__} {first}".rstrip()) from None
    missing = {"step", "model", "ema", "config"} - set(state) if isinstance(state, dict) else {"a dict"}
    if missing:
        raise ValueError(f"{path} is not a ddpm checkpoint: it lacks {sorted(missing)}")
    if CHECKSUM in state and state[CHECKSUM] != checksum(state):
        raise ValueError(f"{path} is corrupted: its contents do not match the SHA-256 saved with them; use "
                         "another copy, or an earlier checkpoint")
    return state if str(map_location) == "cpu" else _to(state, map_location)


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    return value


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


def network_config(model) -> dict | None:
    """What a checkpoint stores to rebuild ``model``: ``UNet(**config)``'s arguments, or None for a network
    that is not a :class:`ddpm.UNet`."""
    return dict(model.config) if isinstance(model, UNet) else None


def build_network(state: dict, config: TrainConfig, path) -> UNet:
    """The network a checkpoint's weights belong to, built as it was trained: from the architecture the
    checkpoint stores (``state["unet"]``), or, for a checkpoint written before it stored one, from its
    preset as presets were then (symmetric padding, fed t itself)."""
    if state.get("unet") is not None:
        unet, shape = state["unet"], list(state["image_shape"])
        if [unet["in_channels"], unet["image_size"], unet["image_size"]] != shape:
            raise ValueError(f"{path} is inconsistent: its UNet takes {unet['in_channels']}x{unet['image_size']}x"
                             f"{unet['image_size']} images, its image shape says {'x'.join(map(str, shape))}")
        return UNet(**unet)
    if config.model not in UNet.PRESETS:
        raise ValueError(f"{path} holds a network passed to train() directly (model={config.model!r}) that is "
                         "not a ddpm.UNet; build that network yourself and "
                         "load_state_dict(ddpm.checkpoint.load_checkpoint(path)['ema'])")
    return build_model(config, state["image_shape"][0], downsample_padding="symmetric", t_offset=0)


def load_model(path, use_ema: bool = True, device="cpu") -> tuple:
    """(network, config, image shape [C, H, W]) from a checkpoint: the EMA weights unless ``use_ema=False``."""
    state = load_checkpoint(path)
    known = {f.name for f in fields(TrainConfig)}
    saved = state["config"]
    if not isinstance(saved, dict) or not set(saved) <= known:
        unknown = sorted(set(saved) - known) if isinstance(saved, dict) else saved
        raise ValueError(f"{path} has a config this version of ddpm does not know: {unknown}")
    config = TrainConfig(**saved)
    model = build_network(state, config, path)
    try:
        model.load_state_dict(state["ema" if use_ema else "model"])
    except RuntimeError as e:
        raise ValueError(f"the weights in {path} do not fit the UNet it describes: "
                         f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval(), config, tuple(state["image_shape"])
