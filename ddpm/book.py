"""What the book's chapters need and a user of the package does not: the one switch between quick mode (a CPU,
minutes) and full mode (the paper's sizes, a GPU), each run's seed, and training runs that the chapters of one
build share. ``ddpm.book.pick(quick=..., full=...)``."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

MODES = ("quick", "full")


def run_mode() -> str:
    """``"quick"`` unless the environment variable DDPM_MODE says ``"full"``."""
    mode = os.environ.get("DDPM_MODE", "quick").strip().lower()
    if mode not in MODES:
        raise ValueError(f"DDPM_MODE must be 'quick' or 'full', got {mode!r}")
    return mode


def pick(quick, full):
    """The value for the current run mode: ``pick(quick=2_000, full=800_000)``."""
    return quick if run_mode() == "quick" else full


def seed() -> int:
    """The seed of this run: DDPM_SEED if set, else a fresh random one (the book's checks hold for any)."""
    value = os.environ.get("DDPM_SEED")
    return int(value) if value not in (None, "") else random.SystemRandom().randrange(2**31)


def train(config):
    """``ddpm.train.train(config)`` without a progress bar, shared between the chapters of one build.

    Where the environment variable DDPM_CACHE names a folder (``make test`` and ``make book`` set it, and
    one DDPM_SEED for every chapter), the run goes to a folder of its own there, named by every setting
    but ``out_dir``, under a file lock: the first chapter to ask trains it, a later one (or one that waited
    on the lock) resumes the finished run, which does no step and returns the same networks. So chapter 10
    reuses chapter 7's model instead of training it again. ``result.losses`` is empty for a reused run."""
    import fcntl   # POSIX only, as is the sharing (make and the tests); elsewhere DDPM_CACHE stays unset
    from dataclasses import asdict, replace

    from .train import train as train_run

    cache = os.environ.get("DDPM_CACHE")
    if not cache:
        return train_run(config, progress=False)
    settings = {k: v for k, v in asdict(config).items() if k not in ("out_dir", "resume")}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache).expanduser() / f"run-{key}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"run-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes
        return train_run(replace(config, out_dir=str(folder), resume=True), progress=False)
